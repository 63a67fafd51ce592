// The Node seam's conformance suite (as store_conformance.hpp is the Store's): every
// implementation of control::Node passes the same tests. Two run here: the in-process
// agent::LocalNode over the sandbox driver, and control::RemoteNode talking to an agent::Session
// over a loopback channel that serializes every frame and delivers it on another thread, as the
// WebSocket does. Then what only a remote node does: losing its connection.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/struct.pb.h>
#include <gtest/gtest.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>

#include "agent/code_cache.hpp"
#include "agent/local_node.hpp"
#include "agent/probe.hpp"
#include "agent/session.hpp"
#include "common/agent_message.hpp"
#include "common/code_archive.hpp"
#include "common/json.hpp"
#include "control/node_registry.hpp"
#include "control/remote_node.hpp"
#include "runtime/driver.hpp"
#include "store/store.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using blixard::errc;
using blixard::Error;
using blixard::test_support::eventually;
using blixard::test_support::processes_with;
using blixard::test_support::python;
using ::testing::HasSubstr;
namespace v1 = blixard::v1;
namespace runtime = blixard::runtime;
namespace control = blixard::control;
namespace agent = blixard::agent;

const fs::path k_handlers = fs::path(BLIXARD_TEST_DATA) / "handlers";

// The test handlers as the server keeps them: one archive, fetched by digest.
const blixard::CodeArchive& handlers_archive() {
  static const blixard::CodeArchive archive = blixard::pack_code(k_handlers);
  return archive;
}

// How often a node fetched code, by digest: what the server's blob store would have served.
struct Fetches {
  std::mutex mutex;
  std::map<std::string, int> count;
};

// A node under test and what it runs on.
class NodeUnderTest {
 public:
  virtual ~NodeUnderTest() = default;
  virtual control::Node& node() = 0;
};

std::shared_ptr<agent::LocalNode> make_local_node(const fs::path& work, const std::string& name,
                                                  Fetches& fetches) {
  runtime::SandboxOptions o;
  o.work_dir = work;
  o.python = python();
  v1::NodeSpec spec;
  (*spec.mutable_labels())["zone"] = "az1";
  auto code =
      std::make_shared<agent::CodeCache>(work / "code", [&fetches](const std::string& digest) {
        {
          std::lock_guard lock(fetches.mutex);
          ++fetches.count[digest];
        }
        if (digest != handlers_archive().digest) {
          throw Error(errc::not_found, "the server holds no code archive " + digest);
        }
        return handlers_archive().bytes;
      });
  return std::make_shared<agent::LocalNode>(name, spec, runtime::make_sandbox_driver(o), code);
}

class Local final : public NodeUnderTest {
 public:
  Local(const fs::path& work, Fetches& fetches) : node_(make_local_node(work, "local", fetches)) {}
  control::Node& node() override { return *node_; }

 private:
  std::shared_ptr<agent::LocalNode> node_;
};

std::string frame_kind(const std::string& bytes) {
  v1::AgentFrame f;
  return f.ParseFromString(bytes) ? "\"" + f.ShortDebugString() + "\"" : "unparseable bytes";
}

// RemoteNode <-> Session, each direction through bytes and a thread of its own reading them.
class Loopback final : public NodeUnderTest {
 public:
  Loopback(const fs::path& work, Fetches& fetches)
      : agent_node_(make_local_node(work, "remote", fetches)) {
    for (auto* io : {&up_, &down_}) threads_.emplace_back([io] { io->run(); });
    session_ = std::make_shared<agent::Session>(
        agent_node_, down_.get_executor(),
        [this](const v1::AgentFrame& f) { return deliver(up_, f, /*up=*/true); });
    control::RemoteNode::Link link;
    link.send = [this](const v1::AgentFrame& f) { return deliver(down_, f, /*up=*/false); };
    link.close = [this] { cut(); };
    remote_ = std::make_shared<control::RemoteNode>("remote", agent_node_->describe(), link);
    v1::AgentFrame welcome;
    welcome.mutable_welcome()->set_epoch(1);
    deliver(down_, welcome, false);
  }

  ~Loopback() override {
    remote_->lose("test over");
    session_->close();
    agent_node_->shutdown();
    up_guard_.reset();
    down_guard_.reset();
    for (auto& t : threads_) t.join();
  }

  control::Node& node() override { return *remote_; }
  control::RemoteNode& remote() { return *remote_; }
  // The connection breaks, as a reset would: nothing more passes either way.
  void cut() {
    if (connected_.exchange(false)) session_->close();
  }
  std::size_t frames_up() const { return frames_up_; }

 private:
  bool deliver(boost::asio::io_context& io, const v1::AgentFrame& frame, bool up) {
    if (!connected_) return false;
    if (up) ++frames_up_;
    boost::asio::post(io, [this, bytes = frame.SerializeAsString(), up] {
      if (!connected_) return;
      // Read as the channel reads it (FrameSocket): a frame it would refuse ends the connection.
      std::string message;
      for (auto n = bytes.size();; n >>= 7) {
        message += static_cast<char>(n < 0x80 ? n : (n & 0x7f) | 0x80);
        if (n < 0x80) break;
      }
      message += bytes;
      const bool ok = blixard::decode_frames(message, [&](v1::AgentFrame& f) {
        if (up) {
          remote_->receive(f);
        } else {
          session_->receive(f);
        }
      });
      if (!ok) {
        ADD_FAILURE() << "a frame the agent channel refuses: " << frame_kind(bytes);
        cut();
      }
    });
    return true;
  }

  boost::asio::io_context up_, down_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> up_guard_{
      up_.get_executor()};
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> down_guard_{
      down_.get_executor()};
  std::vector<std::thread> threads_;
  std::shared_ptr<agent::LocalNode> agent_node_;
  std::shared_ptr<agent::Session> session_;
  std::shared_ptr<control::RemoteNode> remote_;
  std::atomic<bool> connected_{true};
  std::atomic<std::size_t> frames_up_{0};
};

enum class Kind { local, remote };

// What an instance reported: its exit and its log lines.
struct Events {
  std::mutex mutex;
  std::vector<runtime::InstanceExit> exits;
  std::vector<std::string> lines;

  std::size_t exit_count() {
    std::lock_guard lock(mutex);
    return exits.size();
  }
  bool has_line(const std::string& text) {
    std::lock_guard lock(mutex);
    for (const auto& l : lines) {
      if (l.find(text) != std::string::npos) return true;
    }
    return false;
  }
};

struct ReplicaEvents {
  std::mutex mutex;
  std::vector<runtime::ReplicaExit> exits;
  std::vector<std::string> lines;
  std::size_t exit_count() {
    std::lock_guard lock(mutex);
    return exits.size();
  }
  bool has_line(const std::string& text) {
    std::lock_guard lock(mutex);
    return std::any_of(lines.begin(), lines.end(),
                       [&](const auto& l) { return l.find(text) != std::string::npos; });
  }
};

class NodeConformance : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    token_ = "blixard-node-test-" + std::to_string(::getpid()) + "-" +
             std::to_string(GetParam() == Kind::local) +
             ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : token_) {
      if (c == '/') c = '-';
    }
    work_ = fs::temp_directory_path() / token_;
    fs::create_directories(work_);
    if (GetParam() == Kind::local) {
      under_ = std::make_unique<Local>(work_, fetches_);
    } else {
      under_ = std::make_unique<Loopback>(work_, fetches_);
    }
  }

  void TearDown() override {
    under_.reset();
    // A remote node's agent end may still be reaping what it killed (its last threads hold the
    // driver a moment longer); nothing may be left soon after.
    EXPECT_TRUE(eventually([&] { return processes_with(token_) == 0; }, 5s))
        << "leaked handler processes";
    fs::remove_all(work_);
  }

  control::Node& node() { return under_->node(); }

  control::Assignment assignment(const std::string& handler, Events& events) {
    control::Assignment a;
    a.epoch = 1;
    a.instance.function = "fn";
    auto& s = a.instance.spec;
    s.set_runtime("python");
    s.set_handler(handler);
    s.set_code_digest(handlers_archive().digest);
    s.set_memory_mib(128);
    s.mutable_timeout()->set_seconds(30);
    (*s.mutable_env())["TEST_TOKEN"] = token_;
    (*s.mutable_env())["PYTHONDONTWRITEBYTECODE"] = "1";
    a.instance.on_exit = [&events](const runtime::InstanceExit& exit) {
      std::lock_guard lock(events.mutex);
      events.exits.push_back(exit);
    };
    a.instance.on_log = [&events](const std::string&, const std::string&, std::string line) {
      std::lock_guard lock(events.mutex);
      events.lines.push_back(std::move(line));
    };
    return a;
  }

  static runtime::Invocation invocation(const control::Assignment& a, std::string payload) {
    runtime::Invocation inv;
    inv.function = a.instance.function;
    inv.spec = a.instance.spec;
    inv.payload = std::move(payload);
    inv.request_id = "req-1";
    return inv;
  }

  int fetches(const std::string& digest) {
    std::lock_guard lock(fetches_.mutex);
    return fetches_.count[digest];
  }

  std::string token_;
  fs::path work_;
  Fetches fetches_;
  // Outlive the node: instances report their exits into them until the node is gone.
  Events events_;
  ReplicaEvents replica_events_;
  std::unique_ptr<NodeUnderTest> under_;
};

TEST_P(NodeConformance, StartsAnInstanceThatAnswersCallsAndListsIt) {
  Events& events = events_;
  auto a = assignment("echo:handler", events);
  auto instance = node().start(a);
  ASSERT_TRUE(instance);
  EXPECT_TRUE(instance->alive());
  EXPECT_GT(instance->init_duration().count(), 0);
  EXPECT_THAT(node().instances(), ::testing::Contains(instance->name()));
  EXPECT_EQ(instance->call(invocation(a, R"({"x": 1})")).result, R"({"x": 1})");
  // The same through call_async, answered on another thread.
  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);
  std::thread reader([&] { io.run(); });
  std::promise<std::string> answer;
  const bool sent =
      instance->call_async(invocation(a, R"([2])"), io.get_executor(),
                           [&](const std::exception_ptr& e, runtime::InvocationResult r) {
                             if (e) {
                               answer.set_exception(e);
                             } else {
                               answer.set_value(r.result);
                             }
                           });
  ASSERT_TRUE(sent);
  EXPECT_EQ(answer.get_future().get(), "[2]");
  guard.reset();
  reader.join();
}

TEST_P(NodeConformance, AHandlerErrorComesBackAsHandlerFailedWithItsMessage) {
  Events& events = events_;
  auto a = assignment("raises:handler", events);
  auto instance = node().start(a);
  try {
    instance->call(invocation(a, "{}"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::handler_failed);
    EXPECT_THAT(e.message(), HasSubstr("ValueError: boom"));
  }
  EXPECT_TRUE(eventually([&] { return events.has_line("about to raise"); }));
}

TEST_P(NodeConformance, AStartThatFailsThrowsWhy) {
  Events& events = events_;
  auto a = assignment("broken_import:handler", events);
  try {
    node().start(a);
    FAIL() << "started";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::handler_failed);
    EXPECT_FALSE(e.message().empty());
  }
  EXPECT_TRUE(node().instances().empty());
}

TEST_P(NodeConformance, AStoppedInstanceReportsARequestedExit) {
  Events& events = events_;
  auto a = assignment("echo:handler", events);
  auto instance = node().start(a);
  instance->stop(200ms);
  EXPECT_FALSE(instance->alive());
  ASSERT_TRUE(eventually([&] { return events.exit_count() == 1; }));
  EXPECT_TRUE(events.exits[0].requested);
  EXPECT_TRUE(eventually([&] { return node().instances().empty(); }));
}

TEST_P(NodeConformance, ACrashReportsAnUnrequestedExitAndFailsTheCall) {
  Events& events = events_;
  auto a = assignment("crash:handler", events);
  auto instance = node().start(a);
  EXPECT_THROW(instance->call(invocation(a, "{}")), Error);
  ASSERT_TRUE(eventually([&] { return events.exit_count() == 1; }));
  EXPECT_FALSE(events.exits[0].requested);
  EXPECT_THAT(events.exits[0].reason, HasSubstr("exited with status 3"));
}

TEST_P(NodeConformance, ShutdownFailsLaterStartsWithUnavailable) {
  Events& events = events_;
  auto a = assignment("echo:handler", events);
  auto instance = node().start(a);
  node().shutdown();
  ASSERT_TRUE(eventually([&] { return events.exit_count() == 1; }));
  try {
    node().start(a);
    FAIL() << "started after shutdown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
  }
}

TEST_P(NodeConformance, RunsItsCodeFromAReadOnlyCopyFetchedOnceByDigest) {
  Events& events = events_;
  auto a = assignment("where:handler", events);
  std::vector<std::shared_ptr<runtime::Instance>> instances;
  for (int i = 0; i < 3; ++i) instances.push_back(node().start(a));
  EXPECT_EQ(fetches(handlers_archive().digest), 1);
  google::protobuf::Struct seen;
  blixard::from_json(instances[0]->call(invocation(a, "{}")).result, seen, true);
  // The node's copy, seen at the one place every instance sees its code: neither the directory
  // the client packed nor the node's own path to it (under its data dir) shows.
  EXPECT_EQ(seen.fields().at("dir").string_value(), "/var/task");
  EXPECT_EQ(seen.fields().at("cwd").string_value(), "/var/task");
  EXPECT_TRUE(fs::is_directory(work_ / "code" / handlers_archive().digest.substr(7)));
  const auto& writes = seen.fields().at("writes").struct_value().fields();
  ASSERT_EQ(writes.size(), 1u);
  EXPECT_NE(writes.begin()->second.string_value(), "written") << "the code is writable";
}

TEST_P(NodeConformance, AStartWhoseCodeCannotBeFetchedSaysWhichDigest) {
  Events& events = events_;
  auto a = assignment("echo:handler", events);
  const std::string missing = "sha256:" + std::string(64, 'e');
  a.instance.spec.set_code_digest(missing);
  try {
    node().start(a);
    FAIL() << "started without its code";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::not_found);
    EXPECT_THAT(e.message(), HasSubstr(missing));
  }
  EXPECT_TRUE(node().instances().empty());
}

// ---- VM replicas ----

control::ReplicaAssignment replica_assignment(const std::string& token, const std::string& name,
                                              ReplicaEvents& events,
                                              const std::string& extra = "") {
  control::ReplicaAssignment a;
  a.epoch = 1;
  a.replica.vm = "web";
  a.replica.name = name;
  auto& s = a.replica.spec;
  s.add_command(python());
  s.add_command("-c");
  s.add_command(extra +
                "import http.server as h, os, signal, sys\n"
                "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                "s = h.HTTPServer(('127.0.0.1', int(os.environ['PORT_80'])), "
                "h.SimpleHTTPRequestHandler)\n"
                "print('serving', os.environ['BLIXARD_REPLICA'], flush=True)\n"
                "s.serve_forever()\n");
  s.add_ports(80);
  s.set_memory_mib(128);
  (*s.mutable_env())["TEST_TOKEN"] = token;
  a.replica.on_exit = [&events](const runtime::ReplicaExit& exit) {
    std::lock_guard lock(events.mutex);
    events.exits.push_back(exit);
  };
  a.replica.on_log = [&events](const std::string&, const std::string&, std::string line) {
    std::lock_guard lock(events.mutex);
    events.lines.push_back(std::move(line));
  };
  return a;
}

TEST_P(NodeConformance, StartsAReplicaServingItsPortAndStopsIt) {
  auto a = replica_assignment(token_, "web-1", replica_events_);
  auto replica = node().start_replica(a);
  ASSERT_TRUE(replica);
  EXPECT_EQ(replica->name(), "web-1");
  EXPECT_TRUE(replica->alive());
  ASSERT_EQ(replica->ports().count(80), 1U);
  const int fd =
      blixard::test_support::connect_loopback(static_cast<unsigned short>(replica->ports().at(80)));
  EXPECT_GE(fd, 0);
  if (fd >= 0) ::close(fd);
  EXPECT_THAT(node().instances(), ::testing::Contains("web-1"));
  EXPECT_TRUE(eventually([&] { return replica_events_.has_line("serving web-1"); }));
  // A second replica of the same name on the node is refused.
  try {
    node().start_replica(replica_assignment(token_, "web-1", replica_events_));
    FAIL() << "two replicas named web-1";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::already_exists);
  }
  replica->stop(5s);
  EXPECT_FALSE(replica->alive());
  ASSERT_TRUE(eventually([&] { return replica_events_.exit_count() == 1; }));
  EXPECT_TRUE(replica_events_.exits[0].requested);
  EXPECT_TRUE(eventually([&] { return node().instances().empty(); }));
}

TEST_P(NodeConformance, AReplicaThatCrashesReportsAnUnrequestedExit) {
  auto a = replica_assignment(token_, "web-2", replica_events_,
                              "import threading, os\n"
                              "threading.Timer(0.3, lambda: os._exit(7)).start()\n");
  auto replica = node().start_replica(a);
  ASSERT_TRUE(eventually([&] { return replica_events_.exit_count() == 1; }));
  EXPECT_FALSE(replica_events_.exits[0].requested);
  EXPECT_THAT(replica_events_.exits[0].reason, HasSubstr("exited with status 7"));
  EXPECT_FALSE(replica->alive());
}

TEST_P(NodeConformance, AReplicaThatCannotStartThrowsWhy) {
  auto a = replica_assignment(token_, "web-3", replica_events_, "import sys\nsys.exit(4)\n");
  try {
    node().start_replica(a);
    FAIL() << "started";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::handler_failed);
    EXPECT_THAT(e.message(), HasSubstr("exited with status 4"));
  }
  EXPECT_TRUE(node().instances().empty());
}

// A node whose last overlay peer left is told so: an empty list is still a frame the channel
// takes (it once went as a frame of no kind, and the agent dropped its connection).
TEST_P(NodeConformance, AnEmptyOverlayPeerListKeepsTheNodeServing) {
  node().overlay_peers({});
  auto replica = node().start_replica(replica_assignment(token_, "web-5", replica_events_));
  EXPECT_TRUE(replica->alive());
  replica->stop(5s);
}

// A promotion in place reaches the replica's driver (over the agent channel for a remote node)
// and comes back with its answer: the sandbox driver promotes nothing in place (its replicas
// restart as primary), and says so as unavailable; the replica keeps running.
TEST_P(NodeConformance, APromotionTheDriverCannotDoComesBackAsUnavailable) {
  auto replica = node().start_replica(replica_assignment(token_, "web-6", replica_events_));
  runtime::Promotion promotion;
  promotion.epoch = 2;
  promotion.timeout = 10s;
  try {
    replica->promote(promotion);
    FAIL() << "a sandbox replica was promoted in place";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable) << e.what();
    EXPECT_THAT(e.message(), HasSubstr("web-6 cannot be promoted in place"));
  }
  EXPECT_TRUE(replica->alive());
  replica->stop(5s);
}

// The fence at the volume: a start under an older epoch than the last one that took the volume
// is refused it (a primary given up on cannot come back to the data), on any node.
TEST_P(NodeConformance, AVolumeIsRefusedToAStartUnderAnOlderEpoch) {
  v1::VolumeAttachment volume;
  volume.set_name("db-data");
  volume.set_pool_type("shared-dir");
  volume.set_pool_path((work_ / "shared").string());
  volume.set_size_mib(16);
  volume.set_mount_point("/data");
  volume.set_writer_epoch(2);
  auto a = replica_assignment(token_, "db-1", replica_events_);
  a.replica.volume = volume;
  node().start_replica(a)->stop(5s);
  // Epoch 1 after epoch 2: fenced off, and the record keeps the newer epoch.
  volume.set_writer_epoch(1);
  auto stale = replica_assignment(token_, "db-2", replica_events_);
  stale.replica.volume = volume;
  try {
    node().start_replica(stale);
    FAIL() << "a start under epoch 1 got the volume after epoch 2";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::conflict) << e.what();
    EXPECT_THAT(e.message(), HasSubstr("fenced"));
  }
  EXPECT_EQ(blixard::test_support::read_proc_file(work_ / "shared" / ".db-data.epoch"), "2\n");
  // A newer one takes it over.
  volume.set_writer_epoch(3);
  auto next = replica_assignment(token_, "db-3", replica_events_);
  next.replica.volume = volume;
  node().start_replica(next)->stop(5s);
  EXPECT_EQ(blixard::test_support::read_proc_file(work_ / "shared" / ".db-data.epoch"), "3\n");
}

INSTANTIATE_TEST_SUITE_P(Nodes, NodeConformance, ::testing::Values(Kind::local, Kind::remote),
                         [](const auto& info) {
                           return info.param == Kind::local ? "LocalNode" : "RemoteNode";
                         });

// ---- only a remote node: its connection can break ----

class RemoteNodeTest : public NodeConformance {};

TEST_P(RemoteNodeTest, ALostConnectionFailsCallsInFlightAndReportsItsInstancesLost) {
  Events& events = events_;
  auto a = assignment("sleeper:handler", events);
  auto& loop = static_cast<Loopback&>(*under_);
  auto instance = node().start(a);
  auto pending =
      std::async(std::launch::async, [&] { return instance->call(invocation(a, "{}")); });
  // The call is on its way (an invoke went down) before the link breaks.
  ASSERT_TRUE(eventually([&] { return events.has_line("sleeping"); }, 10s));
  loop.cut();
  loop.remote().lose("connection reset");
  try {
    pending.get();
    FAIL() << "the call returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_THAT(e.message(), HasSubstr("node remote is gone: connection reset"));
  }
  ASSERT_EQ(events.exit_count(), 1u);
  EXPECT_FALSE(events.exits[0].requested);
  EXPECT_THAT(events.exits[0].reason, HasSubstr("lost with node remote"));
  // The agent's end killed what the server gave up.
  EXPECT_TRUE(eventually([&] { return processes_with(token_, false) == 0; }));
}

TEST_P(RemoteNodeTest, ALostConnectionReportsItsReplicasLostAndTheAgentKillsThem) {
  auto& loop = static_cast<Loopback&>(*under_);
  auto replica = node().start_replica(replica_assignment(token_, "web-9", replica_events_));
  loop.cut();
  loop.remote().lose("connection reset");
  ASSERT_EQ(replica_events_.exit_count(), 1u);
  EXPECT_FALSE(replica_events_.exits[0].requested);
  EXPECT_THAT(replica_events_.exits[0].reason, HasSubstr("lost with node remote"));
  EXPECT_FALSE(replica->alive());
  EXPECT_TRUE(eventually([&] { return processes_with(token_, false) == 0; }));
}

// A path would name a directory of the agent's machine: an agent runs only code fetched by digest.
TEST_P(RemoteNodeTest, AnAssignmentNamingACodePathIsRefused) {
  Events& events = events_;
  auto a = assignment("echo:handler", events);
  a.instance.spec.clear_code_digest();
  a.instance.spec.set_code(k_handlers.string());
  try {
    node().start(a);
    FAIL() << "started from a path";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_THAT(e.message(), HasSubstr("runs code fetched by its digest only"));
  }
  EXPECT_EQ(processes_with(token_, false), 0);
}

INSTANTIATE_TEST_SUITE_P(Nodes, RemoteNodeTest, ::testing::Values(Kind::remote),
                         [](const auto&) { return "RemoteNode"; });

}  // namespace

namespace {

// The agent channel's messages: several frames each, in order (a write carries what queued).
TEST(AgentMessage, HoldsFramesInOrderAndRefusesAMalformedOneAfterThoseBefore) {
  auto delimited = [](const v1::AgentFrame& f) {
    std::string bytes = f.SerializeAsString();
    std::string out;
    for (std::size_t n = bytes.size(); n >= 0x80; n >>= 7) {
      out.push_back(static_cast<char>((n & 0x7f) | 0x80));
    }
    out.push_back(static_cast<char>(bytes.size() >> (7 * (out.size()))));
    return out + bytes;
  };
  v1::AgentFrame a, b;
  a.mutable_heartbeat()->set_sequence(1);
  b.mutable_ping()->set_sent_us(42);
  std::vector<v1::AgentFrame> seen;
  auto collect = [&](v1::AgentFrame& f) { seen.push_back(f); };
  const std::string message = delimited(a) + delimited(b);
  ASSERT_TRUE(blixard::decode_frames(message, collect));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].heartbeat().sequence(), 1u);
  EXPECT_EQ(seen[1].ping().sent_us(), 42);

  seen.clear();
  EXPECT_FALSE(blixard::decode_frames(message + "\x05xx", collect)) << "a frame cut short";
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_FALSE(blixard::decode_frames(std::string("\x00", 1), collect)) << "a frame of no kind";
  EXPECT_FALSE(blixard::decode_frames("", collect));
  EXPECT_FALSE(blixard::decode_frames("\xff\xff\xff\xff\x7f", collect)) << "a length past the end";
}

}  // namespace

namespace {

// A node's latency is the least of its recent round trips: one busy moment does not make it far,
// and a path that got slower shows once its fast samples age out.
TEST(NodeRegistryLatency, TheLeastOfRecentRoundTripsCounts) {
  const fs::path dir =
      fs::temp_directory_path() / ("blixard-registry-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    blixard::control::NodeRegistry nodes(blixard::store::open_sqlite((dir / "s.db").string()));
    Fetches fetches;
    nodes.join(make_local_node(dir / "node", "n1", fetches), /*in_process=*/false);
    EXPECT_FALSE(nodes.round_trip("n1")) << "measured before any ping";
    nodes.measured("n1", 5ms);
    nodes.measured("n1", 300us);
    nodes.measured("n1", 8ms);
    nodes.measured("n1", 9ms);
    EXPECT_FALSE(nodes.round_trip("n1")) << "known from four samples";
    nodes.measured("n1", 7ms);
    EXPECT_EQ(*nodes.round_trip("n1"), 300us);
    for (int i = 0; i < 10; ++i) nodes.measured("n1", 2ms);
    EXPECT_EQ(*nodes.round_trip("n1"), 2ms);
    nodes.shutdown();
  }
  fs::remove_all(dir);
}

}  // namespace

namespace {

// Agents time their round trips to each other over UDP probes; only probes get an answer.
TEST(LatencyProbe, TimesRoundTripsToPeersThatAnswerAndAnswersOnlyProbes) {
  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);
  std::thread runner([&] { io.run(); });
  {
    blixard::agent::LatencyProbe a(io.get_executor()), b(io.get_executor());
    ASSERT_NE(b.port(), 0);
    // A port nobody answers on: a socket bound and never read.
    boost::asio::ip::udp::socket silent(io, {boost::asio::ip::udp::v4(), 0});
    std::promise<std::vector<blixard::agent::LatencyProbe::RoundTrip>> done;
    a.measure(
        {{"b", "127.0.0.1", b.port()},
         {"silent", "127.0.0.1", silent.local_endpoint().port()},
         {"bad-address", "not an address", 9}},
        [&](auto trips) { done.set_value(std::move(trips)); }, 300ms);
    const auto trips = done.get_future().get();
    ASSERT_EQ(trips.size(), 1u);
    EXPECT_EQ(trips[0].node, "b");
    EXPECT_GT(trips[0].rtt.count(), 0);
    EXPECT_LT(trips[0].rtt, 300ms);

    // Anything but a 16-byte probe question goes unanswered.
    boost::asio::ip::udp::socket client(io, {boost::asio::ip::udp::v4(), 0});
    const boost::asio::ip::udp::endpoint to(boost::asio::ip::make_address("127.0.0.1"), b.port());
    for (const std::string& junk :
         {std::string("BLXPA\0\0\0\0\0\0\0\0\0\0\0", 16), std::string(16, 'x'),
          std::string("BLXPQ") + std::string(30, 0)}) {
      client.send_to(boost::asio::buffer(junk), to);
    }
    timeval wait{0, 300'000};
    ::setsockopt(client.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    char reply[64];
    EXPECT_LT(::recv(client.native_handle(), reply, sizeof reply, 0), 0) << "junk was answered";
    // A question is answered with itself, marked as an answer.
    client.send_to(boost::asio::buffer(std::string("BLXPQ\0\0\0\0\0\0\0\0\0\0\1", 16)), to);
    ASSERT_EQ(::recv(client.native_handle(), reply, sizeof reply, 0), 16);
    EXPECT_EQ(std::string(reply, 16), std::string("BLXPA\0\0\0\0\0\0\0\0\0\0\1", 16));
    a.close();
    b.close();
  }
  guard.reset();
  runner.join();
}

// The caller's node is known by the address a call came from: its own node first, then the nodes
// its agent measured nearest; a call from anywhere else is the server's.
TEST(NodeRegistryLatency, ACallFromANodesAddressPrefersThatNodeThenItsNearPeers) {
  const fs::path dir =
      fs::temp_directory_path() / ("blixard-caller-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    blixard::control::NodeRegistry nodes(blixard::store::open_sqlite((dir / "s.db").string()));
    auto remote = [](const std::string& name, const std::string& address) {
      v1::NodeSpec spec;
      spec.set_address(address);
      spec.set_memory_mib(4096);
      spec.set_vcpu(4);
      spec.set_probe_port(7000);
      control::RemoteNode::Link link;
      link.send = [](const v1::AgentFrame&) { return true; };
      return std::make_shared<control::RemoteNode>(name, spec, link);
    };
    for (const auto& [name, address] :
         {std::pair{"a", "10.9.0.1"}, std::pair{"b", "10.9.0.2"}, std::pair{"c", "10.9.0.3"}}) {
      nodes.join(remote(name, address), /*in_process=*/false);
    }
    nodes.peer_measured("a", "b", 40ms);
    nodes.peer_measured("a", "c", 300us);
    EXPECT_EQ(nodes.peer_round_trips("c").at("a"), 300us);
    EXPECT_EQ(nodes.probe_targets("a", 16).size(), 2u);
    EXPECT_EQ(nodes.probe_targets("a", 1).size(), 1u);

    v1::FunctionSpec spec;
    spec.set_memory_mib(64);
    control::PlacementRequest request;
    request.function = "fn";
    request.spec = &spec;
    request.caller_address = "10.9.0.1";
    auto placed = nodes.place(request);
    EXPECT_EQ(placed.node->name(), "a");
    EXPECT_THAT(placed.reasons, HasSubstr("on the caller's node"));
    nodes.cordon("a", true);
    placed = nodes.place(request);
    EXPECT_EQ(placed.node->name(), "c");
    EXPECT_THAT(placed.reasons, HasSubstr("0.3 ms from caller"));
    // Two nodes behind one address (a NAT): which one called is not known, the server is.
    nodes.join(remote("d", "10.9.0.4"), false);
    nodes.join(remote("e", "10.9.0.4"), false);
    request.caller_address = "10.9.0.4";
    EXPECT_THAT(nodes.place(request).reasons, ::testing::Not(HasSubstr("caller")));
    request.caller_address = "192.0.2.7";  // no node's: the server is the caller
    placed = nodes.place(request);
    EXPECT_EQ(placed.node->name(), "c") << "binpack: the fullest of equals";
    EXPECT_THAT(placed.reasons, ::testing::Not(HasSubstr("caller"))) << "none measured to it";
    nodes.shutdown();
  }
  fs::remove_all(dir);
}

}  // namespace

namespace {

// The server's end of an agent connection with the agent played by the test: what goes down is
// recorded, what comes up is handed to the node as the channel would.
class ScriptedAgent {
 public:
  explicit ScriptedAgent(const std::string& name) {
    // The node may outlive this object (the registry holds it): its link holds the state.
    control::RemoteNode::Link link;
    link.send = [wire = wire_](const v1::AgentFrame& f) {
      std::lock_guard lock(wire->mutex);
      if (wire->closed) return false;
      wire->down.push_back(f);
      wire->changed.notify_all();
      return true;
    };
    link.close = [wire = wire_] {
      std::lock_guard lock(wire->mutex);
      wire->closed = true;
    };
    node = std::make_shared<control::RemoteNode>(name, v1::NodeSpec(), link);
  }

  // The first frame down (from `from` on) that `match` accepts, waiting up to 10 s.
  std::optional<v1::AgentFrame> down(const std::function<bool(const v1::AgentFrame&)>& match,
                                     std::size_t from = 0) {
    std::unique_lock lock(wire_->mutex);
    std::optional<v1::AgentFrame> found;
    wire_->changed.wait_for(lock, 10s, [&] {
      for (std::size_t i = from; i < wire_->down.size(); ++i) {
        if (match(wire_->down[i])) {
          found = wire_->down[i];
          return true;
        }
      }
      return false;
    });
    return found;
  }
  std::size_t sent() {
    std::lock_guard lock(wire_->mutex);
    return wire_->down.size();
  }

  // Starts a replica of `name` through the node; the agent answers that it started, kept across
  // a lost connection (a guest) or not (a sandboxed process).
  std::shared_ptr<runtime::Replica> start(const std::string& name, std::int64_t epoch, bool kept,
                                          ReplicaEvents& events) {
    control::ReplicaAssignment a;
    a.epoch = epoch;
    a.replica.vm = "web";
    a.replica.name = name;
    a.replica.on_exit = [&events](const runtime::ReplicaExit& exit) {
      std::lock_guard lock(events.mutex);
      events.exits.push_back(exit);
    };
    const std::size_t from = sent();
    auto started = std::async(std::launch::async, [&] { return node->start_replica(a); });
    auto assign = down([&](const auto& f) { return f.has_assign_replica(); }, from);
    if (!assign) return nullptr;
    v1::AgentFrame up;
    auto& r = *up.mutable_replica_started();
    r.set_id(assign->assign_replica().id());
    r.set_replica(name);
    r.set_kept(kept);
    node->receive(up);
    return started.get();
  }

  std::shared_ptr<control::RemoteNode> node;

 private:
  struct Wire {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<v1::AgentFrame> down;
    bool closed = false;
  };
  std::shared_ptr<Wire> wire_ = std::make_shared<Wire>();
};

std::vector<v1::RunningInstance> running(
    std::initializer_list<std::pair<const char*, std::int64_t>> names) {
  std::vector<v1::RunningInstance> out;
  for (const auto& [name, epoch] : names) {
    out.emplace_back().set_instance(name);
    out.back().set_epoch(epoch);
  }
  return out;
}

class NodeRegistryAdoption : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("blixard-adoption-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    control::NodeRegistryOptions options;
    options.lease = 300ms;
    options.heartbeat = 50ms;
    nodes_ = std::make_unique<control::NodeRegistry>(
        blixard::store::open_sqlite((dir_ / "s.db").string()), options);
  }
  void TearDown() override {
    nodes_->shutdown();
    nodes_.reset();
    fs::remove_all(dir_);
  }
  // A guest "web-1" started on node n1's first connection, which is then lost: held.
  struct Held {
    ScriptedAgent agent{"n1"};
    std::int64_t epoch = 0;
    ReplicaEvents events;
    std::shared_ptr<runtime::Replica> guest;
  };
  std::unique_ptr<Held> held_guest() {
    auto h = std::make_unique<Held>();
    h->epoch = nodes_->join(h->agent.node, false);
    h->guest = h->agent.start("web-1", h->epoch, true, h->events);
    if (h->guest) nodes_->disconnected(h->agent.node, "disconnected: connection reset");
    return h;
  }
  // The names node n1's agent, back on a new connection saying it runs `names`, adopts.
  std::vector<std::string> rejoin(
      std::initializer_list<std::pair<const char*, std::int64_t>> names) {
    ScriptedAgent again("n1");
    std::vector<std::string> adopted{"sentinel"};
    nodes_->join(again.node, false, running(names), &adopted);
    return adopted;
  }

  fs::path dir_;
  std::unique_ptr<control::NodeRegistry> nodes_;
};

// A kept replica (a guest, a joined agent's sandboxed one) outlives its agent's connection: the
// server holds it (alive, no exit) until the agent is back, which adopts it under the new epoch;
// one not kept (a primary, a replica of an embedded agent) is lost at once. The adopted one is
// reached over the new connection.
TEST_F(NodeRegistryAdoption, AKeptReplicaIsHeldThenAdoptedByTheAgentsNextConnection) {
  ScriptedAgent first("n1");
  const auto epoch = nodes_->join(first.node, false);
  ReplicaEvents guest_events, process_events;
  auto guest = first.start("web-1", epoch, /*kept=*/true, guest_events);
  auto process = first.start("web-2", epoch, /*kept=*/false, process_events);
  ASSERT_TRUE(guest && process);

  nodes_->disconnected(first.node, "disconnected: connection reset");
  EXPECT_TRUE(guest->alive());
  EXPECT_EQ(guest_events.exit_count(), 0U);
  EXPECT_FALSE(process->alive());
  ASSERT_EQ(process_events.exit_count(), 1U);
  EXPECT_THAT(process_events.exits[0].reason, HasSubstr("lost with node n1"));

  ScriptedAgent second("n1");
  std::vector<std::string> adopted;
  const auto next =
      nodes_->join(second.node, false, running({{"web-1", epoch}, {"web-2", epoch}}), &adopted);
  EXPECT_GT(next, epoch);
  EXPECT_THAT(adopted, ::testing::ElementsAre("web-1"));
  EXPECT_TRUE(guest->alive());
  EXPECT_EQ(guest_events.exit_count(), 0U);

  const std::size_t before = first.sent();
  guest->kill();
  auto stop = second.down([](const auto& f) { return f.has_stop() && f.stop().kill(); });
  ASSERT_TRUE(stop) << "the kill went nowhere";
  EXPECT_EQ(stop->stop().instance(), "web-1");
  EXPECT_EQ(first.sent(), before) << "sent on the old connection";
  v1::AgentFrame exited;
  exited.mutable_exited()->set_instance("web-1");
  exited.mutable_exited()->set_requested(true);
  second.node->receive(exited);
  EXPECT_FALSE(guest->alive());
  ASSERT_EQ(guest_events.exit_count(), 1U);
  EXPECT_TRUE(guest_events.exits[0].requested);

  // One its agent reports under another epoch than it was started under is not the one held.
  ReplicaEvents again_events;
  auto again = second.start("web-3", next, true, again_events);
  nodes_->disconnected(second.node, "disconnected: reset");
  ScriptedAgent third("n1");
  adopted.clear();
  nodes_->join(third.node, false, running({{"web-3", epoch}}), &adopted);
  EXPECT_TRUE(adopted.empty()) << "adopted under an epoch it was not started under";
  EXPECT_FALSE(again->alive());
  ASSERT_EQ(again_events.exit_count(), 1U);
  EXPECT_FALSE(again_events.exits[0].requested);
}

// What the server holds it gives up when the node's lease lapses, and an agent back after that
// adopts nothing (its agent then stops the guest as an older epoch's).
TEST_F(NodeRegistryAdoption, AHeldReplicaIsLostWhenTheLeaseLapses) {
  auto h = held_guest();
  ASSERT_TRUE(h->guest);
  EXPECT_TRUE(h->guest->alive());
  ASSERT_TRUE(eventually([&] { return h->events.exit_count() == 1; }, 5s));
  EXPECT_FALSE(h->guest->alive());
  EXPECT_FALSE(h->events.exits[0].requested);
  EXPECT_THAT(h->events.exits[0].reason, HasSubstr("lost with node n1"));
  EXPECT_TRUE(rejoin({{"web-1", h->epoch}}).empty());
}

// A held replica the control plane stops meanwhile (a scale-down) is given up at once, as
// stopped, and not adopted when its agent is back.
TEST_F(NodeRegistryAdoption, AHeldReplicaStoppedMeanwhileIsNotAdopted) {
  auto h = held_guest();
  ASSERT_TRUE(h->guest);
  h->guest->stop(10s);
  EXPECT_FALSE(h->guest->alive());
  ASSERT_EQ(h->events.exit_count(), 1U);
  EXPECT_TRUE(h->events.exits[0].requested);
  EXPECT_THAT(h->events.exits[0].reason, HasSubstr("while node n1 was disconnected"));
  EXPECT_TRUE(rejoin({{"web-1", h->epoch}}).empty());
  EXPECT_EQ(h->events.exit_count(), 1U);
}

}  // namespace
