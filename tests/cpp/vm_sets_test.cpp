// VM sets on the sandbox driver, through the public C++ SDK on an embedded cluster: replicas
// placed and kept running, scaled, replaced when killed, stopped, started and deleted.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "blixard/cluster.hpp"
#include "blixard/error.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using blixard::Cluster;
using blixard::errc;
using blixard::Error;
using blixard::test_support::connect_loopback;
using blixard::test_support::eventually;
using blixard::test_support::instances_with;
using blixard::test_support::python;
using blixard::test_support::read_proc_file;
using ::testing::HasSubstr;
namespace v1 = blixard::v1;
using namespace std::chrono_literals;

namespace {

class VmSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = "blixard-vm-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = fs::temp_directory_path() / token_;
    fs::remove_all(dir_);
    blixard::LocalOptions options;
    options.python = python();
    cluster_.emplace(Cluster::local(dir_, options));
  }
  void TearDown() override {
    cluster_->close();
    cluster_.reset();
    EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }, 5s)) << "leaked replicas";
    fs::remove_all(dir_);
  }

  // Replicas that serve HTTP on their port 80 (the host port in PORT_80) until SIGTERM.
  v1::VmSpec web_spec(std::uint32_t replicas) {
    v1::VmSpec s;
    s.add_command(python());
    s.add_command("-c");
    s.add_command(
        "import http.server as h, os, signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "h.HTTPServer(('127.0.0.1', int(os.environ['PORT_80'])), "
        "h.SimpleHTTPRequestHandler).serve_forever()\n");
    s.add_ports(80);
    s.set_memory_mib(64);
    s.set_replicas(replicas);
    (*s.mutable_env())["TEST_TOKEN"] = token_;
    return s;
  }

  // Serves "<revision text> <replica>" on its port 80.
  v1::VmSpec page_spec(std::uint32_t replicas, const std::string& text, bool broken = false) {
    auto s = web_spec(replicas);
    s.set_command(2, std::string(broken ? "import sys\nsys.exit(5)\n" : "") +
                         "import http.server as h, os, signal, sys\n"
                         "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                         "body = ('" +
                         text +
                         " ' + os.environ['BLIXARD_REPLICA']).encode()\n"
                         "class P(h.BaseHTTPRequestHandler):\n"
                         "  def do_GET(self):\n"
                         "    self.send_response(200); self.send_header('Content-Length', "
                         "str(len(body))); self.end_headers(); self.wfile.write(body)\n"
                         "  def log_message(self, *a): pass\n"
                         "h.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT_80'])), P)"
                         ".serve_forever()\n");
    s.mutable_update_strategy()->mutable_min_healthy_time()->set_nanos(200'000'000);
    return s;
  }

  // Whether the status reflects the stored spec (the controller saw the last update).
  bool observed(const std::string& vm) {
    const auto v = cluster_->vm(vm).get();
    return v.status().observed_version() >= v.metadata().resource_version();
  }

  v1::VmStatus status(const std::string& vm) { return cluster_->vm(vm).status(); }
  bool running(const std::string& vm, std::uint32_t ready) {
    const auto st = status(vm);
    return st.phase() == "Running" && st.ready_replicas() == ready &&
           st.instances_size() == static_cast<int>(ready);
  }

  // The host pid of one replica (by its BLIXARD_REPLICA and our token), or -1.
  pid_t pid_of(const std::string& replica) {
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const std::string pid = entry.path().filename();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      const auto env = read_proc_file(entry.path() / "environ");
      if (env.find("TEST_TOKEN=" + token_) != std::string::npos &&
          env.find(std::string("BLIXARD_REPLICA=") + replica + '\0') != std::string::npos) {
        return std::stoi(pid);
      }
    }
    return -1;
  }

  std::string token_;
  fs::path dir_;
  std::optional<Cluster> cluster_;
};

TEST_F(VmSetTest, ReplicasRunServeTheirPortsAndScale) {
  auto vm = cluster_->create_vm("web", web_spec(3));
  ASSERT_TRUE(eventually([&] { return running("web", 3); }, 20s)) << status("web").DebugString();
  const auto st = status("web");
  std::set<std::string> names;
  for (const auto& in : st.instances()) {
    names.insert(in.name());
    EXPECT_EQ(in.node(), "local");
    EXPECT_EQ(in.driver(), "sandbox");
    EXPECT_EQ(in.phase(), "Running");
    ASSERT_EQ(in.host_ports().count(80), 1U);
    const int fd = connect_loopback(static_cast<unsigned short>(in.host_ports().at(80)));
    EXPECT_GE(fd, 0) << in.name() << " does not serve its port";
    if (fd >= 0) ::close(fd);
  }
  EXPECT_EQ(names, (std::set<std::string>{"web-1", "web-2", "web-3"}));
  EXPECT_EQ(instances_with(token_), 3);

  // 4: a node with one core takes 4 vCPUs (the 4x overcommit), and CI may have one core.
  vm.scale(4);
  ASSERT_TRUE(eventually([&] { return running("web", 4); }, 20s)) << status("web").DebugString();
  vm.scale(1);
  ASSERT_TRUE(eventually([&] { return running("web", 1); }, 20s)) << status("web").DebugString();
  EXPECT_EQ(status("web").instances(0).name(), "web-1");  // the highest ordinals went first
  EXPECT_TRUE(eventually([&] { return instances_with(token_) == 1; }));
  EXPECT_EQ(vm.get().spec().replicas(), 1U);
}

TEST_F(VmSetTest, AKilledReplicaIsReplaced) {
  cluster_->create_vm("web", web_spec(2));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  const pid_t victim = pid_of("web-2");
  ASSERT_GT(victim, 0);
  ::kill(victim, SIGKILL);
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = status("web");
        return running("web", 2) && st.instances(1).restarts() == 1;
      },
      20s))
      << status("web").DebugString();
  const pid_t replacement = pid_of("web-2");
  EXPECT_GT(replacement, 0);
  EXPECT_NE(replacement, victim);
}

TEST_F(VmSetTest, StopStartAndDelete) {
  auto vm = cluster_->create_vm("web", web_spec(2));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  vm.stop();
  ASSERT_TRUE(eventually([&] { return status("web").phase() == "Stopped"; }, 20s))
      << status("web").DebugString();
  EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }));
  EXPECT_TRUE(vm.get().spec().stopped());
  vm.start();
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  vm.remove();
  EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }));
  EXPECT_THROW(vm.get(), Error);
}

TEST_F(VmSetTest, BadScaleAndAnUnrunnableSpecSayWhy) {
  auto vm = cluster_->create_vm("web", web_spec(1));
  try {
    vm.scale(0);
    FAIL() << "scaled to 0";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_EQ(e.field(), "replicas");
  }
  // No command and no image the sandbox driver can run: the replica fails, and says why.
  v1::VmSpec none;
  none.set_memory_mib(64);
  cluster_->create_vm("nothing", none);
  ASSERT_TRUE(eventually([&] { return status("nothing").phase() == "Failed"; }, 20s))
      << status("nothing").DebugString();
  EXPECT_THAT(status("nothing").message(), HasSubstr("command"));
  // More memory than any node has: not placed, and the scheduler's reason is shown.
  auto huge = web_spec(1);
  huge.set_memory_mib(1 << 19);
  cluster_->create_vm("huge", huge);
  ASSERT_TRUE(eventually([&] { return status("huge").phase() == "Failed"; }, 20s));
  EXPECT_THAT(status("huge").message(), HasSubstr("no node can run a replica of vm \"huge\""));
}

// Every replica's page, over one connection each (what a client of the set sees).
std::string page(std::uint32_t port) {
  const int fd = connect_loopback(static_cast<unsigned short>(port));
  if (fd < 0) return "";
  const std::string req = "GET / HTTP/1.0\r\n\r\n";
  if (::write(fd, req.data(), req.size()) < 0) {
    ::close(fd);
    return "";
  }
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, n);
  ::close(fd);
  const auto body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

TEST_F(VmSetTest, ARollingUpdateReplacesEachReplicaNewBeforeOld) {
  auto vm = cluster_->create_vm("web", page_spec(3, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 3); }, 20s));
  EXPECT_EQ(status("web").revision(), 1);
  vm.update(page_spec(0, "v2"));
  ASSERT_TRUE(eventually([&] { return observed("web"); }));
  EXPECT_EQ(status("web").revision(), 2);
  EXPECT_EQ(vm.get().spec().replicas(), 3U);  // 0 kept the count
  // Never fewer than 3 serving while it rolls; then all at revision 2.
  std::uint32_t least_ready = 3;
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = status("web");
        least_ready = std::min(least_ready, st.ready_replicas());
        if (!st.rollout().empty()) return false;
        return std::all_of(st.instances().begin(), st.instances().end(),
                           [](const auto& in) { return in.revision() == 2; }) &&
               st.instances_size() == 3;
      },
      30s))
      << status("web").DebugString();
  EXPECT_EQ(least_ready, 3U);
  const auto done = status("web");
  for (const auto& in : done.instances()) {
    EXPECT_EQ(page(in.host_ports().at(80)), "v2 " + in.name());
  }
  EXPECT_TRUE(eventually([&] { return instances_with(token_) == 3; }));
}

// Replicas so large that the node holds `replicas` of them and not one more: no room for a new
// replica beside an old one.
v1::VmSpec no_room_beside(v1::VmSpec spec, const v1::Node& node, std::uint32_t replicas) {
  spec.set_memory_mib(node.spec().memory_mib() / (replicas + 1) + 1);
  return spec;
}

TEST_F(VmSetTest, WithNoRoomBesideTheOldReplicaTheRolloutReplacesItInPlace) {
  const auto node = cluster_->node("local");
  auto vm = cluster_->create_vm("web", no_room_beside(page_spec(2, "v1"), node, 2));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s)) << status("web").DebugString();
  vm.update(no_room_beside(page_spec(0, "v2"), node, 2));
  // One replica serves throughout while the other is replaced; then both run revision 2.
  std::uint32_t least_ready = 2;
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = status("web");
        least_ready = std::min(least_ready, st.ready_replicas());
        return st.rollout().empty() && st.instances_size() == 2 &&
               std::all_of(st.instances().begin(), st.instances().end(),
                           [](const auto& in) { return in.revision() == 2; });
      },
      30s))
      << status("web").DebugString();
  EXPECT_EQ(least_ready, 1U);
  const auto updated = status("web");
  for (const auto& in : updated.instances()) {
    EXPECT_EQ(page(in.host_ports().at(80)), "v2 " + in.name());
  }

  // A broken revision replaced in place halts, and the replica goes back to the last good one.
  vm.update(no_room_beside(page_spec(0, "v3", true), node, 2));
  ASSERT_TRUE(
      eventually([&] { return status("web").rollout().find("halted") != std::string::npos; }, 30s))
      << status("web").DebugString();
  EXPECT_EQ(status("web").serving_revision(), 2);
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = status("web");
        return st.ready_replicas() == 2 &&
               std::all_of(st.instances().begin(), st.instances().end(),
                           [](const auto& in) { return in.revision() == 2; });
      },
      30s))
      << status("web").DebugString();
}

TEST_F(VmSetTest, ARollingUpdateOfALoneReplicaWithNoRoomHaltsAndSaysWhy) {
  const auto node = cluster_->node("local");
  auto vm = cluster_->create_vm("web", no_room_beside(page_spec(1, "v1"), node, 1));
  ASSERT_TRUE(eventually([&] { return running("web", 1); }, 20s)) << status("web").DebugString();
  const auto pid = pid_of("web-1");
  vm.update(no_room_beside(page_spec(0, "v2"), node, 1));
  ASSERT_TRUE(
      eventually([&] { return status("web").rollout().find("halted") != std::string::npos; }, 30s))
      << status("web").DebugString();
  EXPECT_THAT(status("web").rollout(), HasSubstr("lacks memory"));
  EXPECT_THAT(status("web").rollout(), HasSubstr("strategy recreate"));
  EXPECT_EQ(pid_of("web-1"), pid);  // the old replica was not touched
  EXPECT_EQ(page(status("web").instances(0).host_ports().at(80)), "v1 web-1");
}

TEST_F(VmSetTest, ARolloutWhoseNewReplicaFailsHaltsAndTheOldOnesKeepServing) {
  auto vm = cluster_->create_vm("web", page_spec(2, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  vm.update(page_spec(0, "v2", /*broken=*/true));
  ASSERT_TRUE(
      eventually([&] { return status("web").rollout().find("halted") != std::string::npos; }, 20s))
      << status("web").DebugString();
  const auto st = status("web");
  EXPECT_THAT(st.rollout(), HasSubstr("exited with status 5"));
  EXPECT_THAT(st.rollout(), HasSubstr("serving revision 1"));
  EXPECT_EQ(st.serving_revision(), 1);
  EXPECT_TRUE(running("web", 2));
  for (const auto& in : st.instances()) {
    EXPECT_EQ(in.revision(), 1);
    EXPECT_EQ(page(in.host_ports().at(80)), "v1 " + in.name());
  }
  // A replica that fails now comes back as revision 1, the one that ran.
  vm.scale(3);
  ASSERT_TRUE(eventually([&] { return running("web", 3); }, 20s)) << status("web").DebugString();
  EXPECT_EQ(status("web").instances(2).revision(), 1);
  // A fixed revision 3 rolls out.
  vm.update(page_spec(0, "v3"));
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = status("web");
        return observed("web") && s.rollout().empty() && s.instances_size() == 3 &&
               std::all_of(s.instances().begin(), s.instances().end(),
                           [](const auto& in) { return in.revision() == 3; });
      },
      30s))
      << status("web").DebugString();
}

TEST_F(VmSetTest, RollbackReturnsToAKeptRevisionAsANewOne) {
  auto vm = cluster_->create_vm("web", page_spec(2, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  EXPECT_THROW(vm.rollback(), Error);  // nothing before revision 1
  vm.update(page_spec(0, "v2", /*broken=*/true));
  ASSERT_TRUE(
      eventually([&] { return status("web").rollout().find("halted") != std::string::npos; }, 20s));
  const auto halted = status("web");
  ASSERT_EQ(halted.revisions_size(), 2);
  EXPECT_EQ(halted.revisions(1).revision(), 2);
  EXPECT_EQ(halted.revisions(1).spec().replicas(), 0U);  // the count is not part of a revision
  try {
    vm.rollback(99);
    FAIL() << "rolled back to a revision that never was";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::not_found);
    EXPECT_THAT(e.what(), HasSubstr("kept: 1, 2"));
  }
  vm.rollback();  // to revision 1's spec, as revision 3
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = status("web");
        return observed("web") && s.revision() == 3 && s.rollout().empty() &&
               s.instances_size() == 2 &&
               std::all_of(s.instances().begin(), s.instances().end(),
                           [](const auto& in) { return in.revision() == 3; });
      },
      30s))
      << status("web").DebugString();
  const auto done = status("web");
  for (const auto& in : done.instances()) {
    EXPECT_EQ(page(in.host_ports().at(80)), "v1 " + in.name());
  }
}

TEST_F(VmSetTest, RecreateStopsThenStarts) {
  auto vm = cluster_->create_vm("web", page_spec(2, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  auto v2 = page_spec(0, "v2");
  v2.mutable_update_strategy()->set_type("recreate");
  vm.update(v2);
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = status("web");
        return observed("web") && s.rollout().empty() && running("web", 2) &&
               s.instances(0).revision() == 2 && s.instances(1).revision() == 2;
      },
      30s))
      << status("web").DebugString();
  const auto done = status("web");
  for (const auto& in : done.instances()) {
    EXPECT_EQ(page(in.host_ports().at(80)), "v2 " + in.name());
  }
}

TEST_F(VmSetTest, AReplicaFailingItsHealthCheckIsReplaced) {
  // /health answers 200 twice, then 500: ready, then unhealthy.
  auto spec = web_spec(1);
  spec.set_command(2,
                   "import http.server as h, os, signal, sys\n"
                   "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                   "n = [0]\n"
                   "class P(h.BaseHTTPRequestHandler):\n"
                   "  def do_GET(self):\n"
                   "    n[0] += 1\n"
                   "    self.send_response(200 if n[0] <= 2 else 500); self.end_headers()\n"
                   "  def log_message(self, *a): pass\n"
                   "h.HTTPServer(('127.0.0.1', int(os.environ['PORT_80'])), P).serve_forever()\n");
  auto& r = *spec.mutable_readiness();
  r.set_http_path("/health");
  r.mutable_interval()->set_nanos(50'000'000);
  r.set_failure_threshold(3);
  cluster_->create_vm("web", spec);
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = status("web");
        return st.instances_size() == 1 && st.instances(0).restarts() >= 1;
      },
      20s))
      << status("web").DebugString();
  EXPECT_THAT(status("web").instances(0).message(),
              HasSubstr("failed its health check (GET /health) 3 times in a row"));
}

TEST_F(VmSetTest, ReadinessNamesADeclaredPortAndOneKind) {
  auto spec = web_spec(1);
  spec.mutable_readiness()->set_tcp_port(81);
  try {
    cluster_->create_vm("bad", spec);
    FAIL() << "a readiness port that is not declared was taken";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_EQ(e.field(), "spec.readiness.tcpPort");
  }
  spec.mutable_readiness()->set_tcp_port(80);
  spec.mutable_readiness()->set_console_marker("up");
  try {
    cluster_->create_vm("bad", spec);
    FAIL() << "two kinds of readiness were taken";
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "spec.readiness");
  }
}

}  // namespace
