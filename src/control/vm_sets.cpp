// The VM set controller (see vm_sets.hpp).
#include "control/vm_sets.hpp"

#include <algorithm>

#include "blixard/error.hpp"

namespace blixard::control {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

std::string phase_name(int phase) {
  static const char* const names[] = {"Starting", "Running", "Stopping", "Failed"};
  return names[phase];
}

std::string driver_of(const v1::NodeSpec& node) {
  // The node's VM-capable driver (the libvirt driver when a node has it, DESIGN §6).
  for (const auto& d : node.drivers()) {
    if (d == "libvirt") return d;
  }
  return node.drivers().empty() ? "" : node.drivers(0);
}

}  // namespace

struct VmSets::Slot {
  enum Phase { starting, running, stopping, failed };
  int ordinal = 0;
  std::string name;
  Phase phase = starting;
  std::uint64_t generation = 0;  // one per start: an exit of an older start is ignored
  std::shared_ptr<runtime::Replica> replica;
  std::string node, address, driver;
  sched::Resources reserved;
  std::map<std::uint32_t, std::uint32_t> ports;
  std::string message;
  std::uint32_t restarts = 0;
  int failures_in_row = 0;
  bool remove = false;  // stopping for good (scaled down, stopped, deleted)
  Clock::time_point retry_at;
  std::chrono::system_clock::time_point started_at;
};

struct VmSets::Set {
  v1::VmSpec spec;
  std::int64_t version = 0;
  bool deleted = false;
  std::map<int, std::shared_ptr<Slot>> slots;
};

// What replicas' callbacks reach: the controller while it lives (a remote node may report an
// exit after it is gone).
struct VmSets::Hub {
  std::mutex mutex;
  VmSets* self = nullptr;
};

VmSets::VmSets(std::shared_ptr<NodeRegistry> nodes, std::shared_ptr<Telemetry> telemetry,
               VmSetsOptions options)
    : nodes_(std::move(nodes)),
      telemetry_(std::move(telemetry)),
      options_(options),
      hub_(std::make_shared<Hub>()) {
  hub_->self = this;
  loop_ = std::thread([this] { loop(); });
}

VmSets::~VmSets() {
  shutdown();
  std::lock_guard lock(hub_->mutex);
  hub_->self = nullptr;
}

void VmSets::update(const std::string& vm, std::int64_t version, const v1::VmSpec& spec) {
  std::lock_guard lock(mutex_);
  if (closed_) return;
  auto& set = sets_[vm];
  if (!set) set = std::make_shared<Set>();
  if (version < set->version) return;
  set->spec = spec;
  set->version = version;
  set->deleted = false;
  wake_.notify_all();
}

void VmSets::remove(const std::string& vm) {
  std::lock_guard lock(mutex_);
  auto it = sets_.find(vm);
  if (it == sets_.end()) return;
  it->second->deleted = true;
  wake_.notify_all();
}

void VmSets::shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
  }
  wake_.notify_all();
  if (loop_.joinable()) loop_.join();
  // Starts in flight end when the nodes are shut down (the server did that first); their
  // threads use this object until they are counted out.
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return workers_ == 0; });
}

void VmSets::loop() {
  std::unique_lock lock(mutex_);
  while (!closed_) {
    reconcile(lock);
    wake_.wait_for(lock, options_.tick);
  }
}

void VmSets::reconcile(std::unique_lock<std::mutex>& lock) {
  const auto now = Clock::now();
  for (auto it = sets_.begin(); it != sets_.end();) {
    const std::string& vm = it->first;
    Set& set = *it->second;
    const int desired =
        set.deleted || set.spec.stopped() ? 0 : static_cast<int>(set.spec.replicas());
    for (int ordinal = 1; ordinal <= desired; ++ordinal) {
      auto& slot = set.slots[ordinal];
      if (!slot) {
        slot = std::make_shared<Slot>();
        slot->ordinal = ordinal;
        slot->name = vm + "-" + std::to_string(ordinal);
        start(vm, set, *slot);
      } else if (slot->phase == Slot::failed && now >= slot->retry_at) {
        start(vm, set, *slot);
      }
    }
    for (auto s = set.slots.upper_bound(desired); s != set.slots.end();) {
      Slot& slot = *s->second;
      slot.remove = true;
      if (slot.phase == Slot::failed) {
        s = set.slots.erase(s);
        continue;
      }
      if (slot.phase == Slot::running) stop(slot);
      ++s;  // a starting one is stopped once it is ready
    }
    if (set.deleted && set.slots.empty()) {
      it = sets_.erase(it);
    } else {
      ++it;
    }
  }
  (void)lock;
}

void VmSets::start(const std::string& vm, Set& set, Slot& slot) {
  slot.phase = Slot::starting;
  slot.remove = false;
  const std::uint64_t generation = ++slot.generation;
  ++workers_;
  auto placed_spec = set.spec;
  // A set's replicas spread over nodes unless its placement says otherwise: one node's loss
  // should not take the whole set (Kubernetes' default topology spread does the same).
  if (placed_spec.placement().strategy().empty()) {
    placed_spec.mutable_placement()->set_strategy("spread");
  }
  auto spec = std::make_shared<const v1::VmSpec>(std::move(placed_spec));
  std::thread([this, vm, name = slot.name, ordinal = slot.ordinal, generation, spec] {
    std::shared_ptr<runtime::Replica> replica;
    Placed placed;
    std::string error;
    try {
      {
        // One placement at a time, each seeing where the set's replicas went: spread holds.
        std::lock_guard placing(placement_mutex_);
        PlacementRequest request;
        request.function = vm;
        request.vm_spec = spec.get();
        {
          std::lock_guard lock(mutex_);
          if (auto s = sets_.find(vm); s != sets_.end()) {
            for (const auto& [o, other] : s->second->slots) {
              if (o != ordinal && !other->node.empty() && other->phase != Slot::failed) {
                ++request.instances_per_node[other->node];
              }
            }
          }
        }
        placed = nodes_->place(request);
        std::lock_guard lock(mutex_);
        if (auto slot = find(vm, ordinal, generation)) {
          slot->node = placed.node->name();
          const auto described = placed.node->describe();
          slot->address = described.address();
          slot->driver = driver_of(described);
        }
      }
      ReplicaAssignment assignment;
      assignment.epoch = placed.epoch;
      assignment.replica.vm = vm;
      assignment.replica.name = name;
      assignment.replica.spec = *spec;
      std::weak_ptr<Hub> hub = hub_;
      assignment.replica.on_exit = [hub, vm, ordinal, generation](const runtime::ReplicaExit& e) {
        auto h = hub.lock();
        if (!h) return;
        std::lock_guard lock(h->mutex);
        if (h->self != nullptr) h->self->exited(vm, ordinal, generation, e);
      };
      assignment.replica.on_log = [telemetry = telemetry_, vm, node = placed.node->name()](
                                      const std::string& replica, const std::string& stream,
                                      std::string line) {
        telemetry->append_log(log_key(vm), replica, node, stream, std::move(line));
      };
      replica = placed.node->start_replica(assignment);
    } catch (const std::exception& e) {
      error = e.what();
    }
    bool stop_now = false;
    {
      std::lock_guard lock(mutex_);
      Slot* slot = find(vm, ordinal, generation);
      if (replica && slot != nullptr && slot->phase == Slot::starting && !slot->remove &&
          !closed_) {
        slot->phase = Slot::running;
        slot->replica = replica;
        slot->reserved = placed.reserved;
        slot->ports = replica->ports();
        slot->failures_in_row = 0;
        slot->message.clear();
        slot->started_at = std::chrono::system_clock::now();
      } else if (replica) {
        stop_now = true;  // scaled down, stopped or deleted while it started
        if (slot != nullptr) {
          slot->phase = Slot::stopping;
          slot->replica = replica;
          slot->reserved = placed.reserved;
        } else if (placed.node) {
          nodes_->release(placed.node->name(), placed.reserved);
        }
      } else {
        if (placed.node) nodes_->release(placed.node->name(), placed.reserved);
        if (slot != nullptr) failed(*slot, "did not start: " + error);
      }
    }
    if (replica && !stop_now) {
      publish(vm, "ReplicaStarted", name + " is running on " + placed.node->name());
    }
    if (!replica) publish(vm, "ReplicaFailed", name + " did not start: " + error);
    if (stop_now) replica->stop(options_.stop_grace);
    // Last: once the count is down, shutdown() may return and this object go.
    std::lock_guard lock(mutex_);
    --workers_;
    idle_.notify_all();
    wake_.notify_all();
  }).detach();
}

void VmSets::stop(Slot& slot) {
  slot.phase = Slot::stopping;
  auto replica = slot.replica;
  if (!replica) return;
  ++workers_;
  std::thread([this, replica] {
    replica->stop(options_.stop_grace);
    std::lock_guard lock(mutex_);
    --workers_;
    idle_.notify_all();
  }).detach();
}

void VmSets::failed(Slot& slot, const std::string& why) {
  slot.phase = Slot::failed;
  slot.replica.reset();
  slot.message = why;
  ++slot.failures_in_row;
  auto backoff = options_.restart_backoff * (1 << std::min(slot.failures_in_row - 1, 10));
  backoff = std::min<milliseconds>(backoff, options_.max_restart_backoff);
  slot.retry_at = Clock::now() + backoff;
}

VmSets::Slot* VmSets::find(const std::string& vm, int ordinal, std::uint64_t generation) {
  auto s = sets_.find(vm);
  if (s == sets_.end()) return nullptr;
  auto slot = s->second->slots.find(ordinal);
  if (slot == s->second->slots.end() || slot->second->generation != generation) return nullptr;
  return slot->second.get();
}

void VmSets::exited(const std::string& vm, int ordinal, std::uint64_t generation,
                    const runtime::ReplicaExit& exit) {
  std::string event, reason;
  {
    std::lock_guard lock(mutex_);
    Slot* slot = find(vm, ordinal, generation);
    if (slot == nullptr) return;
    if (!slot->node.empty()) nodes_->release(slot->node, slot->reserved);
    slot->reserved = {};
    if (slot->remove || slot->phase == Slot::stopping) {
      sets_.at(vm)->slots.erase(ordinal);
      event = exit.replica + " stopped";
      reason = "ReplicaStopped";
    } else {
      ++slot->restarts;
      failed(*slot, exit.replica + " " + exit.reason + "; replaced");
      event = exit.replica + " " + exit.reason + " on " + slot->node + "; starting it again";
      reason = "ReplicaFailed";
    }
  }
  publish(vm, reason, event);
  wake_.notify_all();
}

void VmSets::publish(const std::string& vm, const std::string& reason, const std::string& what) {
  v1::WatchEvent event;
  event.set_type("record");
  event.set_kind("vms");
  event.set_name(vm);
  event.set_reason(reason);
  event.set_message(what);
  telemetry_->publish(std::move(event));
}

std::string VmSets::log_key(const std::string& vm) { return "vm:" + vm; }

void VmSets::fill_status(const std::string& vm, const v1::VmSpec& spec,
                         v1::VmStatus& status) const {
  std::lock_guard lock(mutex_);
  const int desired = spec.stopped() ? 0 : static_cast<int>(spec.replicas());
  std::uint32_t ready = 0, failed_count = 0;
  std::string last_failure;
  if (auto it = sets_.find(vm); it != sets_.end()) {
    for (const auto& [ordinal, slot] : it->second->slots) {
      auto& in = *status.add_instances();
      in.set_name(slot->name);
      in.set_vm(vm);
      in.set_node(slot->node);
      in.set_phase(phase_name(slot->phase));
      in.set_driver(slot->driver);
      in.set_address(slot->address);
      in.set_message(slot->message);
      in.set_restarts(slot->restarts);
      for (const auto& [port, host] : slot->ports) (*in.mutable_host_ports())[port] = host;
      if (slot->phase == Slot::running) {
        ++ready;
        const auto since = slot->started_at.time_since_epoch();
        in.mutable_started_at()->set_seconds(
            std::chrono::duration_cast<std::chrono::seconds>(since).count());
      }
      if (slot->phase == Slot::failed) {
        ++failed_count;
        last_failure = slot->message;
      }
    }
  }
  status.set_ready_replicas(ready);
  if (auto b = balanced_.find(vm); b != balanced_.end()) {
    for (const auto& [port, address] : b->second) {
      auto& e = *status.add_endpoints();
      e.set_port(port);
      e.set_address(address);
    }
  }
  if (desired == 0) {
    status.set_phase(status.instances_size() == 0 ? "Stopped" : "Stopping");
  } else if (static_cast<int>(ready) >= desired) {
    status.set_phase("Running");
  } else if (ready > 0) {
    status.set_phase("Degraded");
  } else {
    status.set_phase(failed_count > 0 ? "Failed" : "Pending");
  }
  if (!last_failure.empty()) status.set_message(last_failure);
}

std::vector<VmEndpoint> VmSets::endpoints(const std::string& vm, std::uint32_t port) const {
  std::vector<VmEndpoint> out;
  std::lock_guard lock(mutex_);
  auto it = sets_.find(vm);
  if (it == sets_.end()) return out;
  for (const auto& [ordinal, slot] : it->second->slots) {
    if (slot->phase != Slot::running || !slot->replica || !slot->replica->alive()) continue;
    auto p = slot->ports.find(port);
    if (p == slot->ports.end()) continue;
    out.push_back({slot->name, slot->address, p->second});
  }
  return out;
}

}  // namespace blixard::control

namespace blixard::control {

std::map<std::string, std::vector<std::uint32_t>> VmSets::exposed() const {
  std::map<std::string, std::vector<std::uint32_t>> out;
  std::lock_guard lock(mutex_);
  for (const auto& [vm, set] : sets_) {
    if (set->deleted) continue;
    out[vm].assign(set->spec.ports().begin(), set->spec.ports().end());
  }
  return out;
}

void VmSets::set_balanced(const std::string& vm, std::uint32_t port, const std::string& address) {
  std::lock_guard lock(mutex_);
  if (address.empty()) {
    auto it = balanced_.find(vm);
    if (it == balanced_.end()) return;
    it->second.erase(port);
    if (it->second.empty()) balanced_.erase(it);
  } else {
    balanced_[vm][port] = address;
  }
}

}  // namespace blixard::control
