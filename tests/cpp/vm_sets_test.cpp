// VM sets on the sandbox driver, through the public C++ SDK on an embedded cluster: replicas
// placed and kept running, scaled, replaced when killed, stopped, started and deleted.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
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

// A spec change that reaches a set through apply (a manifest's, here its Platform's set) goes
// through the set's update strategy as `vm update` does: a rolling update, never fewer serving.
TEST_F(VmSetTest, ASpecChangedThroughApplyRollsOutByTheUpdateStrategy) {
  auto platform = [&](const std::string& text) {
    v1::ObjectSet set;
    set.set_stack("shop");
    auto* vm = set.add_vms();
    vm->mutable_metadata()->set_name("web");
    vm->mutable_metadata()->set_stack("shop");
    *vm->mutable_spec() = page_spec(2, text);
    return set;
  };
  EXPECT_EQ(cluster_->apply(platform("v1")).items(0).action(), "created");
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  EXPECT_EQ(cluster_->apply(platform("v1")).items(0).action(), "unchanged");
  EXPECT_EQ(status("web").revision(), 1);

  EXPECT_EQ(cluster_->apply(platform("v2")).items(0).action(), "configured");
  ASSERT_TRUE(eventually([&] { return observed("web"); }));
  EXPECT_EQ(status("web").revision(), 2);
  std::uint32_t least_ready = 2;
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = status("web");
        least_ready = std::min(least_ready, st.ready_replicas());
        if (!st.rollout().empty()) return false;
        return st.instances_size() == 2 &&
               std::all_of(st.instances().begin(), st.instances().end(),
                           [](const auto& in) { return in.revision() == 2; });
      },
      30s))
      << status("web").DebugString();
  EXPECT_EQ(least_ready, 2U) << "the rollout stopped a replica before its successor was ready";
  const auto done = status("web");
  for (const auto& in : done.instances()) {
    EXPECT_EQ(page(in.host_ports().at(80)), "v2 " + in.name());
  }
  // Scaling the set keeps it in its stack: the manifest applied again changes nothing else.
  cluster_->vm("web").scale(3);
  EXPECT_EQ(cluster_->vm("web").get().metadata().stack(), "shop");
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

// ---- Nomad's update block: healthyDeadline, progressDeadline, autoRevert; kept revisions ----

void set_millis(google::protobuf::Duration* d, std::int64_t ms) {
  d->set_seconds(ms / 1000);
  d->set_nanos(static_cast<std::int32_t>(ms % 1000) * 1'000'000);
}

// Whether `count` replicas are Running and all of those run `revision` (replicas being stopped
// aside).
bool all_running(const v1::VmStatus& st, std::int64_t revision, int count) {
  int running = 0;
  for (const auto& in : st.instances()) {
    if (in.phase() != "Running") continue;
    if (in.revision() != revision) return false;
    ++running;
  }
  return running == count;
}

bool halted(const v1::VmStatus& st) { return st.rollout().find("halted") != std::string::npos; }

// Serves its port 80 with HTTP `code` to every GET after the first `good` (200s).
std::string answering(int code, int good) {
  return "import http.server as h, os, signal, sys\n"
         "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
         "n = [0]\n"
         "class P(h.BaseHTTPRequestHandler):\n"
         "  def do_GET(self):\n"
         "    n[0] += 1\n"
         "    self.send_response(200 if n[0] <= " +
         std::to_string(good) + " else " + std::to_string(code) +
         "); self.end_headers()\n"
         "  def log_message(self, *a): pass\n"
         "h.HTTPServer(('127.0.0.1', int(os.environ['PORT_80'])), P).serve_forever()\n";
}

TEST_F(VmSetTest, ANewRevisionNeverReadyHaltsAtItsHealthyDeadline) {
  auto vm = cluster_->create_vm("web", page_spec(2, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  // Revision 2 starts and answers its readiness path with 500: never ready.
  auto v2 = page_spec(0, "v2");
  v2.set_command(2, answering(500, 0));
  v2.mutable_readiness()->set_http_path("/ready");
  set_millis(v2.mutable_update_strategy()->mutable_healthy_deadline(), 1500);
  vm.update(v2);
  ASSERT_TRUE(eventually([&] { return halted(status("web")); }, 20s))
      << status("web").DebugString();
  const auto st = status("web");
  EXPECT_THAT(st.rollout(),
              HasSubstr("web-1 (revision 2) did not become healthy within healthyDeadline 1500ms"));
  EXPECT_THAT(st.rollout(), HasSubstr("serving revision 1"));
  EXPECT_EQ(st.serving_revision(), 1);
  EXPECT_EQ(st.revision(), 2);
  EXPECT_TRUE(all_running(st, 1, 2)) << st.DebugString();
  for (const auto& in : st.instances()) {
    if (in.phase() == "Running") {
      EXPECT_EQ(page(in.host_ports().at(80)), "v1 " + in.name());
    }
  }
  // The new replica, still waiting to be ready, was killed (by its start's readiness timeout).
  EXPECT_TRUE(eventually(
      [&] { return instances_with(token_) == 2 && status("web").instances_size() == 2; }, 10s))
      << status("web").DebugString();
}

TEST_F(VmSetTest, ANewReplicaFailingItsChecksIsStoppedAtItsHealthyDeadline) {
  auto vm = cluster_->create_vm("web", page_spec(1, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 1); }, 20s));
  // Ready (its first answer is 200), then every check fails, too few in a row to fail it before
  // the deadline: never healthy for minHealthyTime.
  auto v2 = page_spec(0, "v2");
  v2.set_command(2, answering(500, 1));
  auto& r = *v2.mutable_readiness();
  r.set_http_path("/health");
  r.mutable_interval()->set_nanos(50'000'000);
  r.set_failure_threshold(100);
  // (Long enough for a few checks: the server checks at most every 250 ms.)
  set_millis(v2.mutable_update_strategy()->mutable_min_healthy_time(), 1000);
  set_millis(v2.mutable_update_strategy()->mutable_healthy_deadline(), 2000);
  vm.update(v2);
  ASSERT_TRUE(eventually([&] { return halted(status("web")); }, 20s))
      << status("web").DebugString();
  EXPECT_THAT(status("web").rollout(),
              HasSubstr("web-1 (revision 2) did not become healthy within healthyDeadline 2s"));
  // The new replica is stopped; the old one serves on.
  ASSERT_TRUE(eventually([&] { return instances_with(token_) == 1 && running("web", 1); }, 20s))
      << status("web").DebugString();
  EXPECT_EQ(status("web").instances(0).revision(), 1);
  EXPECT_EQ(page(status("web").instances(0).host_ports().at(80)), "v1 web-1");
}

TEST_F(VmSetTest, AutoRevertRollsTheUpdatedReplicasBackToTheLastRevisionThatRan) {
  auto vm = cluster_->create_vm("web", page_spec(2, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s));
  // Revision 2 runs on web-1 and exits at once on web-2: web-1 is updated, then the rollout
  // halts on web-2.
  auto v2 = page_spec(0, "v2");
  v2.set_command(2, "import os, sys\nif os.environ['BLIXARD_REPLICA'] == 'web-2': sys.exit(5)\n" +
                        v2.command(2));
  v2.mutable_update_strategy()->set_auto_revert(true);
  vm.update(v2);
  ASSERT_TRUE(eventually([&] { return halted(status("web")); }, 30s))
      << status("web").DebugString();
  const auto halt = status("web");
  EXPECT_THAT(halt.rollout(), HasSubstr("rollout of revision 2 halted: web-2"));
  EXPECT_THAT(halt.rollout(), HasSubstr("exited with status 5"));
  EXPECT_THAT(halt.rollout(), HasSubstr("reverting to revision 1"));
  EXPECT_EQ(halt.serving_revision(), 1);
  // web-1, updated to revision 2 before the halt, goes back to revision 1 too.
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = status("web");
        return st.rollout().find("reverted to revision 1") != std::string::npos &&
               st.instances_size() == 2 && all_running(st, 1, 2);
      },
      30s))
      << status("web").DebugString();
  const auto done = status("web");
  EXPECT_EQ(done.revision(), 2);
  EXPECT_EQ(done.serving_revision(), 1);
  for (const auto& in : done.instances()) {
    EXPECT_EQ(page(in.host_ports().at(80)), "v1 " + in.name());
  }
  EXPECT_TRUE(eventually([&] { return instances_with(token_) == 2; }));
  // The set's events say so, in order.
  std::vector<std::string> reasons;
  const auto events = cluster_->backend()->events("vms", "web", 0, 0ms);
  for (const auto& e : events.events()) {
    if (e.reason().starts_with("Rollout")) reasons.push_back(e.reason());
  }
  EXPECT_EQ(reasons, (std::vector<std::string>{"RolloutHalted", "RolloutReverted"}));
}

TEST_F(VmSetTest, ARolloutWithNoReplicaHealthyWithinItsProgressDeadlineHalts) {
  auto vm = cluster_->create_vm("web", page_spec(1, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 1); }, 20s));
  // Recreate: the old replica stops, and the new revision's crashes are retried (with a backoff)
  // rather than halting the rollout, until the progress deadline.
  auto v2 = page_spec(0, "v2", /*broken=*/true);
  auto& u = *v2.mutable_update_strategy();
  u.set_type("recreate");
  set_millis(u.mutable_healthy_deadline(), 1000);
  set_millis(u.mutable_progress_deadline(), 2000);
  vm.update(v2);
  ASSERT_TRUE(eventually([&] { return halted(status("web")); }, 20s))
      << status("web").DebugString();
  const auto st = status("web");
  EXPECT_THAT(st.rollout(), HasSubstr("no replica became healthy within progressDeadline 2s"));
  EXPECT_THAT(st.rollout(), HasSubstr("serving revision 1"));
  EXPECT_EQ(st.serving_revision(), 1);
  // The replica comes back as revision 1, the one that ran.
  ASSERT_TRUE(eventually(
      [&] { return running("web", 1) && status("web").instances(0).revision() == 1; }, 20s))
      << status("web").DebugString();
  EXPECT_EQ(page(status("web").instances(0).host_ports().at(80)), "v1 web-1");
}

TEST_F(VmSetTest, RevisionsSurviveARestartOfTheServer) {
  // (No Vm handle is held across a restart: it keeps its cluster's server.)
  auto vm = [&] { return cluster_->vm("web"); };
  cluster_->create_vm("web", page_spec(1, "v1"));
  ASSERT_TRUE(eventually([&] { return running("web", 1); }, 20s));
  vm().update(page_spec(0, "v2"));
  ASSERT_TRUE(eventually([&] { return observed("web"); }));
  vm().update(page_spec(0, "v3"));
  ASSERT_TRUE(eventually([&] { return observed("web") && status("web").revision() == 3; }));
  const auto first = status("web");
  const auto& before = first.revisions();
  ASSERT_EQ(before.size(), 3);
  // Stored, they are in the watch stream as JSON.
  const auto stored = cluster_->backend()->changes("vmrevisions", "web", 1, 0ms);
  ASSERT_EQ(stored.events_size(), 3) << stored.DebugString();
  EXPECT_EQ(stored.events(2).name(), "web/3");
  EXPECT_THAT(stored.events(2).object_json(), HasSubstr(R"("revision":"3")"));

  auto reopen = [&] {
    cluster_->close();
    cluster_.reset();
    blixard::LocalOptions options;
    options.python = python();
    cluster_.emplace(Cluster::local(dir_, options));
  };
  auto numbers = [&] {
    std::vector<std::int64_t> out;
    const auto st = status("web");
    for (const auto& r : st.revisions()) out.push_back(r.revision());
    return out;
  };
  reopen();
  ASSERT_TRUE(eventually([&] { return running("web", 1); }, 20s)) << status("web").DebugString();
  const auto st = status("web");
  EXPECT_EQ(numbers(), (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(st.revision(), 3);
  EXPECT_EQ(st.serving_revision(), 3);
  EXPECT_TRUE(st.rollout().empty()) << st.rollout();
  EXPECT_EQ(st.instances(0).revision(), 3);
  EXPECT_EQ(page(st.instances(0).host_ports().at(80)), "v3 web-1");
  ASSERT_EQ(st.revisions_size(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(st.revisions(i).created_at().seconds(), before.Get(i).created_at().seconds());
    EXPECT_EQ(st.revisions(i).spec().command(2), before.Get(i).spec().command(2));
  }
  // Numbered after them; a rollback names a revision from before the restart.
  vm().update(page_spec(0, "v4"));
  ASSERT_TRUE(eventually([&] { return observed("web") && status("web").revision() == 4; }));
  vm().rollback(2);  // revision 5, v2's spec
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = status("web");
        return observed("web") && s.revision() == 5 && s.rollout().empty() && all_running(s, 5, 1);
      },
      30s))
      << status("web").DebugString();
  EXPECT_EQ(page(status("web").instances(0).host_ports().at(80)), "v2 web-1");

  // The last 10 are kept (stopped, the updates roll nothing out).
  vm().stop();
  for (int n = 6; n <= 12; ++n) vm().update(page_spec(0, "v" + std::to_string(n)));
  ASSERT_TRUE(eventually([&] { return observed("web") && status("web").revision() == 12; }));
  reopen();
  ASSERT_TRUE(eventually([&] { return observed("web"); }));
  EXPECT_EQ(numbers(), (std::vector<std::int64_t>{3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  // A deleted set's go with it: made again, it starts from 1.
  cluster_->delete_vm("web");
  reopen();
  cluster_->create_vm("web", page_spec(1, "again"));
  ASSERT_TRUE(eventually([&] { return observed("web"); }));
  EXPECT_EQ(numbers(), (std::vector<std::int64_t>{1}));
}

// ---- volumes ----

class VolumeTest : public VmSetTest {
 protected:
  // Counts its starts in a file on its volume and serves "<text> count=<n>" on port 80.
  v1::VmSpec counting_spec(std::uint32_t replicas, const std::string& text) {
    auto s = page_spec(replicas, text);
    s.set_command(2,
                  "import http.server as h, os, signal, sys\n"
                  "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                  "p = os.path.join(os.environ['BLIXARD_VOLUME'], 'count')\n"
                  "n = int(open(p).read()) + 1 if os.path.exists(p) else 1\n"
                  "open(p, 'w').write(str(n))\n"
                  "body = ('" +
                      text +
                      " count=%d' % n).encode()\n"
                      "class P(h.BaseHTTPRequestHandler):\n"
                      "  def do_GET(self):\n"
                      "    self.send_response(200); self.send_header('Content-Length', "
                      "str(len(body))); self.end_headers(); self.wfile.write(body)\n"
                      "  def log_message(self, *a): pass\n"
                      "h.HTTPServer(('127.0.0.1', int(os.environ['PORT_80'])), P)"
                      ".serve_forever()\n");
    s.mutable_storage()->set_pool("disk");
    s.mutable_storage()->set_size_mib(16);
    return s;
  }
  void make_pool() {
    v1::StoragePoolSpec pool;
    pool.set_type("dir");
    pool.set_path((dir_ / "pool").string());
    cluster_->create_storage_pool("disk", pool);
  }
  std::string page_of(const std::string& vm, int index) {
    const auto st = status(vm);
    if (st.instances_size() <= index) return "";
    const auto& ports = st.instances(index).host_ports();
    return ports.contains(80) ? page(ports.at(80)) : "";
  }
};

TEST_F(VolumeTest, AReplicaKeepsItsVolumeAcrossRestartsAndRollouts) {
  make_pool();
  auto vm = cluster_->create_vm("db", counting_spec(2, "v1"));
  ASSERT_TRUE(eventually([&] { return running("db", 2); }, 20s)) << status("db").DebugString();
  EXPECT_EQ(page_of("db", 0), "v1 count=1");
  EXPECT_EQ(page_of("db", 1), "v1 count=1");
  // Each replica has its own, in the pool's directory, written by the replica (not root).
  EXPECT_TRUE(fs::exists(dir_ / "pool" / "db-1" / "count"));
  EXPECT_TRUE(fs::exists(dir_ / "pool" / "db-2" / "count"));
  struct stat file {};
  ASSERT_EQ(::stat((dir_ / "pool" / "db-1" / "count").c_str(), &file), 0);
  if (::getuid() == 0) {
    EXPECT_NE(file.st_uid, 0U);  // a root agent's replicas are not root
  }
  const auto volumes = cluster_->volumes();
  ASSERT_EQ(volumes.size(), 2U);
  EXPECT_EQ(volumes[0].metadata().name(), "db-1");
  EXPECT_EQ(volumes[0].status().phase(), "Attached");
  EXPECT_EQ(volumes[0].status().format(), "directory");
  EXPECT_FALSE(volumes[0].status().node().empty());
  EXPECT_EQ(cluster_->storage_pool("disk").status().volumes(), 2U);

  // Killed: started again on the same volume.
  ::kill(pid_of("db-2"), SIGKILL);
  ASSERT_TRUE(eventually([&] { return page_of("db", 1) == "v1 count=2"; }, 20s))
      << status("db").DebugString();
  // A rolling update of a set with storage goes in place: one writer per volume, ever.
  vm.update(counting_spec(0, "v2"));
  std::uint32_t most = 0;
  ASSERT_TRUE(eventually(
      [&] {
        most = std::max(most, static_cast<std::uint32_t>(instances_with(token_)));
        const auto st = status("db");
        return st.rollout().empty() && running("db", 2) && page_of("db", 0) == "v2 count=2" &&
               page_of("db", 1) == "v2 count=3";
      },
      30s))
      << status("db").DebugString();
  EXPECT_LE(most, 2U);
  // A new config that does not name the storage keeps it (as the replica count is kept).
  auto v3 = counting_spec(0, "v3");
  v3.clear_storage();
  vm.update(v3);
  EXPECT_EQ(vm.get().spec().storage().pool(), "disk");
  ASSERT_TRUE(eventually(
      [&] { return status("db").rollout().empty() && page_of("db", 1) == "v3 count=4"; }, 30s))
      << status("db").DebugString();
  // Stopped: the volumes stay, no longer attached.
  vm.stop();
  ASSERT_TRUE(eventually([&] {
    const auto v = cluster_->volumes();
    return v.size() == 2 && v[0].status().phase() == "Available" &&
           v[1].status().phase() == "Available";
  }));
  vm.start();
  ASSERT_TRUE(eventually([&] { return page_of("db", 0) == "v3 count=4"; }, 20s));
}

TEST_F(VolumeTest, PoolsAndVolumesGoOnlyWhenNothingUsesThem) {
  // A pool that does not exist: refused at create, saying how to make one.
  try {
    cluster_->create_vm("db", counting_spec(1, "v1"));
    FAIL() << "a missing pool was taken";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_EQ(e.field(), "spec.storage.pool");
    EXPECT_THAT(e.what(), HasSubstr("blixard storage pool create disk"));
  }
  // A class no pool serves: the set waits for one, saying how to make it.
  auto by_class = counting_spec(1, "v1");
  by_class.mutable_storage()->clear_pool();
  by_class.mutable_storage()->set_class_("replicated");
  cluster_->create_vm("shared", by_class);
  ASSERT_TRUE(eventually([&] {
    return status("shared").message().find(
               "no storage pool serves class \"replicated\": create "
               "one with `blixard storage pool create NAME --type "
               "shared-dir") != std::string::npos;
  })) << status("shared").DebugString();
  v1::StoragePoolSpec shared;
  shared.set_type("shared-dir");
  shared.set_path((dir_ / "shared").string());
  EXPECT_EQ(cluster_->create_storage_pool("nfs", shared).spec().class_(), "replicated");
  ASSERT_TRUE(eventually([&] { return page_of("shared", 0) == "v1 count=1"; }, 40s))
      << status("shared").DebugString();
  EXPECT_TRUE(fs::exists(dir_ / "shared" / "shared-1" / "count"));
  cluster_->delete_vm("shared");
  make_pool();
  auto vm = cluster_->create_vm("db", counting_spec(1, "v1"));
  ASSERT_TRUE(eventually([&] { return running("db", 1); }, 20s)) << status("db").DebugString();
  const auto expect_conflict = [](auto&& f, const std::string& words) {
    try {
      f();
      ADD_FAILURE() << "not refused: " << words;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), errc::conflict) << e.what();
      EXPECT_THAT(e.what(), HasSubstr(words));
    }
  };
  expect_conflict([&] { cluster_->delete_storage_pool("disk"); }, "used by vm \"db\"");
  expect_conflict([&] { cluster_->delete_volume("db-1"); }, "in use by replica");
  cluster_->delete_vm("db");
  // The set is gone, its volume is not (a database outlives its deployment).
  ASSERT_TRUE(eventually([&] {
    const auto v = cluster_->volumes();
    return v.size() == 2 && v[0].status().phase() == "Available" &&
           v[1].status().phase() == "Available";
  }));
  EXPECT_TRUE(fs::exists(dir_ / "pool" / "db-1" / "count"));
  expect_conflict([&] { cluster_->delete_storage_pool("disk"); }, "holds volumes (db-1)");
  cluster_->delete_volume("db-1");
  cluster_->delete_volume("shared-1");
  EXPECT_FALSE(fs::exists(dir_ / "pool" / "db-1"));
  EXPECT_FALSE(fs::exists(dir_ / "shared" / "shared-1"));
  EXPECT_TRUE(cluster_->volumes().empty());
  cluster_->delete_storage_pool("disk");
  cluster_->delete_storage_pool("nfs");
  EXPECT_TRUE(cluster_->storage_pools().empty());
  try {
    cluster_->delete_volume("db-1");
    ADD_FAILURE() << "a deleted volume was found";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::not_found);
  }
}

// Sets with a primary: one replica holds the set's volume and serves; when it goes, a standby is
// fenced in (the stored epoch bumped first) and promoted on the same volume.
class PrimaryTest : public VmSetTest {
 protected:
  // The primary appends "<replica> epoch-start" to a log on the volume and serves
  // "primary <replica> starts=<n>" on port 80; a standby waits for SIGTERM and serves nothing.
  v1::VmSpec db_spec(std::uint32_t replicas, const std::string& policy) {
    auto s = page_spec(replicas, "unused");
    s.set_command(2,
                  "import http.server as h, os, signal, sys, time\n"
                  "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                  "me = os.environ['BLIXARD_REPLICA']\n"
                  "if os.environ['BLIXARD_ROLE'] != 'primary':\n"
                  "  assert 'BLIXARD_VOLUME' not in os.environ\n"
                  "  while True: time.sleep(60)\n"
                  "p = os.path.join(os.environ['BLIXARD_VOLUME'], 'starts')\n"
                  "with open(p, 'a') as f: f.write(me + '\\n')\n"
                  "n = len(open(p).read().split())\n"
                  "body = ('primary %s starts=%d' % (me, n)).encode()\n"
                  "class P(h.BaseHTTPRequestHandler):\n"
                  "  def do_GET(self):\n"
                  "    self.send_response(200); self.send_header('Content-Length', "
                  "str(len(body))); self.end_headers(); self.wfile.write(body)\n"
                  "  def log_message(self, *a): pass\n"
                  "h.HTTPServer(('127.0.0.1', int(os.environ['PORT_80'])), P).serve_forever()\n");
    s.mutable_storage()->set_class_("replicated");
    s.mutable_storage()->set_size_mib(16);
    s.set_primary_election_policy(policy);
    return s;
  }
  void make_shared_pool() {
    v1::StoragePoolSpec pool;
    pool.set_type("shared-dir");
    pool.set_path((dir_ / "shared").string());
    cluster_->create_storage_pool("nfs", pool);
  }
  // The primary's page (through its host port), or "" when there is none serving.
  std::string primary_page(const std::string& vm) {
    const auto st = status(vm);
    for (const auto& in : st.instances()) {
      if (in.role() == "primary" && in.phase() == "Running" && in.host_ports().contains(80)) {
        return page(in.host_ports().at(80));
      }
    }
    return "";
  }
  std::map<std::string, std::string> roles(const std::string& vm) {
    std::map<std::string, std::string> out;
    const auto st = status(vm);
    for (const auto& in : st.instances()) {
      if (in.phase() == "Running") out[in.name()] = in.role();
    }
    return out;
  }
};

TEST_F(PrimaryTest, OnePrimaryHoldsTheVolumeAndAStandbyIsFencedInWhenItFails) {
  make_shared_pool();
  auto vm = cluster_->create_vm("db", db_spec(3, "oldest-first"));
  const std::map<std::string, std::string> first{
      {"db-1", "primary"}, {"db-2", "replica"}, {"db-3", "replica"}};
  ASSERT_TRUE(
      eventually([&] { return roles("db") == first && status("db").primary() == "db-1"; }, 20s))
      << status("db").DebugString();
  EXPECT_EQ(primary_page("db"), "primary db-1 starts=1");
  auto st = status("db");
  EXPECT_EQ(st.primary_epoch(), 1);
  EXPECT_EQ(st.phase(), "Running");
  for (const auto& in : st.instances()) {
    // Standbys serve nothing: the balancer sends every connection to the primary.
    if (in.role() == "replica") {
      EXPECT_TRUE(in.host_ports().empty()) << in.DebugString();
    } else {
      EXPECT_EQ(in.epoch(), 1);
    }
  }
  // One volume for the set, written by the primary under its epoch.
  auto volumes = cluster_->volumes();
  ASSERT_EQ(volumes.size(), 1U);
  EXPECT_EQ(volumes[0].metadata().name(), "db-data");
  EXPECT_EQ(volumes[0].status().epoch(), 1);
  EXPECT_THAT(volumes[0].status().attached_to(), HasSubstr("db-1"));

  // The primary dies: a standby takes over on the same volume, under the next epoch, and the
  // old one comes back as a standby.
  const pid_t primary = pid_of("db-1");
  ASSERT_GT(primary, 0);
  ::kill(primary, SIGKILL);
  std::string promoted;
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = status("db");
        promoted = s.primary();
        return (promoted == "db-2" || promoted == "db-3") && s.primary_epoch() == 2 &&
               primary_page("db") == "primary " + promoted + " starts=2" &&
               roles("db").size() == 3 && roles("db").at("db-1") == "replica";
      },
      20s))
      << status("db").DebugString();
  st = status("db");
  std::vector<std::string> steps;
  for (const auto& step : st.failover()) steps.push_back(step.step());
  EXPECT_EQ(steps, (std::vector<std::string>{"detected", "promoting", "fenced", "volume-attached",
                                             "promoted", "balancer-switched"}))
      << st.DebugString();
  EXPECT_THAT(st.failover(0).message(), HasSubstr("db-1"));
  // Each step is timed from the detection, in order.
  for (int i = 1; i < st.failover_size(); ++i) {
    const auto& a = st.failover(i - 1).elapsed();
    const auto& b = st.failover(i).elapsed();
    EXPECT_LE(a.seconds() * 1'000'000'000LL + a.nanos(), b.seconds() * 1'000'000'000LL + b.nanos());
  }
  EXPECT_EQ(cluster_->volumes()[0].status().epoch(), 2);
  // Every start of a primary wrote to the one volume, in order.
  EXPECT_EQ(read_proc_file(dir_ / "shared" / "db-data" / "starts"), "db-1\n" + promoted + "\n");

  // A switchover on purpose: the old primary stops first, the new one is fenced in after.
  const std::string other = promoted == "db-2" ? "db-3" : "db-2";
  vm.switchover(other);
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = status("db");
        return s.primary() == other && s.primary_epoch() == 3 &&
               primary_page("db") == "primary " + other + " starts=3" && roles("db").size() == 3 &&
               roles("db").at(promoted) == "replica";
      },
      20s))
      << status("db").DebugString();
  EXPECT_THAT(status("db").failover(0).message(), HasSubstr("switchover to " + other));
  // A switchover is no rollout: the set's revision stays, and so do the standbys' runs.
  EXPECT_EQ(status("db").revision(), 1);
  EXPECT_TRUE(status("db").rollout().empty()) << status("db").rollout();
  // Refused: a name that is no replica, and a set without a primary.
  try {
    vm.switchover("db-9");
    ADD_FAILURE() << "db-9 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_EQ(e.field(), "primary");
  }
  auto plain = cluster_->create_vm("plain", web_spec(1));
  try {
    plain.switchover("plain-1");
    ADD_FAILURE() << "a set without a primary accepted a switchover";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_THAT(e.what(), HasSubstr("no primary"));
  }
}

TEST_F(PrimaryTest, PoliciesPickTheFirstPrimaryAndANodeLocalPoolIsRefused) {
  make_shared_pool();
  cluster_->create_vm("newest", db_spec(2, "newest-first"));
  ASSERT_TRUE(eventually([&] { return status("newest").primary() == "newest-2"; }, 20s))
      << status("newest").DebugString();
  EXPECT_EQ(roles("newest"),
            (std::map<std::string, std::string>{{"newest-1", "replica"}, {"newest-2", "primary"}}));
  cluster_->delete_vm("newest");
  // A volume that cannot follow its primary to another node: said, naming what to use.
  v1::StoragePoolSpec local;
  local.set_type("dir");
  local.set_path((dir_ / "local").string());
  cluster_->create_storage_pool("disk", local);
  auto spec = db_spec(2, "lowest-ordinal");
  spec.mutable_storage()->clear_class_();
  spec.mutable_storage()->set_pool("disk");
  try {
    cluster_->create_vm("pinned", spec);
    ADD_FAILURE() << "a set with a primary was given a node-local pool";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_EQ(e.field(), "spec.storage.pool");
    EXPECT_THAT(e.what(), HasSubstr("shared-dir"));
  }
  // The same through a class that only a dir pool serves: the start says so.
  local.set_class_("fast");
  cluster_->create_storage_pool("fast-disk", local);
  spec.mutable_storage()->clear_pool();
  spec.mutable_storage()->set_class_("fast");
  cluster_->create_vm("pinned", spec);
  ASSERT_TRUE(eventually(
      [&] { return status("pinned").message().find("node-local") != std::string::npos; }, 20s))
      << status("pinned").DebugString();
  EXPECT_THAT(status("pinned").message(), HasSubstr("shared-dir"));
}

}  // namespace
