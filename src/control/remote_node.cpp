// A node over the agent channel (see remote_node.hpp).
#include "control/remote_node.hpp"

#include <future>

namespace blixard::control {

using std::chrono::milliseconds;

// A started instance on the agent: calls become Invoke frames, stop and kill StopInstance frames;
// its exit comes back as an InstanceExited frame (or the node's loss).
class RemoteNode::Instance final : public runtime::Instance {
 public:
  Instance(std::shared_ptr<RemoteNode> node, std::string name, std::chrono::microseconds init,
           runtime::InstanceOptions options)
      : node_(std::move(node)), name_(std::move(name)), init_(init), options_(std::move(options)) {}

  const std::string& name() const override { return name_; }
  std::chrono::microseconds init_duration() const override { return init_; }
  bool alive() const override { return alive_.load(); }

  runtime::InvocationResult call(const runtime::Invocation& invocation) override {
    auto done = std::make_shared<std::promise<runtime::InvocationResult>>();
    auto answer = done->get_future();
    node_->call(*this, invocation,
                [done](const std::exception_ptr& error, runtime::InvocationResult result) {
                  if (error) {
                    done->set_exception(error);
                  } else {
                    done->set_value(std::move(result));
                  }
                });
    return answer.get();
  }

  bool call_async(const runtime::Invocation& invocation, const boost::asio::any_io_executor&,
                  runtime::CallCompletion complete) override {
    node_->call(*this, invocation, std::move(complete));
    return true;
  }

  void stop(milliseconds grace) override {
    node_->stop_instance(name_, grace, false);
    // Returns once the agent says it is gone (or the node is), as a local stop does.
    std::unique_lock lock(node_->mutex_);
    node_->changed_.wait_for(lock, grace + std::chrono::seconds(5), [&] { return !alive(); });
  }

  void kill() override { node_->stop_instance(name_, milliseconds(0), true); }

  // The instance is gone: reported once.
  void exited(const runtime::InstanceExit& exit) {
    if (!alive_.exchange(false)) return;
    if (options_.on_exit) options_.on_exit(exit);
  }
  void log(const std::string& stream, std::string line) {
    if (options_.on_log) options_.on_log(name_, stream, std::move(line));
  }

 private:
  std::shared_ptr<RemoteNode> node_;
  std::string name_;
  std::chrono::microseconds init_;
  runtime::InstanceOptions options_;
  std::atomic<bool> alive_{true};
};

// A replica on the agent: stop and kill become StopInstance frames; its exit comes back as an
// InstanceExited frame (or the node's loss).
class RemoteNode::Replica final : public runtime::Replica {
 public:
  Replica(std::shared_ptr<RemoteNode> node, const v1::ReplicaStarted& started,
          runtime::ReplicaOptions options, std::int64_t epoch)
      : node_(std::move(node)),
        name_(started.replica()),
        ports_(started.ports().begin(), started.ports().end()),
        started_in_(started.start_us()),
        options_(std::move(options)),
        epoch_(epoch),
        kept_(started.kept()) {}

  const std::string& name() const override { return name_; }
  bool alive() const override { return alive_.load(); }
  std::map<std::uint32_t, std::uint32_t> ports() const override {
    std::lock_guard lock(ports_mutex_);
    return ports_;
  }
  std::chrono::microseconds start_duration() const override { return started_in_; }

  void stop(milliseconds grace) override {
    auto node = this->node();
    node->stop_instance(name_, grace, false);
    std::unique_lock lock(node->mutex_);
    node->changed_.wait_for(lock, grace + std::chrono::seconds(5), [&] { return !alive(); });
  }
  void kill() override { node()->stop_instance(name_, milliseconds(0), true); }

  // Its agent keeps it across a lost connection (ReplicaStarted.kept): held meanwhile.
  bool kept() const { return kept_; }
  // The node epoch it runs under (its assignment's, or the join's that adopted it).
  std::int64_t epoch() const { return epoch_.load(); }
  // Its node's new connection took it over under `epoch`.
  void adopted_by(std::shared_ptr<RemoteNode> node, std::int64_t epoch) {
    std::lock_guard lock(node_mutex_);
    node_ = std::move(node);
    epoch_ = epoch;
  }
  void promote(const runtime::Promotion& promotion) override {
    kept_ = false;  // a primary is not held across a lost connection (its agent kills it)
    auto ports = node()->promote_replica(name_, promotion);
    std::lock_guard lock(ports_mutex_);
    ports_ = std::move(ports);
  }

  void exited(const runtime::ReplicaExit& exit) {
    if (!alive_.exchange(false)) return;
    if (options_.on_exit) options_.on_exit(exit);
  }
  void log(const std::string& stream, std::string line) {
    if (options_.on_log) options_.on_log(name_, stream, std::move(line));
  }

 private:
  std::shared_ptr<RemoteNode> node() const {
    std::lock_guard lock(node_mutex_);
    return node_;
  }

  mutable std::mutex node_mutex_;
  std::shared_ptr<RemoteNode> node_;
  std::string name_;
  mutable std::mutex ports_mutex_;
  std::map<std::uint32_t, std::uint32_t> ports_;  // a promotion may change them
  std::chrono::microseconds started_in_;
  runtime::ReplicaOptions options_;
  std::atomic<std::int64_t> epoch_;
  std::atomic<bool> kept_;
  std::atomic<bool> alive_{true};
};

RemoteNode::RemoteNode(std::string name, v1::NodeSpec spec, Link link)
    : name_(std::move(name)), spec_(std::move(spec)), link_(std::move(link)) {}

RemoteNode::~RemoteNode() = default;

Error RemoteNode::gone_error() const {
  return {errc::unavailable, "node " + name_ + " is gone: " + lost_why_};
}

std::shared_ptr<runtime::Instance> RemoteNode::start(const Assignment& assignment) {
  PendingStart pending;
  pending.options = assignment.instance;
  const std::uint64_t id = ++next_id_;
  v1::AgentFrame frame;
  auto& assign = *frame.mutable_assign();
  assign.set_id(id);
  assign.set_epoch(assignment.epoch);
  assign.set_function(assignment.instance.function);
  *assign.mutable_spec() = assignment.instance.spec;
  std::unique_lock lock(mutex_);
  if (lost_) throw gone_error();
  starts_[id] = &pending;
  lock.unlock();
  const bool sent = send(frame);
  lock.lock();
  if (!sent && !lost_) {
    starts_.erase(id);
    throw Error(errc::unavailable, "node " + name_ + " is not connected");
  }
  // The agent's driver bounds the start itself; this bounds an agent that stops answering.
  const auto& t = assignment.instance.spec.timeout();
  const auto limit =
      milliseconds(t.seconds() * 1000 + t.nanos() / 1'000'000) + std::chrono::seconds(60);
  if (!changed_.wait_for(lock, limit, [&] { return pending.done; })) {
    starts_.erase(id);
    throw Error(errc::timeout, "node " + name_ + " did not answer a start within " +
                                   std::to_string(limit.count()) + " ms");
  }
  if (pending.error) throw *pending.error;
  return pending.instance;
}

std::shared_ptr<runtime::Replica> RemoteNode::start_replica(const ReplicaAssignment& assignment) {
  PendingReplica pending;
  pending.options = assignment.replica;
  pending.epoch = assignment.epoch;
  const std::uint64_t id = ++next_id_;
  v1::AgentFrame frame;
  auto& assign = *frame.mutable_assign_replica();
  assign.set_id(id);
  assign.set_epoch(assignment.epoch);
  assign.set_vm(assignment.replica.vm);
  assign.set_replica(assignment.replica.name);
  assign.set_slot(assignment.replica.slot);
  *assign.mutable_spec() = assignment.replica.spec;
  if (assignment.replica.volume) *assign.mutable_volume() = *assignment.replica.volume;
  if (assignment.replica.network) *assign.mutable_network() = *assignment.replica.network;
  std::unique_lock lock(mutex_);
  if (lost_) throw gone_error();
  replica_starts_[id] = &pending;
  lock.unlock();
  const bool sent = send(frame);
  lock.lock();
  if (!sent && !lost_) {
    replica_starts_.erase(id);
    throw Error(errc::unavailable, "node " + name_ + " is not connected");
  }
  // The agent's driver bounds readiness itself; this bounds an agent that stops answering.
  const auto limit = std::chrono::minutes(3);
  if (!changed_.wait_for(lock, limit, [&] { return pending.done; })) {
    replica_starts_.erase(id);
    throw Error(errc::timeout, "node " + name_ + " did not answer the start of replica " +
                                   assignment.replica.name + " within 3 minutes");
  }
  if (pending.error) throw *pending.error;
  return pending.replica;
}

void RemoteNode::remove_volume(const v1::VolumeAttachment& volume) {
  PendingRemoval pending;
  const std::uint64_t id = ++next_id_;
  v1::AgentFrame frame;
  auto& remove = *frame.mutable_remove_volume();
  remove.set_id(id);
  *remove.mutable_volume() = volume;
  std::unique_lock lock(mutex_);
  if (lost_) throw gone_error();
  removals_[id] = &pending;
  lock.unlock();
  const bool sent = send(frame);
  lock.lock();
  if (!sent && !lost_) {
    removals_.erase(id);
    throw Error(errc::unavailable, "node " + name_ + " is not connected");
  }
  if (!changed_.wait_for(lock, std::chrono::minutes(1), [&] { return pending.done; })) {
    removals_.erase(id);
    throw Error(errc::timeout, "node " + name_ + " did not answer the removal of volume " +
                                   volume.name() + " within a minute");
  }
  if (pending.error) throw *pending.error;
}

std::map<std::uint32_t, std::uint32_t> RemoteNode::promote_replica(
    const std::string& replica, const runtime::Promotion& promotion) {
  PendingPromotion pending;
  const std::uint64_t id = ++next_id_;
  v1::AgentFrame frame;
  auto& promote = *frame.mutable_promote_replica();
  promote.set_id(id);
  promote.set_replica(replica);
  promote.set_epoch(promotion.epoch);
  promote.set_primary_address(promotion.primary_address);
  *promote.mutable_readiness() = promotion.readiness;
  promote.set_timeout_ms(promotion.timeout.count());
  std::unique_lock lock(mutex_);
  if (lost_) throw gone_error();
  promotions_[id] = &pending;
  lock.unlock();
  const bool sent = send(frame);
  lock.lock();
  if (!sent && !lost_) {
    promotions_.erase(id);
    throw Error(errc::unavailable, "node " + name_ + " is not connected");
  }
  // The agent bounds the promotion by its timeout; this bounds an agent that stops answering.
  if (!changed_.wait_for(lock, promotion.timeout + std::chrono::seconds(10),
                         [&] { return pending.done; })) {
    promotions_.erase(id);
    throw Error(errc::timeout,
                "node " + name_ + " did not answer the promotion of replica " + replica);
  }
  if (pending.error) throw *pending.error;
  return pending.ports;
}

void RemoteNode::overlay_peers(const std::vector<std::string>& addresses) {
  v1::AgentFrame frame;
  // Set even when empty (the last peer left): a frame of no kind is malformed on the channel,
  // and the agent would drop its connection, and its instances with it.
  auto& peers = *frame.mutable_overlay_peers();
  for (const auto& a : addresses) peers.add_addresses(a);
  send(frame);  // not connected: its next replica start brings them
}

std::vector<std::string> RemoteNode::instances() const {
  std::vector<std::string> out;
  std::lock_guard lock(mutex_);
  out.reserve(instances_.size() + replicas_.size());
  for (const auto& [name, in] : instances_) out.push_back(name);
  for (const auto& [name, r] : replicas_) out.push_back(name);
  return out;
}

void RemoteNode::call(Instance& instance, const runtime::Invocation& invocation,
                      runtime::CallCompletion complete) {
  const std::uint64_t id = ++next_id_;
  v1::AgentFrame frame;
  auto& invoke = *frame.mutable_invoke();
  invoke.set_id(id);
  invoke.set_instance(instance.name());
  invoke.set_request_id(invocation.request_id);
  invoke.set_payload(invocation.payload);
  invoke.set_timeout_ms(invocation.timeout.count());
  {
    std::lock_guard lock(mutex_);
    if (lost_) throw gone_error();
    if (!instance.alive()) {
      throw Error(errc::unavailable, "instance " + instance.name() + " is no longer running");
    }
    calls_[id] = {instance.name(), std::move(complete)};
  }
  if (!send(frame)) {
    std::lock_guard lock(mutex_);
    // Unless lose() took it (and completes it), nothing was sent: say so here.
    if (calls_.erase(id) != 0)
      throw Error(errc::unavailable, "node " + name_ + " is not connected");
  }
}

std::vector<std::string> RemoteNode::adopt(Node& previous,
                                           const std::vector<v1::RunningInstance>& running,
                                           std::int64_t epoch) {
  auto* last = dynamic_cast<RemoteNode*>(&previous);
  if (last == nullptr || last == this) return {};
  std::vector<std::shared_ptr<Replica>> taken;
  {
    std::lock_guard lock(last->mutex_);
    for (const auto& r : running) {
      auto it = last->held_.find(r.instance());
      // The same start of it: a replica of that name under another epoch is not the one held.
      if (it == last->held_.end() || it->second->epoch() != r.epoch()) continue;
      taken.push_back(std::move(it->second));
      last->held_.erase(it);
    }
  }
  std::vector<std::string> names;
  std::lock_guard lock(mutex_);
  for (auto& replica : taken) {
    replica->adopted_by(shared_from_this(), epoch);
    names.push_back(replica->name());
    replicas_[replica->name()] = std::move(replica);
  }
  return names;
}

void RemoteNode::stop_instance(const std::string& instance, milliseconds grace, bool kill) {
  std::shared_ptr<Replica> held;
  {
    std::lock_guard lock(mutex_);
    if (auto it = held_.find(instance); it != held_.end()) {
      held = std::move(it->second);
      held_.erase(it);
    }
  }
  if (held) {
    // Its agent is away: given up here, and not adopted when the agent is back, which then
    // stops it (an older epoch's).
    runtime::ReplicaExit exit;
    exit.replica = instance;
    exit.reason = "was stopped while node " + name_ + " was disconnected";
    exit.requested = true;
    held->exited(exit);
    { std::lock_guard lock(mutex_); }
    changed_.notify_all();
    return;
  }
  v1::AgentFrame frame;
  auto& stop = *frame.mutable_stop();
  stop.set_instance(instance);
  stop.set_grace_ms(grace.count());
  stop.set_kill(kill);
  send(frame);  // a closed connection has stopped it already, as far as we are concerned
}

void RemoteNode::receive(v1::AgentFrame& frame) {
  switch (frame.kind_case()) {
    case v1::AgentFrame::kStarted: {
      auto& started = *frame.mutable_started();
      std::lock_guard lock(mutex_);
      auto it = starts_.find(started.id());
      if (it == starts_.end()) {
        // Its start timed out here meanwhile: nobody holds it, so it must not run.
        if (!started.instance().empty()) stop_instance(started.instance(), milliseconds(0), true);
        return;
      }
      PendingStart& pending = *it->second;
      starts_.erase(it);
      if (started.has_error()) {
        pending.error = Error(started.error());
      } else {
        pending.instance = std::make_shared<Instance>(shared_from_this(), started.instance(),
                                                      std::chrono::microseconds(started.init_us()),
                                                      pending.options);
        instances_[started.instance()] = pending.instance;
      }
      pending.done = true;
      changed_.notify_all();
      return;
    }
    case v1::AgentFrame::kReplicaStarted: {
      const auto& started = frame.replica_started();
      std::lock_guard lock(mutex_);
      auto it = replica_starts_.find(started.id());
      if (it == replica_starts_.end()) {
        if (!started.has_error()) stop_instance(started.replica(), milliseconds(0), true);
        return;
      }
      PendingReplica& pending = *it->second;
      replica_starts_.erase(it);
      if (started.has_error()) {
        pending.error = Error(started.error());
      } else {
        pending.replica =
            std::make_shared<Replica>(shared_from_this(), started, pending.options, pending.epoch);
        replicas_[started.replica()] = pending.replica;
      }
      pending.done = true;
      changed_.notify_all();
      return;
    }
    case v1::AgentFrame::kVolumeRemoved: {
      const auto& removed = frame.volume_removed();
      std::lock_guard lock(mutex_);
      auto it = removals_.find(removed.id());
      if (it == removals_.end()) return;
      if (removed.has_error()) it->second->error = Error(removed.error());
      it->second->done = true;
      removals_.erase(it);
      changed_.notify_all();
      return;
    }
    case v1::AgentFrame::kReplicaPromoted: {
      const auto& promoted = frame.replica_promoted();
      std::lock_guard lock(mutex_);
      auto it = promotions_.find(promoted.id());
      if (it == promotions_.end()) return;
      if (promoted.has_error()) it->second->error = Error(promoted.error());
      it->second->ports.insert(promoted.ports().begin(), promoted.ports().end());
      it->second->done = true;
      promotions_.erase(it);
      changed_.notify_all();
      return;
    }
    case v1::AgentFrame::kResult: {
      auto& result = *frame.mutable_result();
      runtime::CallCompletion complete;
      {
        std::lock_guard lock(mutex_);
        auto it = calls_.find(result.id());
        if (it == calls_.end()) return;
        complete = std::move(it->second.complete);
        calls_.erase(it);
      }
      if (result.has_error()) {
        complete(std::make_exception_ptr(Error(result.error())), {});
      } else {
        runtime::InvocationResult out;
        out.result = std::move(*result.mutable_result());
        out.duration = std::chrono::microseconds(result.duration_us());
        out.cold_start = false;
        complete(nullptr, std::move(out));
      }
      return;
    }
    case v1::AgentFrame::kExited: {
      const auto& exited = frame.exited();
      std::shared_ptr<Instance> instance;
      std::shared_ptr<Replica> replica;
      {
        std::lock_guard lock(mutex_);
        if (auto it = instances_.find(exited.instance()); it != instances_.end()) {
          instance = std::move(it->second);
          instances_.erase(it);
        } else if (auto r = replicas_.find(exited.instance()); r != replicas_.end()) {
          replica = std::move(r->second);
          replicas_.erase(r);
        } else {
          return;
        }
      }
      if (replica) {
        runtime::ReplicaExit exit;
        exit.replica = exited.instance();
        exit.reason = exited.reason();
        exit.requested = exited.requested();
        exit.oom = exited.oom();
        replica->exited(exit);
        { std::lock_guard lock(mutex_); }
        changed_.notify_all();
        return;
      }
      runtime::InstanceExit exit;
      exit.instance = exited.instance();
      exit.reason = exited.reason();
      exit.requested = exited.requested();
      exit.oom = exited.oom();
      instance->exited(exit);
      { std::lock_guard lock(mutex_); }  // a stop() waiting sees alive() false, or is woken
      changed_.notify_all();
      return;
    }
    case v1::AgentFrame::kLog: {
      auto& log = *frame.mutable_log();
      std::shared_ptr<Instance> instance;
      std::shared_ptr<Replica> replica;
      runtime::ReplicaOptions::LogCallback starting;  // a replica's console before it is ready
      {
        std::lock_guard lock(mutex_);
        if (auto it = instances_.find(log.instance()); it != instances_.end()) {
          instance = it->second;
        } else if (auto r = replicas_.find(log.instance()); r != replicas_.end()) {
          replica = r->second;
        } else {
          for (const auto& [id, pending] : replica_starts_) {
            if (pending->options.name == log.instance()) starting = pending->options.on_log;
          }
        }
      }
      if (instance) instance->log(log.stream(), std::move(*log.mutable_line()));
      if (replica) replica->log(log.stream(), std::move(*log.mutable_line()));
      if (starting) starting(log.instance(), log.stream(), std::move(*log.mutable_line()));
      return;
    }
    default:
      return;  // heartbeats are the channel's; anything else is ignored
  }
}

void RemoteNode::lose(const std::string& why, bool hold) {
  std::map<std::uint64_t, PendingCall> calls;
  std::map<std::string, std::shared_ptr<Instance>> instances;
  std::map<std::string, std::shared_ptr<Replica>> replicas;
  std::string reason;
  {
    std::lock_guard lock(mutex_);
    if (lost_) {
      // Disconnected before: what it held is given up now (its lease lapsed, or its agent came
      // back without it).
      if (hold) return;
      replicas.swap(held_);
      reason = lost_why_ + ", then " + why;
    } else {
      lost_ = true;
      lost_why_ = why;
      reason = why;
      for (auto& [id, pending] : starts_) {
        pending->error = gone_error();
        pending->done = true;
      }
      starts_.clear();
      for (auto& [id, pending] : replica_starts_) {
        pending->error = gone_error();
        pending->done = true;
      }
      replica_starts_.clear();
      for (auto& [id, pending] : removals_) {
        pending->error = gone_error();
        pending->done = true;
      }
      removals_.clear();
      for (auto& [id, pending] : promotions_) {
        pending->error = gone_error();
        pending->done = true;
      }
      promotions_.clear();
      calls.swap(calls_);
      instances.swap(instances_);
      replicas.swap(replicas_);
      if (hold) {
        // Only what its agent keeps: the rest (a sandboxed process, which dies with its agent; a
        // primary, which the set fails over at once) is given up now, as the agent gives it up.
        for (auto it = replicas.begin(); it != replicas.end();) {
          if (!it->second->kept()) {
            ++it;
          } else {
            held_[it->first] = std::move(it->second);
            it = replicas.erase(it);
          }
        }
      }
    }
  }
  changed_.notify_all();
  if (link_.close) link_.close();
  const Error gone = gone_error();
  for (auto& [id, call] : calls) call.complete(std::make_exception_ptr(gone), {});
  for (auto& [name, instance] : instances) {
    runtime::InstanceExit exit;
    exit.instance = name;
    exit.reason = "was lost with node " + name_ + " (" + reason + ")";
    instance->exited(exit);
  }
  for (auto& [name, replica] : replicas) {
    runtime::ReplicaExit exit;
    exit.replica = name;
    exit.reason = "was lost with node " + name_ + " (" + reason + ")";
    replica->exited(exit);
  }
  { std::lock_guard lock(mutex_); }
  changed_.notify_all();
}

}  // namespace blixard::control
