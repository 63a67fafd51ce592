// Where a cluster handle runs the blocking half of its async_ operations: a thread pool created
// on first use and shared by every handle of one Cluster.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>

#include <boost/asio/thread_pool.hpp>

namespace blixard::detail {

class AsyncContext {
 public:
  explicit AsyncContext(std::size_t threads = 16) : threads_(threads) {}
  ~AsyncContext() {
    if (pool_) pool_->join();
  }

  boost::asio::thread_pool& pool() {
    std::call_once(once_, [this] { pool_ = std::make_unique<boost::asio::thread_pool>(threads_); });
    return *pool_;
  }

 private:
  std::size_t threads_;
  std::once_flag once_;
  std::unique_ptr<boost::asio::thread_pool> pool_;
};

}  // namespace blixard::detail
