// Admission over HTTP (issue 11): a cold burst past concurrentExecutions is throttled at once while
// the control plane keeps answering; `?timeout=` must be a positive duration; and the agent's
// SIGTERM answers calls in flight with `unavailable` instead of waiting for them.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "api/http_server.hpp"
#include "blixard/blixard.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using blixard::Cluster;
using blixard::errc;
using blixard::Error;
using blixard::test_support::connect_loopback;
using blixard::test_support::eventually;
using blixard::test_support::processes_with;
using blixard::test_support::python;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

const fs::path k_handlers = fs::path(BLIXARD_TEST_DATA) / "handlers";

// Gates live in a directory of the test's: an instance sees only its own root, which holds the
// directories on its PYTHONPATH (bound live, so a gate opened later shows).
fs::path gate_dir(const std::string& token) {
  return fs::path(BLIXARD_BINARY_DIR) / "admission-gates" / token;
}

std::string unique_token() {
  return "blixard-admission-" + std::to_string(::getpid()) + "-" +
         ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

blixard::v1::FunctionSpec gate_spec(const std::string& token) {
  blixard::v1::FunctionSpec s;
  s.set_runtime("python");
  s.set_handler("gate:wait");
  s.set_code(k_handlers.string());
  s.set_memory_mib(128);
  s.mutable_timeout()->set_seconds(120);
  (*s.mutable_env())["TEST_TOKEN"] = token;
  (*s.mutable_env())["PYTHONDONTWRITEBYTECODE"] = "1";
  (*s.mutable_env())["PYTHONPATH"] = gate_dir(token).string();
  return s;
}

// One HTTP/1.1 request on a fresh connection: the whole response as text.
std::string http_request(unsigned short port, const std::string& method, const std::string& target,
                         const std::string& body = "") {
  const int fd = connect_loopback(port);
  if (fd < 0) return {};
  const std::string req = method + " " + target +
                          " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                          "Content-Type: application/json\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

class AdmissionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(python().empty());
    token_ = unique_token();
    dir_ = fs::temp_directory_path() / token_;
    fs::remove_all(dir_);
    fs::remove_all(gate_dir(token_));
    fs::create_directories(gate_dir(token_));
  }

  void TearDown() override {
    std::ofstream(gate_dir(token_) / "open").put('\n');  // releases whatever still waits
    if (server_) server_->stop();
    server_.reset();
    if (local_) local_->close();
    local_.reset();
    EXPECT_TRUE(eventually([&] { return processes_with(token_) == 0; }, 10s))
        << "leaked handler processes";
    fs::remove_all(dir_);
    fs::remove_all(gate_dir(token_));
  }

  // An embedded cluster served over HTTP. Two workers stand for the server's 16 under a burst of
  // 200: the old server queued calls for them before admitting any.
  Cluster serve() {
    blixard::LocalOptions options;
    options.python = python();
    local_.emplace(Cluster::local(dir_, options));
    blixard::api::HttpServerOptions http;
    http.workers = 2;
    server_ = std::make_unique<blixard::api::HttpServer>(local_->backend(), http);
    server_->start();
    return Cluster::connect(server_->url());
  }

  std::string gate_payload(const std::string& name) const {
    return "{\"gate\": \"" + (gate_dir(token_) / name).string() + "\"}";
  }
  void open_gate(const std::string& name) const {
    std::ofstream(gate_dir(token_) / name).put('\n');
  }

  std::string token_;
  fs::path dir_;
  std::optional<Cluster> local_;
  std::unique_ptr<blixard::api::HttpServer> server_;
};

TEST_F(AdmissionTest, ColdBurstPastTheCapIsThrottledAtOnceWhileTheApiAnswers) {
  Cluster remote = serve();
  auto spec = gate_spec(token_);
  spec.set_concurrent_executions(4);
  remote.create_function("burst", spec);

  constexpr int k_calls = 20;
  std::mutex mu;
  int ok = 0, throttled = 0, other = 0;
  std::vector<std::string> others;
  std::vector<std::thread> callers;
  // However the test ends, the callers are released and joined (an ASSERT returns early).
  struct Release {
    fs::path gate;
    std::vector<std::thread>& threads;
    ~Release() {
      std::ofstream(gate).put('\n');
      for (auto& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } release{gate_dir(token_) / "burst", callers};
  for (int i = 0; i < k_calls; ++i) {
    callers.emplace_back([&] {
      try {
        remote.function("burst").invoke(gate_payload("burst"));
        std::lock_guard lock(mu);
        ++ok;
      } catch (const Error& e) {
        std::lock_guard lock(mu);
        if (e.code() == errc::throttled) {
          ++throttled;
        } else {
          ++other;
          others.push_back(e.what());
        }
      }
    });
  }
  // All 16 past the cap are refused while the 4 admitted ones are still held at the gate.
  const bool refused = eventually(
      [&] {
        std::lock_guard lock(mu);
        return throttled + other >= k_calls - 4;
      },
      30s);
  {
    std::lock_guard lock(mu);
    EXPECT_TRUE(refused) << "throttled " << throttled << ", other " << other;
    EXPECT_EQ(throttled, k_calls - 4);
    EXPECT_EQ(ok, 0);
  }
  // The control plane answers while the burst's calls (and their cold starts) are in flight.
  const auto before = Clock::now();
  const auto functions = remote.functions();
  const auto took = Clock::now() - before;
  ASSERT_EQ(functions.size(), 1u);
  EXPECT_LT(took, 2s) << "GET /v1/functions took "
                      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                      << " ms under the burst";
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(ok, 0) << "the list came after the calls ended, not beside them";
  }
  int admitted = 0;
  for (const auto& in : functions[0].status().instances()) admitted += in.in_flight();
  EXPECT_EQ(admitted, 4);

  open_gate("burst");
  for (auto& t : callers) t.join();
  EXPECT_EQ(ok, 4);
  EXPECT_EQ(throttled, k_calls - 4);
  EXPECT_EQ(other, 0) << (others.empty() ? "" : others.front());
}

TEST_F(AdmissionTest, ReservedConcurrencyZeroThrottlesEveryCall) {
  Cluster remote = serve();
  auto spec = gate_spec(token_);
  spec.set_concurrent_executions(0);
  remote.create_function("closed", spec);
  EXPECT_EQ(remote.function("closed").get().spec().concurrent_executions(), 0u);
  try {
    remote.function("closed").invoke(gate_payload("never"));
    FAIL() << "a function with concurrentExecutions 0 ran a call";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::throttled) << e.what();
  }
}

TEST_F(AdmissionTest, InvokeTimeoutMustBeAPositiveDuration) {
  serve();
  for (const char* bad : {"0", "0s", "-1", "nan", "abc", "1x"}) {
    const std::string res = http_request(
        server_->port(), "POST", std::string("/v1/functions/nope/invoke?timeout=") + bad, "{}");
    EXPECT_EQ(res.rfind("HTTP/1.1 400", 0), 0u) << bad << ": " << res;
    EXPECT_TRUE(std::regex_search(res, std::regex(R"("field"\s*:\s*"timeout")")))
        << bad << ": " << res;
  }
  // A good one passes the check and finds no function.
  const std::string res =
      http_request(server_->port(), "POST", "/v1/functions/nope/invoke?timeout=1500ms", "{}");
  EXPECT_EQ(res.rfind("HTTP/1.1 404", 0), 0u) << res;
}

// The client of a call hangs up while the call waits for its cold start: the call is not run, and
// the instance started for it serves the next call warm.
TEST_F(AdmissionTest, ACallWhoseClientHungUpDuringItsColdStartIsNotRun) {
  Cluster remote = serve();
  blixard::v1::FunctionSpec spec = gate_spec(token_);
  spec.set_handler("slow_start:count");
  spec.mutable_scaling()->set_max_instances(1);
  (*spec.mutable_env())["START_GATE"] = (gate_dir(token_) / "start").string();
  remote.create_function("slow", spec);

  const int fd = connect_loopback(server_->port());
  ASSERT_GE(fd, 0);
  const std::string req =
      "POST /v1/functions/slow/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
  ASSERT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  // Admitted, and waiting for the instance it started.
  ASSERT_TRUE(eventually(
      [&] {
        const auto fn = remote.function("slow").get();  // the loop below reads into it
        for (const auto& in : fn.status().instances()) {
          if (in.in_flight() == 1) return true;
        }
        return false;
      },
      30s));
  ::close(fd);
  open_gate("start");
  ASSERT_TRUE(eventually(
      [&] {
        const auto m = remote.function("slow").metrics();
        return m.abandoned() + m.invocations() >= 1;
      },
      30s));
  const auto m = remote.function("slow").metrics();
  EXPECT_EQ(m.abandoned(), 1u);
  EXPECT_EQ(m.invocations(), 0u) << "the call of a client that had gone was run";

  const auto next = remote.function("slow").invoke("{}");
  EXPECT_TRUE(std::regex_search(next.result, std::regex(R"("calls"\s*:\s*1\b)"))) << next.result;
  EXPECT_FALSE(next.cold_start) << "the instance started for the gone caller was not kept";
}

// The agent as `blixard down` stops it: SIGTERM with a call in flight.
TEST_F(AdmissionTest, AgentSigtermAnswersCallsInFlightWithUnavailable) {
  const fs::path agent = fs::path(BLIXARD_BINARY_DIR) / "blixard-agent";
  if (!fs::exists(agent)) GTEST_SKIP() << "no " << agent;
  const fs::path data = dir_ / "agent";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string d = data.string(), py = python(), a = agent.string();
    ::execl(a.c_str(), a.c_str(), "--server", "--data-dir", d.c_str(), "--listen", "127.0.0.1:0",
            "--python", py.c_str(), "--log-level", "warn", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // An assertion that returns early must not leave the agent running.
  bool reaped = false;
  struct Reaper {
    pid_t pid;
    bool& reaped;
    ~Reaper() {
      if (reaped) return;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reaper{pid, reaped};
  blixard::test_support::ServerState state;
  ASSERT_TRUE(eventually(
      [&] {
        state = blixard::test_support::read_server_state(data);
        return !state.token.empty() && !state.address.empty();
      },
      30s))
      << "the agent did not start";
  blixard::ConnectOptions options;
  options.token = state.token;
  Cluster remote = Cluster::connect(state.address, options);
  remote.create_function("long", gate_spec(token_));

  std::optional<Error> failure;
  bool answered = false;
  std::thread caller([&] {
    try {
      remote.function("long").invoke(gate_payload("long"));
      answered = true;
    } catch (const Error& e) {
      failure = e;
    }
  });
  ASSERT_TRUE(eventually(
      [&] {
        const auto fn = remote.function("long").get();  // the loop below reads into it
        for (const auto& in : fn.status().instances()) {
          if (in.in_flight() > 0 && in.phase() == "Busy") return true;
        }
        return false;
      },
      30s));
  ::kill(pid, SIGTERM);
  int status = 0;
  const bool exited = eventually([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 15s);
  if (!exited) {
    open_gate("long");
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  reaped = true;
  caller.join();
  EXPECT_TRUE(exited) << "the agent waited for its call instead of answering it";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(answered);
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->code(), errc::unavailable) << failure->what();
  EXPECT_NE(std::string(failure->what()).find("shut down"), std::string::npos) << failure->what();
}

}  // namespace
