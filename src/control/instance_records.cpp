// The instance records' writer (instance_records.hpp).
#include "control/instance_records.hpp"

#include <spdlog/spdlog.h>

#include <utility>

namespace blixard::control {

InstanceRecords::InstanceRecords(std::shared_ptr<store::Store> store,
                                 std::shared_ptr<spdlog::logger> logger)
    : store_(std::move(store)), logger_(std::move(logger)) {
  if (!logger_) logger_ = std::make_shared<spdlog::logger>("blixard");
  writer_ = std::thread([this] { run(); });
}

InstanceRecords::~InstanceRecords() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  writer_.join();
}

std::string InstanceRecords::key(const std::string& function, const std::string& node,
                                 const std::string& name) {
  return std::string(k_instances_prefix) + function + "/" + node + "/" + name;
}

void InstanceRecords::record(const v1::FunctionInstance& instance) {
  {
    std::lock_guard lock(mutex_);
    pending_[key(instance.function(), instance.node(), instance.name())] =
        instance.SerializeAsString();
    ++queued_;
  }
  wake_.notify_one();
}

void InstanceRecords::forget(const std::string& function, const std::string& node,
                             const std::string& name) {
  {
    std::lock_guard lock(mutex_);
    pending_[key(function, node, name)] = std::nullopt;
    ++queued_;
  }
  wake_.notify_one();
}

void InstanceRecords::clear() {
  flush();
  store::Txn txn;
  txn.success.push_back({store::Operation::Type::erase_prefix, k_instances_prefix, {}, 0});
  store_->txn(txn);
}

void InstanceRecords::flush() {
  std::unique_lock lock(mutex_);
  const auto target = queued_;
  written_.wait(lock, [&] { return committed_ >= target || stopping_; });
}

std::vector<v1::FunctionInstance> InstanceRecords::list(const std::string& function) {
  flush();
  std::vector<v1::FunctionInstance> out;
  for (const auto& kv : store_->list(std::string(k_instances_prefix) + function + "/").kvs) {
    v1::FunctionInstance instance;
    if (instance.ParseFromString(kv.value)) out.push_back(std::move(instance));
  }
  return out;
}

void InstanceRecords::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
    if (pending_.empty()) return;  // stopping, nothing left
    auto batch = std::exchange(pending_, {});
    const auto upto = queued_;
    lock.unlock();
    store::Txn txn;
    for (auto& [key, value] : batch) {
      if (value) {
        txn.success.push_back({store::Operation::Type::put, key, std::move(*value), 0});
      } else {
        txn.success.push_back({store::Operation::Type::erase, key, {}, 0});
      }
    }
    try {
      store_->txn(txn);
    } catch (const std::exception& e) {
      // Status then lags until the instance's next change; the pools' memory is still right.
      logger_->warn("cannot store {} instance record(s): {}", batch.size(), e.what());
    }
    lock.lock();
    committed_ = upto;
    written_.notify_all();
  }
}

}  // namespace blixard::control
