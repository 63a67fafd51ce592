// The agent-side runtime: the instance protocol's frame codec, the embedded Python handler runtime
// and the sandbox driver running real handler processes (tests/data/handlers).
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

#include "blixard/v1/agent.pb.h"
#include "runtime/accel.hpp"
#include "runtime/cgroup.hpp"
#include "runtime/driver.hpp"
#include "runtime/embedded.hpp"
#include "runtime/frame.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using namespace blixard;
using namespace blixard::runtime;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using blixard::test_support::eventually;
using blixard::test_support::instances_with;
using blixard::test_support::processes_with;
using blixard::test_support::python;
using blixard::test_support::run;

namespace {

const fs::path k_handlers = fs::path(BLIXARD_TEST_DATA) / "handlers";

// ---- frames ----

v1::InstanceFrame request_frame(const std::string& id, const std::string& payload) {
  v1::InstanceFrame f;
  f.mutable_request()->set_request_id(id);
  f.mutable_request()->set_payload(payload);
  f.mutable_request()->set_deadline_unix_ms(-5);
  return f;
}

TEST(FrameCodec, EncodesLittleEndianLengthPrefix) {
  const auto bytes = encode_frame(request_frame("r1", "{}"));
  ASSERT_GE(bytes.size(), 4u);
  const std::uint32_t n = static_cast<unsigned char>(bytes[0]) |
                          static_cast<unsigned char>(bytes[1]) << 8 |
                          static_cast<unsigned char>(bytes[2]) << 16 |
                          static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[3])) << 24;
  EXPECT_EQ(n, bytes.size() - 4);
}

TEST(FrameCodec, DecodesFramesFedByteByByte) {
  const std::string payload(100000, 'a');
  const auto bytes =
      encode_frame(request_frame("r1", payload)) + encode_frame(request_frame("r2", "2"));
  FrameDecoder d(1 << 20);
  v1::InstanceFrame f;
  std::vector<std::string> ids;
  for (char c : bytes) {
    d.feed({&c, 1});
    while (d.next(f) == FrameDecoder::Status::frame) ids.push_back(f.request().request_id());
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"r1", "r2"}));
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(d.next(f), FrameDecoder::Status::need_more);
}

TEST(FrameCodec, DecodesSeveralFramesFromOneFeed) {
  FrameDecoder d(1024);
  v1::InstanceFrame ready;
  ready.mutable_ready()->set_pid(7);
  d.feed(encode_frame(ready) + encode_frame(request_frame("a", "1")));
  v1::InstanceFrame f;
  ASSERT_EQ(d.next(f), FrameDecoder::Status::frame);
  EXPECT_EQ(f.ready().pid(), 7u);
  ASSERT_EQ(d.next(f), FrameDecoder::Status::frame);
  EXPECT_EQ(f.request().request_id(), "a");
  EXPECT_EQ(f.request().deadline_unix_ms(), -5);
}

TEST(FrameCodec, EmptyFrameIsAFrameWithoutKind) {
  FrameDecoder d(16);
  d.feed(std::string(4, '\0'));
  v1::InstanceFrame f;
  ASSERT_EQ(d.next(f), FrameDecoder::Status::frame);
  EXPECT_EQ(f.kind_case(), v1::InstanceFrame::KIND_NOT_SET);
}

TEST(FrameCodec, RejectsLengthsOverTheLimitAndStaysFailed) {
  FrameDecoder d(1024);
  d.feed("this is not a frame");
  v1::InstanceFrame f;
  EXPECT_EQ(d.next(f), FrameDecoder::Status::too_large);
  EXPECT_EQ(d.rejected_length(), 0x73696874u);  // "this" read as a little-endian length
  d.feed(encode_frame(request_frame("r", "1")));
  EXPECT_EQ(d.next(f), FrameDecoder::Status::too_large);
}

TEST(FrameCodec, RejectsMalformedBodies) {
  FrameDecoder d(1024);
  d.feed(std::string("\x05\x00\x00\x00\xff\xff\xff\xff\xff", 9));
  v1::InstanceFrame f;
  EXPECT_EQ(d.next(f), FrameDecoder::Status::malformed);
}

TEST(EmbeddedRuntime, IsThePackagesHandlerRuntime) {
  std::ifstream in(fs::path(BLIXARD_SOURCE_DIR) / "python/blixard/handler_runtime.py",
                   std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(detail::embedded_handler_runtime(), text);
}

// ---- the accelerator probe ----

TEST(AccelProbe, KvmNeedsAHardwareFlagAndAWorkingDevice) {
  const fs::path dir = fs::temp_directory_path() / ("blixard-accel-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  };
  // KVM-PVM: the device works, the CPU shows no vmx/svm.
  const auto pvm = write("pvm", "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n");
  auto probe = probe_accel(pvm, "/dev/kvm");
  EXPECT_FALSE(probe.kvm);
  EXPECT_THAT(probe.why, ::testing::HasSubstr("no vmx/svm"));
  const auto intel = write("intel", "flags\t\t: fpu vmx sse2\n");
  probe = probe_accel(intel, (dir / "no-such-device").string());
  EXPECT_FALSE(probe.kvm);
  EXPECT_THAT(probe.why, ::testing::HasSubstr("cannot be opened"));
  probe = probe_accel(intel, "/dev/null");  // opens, but is no KVM
  EXPECT_FALSE(probe.kvm);
  EXPECT_THAT(probe.why, ::testing::HasSubstr("KVM_CREATE_VM failed"));
  fs::remove_all(dir);
}

// ---- the sandbox driver ----

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(python().empty()) << "python3 not found";
    token_ = "blixard-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name();
    work_ = fs::temp_directory_path() / token_;
    fs::create_directories(work_);
    cgroup_parent_ = token_;
    SandboxOptions o;
    o.work_dir = work_;
    o.python = python();
    o.cgroup_parent = cgroup_parent_;
    driver_ = make_sandbox_driver(o);
  }

  void TearDown() override {
    driver_.reset();
    // Everything was killed; a SIGKILLed process (a zygote killed while it was still starting)
    // leaves /proc a moment later.
    EXPECT_TRUE(eventually([&] { return processes_with(token_) == 0; }, std::chrono::seconds(5)));
    // Instance cgroups are gone: the parents are empty, so rmdir succeeds.
    for (const char* ctrl : {"memory", "pids", ""}) {
      const fs::path p = fs::path("/sys/fs/cgroup") / ctrl / cgroup_parent_;
      if (fs::exists(p)) {
        EXPECT_EQ(::rmdir(p.c_str()), 0) << p << ": " << std::strerror(errno);
      }
    }
    // Instance directories are gone too.
    if (fs::exists(work_ / "instances")) {
      EXPECT_TRUE(fs::is_empty(work_ / "instances"));
    }
    fs::remove_all(work_);
  }

  v1::FunctionSpec python_spec(const std::string& handler, std::uint64_t memory_mib = 128) {
    v1::FunctionSpec s;
    s.set_runtime("python");
    s.set_handler(handler);
    s.set_code(k_handlers.string());
    s.set_memory_mib(memory_mib);
    s.mutable_timeout()->set_seconds(30);
    (*s.mutable_env())["TEST_TOKEN"] = token_;
    (*s.mutable_env())["PYTHONDONTWRITEBYTECODE"] = "1";
    return s;
  }

  v1::FunctionSpec exec_spec(std::vector<std::string> command) {
    v1::FunctionSpec s;
    s.set_runtime("exec");
    for (auto& c : command) s.add_command(c);
    s.set_code(k_handlers.string());
    s.set_memory_mib(64);
    s.mutable_timeout()->set_seconds(30);
    (*s.mutable_env())["TEST_TOKEN"] = token_;
    return s;
  }

  InvocationResult invoke(const v1::FunctionSpec& spec, const std::string& payload,
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
                          const std::string& function = "fn") {
    Invocation inv;
    inv.function = function;
    inv.spec = spec;
    inv.payload = payload;
    inv.request_id = "req-1";
    inv.timeout = timeout;
    return driver_->invoke(inv);
  }

  // `threads` threads each invoking the Python echo `calls` times, each on an instance of its own
  // (driver_->invoke starts one per call); how many calls got their own payload back.
  int concurrent_echoes(int threads, int calls) {
    std::atomic<int> ok{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (int i = 0; i < calls; ++i) {
          const std::string payload = "[" + std::to_string(t) + ", " + std::to_string(i) + "]";
          try {
            if (invoke(python_spec("echo:handler"), payload).result == payload) ++ok;
          } catch (const Error& e) {
            ADD_FAILURE() << e.what();
          }
        }
      });
    }
    for (auto& w : workers) w.join();
    return ok;
  }

  // Runs the invocation expecting a blixard::Error; returns it.
  Error invoke_error(const v1::FunctionSpec& spec, const std::string& payload,
                     std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
    try {
      invoke(spec, payload, timeout);
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << "invoke did not fail";
    return Error(errc::internal, "no error");
  }

  // The test's cgroup parent, one directory per hierarchy (v1: memory then pids; v2: one);
  // empty where the driver has no cgroups.
  std::vector<fs::path> cgroup_parents() const {
    std::vector<fs::path> out;
    for (const char* ctrl : {"memory", "pids", ""}) {
      const fs::path p = fs::path("/sys/fs/cgroup") / ctrl / cgroup_parent_;
      if (fs::exists(p)) out.push_back(p);
    }
    return out;
  }

  // Instance groups are kept and reused on cgroup v1 only (cgroupfs v2 cannot rename them).
  bool reuses_cgroups() const {
    const auto parents = cgroup_parents();
    return !parents.empty() && fs::exists(parents[0] / "memory.limit_in_bytes");
  }

  static std::vector<std::string> subgroups(const fs::path& dir) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.is_directory()) out.push_back(e.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  static std::string read_text(const fs::path& path) {
    std::string text = test_support::read_proc_file(path);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
  }

  // One instance of `spec` through the instance API: started, called once, stopped. What its
  // group looked like while it ran is read from the cgroup files.
  struct InstanceRun {
    std::string name;
    std::optional<std::string> result;
    std::optional<Error> error;
    InstanceExit exit;
    ino_t group = 0;  // the memory group's inode: a renamed group keeps it
    std::string memory_limit, swap_limit, pids_max;
  };
  InstanceRun run_instance(const v1::FunctionSpec& spec, const std::string& payload) {
    InstanceRun out;
    std::mutex m;
    std::condition_variable exited;
    std::optional<InstanceExit> exit;
    InstanceOptions o;
    o.function = "fn";
    o.spec = spec;
    o.on_exit = [&](const InstanceExit& e) {
      std::lock_guard lock(m);
      exit = e;
      exited.notify_all();
    };
    auto instance = driver_->start(o);
    out.name = instance->name();
    const auto parents = cgroup_parents();
    if (!parents.empty()) {
      const fs::path mem = parents[0] / out.name;
      struct stat st {};
      if (::stat(mem.c_str(), &st) == 0) out.group = st.st_ino;
      const bool v1 = fs::exists(mem / "memory.limit_in_bytes");
      out.memory_limit = read_text(mem / (v1 ? "memory.limit_in_bytes" : "memory.max"));
      out.swap_limit = read_text(mem / (v1 ? "memory.memsw.limit_in_bytes" : "memory.swap.max"));
      out.pids_max = read_text(parents.back() / out.name / "pids.max");
    }
    Invocation inv;
    inv.function = "fn";
    inv.spec = spec;
    inv.payload = payload;
    inv.request_id = "r";
    try {
      out.result = instance->call(inv).result;
    } catch (const Error& e) {
      out.error = e;
    }
    instance->stop(std::chrono::seconds(5));
    std::unique_lock lock(m);
    EXPECT_TRUE(exited.wait_for(lock, std::chrono::seconds(30), [&] { return exit.has_value(); }));
    if (exit) out.exit = *exit;
    return out;
  }

  // An instance of `spec` (function "fn"), with its log lines to `on_line` when given.
  std::shared_ptr<Instance> start_instance(const v1::FunctionSpec& spec,
                                           std::function<void(const std::string&)> on_line = {}) {
    InstanceOptions o;
    o.function = "fn";
    o.spec = spec;
    if (on_line) {
      o.on_log = [on_line](const std::string&, const std::string&, const std::string& line) {
        on_line(line);
      };
    }
    return driver_->start(o);
  }

  std::string token_;
  fs::path work_;
  std::string cgroup_parent_;
  std::unique_ptr<Driver> driver_;
};

TEST_F(SandboxTest, PythonEchoReturnsTheEvent) {
  const auto r = invoke(python_spec("echo:handler"), R"({"x": [1, 2, "three"]})");
  EXPECT_EQ(r.result, R"({"x": [1, 2, "three"]})");
  EXPECT_TRUE(r.cold_start);
  EXPECT_GT(r.duration.count(), 0);
  EXPECT_EQ(driver_->name(), "sandbox");
}

TEST_F(SandboxTest, HandlerRuntimeIsWrittenToTheWorkDir) {
  std::ifstream in(work_ / "runtime" / "handler_runtime.py", std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, detail::embedded_handler_runtime());
}

TEST_F(SandboxTest, ContextAndEnvironmentReachTheHandler) {
  auto spec = python_spec("echo:context_info", 96);
  (*spec.mutable_env())["TEST_GREETING"] = "hello";
  const auto r = invoke(spec, "null", std::chrono::seconds(5), "ctx-fn");
  EXPECT_THAT(r.result, HasSubstr(R"("request_id": "req-1")"));
  EXPECT_THAT(r.result, HasSubstr(R"("function_name": "ctx-fn")"));
  EXPECT_THAT(r.result, HasSubstr(R"("memory_limit_mb": 96)"));
  EXPECT_THAT(r.result, HasSubstr(R"("TEST_GREETING": "hello")"));
  EXPECT_THAT(r.result, HasSubstr(R"("BLIXARD_PROTOCOL": "1")"));
  EXPECT_THAT(r.result, HasSubstr(R"("BLIXARD_FUNCTION": "ctx-fn")"));
  EXPECT_THAT(r.result, HasSubstr(R"("BLIXARD_MEMORY_MIB": "96")"));
  // Only stdio and the protocol pipes are open (5 is the fd listdir itself opened).
  EXPECT_THAT(r.result, HasSubstr(R"("fds_open": [0, 1, 2, 3, 4, 5])"));
  // remaining_time_ms is within the 5 s timeout.
  const auto pos = r.result.find("\"remaining_ms\": ");
  ASSERT_NE(pos, std::string::npos);
  const long remaining = std::stol(r.result.substr(pos + 16));
  EXPECT_GT(remaining, 0);
  EXPECT_LE(remaining, 5000);
}

TEST_F(SandboxTest, RunsInItsOwnPidNamespaceAsRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "namespaces as root only";
  const auto r = invoke(python_spec("echo:context_info"), "null");
  EXPECT_THAT(r.result, HasSubstr(R"("pid": 1)"));
}

TEST_F(SandboxTest, RaisedExceptionIsHandlerFailedWithTypeAndMessage) {
  const auto e = invoke_error(python_spec("raises:handler"), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_EQ(e.message(), "ValueError: boom");
}

TEST_F(SandboxTest, UnserializableResultIsHandlerFailed) {
  const auto e = invoke_error(python_spec("echo:not_json"), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_THAT(e.message(), HasSubstr("TypeError"));
}

TEST_F(SandboxTest, TimeoutKillsTheWholeInstance) {
  const auto started = Clock::now();
  const auto e = invoke_error(python_spec("sleeper:with_child"), "{}", std::chrono::seconds(2));
  const auto elapsed = Clock::now() - started;
  EXPECT_EQ(e.code(), errc::timeout);
  EXPECT_THAT(e.message(), HasSubstr("timed out after 2s"));
  EXPECT_THAT(e.message(), HasSubstr("req-1"));
  EXPECT_GE(elapsed, std::chrono::seconds(2));
  EXPECT_LT(elapsed, std::chrono::seconds(10));
  // The handler and the `sleep` it started are gone by the time invoke() returns.
  EXPECT_EQ(instances_with(token_), 0);
}

TEST_F(SandboxTest, TimeoutFromTheSpecApplies) {
  auto spec = python_spec("sleeper:handler");
  spec.mutable_timeout()->set_seconds(0);
  spec.mutable_timeout()->set_nanos(700'000'000);
  const auto e = invoke_error(spec, "{}");
  EXPECT_EQ(e.code(), errc::timeout);
  EXPECT_THAT(e.message(), HasSubstr("timed out after 700ms"));
  EXPECT_EQ(instances_with(token_), 0);
}

TEST_F(SandboxTest, CrashMidRequestReportsStatusAndLogTail) {
  const auto e = invoke_error(python_spec("crash:handler"), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_THAT(e.message(), HasSubstr("exited with status 3"));
  EXPECT_THAT(e.message(), HasSubstr("while handling the request"));
  EXPECT_THAT(e.message(), HasSubstr("crashing now"));
  EXPECT_EQ(instances_with(token_), 0);
}

TEST_F(SandboxTest, OutOfMemoryIsReported) {
  const auto e = invoke_error(python_spec("hog:handler", 64), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_THAT(e.message(), HasSubstr("out of memory"));
  EXPECT_EQ(instances_with(token_), 0);
}

TEST_F(SandboxTest, ImportErrorFailsBeforeReadyWithStatus2) {
  const auto e = invoke_error(python_spec("broken_import:handler"), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_THAT(e.message(), HasSubstr("exited with status 2 before ready"));
  EXPECT_THAT(e.message(), HasSubstr("missing configuration DATABASE_URL"));
  EXPECT_THAT(e.message(), HasSubstr("RuntimeError: cannot configure"));
}

TEST_F(SandboxTest, BadHandlerSpecFailsBeforeReady) {
  for (const char* handler : {"no_colon", "echo:missing", "no_such_module:handler"}) {
    const auto e = invoke_error(python_spec(handler), "{}");
    EXPECT_EQ(e.code(), errc::handler_failed) << handler;
    EXPECT_THAT(e.message(), HasSubstr("status 2 before ready")) << handler;
  }
}

TEST_F(SandboxTest, ExecHandlerExitingBeforeReady) {
  const auto e = invoke_error(exec_spec({"exit_early.sh"}), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_THAT(e.message(), HasSubstr("exited with status 5 before ready"));
  EXPECT_THAT(e.message(), HasSubstr("no config found, giving up"));
}

TEST_F(SandboxTest, GarbageFrameIsAProtocolErrorAndTheHandlerIsKilled) {
  const auto e = invoke_error(exec_spec({"sh", "garbage.sh"}), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_THAT(e.message(), HasSubstr("broke the instance protocol"));
  EXPECT_THAT(e.message(), HasSubstr("garbage frame"));
  EXPECT_THAT(e.message(), HasSubstr("writing garbage"));
  EXPECT_EQ(instances_with(token_), 0);
}

TEST_F(SandboxTest, MissingExecCommandIsHandlerFailed) {
  const auto e = invoke_error(exec_spec({"no-such-binary-anywhere"}), "{}");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_EQ(e.field(), "command");
}

TEST_F(SandboxTest, UnknownRuntimeIsInvalidSpec) {
  auto spec = python_spec("echo:handler");
  spec.set_runtime("cobol");
  const auto e = invoke_error(spec, "{}");
  EXPECT_EQ(e.code(), errc::invalid_spec);
  EXPECT_EQ(e.field(), "runtime");
}

TEST_F(SandboxTest, RequestOverTheLimitIsRejectedBeforeStarting) {
  const std::string payload = "\"" + std::string(6u << 20, 'a') + "\"";
  const auto e = invoke_error(python_spec("echo:handler"), payload);
  EXPECT_EQ(e.code(), errc::payload_too_large);
  auto spec = python_spec("echo:handler");
  spec.set_max_payload_bytes(10);
  EXPECT_EQ(invoke_error(spec, R"({"abcdefghij": 1})").code(), errc::payload_too_large);
}

TEST_F(SandboxTest, ResponseOverTheLimitIsPayloadTooLarge) {
  auto spec = python_spec("echo:big");
  spec.set_max_payload_bytes(1000);
  EXPECT_EQ(invoke(spec, R"({"n": 900})").result.size(), 902u);
  EXPECT_EQ(invoke_error(spec, R"({"n": 2000})").code(), errc::payload_too_large);
  // Large enough that the frame itself is over the decoder's bound.
  EXPECT_EQ(invoke_error(spec, R"({"n": 200000})").code(), errc::payload_too_large);
}

// Calls in flight together on one instance whose handler answers out of order (4 at a time in
// threads): one caller reads the response pipe at a time and hands the others their answers, so
// each must get its own.
TEST_F(SandboxTest, ManyCallsInFlightOnOneInstanceEachGetTheirOwnAnswer) {
  InstanceOptions o;
  o.function = "fn";
  o.spec = python_spec("echo:handler");
  o.spec.mutable_scaling()->set_target_concurrency(4);
  auto instance = driver_->start(o);
  constexpr int k_threads = 6;
  constexpr int k_calls = 40;
  std::atomic<int> right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_calls; ++i) {
        Invocation inv;
        inv.function = "fn";
        inv.spec = o.spec;
        inv.request_id = "r" + std::to_string(t) + "-" + std::to_string(i);
        inv.payload = "\"" + inv.request_id + "\"";
        try {
          if (instance->call(inv).result == inv.payload) ++right;
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(right, k_threads * k_calls);
  EXPECT_TRUE(instance->alive());
}

TEST_F(SandboxTest, LargePayloadsRoundTrip) {
  const std::string payload = "\"" + std::string(5u << 20, 'z') + "\"";
  EXPECT_EQ(invoke(python_spec("echo:handler"), payload).result, payload);
}

TEST_F(SandboxTest, ConcurrentInvocations) { EXPECT_EQ(concurrent_echoes(4, 3), 12); }

TEST_F(SandboxTest, ShutdownKillsInFlightInstancesAndRefusesNewCalls) {
  std::optional<Error> error;
  std::thread caller([&] {
    try {
      invoke(python_spec("sleeper:handler"), "{}", std::chrono::seconds(60));
    } catch (const Error& e) {
      error = e;
    }
  });
  ASSERT_TRUE(eventually([&] { return instances_with(token_) > 0; }));
  driver_->shutdown();
  caller.join();
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), errc::unavailable);
  EXPECT_EQ(instances_with(token_), 0);
  EXPECT_EQ(invoke_error(python_spec("echo:handler"), "{}").code(), errc::unavailable);
}

// ---- VM replicas (long-lived processes serving their own ports) ----

// A replica that serves HTTP on $PORT and says so on its console; `extra` runs before it serves.
v1::VmSpec http_replica_spec(const std::string& token, const std::string& extra = "") {
  v1::VmSpec s;
  s.add_command(python());
  s.add_command("-c");
  s.add_command(extra +
                "import http.server as h, os, signal, sys\n"
                "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                "s = h.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
                "h.SimpleHTTPRequestHandler)\n"
                "print('serving', os.environ['BLIXARD_REPLICA'], flush=True)\n"
                "s.serve_forever()\n");
  s.add_ports(8080);
  s.set_memory_mib(128);
  (*s.mutable_env())["TEST_TOKEN"] = token;
  return s;
}

struct ReplicaEvents {
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::string> lines;
  std::optional<ReplicaExit> exit;

  ReplicaOptions options(std::string name, v1::VmSpec spec) {
    ReplicaOptions o;
    o.vm = "web";
    o.name = std::move(name);
    o.spec = std::move(spec);
    o.on_log = [this](const std::string&, const std::string& stream, std::string line) {
      std::lock_guard lock(m);
      lines.push_back(stream + ": " + line);
      cv.notify_all();
    };
    o.on_exit = [this](const ReplicaExit& e) {
      std::lock_guard lock(m);
      exit = e;
      cv.notify_all();
    };
    return o;
  }
  bool wait_exit() {
    std::unique_lock lock(m);
    return cv.wait_for(lock, std::chrono::seconds(15), [&] { return exit.has_value(); });
  }
  bool logged(const std::string& text) {
    std::unique_lock lock(m);
    return cv.wait_for(lock, std::chrono::seconds(15), [&] {
      return std::any_of(lines.begin(), lines.end(),
                         [&](const auto& l) { return l.find(text) != std::string::npos; });
    });
  }
};

TEST_F(SandboxTest, ReplicaServesItsPortOnAHostPortUntilStopped) {
  ReplicaEvents events;
  auto replica = driver_->start_replica(events.options("web-1", http_replica_spec(token_)));
  ASSERT_TRUE(replica->alive());
  const auto ports = replica->ports();
  ASSERT_EQ(ports.size(), 1U);
  ASSERT_EQ(ports.count(8080), 1U);
  EXPECT_NE(ports.at(8080), 8080U);  // a host port the driver chose
  const int fd = test_support::connect_loopback(static_cast<unsigned short>(ports.at(8080)));
  ASSERT_GE(fd, 0) << "the replica does not accept on its host port";
  ::close(fd);
  EXPECT_TRUE(events.logged("stdout: serving web-1"));
  EXPECT_GT(replica->start_duration().count(), 0);
  replica->stop(std::chrono::seconds(5));
  ASSERT_TRUE(events.wait_exit());
  EXPECT_TRUE(events.exit->requested);
  EXPECT_EQ(events.exit->replica, "web-1");
  EXPECT_FALSE(replica->alive());
  EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }));
}

TEST_F(SandboxTest, StoppingAReplicaUsesSigtermOnlyWhenItHandlesIt) {
  // With a handler: it exits on its own (status 0). Without one, SIGTERM would do nothing to a
  // PID 1, so it is killed at once, as SIGTERM would have killed any other process.
  ReplicaEvents handles;
  driver_->start_replica(handles.options("web-8", http_replica_spec(token_)))
      ->stop(std::chrono::seconds(30));
  ASSERT_TRUE(handles.wait_exit());
  EXPECT_EQ(handles.exit->reason, "exited with status 0");
  ReplicaEvents ignores;
  auto spec = http_replica_spec(token_);
  spec.set_command(2,
                   "import os, socket, time\n"
                   "s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); "
                   "s.listen()\n"
                   "time.sleep(600)\n");
  driver_->start_replica(ignores.options("web-9", spec))->stop(std::chrono::seconds(30));
  ASSERT_TRUE(ignores.wait_exit());
  EXPECT_TRUE(ignores.exit->requested);
  EXPECT_THAT(ignores.exit->reason, ::testing::HasSubstr("SIGKILL"));
}

TEST_F(SandboxTest, ReplicaReadyByAConsoleMarkerOrAnHttpPath) {
  // No port at all: only its console says when it is ready.
  ReplicaEvents marker;
  auto spec = http_replica_spec(token_);
  spec.clear_ports();
  spec.set_command(2,
                   "import time, signal, sys\n"
                   "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                   "time.sleep(0.2)\nprint('ALL SYSTEMS GO', flush=True)\ntime.sleep(600)\n");
  spec.mutable_readiness()->set_console_marker("SYSTEMS GO");
  auto r = driver_->start_replica(marker.options("web-10", spec));
  {
    std::lock_guard lock(marker.m);  // ready no sooner than the line came
    EXPECT_THAT(marker.lines, ::testing::Contains("stdout: ALL SYSTEMS GO"));
  }
  r->stop(std::chrono::seconds(5));

  ReplicaEvents http;
  auto web = http_replica_spec(token_);
  web.mutable_readiness()->set_http_path("/");
  auto h = driver_->start_replica(http.options("web-11", web));
  EXPECT_TRUE(h->alive());
  h->stop(std::chrono::seconds(5));
}

TEST_F(SandboxTest, ReplicaKilledFromOutsideReportsAnUnrequestedExit) {
  ReplicaEvents events;
  auto replica = driver_->start_replica(events.options("web-2", http_replica_spec(token_)));
  // Something other than the agent kills it (the OOM killer, an operator).
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (test_support::read_proc_file(entry.path() / "environ").find(token_) != std::string::npos) {
      ::kill(std::stoi(pid), SIGKILL);
    }
  }
  ASSERT_TRUE(events.wait_exit());
  EXPECT_FALSE(events.exit->requested);
  EXPECT_THAT(events.exit->reason, ::testing::HasSubstr("SIGKILL"));
  EXPECT_FALSE(replica->alive());
}

TEST_F(SandboxTest, ReplicaThatExitsBeforeReadyFailsWithItsConsoleTail) {
  ReplicaEvents events;
  try {
    driver_->start_replica(events.options(
        "web-3", http_replica_spec(token_,
                                   "import sys\nprint('no config for you', flush=True)\n"
                                   "sys.exit(3)\n")));
    FAIL() << "a replica that exits at once started";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::handler_failed);
    EXPECT_THAT(e.what(), ::testing::HasSubstr("exited with status 3"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("no config for you"));
  }
  EXPECT_FALSE(events.exit.has_value());  // a failed start is the caller's error, not an exit
}

TEST_F(SandboxTest, ReplicaWithoutACommandIsInvalidSpecNamingTheField) {
  ReplicaEvents events;
  v1::VmSpec spec;
  spec.add_ports(80);
  try {
    driver_->start_replica(events.options("web-4", spec));
    FAIL() << "started a replica with no command";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_EQ(e.field(), "command");
  }
  spec.add_command("no-such-program-anywhere");
  try {
    driver_->start_replica(events.options("web-4", spec));
    FAIL() << "started a replica whose command does not exist";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_THAT(e.what(), ::testing::HasSubstr("no-such-program-anywhere"));
  }
}

TEST_F(SandboxTest, ReplicaIsConfinedLikeAnInstance) {
  // It cannot write outside its scratch, sees only its own processes, and is no host root.
  ReplicaEvents events;
  auto replica = driver_->start_replica(events.options(
      "web-5",
      http_replica_spec(token_,
                        "import os, sys\n"
                        "try:\n  open('/etc/blixard-escape', 'w'); print('WROTE', flush=True)\n"
                        "except OSError as e: print('etc refused', flush=True)\n"
                        "print('pids', len([p for p in os.listdir('/proc') "
                        "if p.isdigit()]), flush=True)\n")));
  EXPECT_TRUE(events.logged("etc refused"));
  EXPECT_TRUE(events.logged("pids 1"));
  {
    std::lock_guard lock(events.m);
    for (const auto& l : events.lines)
      EXPECT_THAT(l, ::testing::Not(::testing::HasSubstr("WROTE")));
  }
  EXPECT_FALSE(fs::exists("/etc/blixard-escape"));
  if (::geteuid() == 0) {
    // Its host uid (the second field of Uid: effective) is one of the driver's, not 0.
    int found = 0;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const std::string pid = entry.path().filename();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      const auto environ = test_support::read_proc_file(entry.path() / "environ");
      if (environ.find("TEST_TOKEN=" + token_) == std::string::npos) continue;
      std::ifstream status(entry.path() / "status");
      for (std::string line; std::getline(status, line);) {
        if (line.rfind("Uid:", 0) != 0) continue;
        std::istringstream fields(line.substr(4));
        long real = -1, effective = -1;
        fields >> real >> effective;
        EXPECT_NE(effective, 0) << line;
        ++found;
      }
    }
    EXPECT_GT(found, 0);
  }
  replica->kill();
  ASSERT_TRUE(events.wait_exit());
  EXPECT_TRUE(events.exit->requested);
}

TEST_F(SandboxTest, ShutdownKillsReplicasAndRefusesNewOnes) {
  ReplicaEvents events;
  auto replica = driver_->start_replica(events.options("web-6", http_replica_spec(token_)));
  driver_->shutdown();
  ASSERT_TRUE(events.wait_exit());
  EXPECT_TRUE(events.exit->requested);
  EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }));
  try {
    driver_->start_replica(events.options("web-7", http_replica_spec(token_)));
    FAIL() << "a shut-down driver started a replica";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
  }
}

// ---- replicas kept across an agent's restart (SandboxOptions::keep_replicas) ----

class KeptReplicaTest : public SandboxTest {
 protected:
  void SetUp() override {
    SandboxTest::SetUp();
    driver_ = make_driver();
  }
  // A driver on the test's work dir and cgroup parent, as the next agent's would be.
  std::unique_ptr<Driver> make_driver() const {
    SandboxOptions o;
    o.work_dir = work_;
    o.python = python();
    o.cgroup_parent = cgroup_parent_;
    o.keep_replicas = true;
    return make_sandbox_driver(o);
  }
  // GET / on the replica's host port: its status line, "" when nothing answers.
  static std::string get(std::uint32_t port) {
    const int fd = test_support::connect_loopback(static_cast<unsigned short>(port));
    if (fd < 0) return "";
    const std::string request = "GET / HTTP/1.0\r\n\r\n";
    std::string reply;
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      std::array<char, 256> buf{};
      const ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n > 0) reply.assign(buf.data(), static_cast<std::size_t>(n));
    }
    ::close(fd);
    return reply.substr(0, reply.find('\r'));
  }
  // Alive, not a zombie (the first driver's replicas are this test's children, which no one
  // reaps once the driver left them).
  static bool running(int pid) {
    const std::string stat = test_support::read_proc_file("/proc/" + std::to_string(pid) + "/stat");
    const auto close = stat.rfind(')');
    return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
  }
  fs::path record(const std::string& replica) const { return work_ / "kept" / (replica + ".pb"); }
};

TEST_F(KeptReplicaTest, ALeftReplicaIsTakenBackByTheNextDriverThenStopped) {
  ReplicaEvents first;
  auto options = first.options("web-k1", http_replica_spec(token_));
  options.epoch = 3;
  auto replica = driver_->start_replica(options);
  EXPECT_TRUE(replica->outlives_agent());
  const int pid = replica->fence_pid();
  const auto ports = replica->ports();
  ASSERT_GT(pid, 0);
  driver_->detach();
  driver_.reset();  // the agent is gone: the replica is not
  ASSERT_TRUE(running(pid));
  EXPECT_THAT(get(ports.at(8080)), HasSubstr("200"));  // logged while no agent reads
  // The record is the agent's only.
  struct stat st {};
  ASSERT_EQ(::lstat(record("web-k1").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  ASSERT_EQ(::lstat((work_ / "kept").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700U);

  driver_ = make_driver();
  ReplicaEvents second;
  auto adopted = driver_->adopt(second.options("", {}).on_log, second.options("", {}).on_exit);
  ASSERT_EQ(adopted.size(), 1U);
  auto& back = adopted[0];
  EXPECT_EQ(back.epoch, 3);
  EXPECT_EQ(back.replica->name(), "web-k1");
  EXPECT_EQ(back.replica->fence_pid(), pid);
  EXPECT_EQ(back.replica->ports(), ports);
  EXPECT_TRUE(back.replica->alive());
  // What it wrote while no agent read comes through, and what it writes now.
  EXPECT_TRUE(second.logged("stderr: ") && second.logged("\"GET / HTTP/1.0\" 200"));
  back.replica->adopted(4);
  EXPECT_THAT(get(ports.at(8080)), HasSubstr("200"));
  back.replica->stop(std::chrono::seconds(5));
  ASSERT_TRUE(second.wait_exit());
  EXPECT_TRUE(second.exit->requested);
  EXPECT_EQ(second.exit->replica, "web-k1");
  EXPECT_FALSE(back.replica->alive());
  EXPECT_TRUE(eventually([&] { return !running(pid); }));
  EXPECT_FALSE(fs::exists(record("web-k1")));
}

TEST_F(KeptReplicaTest, AKilledAdoptedReplicaIsReportedExited) {
  ReplicaEvents first;
  const int pid =
      driver_->start_replica(first.options("web-k2", http_replica_spec(token_)))->fence_pid();
  driver_->detach();
  driver_ = make_driver();
  ReplicaEvents second;
  auto adopted = driver_->adopt(second.options("", {}).on_log, second.options("", {}).on_exit);
  ASSERT_EQ(adopted.size(), 1U);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);  // something other than the agent
  ASSERT_TRUE(second.wait_exit());
  EXPECT_FALSE(second.exit->requested);
  EXPECT_EQ(second.exit->replica, "web-k2");
  EXPECT_FALSE(adopted[0].replica->alive());
}

TEST_F(KeptReplicaTest, ARecordNamingAReusedPidIsNotAdoptedAndNothingIsKilledByPid) {
  ReplicaEvents first;
  auto replica = driver_->start_replica(first.options("web-k3", http_replica_spec(token_)));
  const int pid = replica->fence_pid();
  replica.reset();
  driver_->detach();
  driver_.reset();
  // Its pid now names another process (as after the replica ended and the pid was reused): the
  // record points there, with the replica's start time.
  const pid_t other = ::fork();
  ASSERT_GE(other, 0);
  if (other == 0) {
    ::execl("/bin/sleep", "sleep", "600", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  v1::KeptReplica kept;
  {
    std::ifstream in(record("web-k3"), std::ios::binary);
    ASSERT_TRUE(kept.ParseFromIstream(&in));
  }
  EXPECT_EQ(kept.pid(), pid);
  kept.set_pid(other);
  {
    std::ofstream out(record("web-k3"), std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(kept.SerializeToOstream(&out));
  }
  driver_ = make_driver();
  ReplicaEvents second;
  EXPECT_TRUE(
      driver_->adopt(second.options("", {}).on_log, second.options("", {}).on_exit).empty());
  // The other process lives; the replica went with its cgroup (not by a pid).
  EXPECT_EQ(::waitpid(other, nullptr, WNOHANG), 0);
  EXPECT_TRUE(eventually([&] { return !running(pid); }));
  EXPECT_FALSE(fs::exists(record("web-k3")));
  ::kill(other, SIGKILL);
  ::waitpid(other, nullptr, 0);
}

TEST_F(KeptReplicaTest, AReplicaOnANetworkIsRelayedOnItsHostPortAgainOnceTakenBack) {
  // This thread (and the drivers' threads it starts) in a network namespace of its own.
  if (::geteuid() != 0 || ::unshare(CLONE_NEWNET) != 0) {
    GTEST_SKIP() << "VM networks need root (a network namespace, bridges, veth pairs)";
  }
  ASSERT_EQ(std::system("ip link set lo up"), 0);
  ReplicaEvents first;
  auto spec = http_replica_spec(token_);
  spec.set_command(2,
                   "import http.server as h, os, signal, sys\n"
                   "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                   "h.HTTPServer(('', int(os.environ['PORT'])), "
                   "h.SimpleHTTPRequestHandler).serve_forever()\n");
  auto options = first.options("web-k5", spec);
  v1::NetworkAttachment network;
  network.set_network("keep");
  network.set_subnet("10.79.0.0/24");
  network.set_address("10.79.0.2");
  options.network = network;
  auto replica = driver_->start_replica(options);
  const auto port = replica->ports().at(8080);
  EXPECT_THAT(get(port), HasSubstr("200"));
  driver_->detach();
  replica.reset();
  driver_.reset();
  EXPECT_EQ(get(port), "");  // its relay went with the agent
  driver_ = make_driver();
  ReplicaEvents second;
  auto adopted = driver_->adopt(second.options("", {}).on_log, second.options("", {}).on_exit);
  ASSERT_EQ(adopted.size(), 1U);
  EXPECT_EQ(adopted[0].replica->ports().at(8080), port);
  EXPECT_THAT(get(port), HasSubstr("200"));  // relayed again, on the same host port
  adopted[0].replica->stop(std::chrono::seconds(5));
  ASSERT_TRUE(second.wait_exit());
  EXPECT_EQ(get(port), "");
}

TEST_F(KeptReplicaTest, AReplicaLeftUnreadyIsKilledNotTakenBack) {
  ReplicaEvents first;
  const int pid =
      driver_->start_replica(first.options("web-k6", http_replica_spec(token_)))->fence_pid();
  driver_->detach();
  driver_.reset();
  // As its record reads when its agent ended before it was ready (or when it is a primary).
  v1::KeptReplica kept;
  {
    std::ifstream in(record("web-k6"), std::ios::binary);
    ASSERT_TRUE(kept.ParseFromIstream(&in));
  }
  EXPECT_TRUE(kept.adoptable());
  kept.set_adoptable(false);
  {
    std::ofstream out(record("web-k6"), std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(kept.SerializeToOstream(&out));
  }
  ASSERT_TRUE(running(pid));
  driver_ = make_driver();
  EXPECT_TRUE(driver_->adopt({}, {}).empty());
  EXPECT_TRUE(eventually([&] { return !running(pid); }));
  EXPECT_FALSE(fs::exists(record("web-k6")));
}

TEST_F(KeptReplicaTest, ShutdownStillKillsAKeepableReplica) {
  ReplicaEvents events;
  auto replica = driver_->start_replica(events.options("web-k4", http_replica_spec(token_)));
  driver_->shutdown();
  ASSERT_TRUE(events.wait_exit());
  EXPECT_TRUE(events.exit->requested);
  EXPECT_FALSE(fs::exists(record("web-k4")));
  driver_ = make_driver();
  EXPECT_TRUE(driver_->adopt({}, {}).empty());
}

// ---- the instance-level API (what warm pools use) ----

TEST_F(SandboxTest, InstanceServesManyCallsMultiplexedAndReportsItsExit) {
  std::mutex m;
  std::vector<std::string> lines;
  std::optional<InstanceExit> exit;
  std::condition_variable exited;
  InstanceOptions o;
  o.function = "fn";
  o.spec = python_spec("pool:identity");
  o.on_log = [&](const std::string&, const std::string& stream, std::string line) {
    std::lock_guard lock(m);
    lines.push_back(stream + ": " + line);
  };
  o.on_exit = [&](const InstanceExit& e) {
    std::lock_guard lock(m);
    exit = e;
    exited.notify_all();
  };
  auto instance = driver_->start(o);
  EXPECT_TRUE(instance->alive());
  EXPECT_GT(instance->init_duration().count(), 0);
  // Several calls in flight at once, matched by request id (the handler serves them in turn).
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      Invocation inv;
      inv.function = "fn";
      inv.spec = o.spec;
      inv.payload = R"({"sleep": 0.05})";
      inv.request_id = "r" + std::to_string(i);
      const auto r = instance->call(inv);
      if (r.result.find(instance->name()) != std::string::npos && !r.cold_start) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 4);
  // Log lines travel on their own pipe, so one may arrive just after its call's response.
  EXPECT_TRUE(eventually([&] {
    std::lock_guard lock(m);
    return std::find(lines.begin(), lines.end(), "stdout: served r2") != lines.end();
  }));
  // A crash ends the instance: the call fails, the exit callback says why.
  Invocation crash;
  crash.function = "fn";
  crash.spec = o.spec;
  crash.payload = R"({"crash": true})";
  crash.request_id = "boom";
  try {
    instance->call(crash);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::handler_failed);
    EXPECT_THAT(e.message(), HasSubstr("exited with status 7 while handling the request"));
    EXPECT_THAT(e.message(), HasSubstr("(request boom)"));
  }
  std::unique_lock lock(m);
  ASSERT_TRUE(exited.wait_for(lock, std::chrono::seconds(10), [&] { return exit.has_value(); }));
  EXPECT_EQ(exit->reason, "exited with status 7");
  EXPECT_FALSE(exit->requested);
  EXPECT_FALSE(instance->alive());
}

// ---- asynchronous calls: the answer read on an io_context's reactor ----

namespace asio = boost::asio;

// An io_context run by one thread of its own while it lives.
struct Reactor {
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work{ioc.get_executor()};
  std::thread thread{[this] { ioc.run(); }};
  ~Reactor() {
    work.reset();
    ioc.stop();
    thread.join();
  }
};

// One call_async() as a future. A refusal because another caller was writing its request at that
// moment is tried again, as often as a bug would need to be seen.
std::future<InvocationResult> call_async(Instance& instance, const Invocation& inv,
                                         const asio::any_io_executor& executor) {
  auto promise = std::make_shared<std::promise<InvocationResult>>();
  auto future = promise->get_future();
  auto complete = [promise](std::exception_ptr error, InvocationResult out) {
    if (error) {
      promise->set_exception(error);
    } else {
      promise->set_value(std::move(out));
    }
  };
  bool sent = false;
  for (int tries = 0; !sent && tries < 100'000; ++tries) {
    sent = instance.call_async(inv, executor, complete);
    if (!sent) std::this_thread::yield();
  }
  EXPECT_TRUE(sent) << "call_async kept refusing " << inv.request_id;
  return future;
}

// The Error a future holds (an internal one, after a failure, when it holds a result).
Error error_of(std::future<InvocationResult>& future) {
  try {
    future.get();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "the call did not fail";
  return Error(errc::internal, "no error");
}

Invocation make_call(const v1::FunctionSpec& spec, const std::string& id,
                     const std::string& payload) {
  Invocation inv;
  inv.function = "fn";
  inv.spec = spec;
  inv.request_id = id;
  inv.payload = payload;
  return inv;
}

TEST_F(SandboxTest, AsyncCallsMixedWithWaitingCallsEachGetTheirOwnAnswer) {
  auto spec = python_spec("echo:handler");
  spec.mutable_scaling()->set_target_concurrency(8);
  auto instance = start_instance(spec);
  // Two reactors, and callers on session-like strands of them, take turns reading the pipe with
  // threads that wait for their answers.
  Reactor a, b;
  const std::vector<asio::any_io_executor> executors = {
      a.ioc.get_executor(), asio::make_strand(b.ioc), b.ioc.get_executor(),
      asio::make_strand(a.ioc)};
  std::atomic<int> right{0};
  std::vector<std::thread> waiting;
  for (int t = 0; t < 3; ++t) {
    waiting.emplace_back([&, t] {
      for (int i = 0; i < 30; ++i) {
        const std::string id = "w" + std::to_string(t) + "-" + std::to_string(i);
        try {
          if (instance->call(make_call(spec, id, "\"" + id + "\"")).result == "\"" + id + "\"") {
            ++right;
          }
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
      }
    });
  }
  constexpr int k_async = 160;
  constexpr int k_window = 6;  // async calls in flight at once
  std::vector<std::pair<std::string, std::future<InvocationResult>>> flying;
  for (int i = 0; i < k_async || !flying.empty();) {
    while (i < k_async && static_cast<int>(flying.size()) < k_window) {
      const std::string id = "a" + std::to_string(i);
      flying.emplace_back(id,
                          call_async(*instance, make_call(spec, id, "\"" + id + "\""),
                                     executors[static_cast<std::size_t>(i) % executors.size()]));
      ++i;
    }
    auto& [id, future] = flying.front();
    try {
      if (future.get().result == "\"" + id + "\"") ++right;
    } catch (const Error& e) {
      ADD_FAILURE() << id << ": " << e.what();
    }
    flying.erase(flying.begin());
  }
  for (auto& th : waiting) th.join();
  EXPECT_EQ(right, 3 * 30 + k_async);
  EXPECT_TRUE(instance->alive());
}

TEST_F(SandboxTest, AsyncCallPastItsTimeoutKillsTheInstanceAndSaysSo) {
  const auto spec = python_spec("sleeper:with_child");
  auto instance = start_instance(spec);
  Reactor reactor;
  auto inv = make_call(spec, "late-1", "{}");
  inv.timeout = std::chrono::milliseconds(600);
  auto future = call_async(*instance, inv, reactor.ioc.get_executor());
  const Error e = error_of(future);
  EXPECT_EQ(e.code(), errc::timeout);
  EXPECT_THAT(e.message(), HasSubstr("timed out after 600ms (request late-1)"));
  // The handler and its child are gone when the call is told.
  EXPECT_EQ(instances_with(token_), 0);
  EXPECT_FALSE(instance->alive());
}

TEST_F(SandboxTest, AsyncCallOfACrashingHandlerFailsWithItsExitAndTheOthersToo) {
  auto spec = python_spec("pool:identity");
  spec.mutable_scaling()->set_target_concurrency(2);
  auto instance = start_instance(spec);
  Reactor reactor;
  // The handler serves its requests in turn: the crash comes first, the other is never read.
  auto crash = call_async(*instance, make_call(spec, "boom", R"({"crash": true})"),
                          reactor.ioc.get_executor());
  auto slow = call_async(*instance, make_call(spec, "slow", R"({"sleep": 30})"),
                         reactor.ioc.get_executor());
  const Error crashed = error_of(crash);
  EXPECT_EQ(crashed.code(), errc::handler_failed);
  EXPECT_THAT(crashed.message(), HasSubstr("exited with status 7 while handling the request"));
  EXPECT_THAT(crashed.message(), HasSubstr("(request boom)"));
  const Error other = error_of(slow);
  EXPECT_EQ(other.code(), errc::handler_failed);
  EXPECT_THAT(other.message(), HasSubstr("(request slow)"));
  EXPECT_EQ(instances_with(token_), 0);
}

TEST_F(SandboxTest, KillingAnInstanceFailsItsAsyncCallsAsUnavailable) {
  std::atomic<bool> sleeping{false};
  const auto spec = python_spec("sleeper:handler");
  auto instance = start_instance(spec, [&](const std::string& line) {
    if (line == "sleeping forever") sleeping = true;
  });
  Reactor reactor;
  auto future = call_async(*instance, make_call(spec, "r", "{}"), reactor.ioc.get_executor());
  ASSERT_TRUE(eventually([&] { return sleeping.load(); }));  // the call is in the handler
  instance->kill();
  const Error e = error_of(future);
  EXPECT_EQ(e.code(), errc::unavailable);
  EXPECT_THAT(e.message(), HasSubstr("was stopped"));
}

TEST_F(SandboxTest, AnAsyncCallThatWouldWaitForRoomInTheRequestPipeIsRefused) {
  auto spec = python_spec("pool:identity");
  // One at a time: the runtime reads the next request only after it answered the one before, so
  // what is sent behind the sleeping call stays in the pipe (with more, it would read ahead).
  spec.mutable_scaling()->set_target_concurrency(1);
  std::atomic<bool> served{false};
  auto instance = start_instance(spec, [&](const std::string& line) {
    if (line == "served busy") served = true;
  });
  Reactor reactor;
  // The handler takes the first request and sleeps; the next ones queue in its pipe (64 KiB).
  auto busy = call_async(*instance, make_call(spec, "busy", R"({"sleep": 0.5})"),
                         reactor.ioc.get_executor());
  const std::string big = R"({"pad": ")" + std::string(40 << 10, 'x') + R"("})";
  auto queued = call_async(*instance, make_call(spec, "queued", big), reactor.ioc.get_executor());
  EXPECT_FALSE(instance->call_async(
      make_call(spec, "no-room", big), reactor.ioc.get_executor(),
      [](std::exception_ptr, InvocationResult) { ADD_FAILURE() << "a refused call completed"; }));
  EXPECT_FALSE(served.load());  // the refusal did not wait for the handler
  // Refused means nothing was sent: the same request id is free, and the calls sent succeed.
  EXPECT_THAT(busy.get().result, HasSubstr(instance->name()));
  EXPECT_THAT(queued.get().result, HasSubstr(instance->name()));
  EXPECT_THAT(instance->call(make_call(spec, "no-room", big)).result, HasSubstr(instance->name()));
}

TEST_F(SandboxTest, AnInstanceOutlivesTheReactorThatReadItsAnswers) {
  const auto spec = python_spec("echo:handler");
  auto instance = start_instance(spec);
  {
    Reactor first;
    auto future = call_async(*instance, make_call(spec, "r1", "1"), asio::make_strand(first.ioc));
    EXPECT_EQ(future.get().result, "1");
  }  // its io_context is destroyed while the pipe is still registered with it
  EXPECT_EQ(instance->call(make_call(spec, "r2", "2")).result, "2");
  Reactor second;
  auto future = call_async(*instance, make_call(spec, "r3", "3"), second.ioc.get_executor());
  EXPECT_EQ(future.get().result, "3");
  EXPECT_TRUE(instance->alive());
}

TEST_F(SandboxTest, StoppedInstanceExitsCleanly) {
  InstanceOptions o;
  o.function = "fn";
  o.spec = python_spec("echo:handler");
  auto instance = driver_->start(o);
  instance->stop(std::chrono::seconds(5));
  EXPECT_FALSE(instance->alive());
  EXPECT_EQ(instances_with(token_), 0);
  Invocation inv;
  inv.function = "fn";
  inv.spec = o.spec;
  inv.payload = "1";
  try {
    instance->call(inv);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
  }
}

// ---- reused instance cgroups ----

// The OOM-kill count of a group cannot be reset: an instance in a group whose earlier instance
// was OOM-killed must not be reported as out of memory, and a new OOM in it must be.
TEST_F(SandboxTest, ReusedCgroupReportsOnlyItsOwnOutOfMemory) {
  if (cgroup_parents().empty()) GTEST_SKIP() << "no cgroups";
  const auto hog = run_instance(python_spec("hog:handler", 64), "{}");
  ASSERT_TRUE(hog.error.has_value());
  EXPECT_THAT(hog.error->message(), HasSubstr("out of memory"));
  EXPECT_TRUE(hog.exit.oom);
  ASSERT_NE(hog.group, 0u);
  const bool reused = reuses_cgroups();

  // One instance at a time: each takes the group the one before gave back, under its own name.
  const auto crash = run_instance(python_spec("crash:handler", 64), "{}");
  if (reused) {
    EXPECT_EQ(crash.group, hog.group);
  }
  ASSERT_TRUE(crash.error.has_value());
  EXPECT_THAT(crash.error->message(), HasSubstr("exited with status 3"));
  EXPECT_THAT(crash.error->message(), ::testing::Not(HasSubstr("out of memory")));
  EXPECT_FALSE(crash.exit.oom);

  const auto echo = run_instance(python_spec("echo:handler", 64), R"({"ok": 1})");
  if (reused) {
    EXPECT_EQ(echo.group, hog.group);
  }
  EXPECT_EQ(echo.result, R"({"ok": 1})");
  EXPECT_FALSE(echo.exit.oom);

  const auto again = run_instance(python_spec("hog:handler", 64), "{}");
  if (reused) {
    EXPECT_EQ(again.group, hog.group);
  }
  ASSERT_TRUE(again.error.has_value());
  EXPECT_THAT(again.error->message(), HasSubstr("out of memory"));
  EXPECT_TRUE(again.exit.oom);
  EXPECT_EQ(instances_with(token_), 0);
}

// A reused group carries the new function's limits, whether above, below or without the last.
TEST_F(SandboxTest, ReusedCgroupTakesTheNewFunctionsLimits) {
  if (cgroup_parents().empty()) GTEST_SKIP() << "no cgroups";
  const auto first = run_instance(python_spec("echo:handler", 64), "1");
  EXPECT_EQ(first.result, "1");
  EXPECT_EQ(first.memory_limit, std::to_string(64u << 20));
  EXPECT_EQ(first.pids_max, "256");
  // Up, down, none, back from none, the same again (nothing to write).
  for (std::uint64_t mib : {128, 48, 0, 64, 64}) {
    const auto r = run_instance(python_spec("echo:handler", mib), "2");
    if (reuses_cgroups()) {
      EXPECT_EQ(r.group, first.group) << mib;
    }
    EXPECT_EQ(r.result, "2") << mib;
    EXPECT_EQ(r.pids_max, "256") << mib;
    if (mib == 0) {
      // No limit: the earlier instances' is gone (v1 shows "unlimited" as a huge number).
      EXPECT_TRUE(r.memory_limit == "max" || std::stoull(r.memory_limit) > (1ull << 50))
          << r.memory_limit;
    } else {
      EXPECT_EQ(r.memory_limit, std::to_string(mib << 20)) << mib;
    }
    // v1: memsw follows the limit (no swap past it); v2: swap.max is 0 under a limit.
    if (!r.swap_limit.empty() && r.memory_limit != "max") {
      EXPECT_TRUE(r.swap_limit == r.memory_limit || r.swap_limit == "0")
          << mib << ": " << r.swap_limit;
    }
  }
}

// Groups are kept idle between instances, under neutral names, and go with the driver.
TEST_F(SandboxTest, IdleCgroupsAreRemovedWithTheDriver) {
  const auto parents = cgroup_parents();
  if (parents.empty()) GTEST_SKIP() << "no cgroups";
  // Several at once: more groups than the driver made when it started.
  EXPECT_EQ(concurrent_echoes(4, 3), 12);
  for (const auto& parent : parents) {
    const auto groups = subgroups(parent);
    if (reuses_cgroups()) {
      EXPECT_GE(groups.size(), 2u) << parent;
    }
    for (const auto& g : groups) EXPECT_EQ(g.rfind("idle-", 0), 0u) << parent / g;
  }
  driver_.reset();
  for (const auto& parent : parents) {
    EXPECT_THAT(subgroups(parent), ::testing::IsEmpty()) << parent;
  }
}

// Idle groups left by a process that is gone are taken over; a live process's are left alone.
TEST_F(SandboxTest, StaleIdleCgroupsOfAGoneProcessAreTakenOver) {
  const auto parents = cgroup_parents();
  if (!reuses_cgroups()) GTEST_SKIP() << "cgroup v1 only";
  const auto before = subgroups(parents[0]);  // the test driver's own idle groups
  // Named as the driver names them: idle-PID-STARTTIME.SEQ.
  const std::string init_stat = read_text("/proc/1/stat");
  std::istringstream stat(init_stat.substr(init_stat.rfind(')') + 1));
  std::string field, init_start;
  for (int i = 3; i <= 22 && stat >> field; ++i) init_start = field;  // field 22: start time
  const std::string gone = "idle-99999999-1.1";                       // no such pid
  const std::string reused_pid = "idle-1-" + init_start + "7.2";      // pid 1, another start time
  const std::string live = "idle-1-" + init_start + ".3";             // pid 1 itself
  for (const auto& parent : parents) {
    for (const auto& name : {gone, reused_pid, live}) {
      ASSERT_EQ(::mkdir((parent / name).c_str(), 0755), 0) << parent / name;
    }
  }
  SandboxOptions o;
  o.work_dir = work_ / "second";
  o.python = python();
  o.cgroup_parent = cgroup_parent_;
  auto second = make_sandbox_driver(o);
  for (const auto& parent : parents) {
    const auto groups = subgroups(parent);
    EXPECT_THAT(groups, ::testing::Not(::testing::Contains(gone))) << parent;
    EXPECT_THAT(groups, ::testing::Not(::testing::Contains(reused_pid))) << parent;
    EXPECT_THAT(groups, ::testing::Contains(live)) << parent;
    for (const auto& mine : before) EXPECT_THAT(groups, ::testing::Contains(mine)) << parent;
  }
  Invocation inv;
  inv.function = "fn";
  inv.spec = python_spec("echo:handler");
  inv.payload = "3";
  EXPECT_EQ(second->invoke(inv).result, "3");
  second.reset();
  driver_.reset();
  for (const auto& parent : parents) {
    EXPECT_THAT(subgroups(parent), ::testing::ElementsAre(live)) << parent;
    ::rmdir((parent / live).c_str());
  }
}

// ---- Python instances forked from the zygote ----

// The sandbox a zygote fork gets is the one a fresh interpreter gets: compared field by field.
TEST_F(SandboxTest, ZygoteForkAndFreshInterpreterSeeTheSameSandbox) {
  if (::geteuid() != 0) GTEST_SKIP() << "the zygote needs namespaces (root)";
  // On the function's PYTHONPATH, which its instances' roots hold.
  const fs::path lib = work_ / "fresh" / "pylib";
  fs::create_directories(lib);
  std::ofstream(lib / "extra_mod.py") << "VALUE = 42\n";
  auto spec = python_spec("echo:sandbox_view");
  (*spec.mutable_env())["PYTHONPATH"] = lib.string();
  (*spec.mutable_env())["TEST_GREETING"] = "hello";

  SandboxOptions fresh_options;
  fresh_options.work_dir = work_ / "fresh";
  fresh_options.python = python();
  fresh_options.cgroup_parent = cgroup_parent_;
  fresh_options.python_zygote = false;
  auto fresh = make_sandbox_driver(fresh_options);

  std::mutex m;
  std::vector<std::string> lines;
  auto view = [&](Driver& driver) {
    InstanceOptions o;
    o.function = "fn";
    o.spec = spec;
    o.on_log = [&](const std::string&, const std::string& stream, std::string line) {
      std::lock_guard lock(m);
      lines.push_back(stream + ": " + line);
    };
    auto instance = driver.start(o);
    Invocation inv;
    inv.function = "fn";
    inv.spec = spec;
    inv.payload = R"({"module": "extra_mod"})";
    inv.request_id = "r";
    auto result = instance->call(inv).result;
    EXPECT_TRUE(eventually([&] {
      std::lock_guard lock(m);
      return std::count(lines.begin(), lines.end(), "stdout: sandbox_view ran") == 1;
    }));
    instance->stop(std::chrono::seconds(5));
    lines.clear();
    return result;
  };
  const std::string forked = view(*driver_);
  const std::string exec = view(*fresh);
  EXPECT_EQ(forked, exec);
  // The code is seen at /var/task, wherever the node keeps it.
  const std::string code = "/var/task";
  EXPECT_THAT(forked, HasSubstr(R"("pid": 1, "hostname": "blixard", "cwd": ")" + code + "\""));
  EXPECT_THAT(forked, HasSubstr(R"("/tmp/written": "written")"));
  EXPECT_THAT(forked, HasSubstr("\"" + code + "/written\": 30"));  // EROFS
  EXPECT_THAT(forked, HasSubstr(R"("/etc/blixard-written": 30)"));
  EXPECT_THAT(forked, HasSubstr(R"("no_new_privs": "1", "own_cgroup": true)"));
  EXPECT_THAT(forked, HasSubstr(R"("TEST_GREETING": "hello")"));
  EXPECT_THAT(forked, HasSubstr(R"("TMPDIR": "/tmp")"));
  EXPECT_THAT(forked, HasSubstr(R"("fds_open": [0, 1, 2, 3, 4, 5])"));
  EXPECT_THAT(forked, HasSubstr(R"("extra_module": 42)"));
}

// The zygote's children die with it; the driver goes on with fresh interpreters.
// The pids of this test's zygotes (its work dir is in their command line).
std::vector<pid_t> zygotes_of(const std::string& token) {
  std::vector<pid_t> out;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    if (!test_support::is_zygote(entry.path())) continue;
    if (test_support::read_proc_file(entry.path() / "cmdline").find(token) == std::string::npos) {
      continue;  // another test's
    }
    out.push_back(std::stoi(entry.path().filename().string()));
  }
  return out;
}

TEST_F(SandboxTest, LosingTheZygoteFailsItsInstancesAndANewOneTakesOver) {
  if (::geteuid() != 0) GTEST_SKIP() << "the zygote needs namespaces (root)";
  InstanceOptions o;
  o.function = "fn";
  o.spec = python_spec("echo:handler");
  auto instance = driver_->start(o);
  EXPECT_TRUE(instance->alive());
  const auto before = zygotes_of(token_);
  ASSERT_EQ(before.size(), 1u);
  ASSERT_EQ(::kill(before[0], SIGKILL), 0);
  EXPECT_TRUE(eventually([&] { return !instance->alive() && zygotes_of(token_).empty(); }));
  // A Python start after the driver learnt of the loss brings up a new zygote and forks from it
  // (one in between may still have found the old one and started a fresh interpreter).
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(invoke(python_spec("echo:handler"), R"({"again": true})").result,
              R"({"again": true})");
  }
  const auto after = zygotes_of(token_);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_NE(after[0], before[0]);
  EXPECT_EQ(instances_with(token_), 0);
}

// ---- the cgroup manager itself ----

// v1 refuses a memory limit below what a group holds and cannot reclaim (EBUSY): tmpfs pages
// charged by an earlier instance, with no swap to take them. Such a group gives way to a new one;
// one whose charges fit under the new limit is reused.
TEST(CgroupManager, ReusedGroupThatCannotShrinkBelowTheNewLimitIsReplaced) {
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups as root only";
  const std::string parent = "blixard-test-" + std::to_string(::getpid()) + "-manager";
  const fs::path shm = "/dev/shm/" + parent;
  std::vector<fs::path> parents;
  {
    CgroupManager m(parent);
    if (m.mode() != CgroupManager::Mode::v1) GTEST_SKIP() << "v1 only (v2 takes any limit)";
    auto inode = [](const fs::path& p) {
      struct stat st {};
      return ::stat(p.c_str(), &st) == 0 ? st.st_ino : 0;
    };
    auto charged = m.create("charged", 64u << 20, 16);
    ASSERT_TRUE(charged);
    for (const auto& d : charged->dirs()) parents.push_back(d.parent_path());
    const ino_t group = inode(charged->dirs()[0]);
    // A child joins the group, writes 32 MiB to tmpfs and exits: the pages stay charged.
    const std::string block(1u << 20, 'x');
    const auto join = charged->join_files();
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      bool ok = true;
      for (const auto& f : join) {
        const int fd = ::open(f.c_str(), O_WRONLY);
        ok = ok && fd >= 0 && ::write(fd, "0", 1) == 1;
        if (fd >= 0) ::close(fd);
      }
      const int fd = ::open(shm.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      for (int i = 0; ok && i < 32; ++i) {
        ok = ::write(fd, block.data(), block.size()) == static_cast<ssize_t>(block.size());
      }
      ::_exit(ok ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    m.release(std::move(charged));

    // 128 MiB is room enough for the 32 MiB left: the same group, under its new name.
    auto roomy = m.create("roomy", 128u << 20, 16);
    ASSERT_TRUE(roomy);
    EXPECT_EQ(inode(roomy->dirs()[0]), group);
    EXPECT_EQ(roomy->dirs()[0].filename(), "roomy");
    m.release(std::move(roomy));

    // 16 MiB is not: a new group, with the new limit.
    std::string why;
    auto small = m.create("small", 16u << 20, 16, &why);
    ASSERT_TRUE(small) << why;
    EXPECT_NE(inode(small->dirs()[0]), group);
    std::ifstream limit(small->dirs()[0] / "memory.limit_in_bytes");
    std::uint64_t bytes = 0;
    limit >> bytes;
    EXPECT_EQ(bytes, 16u << 20);
    fs::remove(shm);
    m.release(std::move(small));
    EXPECT_GE(m.idle_count(), 1u);
  }
  // The manager took its idle groups with it; the replaced one went when it was replaced.
  for (const auto& p : parents)
    EXPECT_EQ(::rmdir(p.c_str()), 0) << p << ": " << std::strerror(errno);
}

// Agents on one host share the cgroup parent. One starting finds the groups another left when it
// ended: that agent's instance groups ("<name>-<pid>-<n>", the pid gone) are removed, what is left
// in them killed; its kept replicas' groups ("kept.<hash>-...") are not, for they run on for their
// own agent's next start (an embedded agent started meanwhile killed them before).
TEST(CgroupManager, AStartingManagerRemovesAGoneAgentsInstancesButNotItsKeptReplicas) {
  if (::geteuid() != 0) GTEST_SKIP() << "cgroups as root only";
  const std::string parent = "blixard-test-" + std::to_string(::getpid()) + "-kept";
  // A pid no process has now: a child's, reaped.
  const pid_t gone = ::fork();
  ASSERT_GE(gone, 0);
  if (gone == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(gone, nullptr, 0), gone);
  const std::string kept_name =
      std::string(CgroupManager::k_kept_prefix) + "0badf00d-web-1_1-" + std::to_string(gone) + "-1";
  const std::string instance_name = "fn-" + std::to_string(gone) + "-2";
  // A process in a group (forked, it joins and waits to be killed).
  auto run_in = [](const InstanceCgroup& group) {
    const auto join = group.join_files();
    const pid_t pid = ::fork();
    if (pid == 0) {
      for (const auto& f : join) {
        const int fd = ::open(f.c_str(), O_WRONLY);
        if (fd < 0 || ::write(fd, "0", 1) != 1) ::_exit(1);
        ::close(fd);
      }
      for (;;) ::pause();
    }
    return pid;
  };
  auto in_group = [](pid_t pid, const std::string& name) {
    return test_support::read_proc_file("/proc/" + std::to_string(pid) + "/cgroup")
               .find("/" + name + "\n") != std::string::npos;
  };
  pid_t kept_pid = -1;
  pid_t instance_pid = -1;
  std::vector<fs::path> parents;
  {
    CgroupManager gone_agent(parent);
    if (gone_agent.mode() == CgroupManager::Mode::none) GTEST_SKIP() << gone_agent.reason();
    auto kept = gone_agent.create(kept_name, 64u << 20, 16);
    auto instance = gone_agent.create(instance_name, 64u << 20, 16);
    ASSERT_TRUE(kept && instance);
    for (const auto& d : kept->dirs()) parents.push_back(d.parent_path());
    kept_pid = run_in(*kept);
    instance_pid = run_in(*instance);
    ASSERT_GT(kept_pid, 0);
    ASSERT_GT(instance_pid, 0);
    ASSERT_TRUE(eventually(
        [&] { return in_group(kept_pid, kept_name) && in_group(instance_pid, instance_name); }));
    kept->forget();  // the agent ends; its groups stay
    instance->forget();
  }

  {
    CgroupManager next(parent);  // another agent's start
    int status = 0;
    ASSERT_EQ(::waitpid(instance_pid, &status, 0), instance_pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    EXPECT_EQ(::waitpid(kept_pid, &status, WNOHANG), 0) << "the kept replica's process was killed";
    EXPECT_TRUE(in_group(kept_pid, kept_name));

    // Its own agent takes the group back (or, here, removes it).
    auto kept = next.existing(kept_name, 0);
    ASSERT_TRUE(kept);
    kept->remove();
    ASSERT_EQ(::waitpid(kept_pid, &status, 0), kept_pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }
  for (const auto& p : parents) ::rmdir(p.c_str());
}

// ---- native handlers (examples/handlers/cpp) and cold-start figures ----

class NativeHandlerTest : public SandboxTest {
 protected:
  void SetUp() override {
    SandboxTest::SetUp();
    const fs::path src = fs::path(BLIXARD_SOURCE_DIR) / "examples/handlers/cpp";
    bin_dir_ = work_ / "bin";
    fs::create_directories(bin_dir_);
    const std::string cmd = "c++ -std=c++17 -O2 -o '" + (bin_dir_ / "echo").string() + "' '" +
                            (src / "echo.cpp").string() + "' 2>&1";
    const std::string out = run(cmd);
    if (!fs::exists(bin_dir_ / "echo")) GTEST_SKIP() << "no C++ compiler: " << out;
  }
  v1::FunctionSpec native_spec() {
    auto spec = exec_spec({"./echo"});
    spec.set_code(bin_dir_.string());
    return spec;
  }
  fs::path bin_dir_;
};

TEST_F(NativeHandlerTest, EchoAndFailure) {
  EXPECT_EQ(invoke(native_spec(), R"({"a": 1})").result, R"({"a": 1})");
  const auto e = invoke_error(native_spec(), R"("fail")");
  EXPECT_EQ(e.code(), errc::handler_failed);
  EXPECT_EQ(e.message(), "EchoError: asked to fail");
}

// The helper reads whatever is queued in one go: requests that arrive together (8 in flight from
// 8 threads), frames split across reads and frames larger than its read buffer each get their
// own answer, and the handler goes on serving.
TEST_F(NativeHandlerTest, RequestsQueuedTogetherAndLargeFramesEachGetTheirOwnAnswer) {
  auto spec = native_spec();
  spec.mutable_scaling()->set_target_concurrency(8);
  auto instance = start_instance(spec);
  constexpr int k_threads = 8;
  constexpr int k_calls = 50;
  std::atomic<int> right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_calls; ++i) {
        const std::string id = "n" + std::to_string(t) + "-" + std::to_string(i);
        // Every tenth payload is larger than the helper's 64 KiB read buffer.
        const std::string payload =
            "\"" + id + std::string(i % 10 == 0 ? 100'000 + 7 * i : i, 'x') + "\"";
        try {
          if (instance->call(make_call(spec, id, payload)).result == payload) ++right;
        } catch (const Error& e) {
          ADD_FAILURE() << id << ": " << e.what();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(right, k_threads * k_calls);
  EXPECT_TRUE(instance->alive());
}

std::chrono::microseconds median_cold_start(const std::function<void()>& call, int n) {
  std::vector<std::chrono::microseconds> times;
  for (int i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    call();
    times.push_back(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

TEST_F(NativeHandlerTest, ColdStartFigures) {
  const auto native = median_cold_start([&] { invoke(native_spec(), "1"); }, 15);
  const auto py = median_cold_start([&] { invoke(python_spec("echo:handler"), "1"); }, 15);
  std::printf(
      "cold start + one call, median of 15: native echo %.2f ms, python echo %.2f ms (%s)\n",
      native.count() / 1000.0, py.count() / 1000.0, python().c_str());
  RecordProperty("native_cold_start_us", static_cast<int>(native.count()));
  // The same with Debian's interpreter, whose start-up does not import pyenv's site packages.
  if (::access("/usr/bin/python3", X_OK) == 0) {
    SandboxOptions o;
    o.work_dir = work_ / "debian";
    o.python = "/usr/bin/python3";
    o.cgroup_parent = cgroup_parent_;
    auto debian = make_sandbox_driver(o);
    Invocation inv;
    inv.function = "fn";
    inv.spec = python_spec("echo:handler");
    inv.payload = "1";
    const auto deb = median_cold_start([&] { debian->invoke(inv); }, 15);
    std::printf("python echo with /usr/bin/python3: %.2f ms\n", deb.count() / 1000.0);
    RecordProperty("debian_python_cold_start_us", static_cast<int>(deb.count()));
  }
  RecordProperty("python_cold_start_us", static_cast<int>(py.count()));
  EXPECT_LT(native, std::chrono::seconds(1));
  EXPECT_LT(py, std::chrono::seconds(5));
}

}  // namespace
