// A node on the other end of the agent channel (DESIGN §4): starts, calls and stops travel as
// AgentFrames (proto/blixard/v1/agent.proto) matched by ids, so any number are in flight on the
// one connection. Transport-free: the channel hands it the agent's frames (`receive`) and gives
// it a way to send (`Link`); the same class serves a WebSocket and an in-process loopback.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "blixard/v1/agent.pb.h"
#include "control/node.hpp"

namespace blixard::control {

class RemoteNode final : public Node, public std::enable_shared_from_this<RemoteNode> {
 public:
  struct Link {
    // Queues one frame to the agent; thread-safe, does not block on the network. False once the
    // connection is closed.
    std::function<bool(const v1::AgentFrame&)> send;
    // Closes the connection (the node was given up); may be called more than once.
    std::function<void()> close;
  };

  RemoteNode(std::string name, v1::NodeSpec spec, Link link);
  ~RemoteNode() override;

  const std::string& name() const override { return name_; }
  v1::NodeSpec describe() const override { return spec_; }
  std::shared_ptr<runtime::Instance> start(const Assignment& assignment) override;
  std::shared_ptr<runtime::Replica> start_replica(const ReplicaAssignment& assignment) override;
  void remove_volume(const v1::VolumeAttachment& volume) override;
  void overlay_peers(const std::vector<std::string>& addresses) override;
  std::vector<std::string> instances() const override;
  // The node is given up (lost, disconnected, server shutting down): the connection is closed,
  // starts and calls in flight fail with unavailable, instances exit as lost (and the replicas
  // held since a disconnect).
  void shutdown() override { lose("the server gave the node up", false); }
  // As shutdown(), but the replicas its agent keeps across a lost connection (guests that are no
  // set's primary: ReplicaStarted.kept) are held, alive, for the node's next connection to adopt;
  // a stop meanwhile gives one up (its agent, back, stops it).
  void disconnect(const std::string& why) override { lose(why, true); }
  std::vector<std::string> adopt(Node& previous, const std::vector<v1::RunningInstance>& running,
                                 std::int64_t epoch) override;

  // A frame from the agent, on the channel's thread: started, result, exited, log.
  void receive(v1::AgentFrame& frame);
  // The connection is gone: as shutdown(), with `why` in the errors (and as disconnect() with
  // `hold`).
  void lose(const std::string& why, bool hold = false);

 private:
  class Instance;
  class Replica;
  struct PendingStart {
    runtime::InstanceOptions options;
    bool done = false;
    std::shared_ptr<Instance> instance;
    std::optional<Error> error;
  };
  struct PendingReplica {
    runtime::ReplicaOptions options;
    std::int64_t epoch = 0;
    bool done = false;
    std::shared_ptr<Replica> replica;
    std::optional<Error> error;
  };
  struct PendingRemoval {
    bool done = false;
    std::optional<Error> error;
  };
  struct PendingPromotion {
    bool done = false;
    std::map<std::uint32_t, std::uint32_t> ports;
    std::optional<Error> error;
  };
  struct PendingCall {
    std::string instance;
    runtime::CallCompletion complete;
  };
  bool send(const v1::AgentFrame& frame) { return link_.send(frame); }
  // Sends an invocation; its answer runs `complete` (on the channel's thread).
  void call(Instance& instance, const runtime::Invocation& invocation,
            runtime::CallCompletion complete);
  void stop_instance(const std::string& instance, std::chrono::milliseconds grace, bool kill);
  // A PromoteReplica frame, and its answer: the replica's ports as the primary.
  std::map<std::uint32_t, std::uint32_t> promote_replica(const std::string& replica,
                                                         const runtime::Promotion& promotion);
  Error gone_error() const;

  std::string name_;
  v1::NodeSpec spec_;
  Link link_;
  std::atomic<std::uint64_t> next_id_{0};
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool lost_ = false;
  std::string lost_why_;
  std::map<std::uint64_t, PendingStart*> starts_;
  std::map<std::uint64_t, PendingReplica*> replica_starts_;
  std::map<std::uint64_t, PendingRemoval*> removals_;
  std::map<std::uint64_t, PendingPromotion*> promotions_;
  std::map<std::uint64_t, PendingCall> calls_;
  std::map<std::string, std::shared_ptr<Instance>> instances_;
  std::map<std::string, std::shared_ptr<Replica>> replicas_;
  std::map<std::string, std::shared_ptr<Replica>> held_;  // since disconnect(), for adopt()
};

}  // namespace blixard::control
