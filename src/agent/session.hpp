// The agent's end of the agent channel: frames from the server (welcome, assign, invoke, stop) run
// on this machine's LocalNode, and what happens comes back as frames (started, result, exited,
// log). Transport-free like control::RemoteNode, its counterpart: the WebSocket client
// (agent/join.hpp) and the tests' loopback both drive it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "agent/fence_watchdog.hpp"
#include "agent/local_node.hpp"
#include "blixard/v1/agent.pb.h"

namespace blixard::agent {

class Session {
  struct Outbox;  // (below)

 public:
  // Queues one frame to the server; thread-safe. False once the connection is closed.
  using Send = std::function<bool(const v1::AgentFrame&)>;

  // What outlives one connection to the server (docs/vms.md, "Agent restarts"): the guests
  // (runtime::Replica::outlives_agent) that are no set's primary, kept running from a
  // connection's end until the next welcome says whether the server still holds them, and the
  // way their console lines and exits go up: the connection of the moment. One per agent,
  // shared by its sessions in turn.
  class Keeper : public std::enable_shared_from_this<Keeper> {
   public:
    // The callbacks of a replica the keeper's sessions start or the agent takes back.
    runtime::ReplicaOptions::LogCallback on_log();
    std::function<void(const runtime::ReplicaExit&)> on_exit();
    // Replicas taken back from an earlier agent (LocalNode::adopt_leftovers), kept as if from
    // before a reconnect.
    void keep(const std::vector<std::shared_ptr<runtime::Replica>>& replicas);

   private:
    friend class Session;
    std::mutex mutex_;
    std::weak_ptr<Outbox> current_;
    std::map<std::string, std::shared_ptr<runtime::Replica>> kept_;
  };

  // Calls' answers are read on `executor`'s reactor (it must keep running until close()).
  // `watchdog`: armed with each replica started under a fencing epoch (none: not fenced).
  // `keeper`: the agent's (none: every replica ends with this session).
  Session(std::shared_ptr<LocalNode> node, boost::asio::any_io_executor executor, Send send,
          std::shared_ptr<FenceWatchdog> watchdog = nullptr,
          std::shared_ptr<Keeper> keeper = nullptr);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The first frame up: who this node is and what it still runs.
  v1::AgentFrame hello(const std::string& version) const;
  // A frame from the server. A welcome fences what older epochs started.
  void receive(v1::AgentFrame& frame);
  // The connection is gone: nothing more is sent; the replicas the server was told are kept
  // (ReplicaStarted.kept) go to the keeper, and the rest this session started are killed (the
  // server has given them up and places them again); starts in progress end.
  void close();

 private:
  struct Started {
    std::shared_ptr<runtime::Instance> instance;
    std::shared_ptr<const v1::FunctionSpec> spec;
    std::string function;
  };
  // What the instances' callbacks (exits, logs, answers) reach: the way up and the instances
  // started. It does not own the node: a callback runs on a thread of the node's driver, so if it
  // held the last reference to the Session it would destroy the driver from one of the driver's
  // own threads, and the driver's destructor would wait for that thread forever.
  struct Outbox {
    Outbox(Send send, std::shared_ptr<FenceWatchdog> watchdog)
        : send_(std::move(send)), watchdog(std::move(watchdog)) {}
    bool send(const v1::AgentFrame& frame);
    void answer(std::uint64_t id, const std::exception_ptr& error,
                runtime::InvocationResult result);
    // An instance's or replica's console line, and its exit (by its name on the node).
    void log(const std::string& instance, const std::string& stream, std::string line);
    void exited(const std::string& instance, const std::string& reason, bool requested, bool oom);
    // A replica's exit: forgotten here (and disarmed), then said.
    void replica_exited(const runtime::ReplicaExit& exit);

    Send send_;
    std::mutex mutex;
    bool closed = false;
    std::map<std::string, Started> instances;
    std::map<std::string, std::shared_ptr<runtime::Replica>> replicas;
    std::shared_ptr<FenceWatchdog> watchdog;
    std::map<std::string, int> fenced;  // replicas armed, by name: their process
    std::set<std::string> kept;         // replicas the keeper takes when the connection ends
  };
  void assign(const v1::Assign& assign);
  void assign_replica(const v1::AssignReplica& assign);
  void remove_volume(const v1::RemoveVolume& remove);
  void promote_replica(const v1::PromoteReplica& promote);
  void invoke(v1::Invoke& invoke);
  void stop(const v1::StopInstance& stop);

  // The welcome's epoch, and the replicas the server still holds back from the keeper.
  void welcome(const v1::AgentWelcome& welcome);

  std::shared_ptr<LocalNode> node_;
  boost::asio::any_io_executor executor_;
  std::shared_ptr<Outbox> out_;
  std::shared_ptr<Keeper> keeper_;
};

}  // namespace blixard::agent
