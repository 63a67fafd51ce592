// This machine as a node: registers its Node object under a lease and keeps the lease alive.
#include "control/local_node.hpp"

#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>

#include <google/protobuf/util/time_util.h>

#include "blixard/error.hpp"

namespace blixard::control {
namespace {

constexpr auto k_lease_ttl = std::chrono::seconds(10);
constexpr auto k_heartbeat_every = std::chrono::seconds(3);

}  // namespace

v1::Node describe_this_machine(const std::string& name) {
  v1::Node node;
  node.mutable_metadata()->set_name(name);
  auto& labels = *node.mutable_spec()->mutable_labels();
  utsname uts{};
  if (uname(&uts) == 0) {
    labels["arch"] = uts.machine;
    labels["hostname"] = uts.nodename;
  }
  labels["kvm"] = access("/dev/kvm", R_OK | W_OK) == 0 ? "true" : "false";
  struct sysinfo info {};
  if (sysinfo(&info) == 0) {
    node.mutable_spec()->set_memory_mib(static_cast<std::uint64_t>(info.totalram) * info.mem_unit >>
                                        20);
  }
  node.mutable_spec()->set_vcpu(static_cast<std::uint32_t>(sysconf(_SC_NPROCESSORS_ONLN)));
  node.mutable_status()->set_phase("Ready");
  return node;
}

LocalNode::LocalNode(std::shared_ptr<store::Store> store, std::unique_ptr<runtime::Driver> driver,
                     std::string name)
    : store_(std::move(store)), driver_(std::move(driver)), name_(std::move(name)) {
  node_ = describe_this_machine(name_);
  node_.mutable_spec()->add_drivers(driver_->name());
  register_node();
  heartbeat_ = std::thread([this] { heartbeat_loop(); });
}

LocalNode::~LocalNode() { shutdown(); }

void LocalNode::register_node() {
  lease_ = store_->grant_lease(k_lease_ttl);
  node_.mutable_status()->set_lease_id(lease_);
  *node_.mutable_status()->mutable_last_heartbeat() =
      google::protobuf::util::TimeUtil::GetCurrentTime();
  store_->put(k_nodes_prefix + name_, node_.SerializeAsString(), lease_);
}

void LocalNode::heartbeat_loop() {
  std::unique_lock lock(mutex_);
  while (!wake_.wait_for(lock, k_heartbeat_every, [this] { return stopping_; })) {
    lock.unlock();
    try {
      store_->keep_alive(lease_);
    } catch (const Error&) {
      // The lease expired (the process was paused, or the store restarted): register anew.
      try {
        register_node();
      } catch (const Error&) {
      }
    }
    lock.lock();
  }
}

void LocalNode::shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  driver_->shutdown();
  try {
    store_->revoke_lease(lease_);
  } catch (const Error&) {
  }
}

}  // namespace blixard::control
