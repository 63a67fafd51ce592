// blixard::Function: a handle on one function of a cluster.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include "blixard/detail/async_context.hpp"
#include "blixard/detail/backend.hpp"
#include "blixard/v1/function.pb.h"

namespace blixard {

struct InvokeResult {
  // The handler's return value as JSON text.
  std::string result;
  bool cold_start = false;
  std::string node;
  std::string request_id;
  std::chrono::microseconds duration{0};
};

class Function {
 public:
  Function(std::shared_ptr<detail::Backend> backend, std::string name,
           std::shared_ptr<detail::AsyncContext> async = nullptr)
      : backend_(std::move(backend)),
        name_(std::move(name)),
        async_(async ? std::move(async) : std::make_shared<detail::AsyncContext>()) {}

  const std::string& name() const noexcept { return name_; }
  // The stored object with its current status.
  v1::Function get() const;
  // Runs the handler on `payload_json` and returns its result; throws blixard::Error
  // (invalid_spec for a payload that is not JSON, timeout, handler_failed, throttled, ...).
  // An async invocation (Lambda's Event type): queued durably on the server, which runs it and
  // retries a failure twice; its id at once (Cluster::invocation tells how it went).
  v1::Invocation submit(const std::string& payload_json = "null") const;
  InvokeResult invoke(const std::string& payload_json,
                      std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) const;

  // The same without blocking the caller. Completion signature
  // void(std::exception_ptr, InvokeResult): the exception is the blixard::Error invoke() would
  // throw. Works with callbacks, asio::use_future, asio::use_awaitable and asio::deferred.
  template <class Token = boost::asio::deferred_t>
  auto async_invoke(std::string payload_json, Token&& token = {}) const {
    return async_invoke(std::move(payload_json), std::chrono::milliseconds(0),
                        std::forward<Token>(token));
  }

  // The same with a timeout for this call (0: the function's own), as invoke() takes.
  template <class Token = boost::asio::deferred_t>
  auto async_invoke(std::string payload_json, std::chrono::milliseconds timeout,
                    Token&& token = {}) const {
    return boost::asio::async_initiate<Token, void(std::exception_ptr, InvokeResult)>(
        [backend = backend_, name = name_, async = async_, timeout](auto handler,
                                                                    std::string payload) {
          auto& pool = async->pool();
          // Keeps the caller's executor (e.g. an io_context running a coroutine) alive until done.
          auto work = boost::asio::prefer(
              boost::asio::get_associated_executor(handler, pool.get_executor()),
              boost::asio::execution::outstanding_work.tracked);
          // Shared, as the completion is a (copyable) std::function and the handler may be
          // move-only. Neither holds the AsyncContext: the pool must not own (and so join) itself
          // when the last handle goes away while a call completes.
          auto shared = std::make_shared<decltype(handler)>(std::move(handler));
          Completion complete = [shared, work](std::exception_ptr error, InvokeResult result) {
            boost::asio::dispatch(work, [shared, error, result = std::move(result)]() mutable {
              auto handler = std::move(*shared);
              std::move(handler)(error, std::move(result));
            });
          };
          // A warm instance (of an embedded cluster) takes the call with no thread waiting: its
          // answer is read on the pool's reactor. Anything else waits on a thread of the pool.
          try {
            if (start_invoke(*backend, name, payload, timeout, pool.get_executor(), complete)) {
              return;
            }
          } catch (...) {
            // Not inside the initiating call: a coroutine awaiting this must not resume in it.
            boost::asio::post(work, [shared, error = std::current_exception()]() mutable {
              auto handler = std::move(*shared);
              std::move(handler)(error, InvokeResult{});
            });
            return;
          }
          boost::asio::post(pool, [backend, name, payload = std::move(payload), timeout,
                                   complete = std::move(complete)] {
            std::exception_ptr error;
            InvokeResult result;
            try {
              result = invoke_on(*backend, name, payload, timeout);
            } catch (...) {
              error = std::current_exception();
            }
            complete(error, std::move(result));
          });
        },
        token, std::move(payload_json));
  }

  // Counters and latency summaries (invocations, errors, throttles, cold starts, p50/p99).
  v1::FunctionMetrics metrics() const;
  void remove() const;

 private:
  using Completion = std::function<void(std::exception_ptr, InvokeResult)>;
  static InvokeResult invoke_on(detail::Backend& backend, const std::string& name,
                                const std::string& payload_json, std::chrono::milliseconds timeout);
  // Starts the call with no thread waiting where the backend can (true); false, having done
  // nothing, where it cannot. Throws what invoke_on() would before the call starts.
  static bool start_invoke(detail::Backend& backend, const std::string& name,
                           const std::string& payload_json, std::chrono::milliseconds timeout,
                           const boost::asio::any_io_executor& executor,
                           const Completion& complete);

  std::shared_ptr<detail::Backend> backend_;
  std::string name_;
  std::shared_ptr<detail::AsyncContext> async_;
};

}  // namespace blixard
