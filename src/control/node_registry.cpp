// Nodes: joins, epochs, leases and the default placement (see node_registry.hpp).
#include "control/node_registry.hpp"

#include <algorithm>
#include <set>
#include <tuple>

#include <google/protobuf/util/time_util.h>

#include "blixard/error.hpp"
#include "sched/place.hpp"
#include "sched/proto.hpp"

namespace blixard::control {

using Clock = std::chrono::steady_clock;
// A node's latency is the least of this many recent round trips (one a heartbeat interval),
// known once there are k_round_trip_samples_needed of them (about 3 s after a join).
constexpr std::size_t k_round_trip_samples = 10;
constexpr std::size_t k_round_trip_samples_needed = 5;

NodeRegistry::NodeRegistry(std::shared_ptr<store::Store> store, NodeRegistryOptions options)
    : store_(std::move(store)), options_(options) {
  // An agent's fence watchdog kills its primaries once it has heard nothing for half the lease:
  // the server's pings (one a heartbeat) come at least twice within that, or one late ping
  // under load kills a healthy primary (a 2 s lease with 1 s heartbeats did).
  options_.heartbeat =
      std::max(std::chrono::milliseconds(10), std::min(options_.heartbeat, options_.lease / 4));
  // Nodes stored by an earlier run: their agents get a lease's time to come back, then are Lost.
  for (const auto& kv : store_->list(k_nodes_prefix).kvs) {
    v1::Node node;
    if (!node.ParseFromString(kv.value)) continue;
    const std::string name = node.metadata().name();
    stored_[name] = node;
    if (node.status().phase() == "Lost") continue;
    Entry e;
    e.epoch = node.status().epoch();
    e.cordoned = node.status().unschedulable();
    e.last_heard = Clock::now();
    e.phase = "NotReady";
    index(name, nodes_[name] = e);
  }
  leases_ = std::thread([this] { lease_loop(); });
}

NodeRegistry::~NodeRegistry() { shutdown(); }

void NodeRegistry::index(const std::string& name, Entry& entry) {
  v1::Node node = stored_[name];
  node.mutable_metadata()->set_name(name);
  if (entry.node) *node.mutable_spec() = entry.node->describe();
  auto info = sched::node_from(node);
  info.ready = entry.node != nullptr && entry.phase == "Ready";
  info.cordoned = entry.cordoned;
  if (auto id = index_.find(name)) {
    info.allocated = index_.node(*id).allocated;  // what runs there stays reserved
    index_.update_node(*id, std::move(info));
    entry.id = *id;
  } else {
    info.allocated = {};
    entry.id = index_.add_node(std::move(info));
  }
  if (entry.round_trip) {
    index_.set_server_latency(entry.id, static_cast<std::uint32_t>(entry.round_trip->count()));
  }
}

void NodeRegistry::write(const std::string& name, const Entry& entry, const std::string& reason) {
  v1::Node& node = stored_[name];
  node.mutable_metadata()->set_name(name);
  if (entry.node) *node.mutable_spec() = entry.node->describe();
  auto& st = *node.mutable_status();
  st.set_phase(entry.phase);
  st.set_epoch(entry.epoch);
  st.set_unschedulable(entry.cordoned);
  st.set_message(reason);
  *st.mutable_last_heartbeat() = google::protobuf::util::TimeUtil::GetCurrentTime();
  store_->put(k_nodes_prefix + name, node.SerializeAsString());
}

std::int64_t NodeRegistry::join(const std::shared_ptr<Node>& node, bool in_process,
                                const std::vector<v1::RunningInstance>& running,
                                std::vector<std::string>* adopted) {
  const std::string name = node->name();
  std::int64_t epoch = 0;
  std::shared_ptr<Node> previous;
  {
    std::lock_guard lock(mutex_);
    epoch = add(node, in_process, previous);
  }
  if (adopted != nullptr) adopted->clear();
  if (previous) {
    // Outside the lock: what `previous` held and `node` does not take exits as lost, and the
    // exits' handlers place work here.
    auto names = node->adopt(*previous, running, epoch);
    previous->shutdown();
    if (adopted != nullptr) *adopted = std::move(names);
  }
  // Not the new node itself: its welcome goes first, and its replicas' starts bring the list.
  tell_overlay_peers(name);
  return epoch;
}

void NodeRegistry::tell_overlay_peers(const std::string& except) {
  std::vector<std::pair<std::shared_ptr<Node>, std::vector<std::string>>> told;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [name, e] : nodes_) {
      if (e.node && name != except) told.emplace_back(e.node, peer_addresses_locked(name));
    }
  }
  // Outside the lock: a remote node sends a frame, the local one programs netlink.
  for (auto& [node, peers] : told) node->overlay_peers(peers);
}

std::int64_t NodeRegistry::add(std::shared_ptr<Node> node, bool in_process,
                               std::shared_ptr<Node>& previous) {
  if (closed_) throw Error(errc::unavailable, "the server is shutting down");
  const std::string name = node->name();
  if (name.empty()) throw Error(errc::invalid_spec, "a node needs a name", "name");
  auto& e = nodes_[name];
  if (e.node && e.phase == "Ready") {
    throw Error(errc::already_exists, "node name \"" + name + "\" is in use by a connected node",
                "name");
  }
  std::int64_t last = e.epoch;
  if (auto it = stored_.find(name); it != stored_.end()) {
    last = std::max(last, it->second.status().epoch());
  }
  // Calls from an agent's address come from its node. (Calls from the server's own machine are
  // the server's: its own node is at no distance from it, the others at their round trips.)
  if (!in_process) {
    if (auto address = node->describe().address(); !address.empty()) {
      auto [first, last] = by_address_.equal_range(address);
      if (std::none_of(first, last, [&](const auto& kv) { return kv.second == name; })) {
        by_address_.emplace(address, name);
      }
    }
  }
  previous = std::move(e.held);
  e.node = std::move(node);
  e.in_process = in_process;
  e.epoch = last + 1;
  e.last_heard = Clock::now();
  e.phase = "Ready";
  // A new connection: its round trip is measured anew (the in-process node is the server's own).
  e.round_trip.reset();
  e.round_trips.clear();
  if (in_process) e.round_trip = std::chrono::microseconds(0);
  write(name, e, "joined");
  index(name, e);
  return e.epoch;
}

void NodeRegistry::heard(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (auto it = nodes_.find(name); it != nodes_.end()) it->second.last_heard = Clock::now();
}

void NodeRegistry::measured(const std::string& name, std::chrono::microseconds round_trip) {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(name);
  if (it == nodes_.end() || !it->second.node) return;
  // A minute is "far"; the scheduler counts microseconds in 32 bits.
  auto& samples = it->second.round_trips;
  samples.push_back(std::clamp(round_trip, std::chrono::microseconds(0),
                               std::chrono::microseconds(std::chrono::minutes(1))));
  if (samples.size() > k_round_trip_samples) samples.pop_front();
  // Too few samples may all have met a busy moment: until there are enough the node counts as
  // near (unmeasured), as it did when it joined.
  if (samples.size() < k_round_trip_samples_needed) return;
  it->second.round_trip = *std::min_element(samples.begin(), samples.end());
  index_.set_server_latency(it->second.id,
                            static_cast<std::uint32_t>(it->second.round_trip->count()));
}

std::optional<std::chrono::microseconds> NodeRegistry::round_trip(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(name);
  return it == nodes_.end() ? std::nullopt : it->second.round_trip;
}

std::vector<ProbeTarget> NodeRegistry::probe_targets(const std::string& name, std::size_t max) {
  std::lock_guard lock(mutex_);
  std::vector<ProbeTarget> all;
  for (const auto& [peer, e] : nodes_) {
    if (peer == name || !e.node || e.phase != "Ready") continue;
    const auto spec = e.node->describe();
    if (spec.probe_port() == 0 || spec.address().empty()) continue;
    all.push_back({peer, spec.address(), spec.probe_port()});
  }
  if (all.size() <= max) return all;
  std::vector<ProbeTarget> some;
  for (std::size_t i = 0; i < max; ++i) some.push_back(all[(probe_cursor_ + i) % all.size()]);
  probe_cursor_ += max;
  return some;
}

std::vector<std::string> NodeRegistry::peer_addresses(const std::string& name) const {
  std::lock_guard lock(mutex_);
  return peer_addresses_locked(name);
}

std::vector<std::string> NodeRegistry::peer_addresses_locked(const std::string& name) const {
  std::string own;
  if (auto it = nodes_.find(name); it != nodes_.end() && it->second.node) {
    own = it->second.node->describe().address();
  }
  std::set<std::string> out;
  for (const auto& [peer, e] : nodes_) {
    if (peer == name || !e.node) continue;
    auto address = e.node->describe().address();
    if (!address.empty() && address != own) out.insert(std::move(address));
  }
  return {out.begin(), out.end()};
}

void NodeRegistry::peer_measured(const std::string& name, const std::string& peer,
                                 std::chrono::microseconds round_trip) {
  std::lock_guard lock(mutex_);
  auto a = nodes_.find(name);
  auto b = nodes_.find(peer);
  if (a == nodes_.end() || b == nodes_.end() || a == b || !a->second.node || !b->second.node) {
    return;
  }
  round_trip = std::clamp(round_trip, std::chrono::microseconds(1),
                          std::chrono::microseconds(std::chrono::minutes(1)));
  a->second.peers[peer] = round_trip;
  b->second.peers[name] = round_trip;
  index_.set_latency(a->second.id, b->second.id, static_cast<std::uint32_t>(round_trip.count()));
}

std::map<std::string, std::chrono::microseconds> NodeRegistry::peer_round_trips(
    const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(name);
  return it == nodes_.end() ? std::map<std::string, std::chrono::microseconds>{} : it->second.peers;
}

void NodeRegistry::disconnected(const std::shared_ptr<Node>& node, const std::string& why) {
  bool closed = false;
  {
    std::lock_guard lock(mutex_);
    auto it = nodes_.find(node->name());
    if (it == nodes_.end() || it->second.node != node) return;
    it->second.node.reset();
    closed = closed_;
    if (!closed_) {
      it->second.phase = "NotReady";
      it->second.held = node;  // until the lease lapses or the node joins again
      write(it->first, it->second, why);
      index(it->first, it->second);
    }
  }
  // Its instances exit as lost (their pools let go of them), but for the replicas it holds.
  if (closed) {
    node->shutdown();
  } else {
    node->disconnect(why);
  }
  if (!closed) tell_overlay_peers({});
}

void NodeRegistry::cordon(const std::string& name, bool cordoned) {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) throw Error(errc::not_found, "node \"" + name + "\" not found", "name");
  it->second.cordoned = cordoned;
  write(name, it->second, cordoned ? "cordoned" : "uncordoned");
  index(name, it->second);
}

std::shared_ptr<Node> NodeRegistry::find(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(name);
  return it == nodes_.end() ? nullptr : it->second.node;
}

std::int64_t NodeRegistry::epoch(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = nodes_.find(name);
  return it == nodes_.end() || !it->second.node ? 0 : it->second.epoch;
}

Placed NodeRegistry::place(const PlacementRequest& request) {
  std::lock_guard lock(mutex_);
  if (closed_) throw Error(errc::unavailable, "the server is shutting down");
  auto req = request.vm_spec != nullptr ? sched::request_from(*request.vm_spec)
             : request.spec != nullptr  ? sched::request_from(*request.spec)
                                        : sched::Request{};
  req.data_path = request.data_path;
  if (!request.only_node.empty()) req.node_selector[sched::k_node_name_label] = request.only_node;
  if (const auto* caller = caller_node(request.caller_address)) {
    req.caller = caller->id;
  } else {
    req.from_server = true;  // the calls this instance serves come through this server
  }
  for (const auto& [name, count] : request.instances_per_node) {
    if (auto id = index_.find(name)) req.group.emplace_back(*id, count);
  }
  const auto decision = sched::place(index_, req);
  if (!decision.placed()) {
    throw Error(errc::unavailable,
                std::string("no node can run ") +
                    (request.vm_spec != nullptr ? "a replica of vm \"" : "function \"") +
                    request.function +
                    "\": " + (index_.size() == 0 ? "no node has joined" : decision.summary()));
  }
  const Entry& e = nodes_.at(decision.node_name);
  index_.allocate(*decision.node, req.resources());
  std::string reasons;
  for (const auto& r : decision.reasons) reasons += (reasons.empty() ? "" : ", ") + r;
  return {e.node, e.epoch, reasons, req.resources()};
}

const NodeRegistry::Entry* NodeRegistry::caller_node(const std::string& address) const {
  if (address.empty()) return nullptr;
  const Entry* found = nullptr;
  auto [first, last] = by_address_.equal_range(address);
  for (auto it = first; it != last; ++it) {
    auto e = nodes_.find(it->second);
    if (e == nodes_.end() || !e->second.node) continue;
    // Several nodes behind one address (a NAT, a proxy): which one called is not known.
    if (found != nullptr) return nullptr;
    found = &e->second;
  }
  return found;
}

void NodeRegistry::release(const std::string& node, sched::Resources reserved) {
  std::lock_guard lock(mutex_);
  if (auto id = index_.find(node)) index_.release(*id, reserved);
}

void NodeRegistry::lease_loop() {
  std::unique_lock lock(mutex_);
  while (!closed_) {
    wake_.wait_for(lock, std::min(options_.heartbeat, options_.lease / 8));
    if (closed_) break;
    const auto now = Clock::now();
    std::vector<std::shared_ptr<Node>> lost;
    for (auto& [name, e] : nodes_) {
      if (e.in_process || e.phase == "Lost" || now - e.last_heard < options_.lease) continue;
      if (e.node) lost.push_back(std::move(e.node));
      if (e.held) lost.push_back(std::move(e.held));
      e.phase = "Lost";
      index(name, e);
      try {
        write(
            name, e,
            "not heard from for " + std::to_string(options_.lease.count()) + " ms (lease lapsed)");
      } catch (const std::exception&) {
        // The store is closing or failing: the phase is kept here and written on the next change.
      }
    }
    if (lost.empty()) continue;
    lock.unlock();
    for (auto& node : lost) node->shutdown();
    lock.lock();
  }
}

void NodeRegistry::shutdown() {
  std::vector<std::shared_ptr<Node>> nodes;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    for (auto& [name, e] : nodes_) {
      if (e.node) nodes.push_back(e.node);
      if (e.held) nodes.push_back(std::move(e.held));
    }
  }
  wake_.notify_all();
  if (leases_.joinable()) leases_.join();
  for (auto& node : nodes) node->shutdown();
}

}  // namespace blixard::control
