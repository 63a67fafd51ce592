// The agent's end of the agent channel (see session.hpp).
#include "agent/session.hpp"

#include <thread>

#include "blixard/error.hpp"

namespace blixard::agent {
namespace {

v1::Status status_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return e.status();
  } catch (const std::exception& e) {
    return Error(errc::internal, e.what()).status();
  }
}

}  // namespace

Session::Session(std::shared_ptr<LocalNode> node, boost::asio::any_io_executor executor, Send send,
                 std::shared_ptr<FenceWatchdog> watchdog, std::shared_ptr<Keeper> keeper)
    : node_(std::move(node)),
      executor_(std::move(executor)),
      out_(std::make_shared<Outbox>(std::move(send), std::move(watchdog))),
      keeper_(std::move(keeper)) {
  if (keeper_) {
    std::lock_guard lock(keeper_->mutex_);
    keeper_->current_ = out_;
  }
}

runtime::ReplicaOptions::LogCallback Session::Keeper::on_log() {
  // Weak: a replica's callback must not be what keeps the keeper (and its replicas) alive.
  return [weak = weak_from_this()](const std::string& replica, const std::string& stream,
                                   std::string line) {
    auto keeper = weak.lock();
    if (!keeper) return;
    std::shared_ptr<Outbox> out;
    {
      std::lock_guard lock(keeper->mutex_);
      out = keeper->current_.lock();
    }
    if (out) out->log(replica, stream, std::move(line));
  };
}

std::function<void(const runtime::ReplicaExit&)> Session::Keeper::on_exit() {
  return [weak = weak_from_this()](const runtime::ReplicaExit& exit) {
    auto keeper = weak.lock();
    if (!keeper) return;
    std::shared_ptr<Outbox> out;
    std::shared_ptr<runtime::Replica> gone;  // released after the lock
    {
      std::lock_guard lock(keeper->mutex_);
      out = keeper->current_.lock();
      if (auto it = keeper->kept_.find(exit.replica); it != keeper->kept_.end()) {
        gone = std::move(it->second);
        keeper->kept_.erase(it);
      }
    }
    if (out) out->replica_exited(exit);
  };
}

void Session::Keeper::keep(const std::vector<std::shared_ptr<runtime::Replica>>& replicas) {
  std::lock_guard lock(mutex_);
  for (const auto& r : replicas) kept_[r->name()] = r;
}

Session::~Session() { close(); }

bool Session::Outbox::send(const v1::AgentFrame& frame) {
  {
    std::lock_guard lock(mutex);
    if (closed) return false;
  }
  return send_(frame);
}

v1::AgentFrame Session::hello(const std::string& version) const {
  v1::AgentFrame frame;
  auto& hello = *frame.mutable_hello();
  hello.set_name(node_->name());
  *hello.mutable_spec() = node_->describe();
  hello.set_version(version);
  for (auto& r : node_->running()) *hello.add_running() = std::move(r);
  return frame;
}

void Session::receive(v1::AgentFrame& frame) {
  switch (frame.kind_case()) {
    case v1::AgentFrame::kWelcome:
      welcome(frame.welcome());
      return;
    case v1::AgentFrame::kAssign:
      assign(frame.assign());
      return;
    case v1::AgentFrame::kAssignReplica:
      assign_replica(frame.assign_replica());
      return;
    case v1::AgentFrame::kRemoveVolume:
      remove_volume(frame.remove_volume());
      return;
    case v1::AgentFrame::kOverlayPeers: {
      const auto& a = frame.overlay_peers().addresses();
      node_->overlay_peers({a.begin(), a.end()});
      return;
    }
    case v1::AgentFrame::kInvoke:
      invoke(*frame.mutable_invoke());
      return;
    case v1::AgentFrame::kStop:
      stop(frame.stop());
      return;
    case v1::AgentFrame::kPromoteReplica:
      promote_replica(frame.promote_replica());
      return;
    case v1::AgentFrame::kPing: {
      // At once, on the reading thread: the server times this round trip to place work.
      v1::AgentFrame pong;
      pong.mutable_pong()->set_sent_us(frame.ping().sent_us());
      out_->send(pong);
      return;
    }
    default:
      return;
  }
}

void Session::welcome(const v1::AgentWelcome& welcome) {
  const std::vector<std::string> adopted(welcome.adopted().begin(), welcome.adopted().end());
  // Fences what ran under older epochs: what the keeper holds that the server gave up, too.
  node_->set_epoch(welcome.epoch(), adopted);
  if (!keeper_) return;
  std::map<std::string, std::shared_ptr<runtime::Replica>> given_up;  // killed by set_epoch
  std::lock_guard keep(keeper_->mutex_);
  std::lock_guard lock(out_->mutex);
  for (const auto& name : adopted) {
    if (auto it = keeper_->kept_.find(name); it != keeper_->kept_.end()) {
      out_->replicas[name] = std::move(it->second);
      out_->kept.insert(name);
      keeper_->kept_.erase(it);
    }
  }
  given_up.swap(keeper_->kept_);
}

void Session::assign(const v1::Assign& assign) {
  {
    std::lock_guard lock(out_->mutex);
    if (out_->closed) return;
  }
  // A start blocks until the handler is ready: on a thread of its own, so calls keep flowing.
  std::thread([node = node_, out = out_, assign] {
    control::Assignment a;
    a.epoch = assign.epoch();
    a.instance.function = assign.function();
    a.instance.spec = assign.spec();
    std::weak_ptr<Outbox> weak = out;
    a.instance.on_log = [weak](const std::string& instance, const std::string& stream,
                               std::string line) {
      if (auto o = weak.lock()) o->log(instance, stream, std::move(line));
    };
    a.instance.on_exit = [weak](const runtime::InstanceExit& exit) {
      auto o = weak.lock();
      if (!o) return;
      std::shared_ptr<runtime::Instance> gone;  // released after the lock
      {
        std::lock_guard lock(o->mutex);
        if (auto it = o->instances.find(exit.instance); it != o->instances.end()) {
          gone = std::move(it->second.instance);
          o->instances.erase(it);
        }
      }
      o->exited(exit.instance, exit.reason, exit.requested, exit.oom);
    };
    v1::AgentFrame f;
    auto& started = *f.mutable_started();
    started.set_id(assign.id());
    std::shared_ptr<runtime::Instance> instance;
    try {
      // A path names a directory of the client's (or of this machine, for a server gone wrong):
      // an agent runs only code it fetched by digest.
      if (!a.instance.spec.code().empty()) {
        throw Error(errc::invalid_spec,
                    "the assignment names a code path (" + a.instance.spec.code() +
                        "); an agent runs code fetched by its digest only",
                    "code");
      }
      instance = node->start(a);
      started.set_instance(instance->name());
      started.set_init_us(instance->init_duration().count());
    } catch (...) {
      *started.mutable_error() = status_of(std::current_exception());
    }
    bool keep = false;
    {
      std::lock_guard lock(out->mutex);
      if (instance && !out->closed) {
        out->instances[instance->name()] = {
            instance, std::make_shared<const v1::FunctionSpec>(assign.spec()), assign.function()};
        keep = true;
      }
    }
    if (instance && !keep) instance->kill();  // closed meanwhile: nobody will call it
    if (keep || !instance) out->send(f);
  }).detach();
}

void Session::remove_volume(const v1::RemoveVolume& remove) {
  // Deleting a large volume's files takes a while: off the reading thread.
  std::thread([node = node_, out = out_, remove] {
    v1::AgentFrame f;
    f.mutable_volume_removed()->set_id(remove.id());
    try {
      node->remove_volume(remove.volume());
    } catch (...) {
      *f.mutable_volume_removed()->mutable_error() = status_of(std::current_exception());
    }
    out->send(f);
  }).detach();
}

void Session::assign_replica(const v1::AssignReplica& assign) {
  {
    std::lock_guard lock(out_->mutex);
    if (out_->closed) return;
  }
  // Readiness may take a guest's boot: on a thread of its own.
  std::thread([node = node_, out = out_, keeper = keeper_, assign] {
    control::ReplicaAssignment a;
    a.epoch = assign.epoch();
    a.replica.vm = assign.vm();
    a.replica.name = assign.replica();
    a.replica.slot = assign.slot();
    a.replica.spec = assign.spec();
    if (assign.has_volume()) a.replica.volume = assign.volume();
    if (assign.has_network()) a.replica.network = assign.network();
    if (keeper) {
      // Its events go up the connection of the moment: it may outlive this one.
      a.replica.on_log = keeper->on_log();
      a.replica.on_exit = keeper->on_exit();
    } else {
      std::weak_ptr<Outbox> weak = out;
      a.replica.on_log = [weak](const std::string& replica, const std::string& stream,
                                std::string line) {
        if (auto o = weak.lock()) o->log(replica, stream, std::move(line));
      };
      a.replica.on_exit = [weak](const runtime::ReplicaExit& exit) {
        if (auto o = weak.lock()) o->replica_exited(exit);
      };
    }
    v1::AgentFrame f;
    auto& started = *f.mutable_replica_started();
    started.set_id(assign.id());
    started.set_replica(assign.replica());
    std::shared_ptr<runtime::Replica> replica;
    const bool primary = assign.volume().writer_epoch() > 0;
    try {
      replica = node->start_replica(a);
      // Kept across a lost connection where the keeper can, and the agent's restart can: a
      // primary never is (the server fails it over at once).
      started.set_kept(keeper && !primary && replica->outlives_agent());
      started.set_start_us(replica->start_duration().count());
      for (const auto& [port, host] : replica->ports()) (*started.mutable_ports())[port] = host;
    } catch (...) {
      *started.mutable_error() = status_of(std::current_exception());
    }
    bool keep = false;
    {
      std::lock_guard lock(out->mutex);
      if (replica && !out->closed) {
        out->replicas[replica->name()] = replica;
        if (started.kept()) out->kept.insert(replica->name());
        keep = true;
        // A primary (started under a set's fencing epoch) dies with this node's lease, even if
        // this process cannot act then (agent/fence_watchdog.hpp).
        if (out->watchdog && assign.volume().writer_epoch() > 0 && replica->alive()) {
          if (const int pid = replica->fence_pid(); pid > 0) {
            out->watchdog->arm(pid);
            out->fenced[replica->name()] = pid;
          }
        }
      }
    }
    if (replica && !keep) replica->kill();  // closed meanwhile: the server placed it elsewhere
    if (keep || !replica) out->send(f);
  }).detach();
}

void Session::promote_replica(const v1::PromoteReplica& promote) {
  // A guest's promotion takes its workload's start: on a thread of its own.
  std::thread([out = out_, promote] {
    v1::AgentFrame f;
    auto& promoted = *f.mutable_replica_promoted();
    promoted.set_id(promote.id());
    try {
      std::shared_ptr<runtime::Replica> replica;
      {
        std::lock_guard lock(out->mutex);
        if (out->closed) return;
        if (auto it = out->replicas.find(promote.replica()); it != out->replicas.end()) {
          replica = it->second;
        }
        // A primary from now on: never kept across a lost connection (the server fails it over
        // at once; RemoteNode::Replica::promote stops holding it too).
        out->kept.erase(promote.replica());
        // Armed before it mounts the volume: a primary from then on dies with this node's
        // lease (agent/fence_watchdog.hpp); its exit disarms it, as a primary started so.
        if (replica && out->watchdog && !out->fenced.contains(promote.replica())) {
          if (const int pid = replica->fence_pid(); pid > 0) {
            out->watchdog->arm(pid);
            out->fenced[promote.replica()] = pid;
          }
        }
      }
      if (!replica) {
        throw Error(errc::not_found, "no replica " + promote.replica() + " runs here");
      }
      runtime::Promotion p;
      p.epoch = promote.epoch();
      p.primary_address = promote.primary_address();
      p.readiness = promote.readiness();
      if (promote.timeout_ms() > 0) p.timeout = std::chrono::milliseconds(promote.timeout_ms());
      replica->promote(p);
      for (const auto& [port, host] : replica->ports()) (*promoted.mutable_ports())[port] = host;
    } catch (...) {
      *promoted.mutable_error() = status_of(std::current_exception());
    }
    out->send(f);
  }).detach();
}

void Session::Outbox::log(const std::string& instance, const std::string& stream,
                          std::string line) {
  v1::AgentFrame f;
  auto& log = *f.mutable_log();
  log.set_instance(instance);
  log.set_stream(stream);
  log.set_line(std::move(line));
  send(f);
}

void Session::Outbox::replica_exited(const runtime::ReplicaExit& exit) {
  std::shared_ptr<runtime::Replica> gone;  // released after the lock
  {
    std::lock_guard lock(mutex);
    if (auto it = replicas.find(exit.replica); it != replicas.end()) {
      gone = std::move(it->second);
      replicas.erase(it);
    }
    if (auto it = fenced.find(exit.replica); it != fenced.end()) {
      watchdog->disarm(it->second);
      fenced.erase(it);
    }
    kept.erase(exit.replica);
  }
  exited(exit.replica, exit.reason, exit.requested, exit.oom);
}

void Session::Outbox::exited(const std::string& instance, const std::string& reason, bool requested,
                             bool oom) {
  v1::AgentFrame f;
  auto& e = *f.mutable_exited();
  e.set_instance(instance);
  e.set_reason(reason);
  e.set_requested(requested);
  e.set_oom(oom);
  send(f);
}

void Session::Outbox::answer(std::uint64_t id, const std::exception_ptr& error,
                             runtime::InvocationResult result) {
  v1::AgentFrame f;
  auto& r = *f.mutable_result();
  r.set_id(id);
  if (error) {
    *r.mutable_error() = status_of(error);
  } else {
    r.set_result(std::move(result.result));
    r.set_duration_us(result.duration.count());
  }
  send(f);
}

void Session::invoke(v1::Invoke& invoke) {
  const std::uint64_t id = invoke.id();
  Started started;
  {
    std::lock_guard lock(out_->mutex);
    auto it = out_->instances.find(invoke.instance());
    if (it != out_->instances.end()) started = it->second;
  }
  if (!started.instance) {
    out_->answer(id,
                 std::make_exception_ptr(Error(
                     errc::unavailable, "instance " + invoke.instance() + " is no longer running")),
                 {});
    return;
  }
  auto inv = std::make_shared<runtime::Invocation>();
  inv->function = started.function;
  inv->spec = *started.spec;
  inv->payload = std::move(*invoke.mutable_payload());
  inv->request_id = invoke.request_id();
  inv->timeout = std::chrono::milliseconds(invoke.timeout_ms());
  std::weak_ptr<Outbox> weak = out_;
  auto complete = [weak, id](const std::exception_ptr& error, runtime::InvocationResult result) {
    if (auto o = weak.lock()) o->answer(id, error, std::move(result));
  };
  try {
    if (started.instance->call_async(*inv, executor_, complete)) return;
  } catch (...) {
    out_->answer(id, std::current_exception(), {});
    return;
  }
  // Its pipe is full: the call waits for room on a thread of its own.
  std::thread([instance = started.instance, inv, complete] {
    try {
      complete(nullptr, instance->call(*inv));
    } catch (...) {
      complete(std::current_exception(), {});
    }
  }).detach();
}

void Session::stop(const v1::StopInstance& stop) {
  std::shared_ptr<runtime::Instance> instance;
  std::shared_ptr<runtime::Replica> replica;
  {
    std::lock_guard lock(out_->mutex);
    if (auto it = out_->instances.find(stop.instance()); it != out_->instances.end()) {
      instance = it->second.instance;
    } else if (auto r = out_->replicas.find(stop.instance()); r != out_->replicas.end()) {
      replica = r->second;
    } else {
      return;
    }
  }
  if (replica) {
    if (stop.kill()) {
      replica->kill();
      return;
    }
    std::thread([replica, grace = std::chrono::milliseconds(stop.grace_ms())] {
      replica->stop(grace);
    }).detach();
    return;
  }
  if (stop.kill()) {
    instance->kill();
    return;
  }
  std::thread([instance, grace = std::chrono::milliseconds(stop.grace_ms())] {
    instance->stop(grace);
  }).detach();
}

void Session::close() {
  std::map<std::string, Started> instances;
  std::map<std::string, std::shared_ptr<runtime::Replica>> replicas;
  {
    // (The keeper's lock first, as in welcome().)
    std::unique_lock keep =
        keeper_ ? std::unique_lock(keeper_->mutex_) : std::unique_lock<std::mutex>();
    std::lock_guard lock(out_->mutex);
    out_->closed = true;
    instances.swap(out_->instances);
    replicas.swap(out_->replicas);
    if (keeper_) {
      // As the server was told at each start (ReplicaStarted.kept): the others it gives up at
      // once and places again (a primary must be gone by then).
      for (auto it = replicas.begin(); it != replicas.end();) {
        if (out_->kept.count(it->first) == 0) {
          ++it;
          continue;
        }
        keeper_->kept_[it->first] = std::move(it->second);
        it = replicas.erase(it);
      }
      if (keeper_->current_.lock() == out_) keeper_->current_.reset();
    }
  }
  // (Killed below: each exit disarms its replica's cgroup.)
  for (auto& [name, s] : instances) s.instance->kill();
  for (auto& [name, r] : replicas) r->kill();
}

}  // namespace blixard::agent
