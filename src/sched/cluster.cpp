// The cluster snapshot's bookkeeping: every change to a node moves its bit in the bitmaps it
// concerns, so placement never scans nodes to filter them.
#include "sched/cluster.hpp"

#include <algorithm>
#include <stdexcept>
#include <tuple>

#include "sched/detail.hpp"
#include "sched/index.hpp"

namespace blixard::sched {
namespace {

// One spelling per path and per taint, so that indexing and unindexing pair up.
void normalize(NodeInfo& n) {
  for (auto& p : n.data_paths) p = detail::normalize_path(p);
  std::erase_if(n.data_paths, [](const std::string& p) { return p.empty(); });
  std::sort(n.data_paths.begin(), n.data_paths.end());
  n.data_paths.erase(std::unique(n.data_paths.begin(), n.data_paths.end()), n.data_paths.end());
  auto less = [](const Taint& a, const Taint& b) {
    return std::tie(a.key, a.value) < std::tie(b.key, b.value);
  };
  std::sort(n.taints.begin(), n.taints.end(), less);
  n.taints.erase(std::unique(n.taints.begin(), n.taints.end()), n.taints.end());
}

}  // namespace

Cluster::Cluster() : index_(std::make_unique<Index>()) {}
Cluster::Cluster(const Cluster& other)
    : slots_(other.slots_),
      names_(other.names_),
      free_ids_(other.free_ids_),
      index_(std::make_unique<Index>(*other.index_)) {}
Cluster::Cluster(Cluster&&) noexcept = default;
Cluster& Cluster::operator=(const Cluster& other) {
  if (this != &other) *this = Cluster(other);
  return *this;
}
Cluster& Cluster::operator=(Cluster&&) noexcept = default;
Cluster::~Cluster() = default;

Cluster::Slot& Cluster::slot(NodeId id) {
  if (id >= slots_.size() || !slots_[id].live) {
    throw std::out_of_range("no node with id " + std::to_string(id));
  }
  return slots_[id];
}

const Cluster::Slot& Cluster::slot(NodeId id) const {
  if (id >= slots_.size() || !slots_[id].live) {
    throw std::out_of_range("no node with id " + std::to_string(id));
  }
  return slots_[id];
}

NodeId Cluster::add_node(NodeInfo node) {
  if (node.name.empty()) throw std::invalid_argument("a node needs a name");
  if (names_.contains(node.name)) {
    throw std::invalid_argument("a node named " + node.name + " exists");
  }
  NodeId id = 0;
  if (free_ids_.empty()) {
    id = static_cast<NodeId>(slots_.size());
    slots_.emplace_back();
  } else {
    id = *free_ids_.begin();
    free_ids_.erase(free_ids_.begin());
  }
  normalize(node);
  names_.emplace(node.name, id);
  slots_[id].live = true;
  slots_[id].info = std::move(node);
  index_node(id);
  return id;
}

void Cluster::update_node(NodeId id, NodeInfo node) {
  Slot& s = slot(id);
  if (node.name.empty()) throw std::invalid_argument("a node needs a name");
  if (node.name != s.info.name) {
    if (names_.contains(node.name)) {
      throw std::invalid_argument("a node named " + node.name + " exists");
    }
    names_.erase(s.info.name);
    names_.emplace(node.name, id);
  }
  normalize(node);
  unindex_node(id);
  s.info = std::move(node);
  index_node(id);
}

void Cluster::remove_node(NodeId id) {
  Slot& s = slot(id);
  unindex_node(id);
  for (const auto& [peer, micros] : s.latency) {
    if (peer != id) slots_[peer].latency.erase(id);
  }
  names_.erase(s.info.name);
  s = Slot{};
  free_ids_.insert(id);
}

void Cluster::allocate(NodeId id, Resources r) {
  Slot& s = slot(id);
  s.info.allocated.memory_mib += r.memory_mib;
  s.info.allocated.vcpu += r.vcpu;
  index_capacity(id);
}

void Cluster::release(NodeId id, Resources r) {
  Slot& s = slot(id);
  auto& a = s.info.allocated;
  a.memory_mib -= std::min(a.memory_mib, r.memory_mib);
  a.vcpu -= std::min(a.vcpu, r.vcpu);
  index_capacity(id);
}

void Cluster::set_ready(NodeId id, bool ready) {
  slot(id).info.ready = ready;
  index_state(id);
}

void Cluster::set_cordoned(NodeId id, bool cordoned) {
  slot(id).info.cordoned = cordoned;
  index_state(id);
}

void Cluster::set_draining(NodeId id, bool draining) {
  slot(id).info.draining = draining;
  index_state(id);
}

void Cluster::set_latency(NodeId a, NodeId b, std::uint32_t micros) {
  if (a == b) return;  // a node's latency to itself is 0
  slot(a).latency[b] = micros;
  slot(b).latency[a] = micros;
}

void Cluster::set_server_latency(NodeId id, std::uint32_t micros) {
  slot(id).server_latency = micros;
}

bool Cluster::contains(NodeId id) const { return id < slots_.size() && slots_[id].live; }

const NodeInfo& Cluster::node(NodeId id) const { return slot(id).info; }

std::optional<NodeId> Cluster::find(std::string_view name) const {
  auto it = names_.find(std::string(name));
  if (it == names_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::uint32_t> Cluster::latency(NodeId a, NodeId b) const {
  if (a == b && contains(a)) return 0;
  const auto& row = slot(a).latency;
  auto it = row.find(b);
  if (it == row.end()) return std::nullopt;
  return it->second;
}

std::optional<std::uint32_t> Cluster::server_latency(NodeId id) const {
  return slot(id).server_latency;
}

Resources Cluster::free(NodeId id) const {
  const NodeInfo& n = slot(id).info;
  return {n.capacity.memory_mib - std::min(n.capacity.memory_mib, n.allocated.memory_mib),
          n.capacity.vcpu - std::min(n.capacity.vcpu, n.allocated.vcpu)};
}

void Cluster::index_capacity(NodeId id) {
  const NodeInfo& n = slots_[id].info;
  if (index_->load.size() <= id) index_->load.resize(id + 1);
  index_->load[id] = {n.capacity, n.allocated};
  const Resources f = free(id);
  index_->memory.set(id, f.memory_mib);
  index_->vcpu.set(id, f.vcpu);
}

void Cluster::index_state(NodeId id) {
  const NodeInfo& n = slots_[id].info;
  auto put = [id](Roaring& bitmap, bool in) { in ? bitmap.add(id) : bitmap.remove(id); };
  put(index_->ready, n.ready);
  put(index_->cordoned, n.cordoned);
  put(index_->draining, n.draining);
  put(index_->schedulable, n.schedulable());
}

void Cluster::index_node(NodeId id) {
  Index& x = *index_;
  const NodeInfo& n = slots_[id].info;
  x.all.add(id);
  index_state(id);
  index_capacity(id);
  for (const auto& [key, value] : n.labels) {
    LabelKey& k = x.labels[key];
    auto [it, added] = k.value_ids.try_emplace(value, static_cast<std::uint32_t>(k.values.size()));
    if (added) {
      k.values.push_back(value);
      k.nodes.emplace_back();
    }
    k.any.add(id);
    k.nodes[it->second].add(id);
    if (k.value_of.size() <= id) k.value_of.resize(id + 1, k_no_value);
    k.value_of[id] = it->second;
  }
  for (const Taint& t : n.taints) {
    x.tainted.add(id);
    x.taints[{t.key, t.value}].add(id);
  }
  for (const std::string& p : n.data_paths) x.paths[p].add(id);
}

void Cluster::unindex_node(NodeId id) {
  Index& x = *index_;
  const NodeInfo& n = slots_[id].info;
  x.all.remove(id);
  for (Roaring* b : {&x.ready, &x.cordoned, &x.draining, &x.schedulable, &x.tainted}) b->remove(id);
  x.memory.clear(id);
  x.vcpu.clear(id);
  for (const auto& [key, value] : n.labels) {
    LabelKey& k = x.labels[key];
    k.any.remove(id);
    k.nodes[k.value_ids.at(value)].remove(id);
    k.value_of[id] = k_no_value;
  }
  for (const Taint& t : n.taints) {
    auto it = x.taints.find({t.key, t.value});
    it->second.remove(id);
    if (it->second.isEmpty()) x.taints.erase(it);
  }
  for (const std::string& p : n.data_paths) {
    auto it = x.paths.find(p);
    it->second.remove(id);
    if (it->second.isEmpty()) x.paths.erase(it);
  }
}

}  // namespace blixard::sched
