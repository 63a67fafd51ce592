// This machine as a node (see local_node.hpp).
#include "agent/local_node.hpp"

#include <sched.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>

#include "blixard/error.hpp"
#include "runtime/accel.hpp"
#include "runtime/replica_network.hpp"

namespace blixard::agent {

v1::NodeSpec describe_this_machine() {
  v1::NodeSpec spec;
  auto& labels = *spec.mutable_labels();
  utsname uts{};
  if (uname(&uts) == 0) {
    labels["arch"] = uts.machine;
    labels["hostname"] = uts.nodename;
  }
  // By a probe, not by /dev/kvm's presence (runtime/accel.hpp).
  labels["kvm"] = runtime::probe_accel().kvm ? "true" : "false";
  struct sysinfo info {};
  if (sysinfo(&info) == 0) {
    spec.set_memory_mib(static_cast<std::uint64_t>(info.totalram) * info.mem_unit >> 20);
  }
  // The CPUs this agent may run on (a container's cpuset, taskset), not all the host has.
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  const int cpus = sched_getaffinity(0, sizeof allowed, &allowed) == 0
                       ? CPU_COUNT(&allowed)
                       : static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  spec.set_vcpu(static_cast<std::uint32_t>(std::max(cpus, 1)));
  return spec;
}

LocalNode::LocalNode(std::string name, v1::NodeSpec spec, std::unique_ptr<runtime::Driver> driver,
                     std::shared_ptr<CodeCache> code, std::unique_ptr<runtime::Driver> vm_driver)
    : name_(std::move(name)),
      spec_(std::move(spec)),
      driver_(std::move(driver)),
      code_(std::move(code)),
      vm_driver_(std::move(vm_driver)) {
  for (const auto* d : {driver_.get(), vm_driver_.get()}) {
    if (d == nullptr) continue;
    spec_.add_drivers(d->name());
    (*spec_.mutable_labels())[control::driver_label(d->name())] = "true";
  }
}

LocalNode::~LocalNode() { shutdown(); }

void LocalNode::check_epoch(std::int64_t epoch) const {
  if (epoch < epoch_) {
    throw Error(errc::unavailable, "node " + name_ + " refuses an assignment of epoch " +
                                       std::to_string(epoch) + " (it is at epoch " +
                                       std::to_string(epoch_) + ")");
  }
}

std::shared_ptr<runtime::Replica> LocalNode::start_replica(
    const control::ReplicaAssignment& assignment) {
  const std::string& name = assignment.replica.name;
  {
    std::lock_guard lock(mutex_);
    check_epoch(assignment.epoch);
    auto it = replicas_.find(name);
    if (it != replicas_.end()) {
      auto r = it->second.replica.lock();
      if (r && r->alive()) {
        throw Error(errc::already_exists, "node " + name_ + " already runs replica " + name);
      }
    }
  }
  const std::string which = control::replica_driver(assignment.replica.spec, spec_);
  runtime::Driver* driver = vm_driver_ && vm_driver_->name() == which ? vm_driver_.get()
                            : driver_->name() == which                ? driver_.get()
                                                                      : nullptr;
  if (driver == nullptr) {
    throw Error(errc::unavailable, "node " + name_ + " has no " + assignment.replica.spec.driver() +
                                       " driver for replica " + name);
  }
  runtime::ReplicaOptions options = assignment.replica;
  options.epoch = assignment.epoch;
  auto replica = driver->start_replica(options);
  std::lock_guard lock(mutex_);
  std::erase_if(replicas_, [](const auto& kv) { return kv.second.replica.expired(); });
  replicas_[name] = {replica, assignment.epoch};
  return replica;
}

void LocalNode::remove_volume(const v1::VolumeAttachment& volume) {
  // The VM driver made it (libvirt: through its storage API); the sandbox driver's are plain
  // directories, which either one removes.
  (vm_driver_ ? vm_driver_ : driver_)->remove_volume(volume);
}

void LocalNode::overlay_peers(const std::vector<std::string>& addresses) {
  runtime::set_overlay_peers(addresses);
}

std::shared_ptr<runtime::Instance> LocalNode::start(const control::Assignment& assignment) {
  {
    std::lock_guard lock(mutex_);
    check_epoch(assignment.epoch);
  }
  std::shared_ptr<runtime::Instance> instance;
  if (const auto& digest = assignment.instance.spec.code_digest(); !digest.empty()) {
    if (!code_) {
      throw Error(errc::unavailable, "node " + name_ + " has no code cache to fetch " + digest);
    }
    runtime::InstanceOptions options = assignment.instance;
    options.spec.set_code(code_->directory(digest).string());
    instance = driver_->start(options);
  } else {
    instance = driver_->start(assignment.instance);
  }
  std::lock_guard lock(mutex_);
  for (auto it = running_.begin(); it != running_.end();) {
    it = it->second.instance.expired() ? running_.erase(it) : std::next(it);
  }
  running_[instance->name()] = {instance, assignment.epoch};
  return instance;
}

std::vector<std::string> LocalNode::instances() const {
  std::vector<std::string> out;
  std::lock_guard lock(mutex_);
  for (const auto& [name, r] : running_) {
    auto in = r.instance.lock();
    if (in && in->alive()) out.push_back(name);
  }
  for (const auto& [name, r] : replicas_) {
    auto replica = r.replica.lock();
    if (replica && replica->alive()) out.push_back(name);
  }
  return out;
}

std::vector<v1::RunningInstance> LocalNode::running() const {
  std::vector<v1::RunningInstance> out;
  std::lock_guard lock(mutex_);
  for (const auto& [name, r] : running_) {
    auto in = r.instance.lock();
    if (!in || !in->alive()) continue;
    auto& ri = out.emplace_back();
    ri.set_instance(name);
    ri.set_epoch(r.epoch);
  }
  for (const auto& [name, r] : replicas_) {
    auto replica = r.replica.lock();
    if (!replica || !replica->alive()) continue;
    auto& ri = out.emplace_back();
    ri.set_instance(name);
    ri.set_epoch(r.epoch);
  }
  return out;
}

std::vector<std::shared_ptr<runtime::Replica>> LocalNode::adopt_leftovers(
    const runtime::ReplicaOptions::LogCallback& on_log,
    const std::function<void(const runtime::ReplicaExit&)>& on_exit) {
  std::vector<std::shared_ptr<runtime::Replica>> out;
  // Both drivers may run replicas: the VM driver, and the sandbox driver (`driver: sandbox`, or
  // the node's only one).
  auto adopted = driver_->adopt(on_log, on_exit);
  if (vm_driver_) {
    auto guests = vm_driver_->adopt(on_log, on_exit);
    std::move(guests.begin(), guests.end(), std::back_inserter(adopted));
  }
  std::lock_guard lock(mutex_);
  for (auto& a : adopted) {
    replicas_[a.replica->name()] = {a.replica, a.epoch};
    out.push_back(std::move(a.replica));
  }
  return out;
}

void LocalNode::set_epoch(std::int64_t epoch, const std::vector<std::string>& adopted) {
  std::vector<std::shared_ptr<runtime::Instance>> stale;
  std::vector<std::shared_ptr<runtime::Replica>> stale_replicas;
  std::vector<std::shared_ptr<runtime::Replica>> kept;  // adopted: told so outside the lock
  {
    std::lock_guard lock(mutex_);
    epoch_ = epoch;
    for (auto it = running_.begin(); it != running_.end();) {
      auto in = it->second.instance.lock();
      if (in && it->second.epoch < epoch) stale.push_back(std::move(in));
      it = !in || it->second.epoch < epoch ? running_.erase(it) : std::next(it);
    }
    for (const auto& name : adopted) {
      auto it = replicas_.find(name);
      if (it == replicas_.end()) continue;
      it->second.epoch = std::max(it->second.epoch, epoch);
      if (auto r = it->second.replica.lock()) kept.push_back(std::move(r));
    }
    for (auto it = replicas_.begin(); it != replicas_.end();) {
      auto r = it->second.replica.lock();
      if (r && it->second.epoch < epoch) stale_replicas.push_back(std::move(r));
      it = !r || it->second.epoch < epoch ? replicas_.erase(it) : std::next(it);
    }
  }
  for (auto& in : stale) in->kill();
  for (auto& r : stale_replicas) r->kill();
  for (auto& r : kept) r->adopted(epoch);
}

void LocalNode::detach() {
  if (vm_driver_) vm_driver_->detach();
  driver_->detach();  // its replicas that may outlive the agent run on; the rest are killed
}

void LocalNode::shutdown() {
  if (vm_driver_) vm_driver_->shutdown();
  driver_->shutdown();
}

}  // namespace blixard::agent
