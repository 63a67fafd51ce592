// blixard._core: the private extension module behind the `blixard` Python package. It exposes
// blixard::Cluster with objects exchanged as canonical JSON text (the package json.loads them),
// releases the GIL around every call into the C++ core, and turns blixard::Error into the
// exception classes of blixard.errors.
//
// Waiting: blocking calls that may take long (invoke, long polls) run on a worker while the
// calling thread waits in ~100 ms slices without the GIL, re-taking it only to run
// PyErr_CheckSignals(), so Ctrl-C interrupts them (the call itself goes on server-side).
// Async invoke: the C++ completion takes the GIL and hands the result to the event loop with
// loop.call_soon_threadsafe, so no Python thread waits per call (the pyarrow pattern).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "blixard/blixard.hpp"
#include "common/json.hpp"

namespace py = pybind11;

namespace {

using release_gil = py::call_guard<py::gil_scoped_release>;

// The facade returns vectors; the wire's list messages give them one JSON shape ({"items": [...]}).
template <class ListMsg, class Item>
std::string to_list_json(const std::vector<Item>& items) {
  ListMsg list;
  for (const auto& item : items) *list.add_items() = item;
  return blixard::to_json(list);
}

template <class Msg>
Msg from_json_as(const std::string& json) {
  Msg msg;
  blixard::from_json(json, msg);
  return msg;
}

blixard::detail::ApplyMode apply_mode(const std::string& mode) {
  if (mode == "apply") return blixard::detail::ApplyMode::apply;
  if (mode == "create") return blixard::detail::ApplyMode::create;
  if (mode == "remove" || mode == "delete") return blixard::detail::ApplyMode::remove;
  throw blixard::Error(blixard::errc::invalid_spec,
                       "unknown apply mode '" + mode + "' (apply, create, remove)", "mode");
}

// Invoke's answer: the handler's result as JSON text plus where and how it ran.
struct PyInvokeResult {
  std::string result;
  bool cold_start = false;
  std::string node;
  std::string request_id;
  double duration_ms = 0;
};

PyInvokeResult to_py(blixard::InvokeResult&& r) {
  return PyInvokeResult{std::move(r.result), r.cold_start, std::move(r.node),
                        std::move(r.request_id), static_cast<double>(r.duration.count()) / 1000.0};
}

std::chrono::milliseconds seconds_to_ms(double seconds) {
  return std::chrono::milliseconds(seconds > 0 ? static_cast<std::int64_t>(seconds * 1000) : 0);
}

bool python_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// The blixard.errors exception object for `e` (GIL held).
py::object error_object(const blixard::Error& e) {
  const auto& s = e.status();
  std::string code = s.code().empty() ? std::string(blixard::to_string(e.code())) : s.code();
  py::object errors = py::module_::import("blixard.errors");
  return errors.attr("_from_status")(code, s.message(), s.field(), s.file(), s.line(), s.column());
}

py::object error_object(std::exception_ptr p) {
  try {
    std::rethrow_exception(p);
  } catch (const blixard::Error& e) {
    return error_object(e);
  } catch (const std::exception& e) {
    return error_object(blixard::Error(blixard::errc::internal, e.what()));
  } catch (...) {
    return error_object(blixard::Error(blixard::errc::internal, "unknown C++ exception"));
  }
}

// Waits for `future` without the GIL (the caller released it) in slices, checking for signals
// between them. True when a signal handler raised (the Python error is then set).
template <class T>
bool wait_interruptibly(std::future<T>& future) {
  using namespace std::chrono_literals;
  while (future.wait_for(100ms) != std::future_status::ready) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) return true;
  }
  return false;
}

// Counts a cluster's async calls in flight so close() can let them finish first: their
// completions need the GIL, and the pools they run on must not be joined from inside them.
class InFlight {
 public:
  void add() {
    std::lock_guard lock(mutex_);
    ++count_;
  }
  void done() {
    std::lock_guard lock(mutex_);
    if (--count_ == 0) cv_.notify_all();
  }
  void wait_idle(std::chrono::milliseconds limit) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, limit, [this] { return count_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_ = 0;
};

// The Python side of one async invoke: the loop, the future and the resolver that sets it.
// Its references are dropped with the GIL held, whichever thread lets go of it last.
struct PyCompletion {
  py::object loop, future, resolve;

  void reset() {
    loop = py::object();
    future = py::object();
    resolve = py::object();
  }
  ~PyCompletion() {
    if (!loop) return;
    if (!Py_IsInitialized() || python_finalizing()) {
      // Too late to touch Python objects: leak them rather than crash at exit.
      loop.release();
      future.release();
      resolve.release();
      return;
    }
    py::gil_scoped_acquire gil;
    reset();
  }
};

class PyCluster {
 public:
  explicit PyCluster(blixard::Cluster cluster) : cluster_(std::move(cluster)) {}
  PyCluster(PyCluster&& other) noexcept
      : cluster_(std::move(other.cluster_)),
        in_flight_(std::move(other.in_flight_)),
        pool_mutex_(std::move(other.pool_mutex_)),
        pool_(std::move(other.pool_)) {
    other.cluster_.reset();
  }
  PyCluster& operator=(PyCluster&&) = delete;

  // Python drops the last reference with the GIL held; pool threads may be waiting for it.
  ~PyCluster() {
    if (!cluster_ && !pool_) return;
    if (Py_IsInitialized() && PyGILState_Check()) {
      py::gil_scoped_release nogil;
      shut_down();
    } else {
      shut_down();
    }
  }

  static PyCluster local(const std::string& dir, const std::string& python,
                         const std::string& node_name, const std::string& nix_instantiate) {
    blixard::LocalOptions options;
    if (!python.empty()) options.python = python;
    if (!node_name.empty()) options.node_name = node_name;
    if (!nix_instantiate.empty()) options.spec.nix_instantiate = nix_instantiate;
    return PyCluster(blixard::Cluster::local(dir, std::move(options)));
  }

  static PyCluster connect(const std::string& url, const std::string& token, double timeout_s,
                           const std::string& nix_instantiate) {
    blixard::ConnectOptions options;
    options.token = token;
    if (timeout_s > 0) {
      options.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
    }
    if (!nix_instantiate.empty()) options.spec.nix_instantiate = nix_instantiate;
    return PyCluster(blixard::Cluster::connect(url, std::move(options)));
  }

  // Functions. Without a config file the overrides alone make the spec.
  std::string create_function(const std::string& name, const std::optional<std::string>& config,
                              const std::string& overrides_json) {
    if (config) {
      return blixard::to_json(cluster().create_function(name, *config, overrides_json).get());
    }
    blixard::v1::FunctionSpec spec;
    blixard::merge_function_overrides(spec, overrides_json);
    return blixard::to_json(cluster().create_function(name, spec).get());
  }
  std::string create_function_spec(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::FunctionSpec>(spec_json);
    return blixard::to_json(cluster().create_function(name, spec).get());
  }
  std::string get_function(const std::string& name) {
    return blixard::to_json(cluster().function(name).get());
  }
  std::string functions() { return to_list_json<blixard::v1::FunctionList>(cluster().functions()); }
  void delete_function(const std::string& name) { cluster().delete_function(name); }
  std::string function_metrics(const std::string& name) {
    return blixard::to_json(cluster().function(name).metrics());
  }

  // Long polls (called with the GIL held): wait up to `wait_ms` for lines/events after `after`.
  std::string function_logs(const std::string& name, std::int64_t after, std::int64_t wait_ms) {
    auto backend = cluster().backend();
    auto wait = std::chrono::milliseconds(std::max<std::int64_t>(wait_ms, 0));
    return call_interruptibly([backend, name, after, wait] {
      return blixard::to_json(backend->function_logs(name, after, wait));
    });
  }
  std::string vm_logs(const std::string& name, std::int64_t after, std::int64_t wait_ms) {
    auto backend = cluster().backend();
    auto wait = std::chrono::milliseconds(std::max<std::int64_t>(wait_ms, 0));
    return call_interruptibly([backend, name, after, wait] {
      return blixard::to_json(backend->vm_logs(name, after, wait));
    });
  }
  std::string events(const std::string& kind, const std::string& name, std::int64_t after,
                     std::int64_t wait_ms) {
    auto backend = cluster().backend();
    auto wait = std::chrono::milliseconds(std::max<std::int64_t>(wait_ms, 0));
    return call_interruptibly([backend, kind, name, after, wait] {
      return blixard::to_json(backend->events(kind, name, after, wait));
    });
  }

  std::string changes(const std::string& kind, const std::string& name, std::int64_t from_revision,
                      std::int64_t wait_ms) {
    auto backend = cluster().backend();
    auto wait = std::chrono::milliseconds(std::max<std::int64_t>(wait_ms, 0));
    return call_interruptibly([backend, kind, name, from_revision, wait] {
      return blixard::to_json(backend->changes(kind, name, from_revision, wait));
    });
  }

  // Synchronous invoke (called with the GIL held): runs through async_invoke and waits
  // interruptibly. On Ctrl-C it raises KeyboardInterrupt; the call goes on server-side.
  PyInvokeResult invoke(const std::string& name, std::string payload_json, double timeout_s) {
    auto promise = std::make_shared<std::promise<blixard::InvokeResult>>();
    auto future = promise->get_future();
    bool interrupted = false;
    {
      py::gil_scoped_release nogil;
      start_invoke(name, std::move(payload_json), seconds_to_ms(timeout_s),
                   [promise](std::exception_ptr error, blixard::InvokeResult result) {
                     if (error) {
                       promise->set_exception(error);
                     } else {
                       promise->set_value(std::move(result));
                     }
                   });
      interrupted = wait_interruptibly(future);
    }
    if (interrupted) throw py::error_already_set();
    // Ready by now; rethrows the blixard::Error, translated to blixard.errors.
    return to_py(future.get());
  }

  // Async invoke: returns at once; on completion `resolve(future, result, error)` is scheduled
  // on `loop` with call_soon_threadsafe (exactly one of result/error is None).
  void invoke_async(const std::string& name, std::string payload_json, double timeout_s,
                    py::object loop, py::object future, py::object resolve) {
    auto done = std::make_shared<PyCompletion>();
    done->loop = std::move(loop);
    done->future = std::move(future);
    done->resolve = std::move(resolve);
    auto in_flight = in_flight_;
    in_flight->add();
    auto handler = [done, in_flight](std::exception_ptr error,
                                     blixard::InvokeResult result) mutable {
      if (Py_IsInitialized() && !python_finalizing()) {
        py::gil_scoped_acquire gil;
        try {
          py::object value = py::none();
          py::object exc = py::none();
          if (error) {
            exc = error_object(error);
          } else {
            value = py::cast(to_py(std::move(result)));
          }
          done->loop.attr("call_soon_threadsafe")(done->resolve, done->future, value, exc);
        } catch (py::error_already_set& e) {
          // RuntimeError: the loop is closed (asyncio.run() ended without awaiting this call), so
          // nobody waits for the answer. Anything else is a bug worth reporting.
          if (!e.matches(PyExc_RuntimeError)) {
            e.discard_as_unraisable("blixard invoke_async completion");
          }
        } catch (const std::exception&) {
          // Never let an exception escape into the worker thread.
        }
        done->reset();
      }
      done.reset();
      in_flight->done();
    };
    try {
      py::gil_scoped_release nogil;
      start_invoke(name, std::move(payload_json), seconds_to_ms(timeout_s), std::move(handler));
    } catch (...) {
      in_flight->done();
      throw;
    }
  }

  // VMs.
  std::string create_vm(const std::string& name, const std::optional<std::string>& config,
                        const std::string& overrides_json) {
    if (config) return blixard::to_json(cluster().create_vm(name, *config, overrides_json).get());
    blixard::v1::VmSpec spec;
    blixard::merge_vm_overrides(spec, overrides_json);
    return blixard::to_json(cluster().create_vm(name, spec).get());
  }
  std::string create_vm_spec(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::VmSpec>(spec_json);
    return blixard::to_json(cluster().create_vm(name, spec).get());
  }
  std::string get_vm(const std::string& name) { return blixard::to_json(cluster().vm(name).get()); }
  std::string vms() { return to_list_json<blixard::v1::VmList>(cluster().vms()); }
  void delete_vm(const std::string& name) { cluster().delete_vm(name); }
  std::string update_vm(const std::string& name, const std::string& config,
                        const std::string& overrides_json) {
    return blixard::to_json(cluster().update_vm(name, config, overrides_json).get());
  }
  std::string rollback_vm(const std::string& name, std::int64_t revision) {
    return blixard::to_json(cluster().vm(name).rollback(revision));
  }
  std::string switchover_vm(const std::string& name, const std::string& replica) {
    return blixard::to_json(cluster().vm(name).switchover(replica));
  }
  std::string scale_vm(const std::string& name, std::uint32_t replicas) {
    return blixard::to_json(cluster().vm(name).scale(replicas));
  }
  std::string start_vm(const std::string& name) {
    return blixard::to_json(cluster().vm(name).start());
  }
  std::string stop_vm(const std::string& name) {
    return blixard::to_json(cluster().vm(name).stop());
  }

  // Triggers.
  std::string create_trigger(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::TriggerSpec>(spec_json);
    return blixard::to_json(cluster().create_trigger(name, spec).get());
  }
  std::string get_trigger(const std::string& name) {
    return blixard::to_json(cluster().trigger(name).get());
  }
  std::string triggers() { return to_list_json<blixard::v1::TriggerList>(cluster().triggers()); }
  void delete_trigger(const std::string& name) { cluster().delete_trigger(name); }

  // Storage pools and volumes.
  std::string create_storage_pool(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::StoragePoolSpec>(spec_json);
    return blixard::to_json(cluster().create_storage_pool(name, spec));
  }
  std::string storage_pool(const std::string& name) {
    return blixard::to_json(cluster().storage_pool(name));
  }
  std::string storage_pools() {
    return to_list_json<blixard::v1::StoragePoolList>(cluster().storage_pools());
  }
  void delete_storage_pool(const std::string& name) { cluster().delete_storage_pool(name); }
  std::string volumes() { return to_list_json<blixard::v1::VolumeList>(cluster().volumes()); }
  void delete_volume(const std::string& name) { cluster().delete_volume(name); }

  std::string create_network(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::NetworkSpec>(spec_json);
    return blixard::to_json(cluster().create_network(name, spec));
  }
  std::string network(const std::string& name) { return blixard::to_json(cluster().network(name)); }
  std::string networks() { return to_list_json<blixard::v1::NetworkList>(cluster().networks()); }
  void delete_network(const std::string& name) { cluster().delete_network(name); }

  // Queues, events and async invocations (docs/queues.md): answers as JSON.
  std::string create_queue(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::QueueSpec>(spec_json);
    cluster().create_queue(name, spec);
    return blixard::to_json(cluster().queue(name).get());
  }
  std::string queue(const std::string& name) {
    return blixard::to_json(cluster().queue(name).get());
  }
  std::string queues() { return to_list_json<blixard::v1::QueueList>(cluster().queues()); }
  void delete_queue(const std::string& name) { cluster().delete_queue(name); }
  std::vector<std::string> send_messages(const std::string& queue,
                                         const std::vector<std::string>& bodies) {
    return cluster().queue(queue).send(bodies);
  }
  // `wait` and `visibility` in milliseconds (0: none, the queue's own).
  std::string receive_messages(const std::string& queue, std::uint32_t max, std::int64_t wait_ms,
                               std::int64_t visibility_ms) {
    blixard::v1::QueueMessageList out;
    for (auto& m : cluster().queue(queue).receive(max, std::chrono::milliseconds(wait_ms),
                                                  std::chrono::milliseconds(visibility_ms)))
      *out.add_items() = std::move(m);
    return blixard::to_json(out);
  }
  std::string peek_messages(const std::string& queue, std::uint32_t max) {
    blixard::v1::QueueMessageList out;
    for (auto& m : cluster().queue(queue).peek(max)) *out.add_items() = std::move(m);
    return blixard::to_json(out);
  }
  std::uint64_t acknowledge_messages(const std::string& queue,
                                     const std::vector<std::string>& receipts) {
    return cluster().queue(queue).acknowledge(receipts);
  }
  std::uint64_t purge_queue(const std::string& queue) { return cluster().queue(queue).purge(); }
  std::string publish_event(const std::string& source, const std::string& data_json) {
    return blixard::to_json(cluster().publish(source, data_json));
  }
  std::string submit_invocation(const std::string& name, const std::string& payload_json) {
    return blixard::to_json(cluster().function(name).submit(payload_json));
  }
  std::string invocation(const std::string& id) {
    return blixard::to_json(cluster().invocation(id));
  }

  std::string nodes() { return to_list_json<blixard::v1::NodeList>(cluster().nodes()); }
  std::string node(const std::string& name) { return blixard::to_json(cluster().node(name)); }
  std::string change_node(const std::string& name, const std::string& action) {
    if (action == "cordon") return blixard::to_json(cluster().cordon_node(name));
    if (action == "uncordon") return blixard::to_json(cluster().uncordon_node(name));
    if (action == "drain") return blixard::to_json(cluster().drain_node(name));
    throw blixard::Error(blixard::errc::invalid_spec,
                         "node action must be cordon, uncordon or drain, not \"" + action + "\"",
                         "action");
  }
  std::string info() { return blixard::to_json(cluster().info()); }

  // Tokens: the TokenCreated (with its secret) as JSON. `ttl` is a duration ("24h", "30d";
  // empty: never expires), read by the one duration parser so its errors name "ttl".
  std::string create_token(const std::string& role, const std::string& function,
                           const std::string& ttl, const std::string& name) {
    blixard::v1::TokenRequest request;
    request.set_role(role);
    request.set_function(function);
    request.set_name(name);
    if (!ttl.empty()) {
      const auto ms = blixard::parse_duration(ttl, "ttl").count();
      request.mutable_ttl()->set_seconds(ms / 1000);
      request.mutable_ttl()->set_nanos(static_cast<std::int32_t>(ms % 1000) * 1'000'000);
    }
    return blixard::to_json(cluster().create_token(request));
  }
  std::string tokens() { return to_list_json<blixard::v1::TokenList>(cluster().tokens()); }
  std::string revoke_token(const std::string& name_or_id) {
    return blixard::to_json(cluster().revoke_token(name_or_id));
  }

  std::string apply(const std::string& manifest, bool dry_run, bool prune,
                    const std::string& stack) {
    return blixard::to_json(cluster().apply(std::filesystem::path(manifest),
                                            {.dry_run = dry_run, .prune = prune, .stack = stack}));
  }
  std::string apply_objects(const std::string& objects_json, const std::string& mode, bool dry_run,
                            bool prune, const std::string& stack) {
    auto set = from_json_as<blixard::v1::ObjectSet>(objects_json);
    return blixard::to_json(cluster().apply(
        set, {.mode = apply_mode(mode), .dry_run = dry_run, .prune = prune, .stack = stack}));
  }
  std::string remove(const std::string& manifest, bool dry_run) {
    return blixard::to_json(
        cluster().remove(std::filesystem::path(manifest), {.dry_run = dry_run}));
  }
  std::string remove_stack(const std::string& stack, bool dry_run) {
    return blixard::to_json(cluster().remove_stack(stack, dry_run));
  }
  // Parses a manifest without touching the cluster (for `apply --dry-run` and tests).
  std::string load_manifest(const std::string& manifest) {
    return blixard::to_json(blixard::load_manifest(manifest, cluster().spec_options()));
  }

  // Called without the GIL. Stops an embedded cluster (its calls in flight fail at once), lets
  // async completions run, then drops the handles and worker threads.
  void close() {
    if (cluster_) cluster_->close();
  }

 private:
  blixard::Cluster& cluster() {
    if (!cluster_) throw blixard::Error(blixard::errc::unavailable, "the cluster is closed");
    return *cluster_;
  }

  void shut_down() {
    if (cluster_) cluster_->close();
    // Bounded: a remote cluster's calls go on after close(); their completions then find no
    // one waiting.
    in_flight_->wait_idle(std::chrono::seconds(2));
    cluster_.reset();
    pool_.reset();
  }

  // Threads for the blocking calls that have no async form (long polls: logs, events, waits).
  // Made on first use.
  boost::asio::thread_pool& pool() {
    std::lock_guard lock(*pool_mutex_);
    if (!pool_) pool_ = std::make_unique<boost::asio::thread_pool>(16);
    return *pool_;
  }

  // Runs `f` on the pool and waits for it interruptibly (called with the GIL held).
  template <class F>
  auto call_interruptibly(F f) -> decltype(f()) {
    using T = decltype(f());
    auto promise = std::make_shared<std::promise<T>>();
    auto future = promise->get_future();
    bool interrupted = false;
    {
      py::gil_scoped_release nogil;
      boost::asio::post(pool(), [promise, f = std::move(f)]() mutable {
        try {
          promise->set_value(f());
        } catch (...) {
          promise->set_exception(std::current_exception());
        }
      });
      interrupted = wait_interruptibly(future);
    }
    if (interrupted) throw py::error_already_set();
    return future.get();
  }

  // Starts one invocation; `handler(std::exception_ptr, blixard::InvokeResult)` runs on a
  // worker thread when it ends. Called without the GIL.
  template <class Handler>
  void start_invoke(const std::string& name, std::string payload, std::chrono::milliseconds timeout,
                    Handler handler) {
    cluster().function(name).async_invoke(std::move(payload), timeout, std::move(handler));
  }

  std::optional<blixard::Cluster> cluster_;
  std::shared_ptr<InFlight> in_flight_ = std::make_shared<InFlight>();
  std::unique_ptr<std::mutex> pool_mutex_ = std::make_unique<std::mutex>();
  std::unique_ptr<boost::asio::thread_pool> pool_;
};

// Raises the blixard.errors class for `e` with its code, field and position as attributes.
void raise_blixard_error(const blixard::Error& e) {
  py::object exc = error_object(e);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Private bindings of the Blixard C++ core; use the `blixard` package instead.";

  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    try {
      std::rethrow_exception(p);
    } catch (const blixard::Error& e) {
      try {
        raise_blixard_error(e);
      } catch (py::error_already_set& inner) {
        // blixard.errors could not be imported: keep the message at least.
        inner.restore();
      }
    } catch (const py::error_already_set&) {
      throw;
    } catch (const py::builtin_exception&) {
      throw;
    } catch (const std::exception& e) {
      // Anything else from the core is a bug, reported as an internal BlixardError.
      try {
        raise_blixard_error(blixard::Error(blixard::errc::internal, e.what()));
      } catch (py::error_already_set& inner) {
        inner.restore();
      }
    }
  });

  m.def("version", [] { return std::string(blixard::version()); });
  m.def(
      "errc_names",
      [] {
        std::vector<std::string> names;
        for (int i = static_cast<int>(blixard::errc::invalid_spec);
             i <= static_cast<int>(blixard::errc::internal); ++i) {
          names.emplace_back(blixard::to_string(static_cast<blixard::errc>(i)));
        }
        return names;
      },
      "Every error code of the core, for checking blixard.errors against it.");
  m.def(
      "load_manifest",
      [](const std::string& path, const std::string& nix_instantiate) {
        blixard::SpecOptions options;
        if (!nix_instantiate.empty()) options.nix_instantiate = nix_instantiate;
        return blixard::to_json(blixard::load_manifest(path, options));
      },
      py::arg("path"), py::arg("nix_instantiate") = "", release_gil());
  m.def(
      "parse_size_mib",
      [](const std::string& text, const std::string& field) {
        return blixard::parse_size_mib(text, field);
      },
      py::arg("text"), py::arg("field") = "size");
  m.def(
      "parse_duration",
      [](const std::string& text, const std::string& field) {
        return static_cast<double>(blixard::parse_duration(text, field).count()) / 1000.0;
      },
      py::arg("text"), py::arg("field") = "duration");

  py::class_<PyInvokeResult>(m, "InvokeResult")
      .def_readonly("result", &PyInvokeResult::result)
      .def_readonly("cold_start", &PyInvokeResult::cold_start)
      .def_readonly("node", &PyInvokeResult::node)
      .def_readonly("request_id", &PyInvokeResult::request_id)
      .def_readonly("duration_ms", &PyInvokeResult::duration_ms);

  py::class_<PyCluster>(m, "Cluster")
      .def_static("local", &PyCluster::local, py::arg("dir"), py::arg("python") = "",
                  py::arg("node_name") = "", py::arg("nix_instantiate") = "", release_gil())
      .def_static("connect", &PyCluster::connect, py::arg("url"), py::arg("token") = "",
                  py::arg("timeout") = 0.0, py::arg("nix_instantiate") = "", release_gil())
      .def("create_function", &PyCluster::create_function, py::arg("name"), py::arg("config"),
           py::arg("overrides_json") = "{}", release_gil())
      .def("create_function_spec", &PyCluster::create_function_spec, py::arg("name"),
           py::arg("spec_json"), release_gil())
      .def("get_function", &PyCluster::get_function, py::arg("name"), release_gil())
      .def("functions", &PyCluster::functions, release_gil())
      .def("delete_function", &PyCluster::delete_function, py::arg("name"), release_gil())
      .def("function_metrics", &PyCluster::function_metrics, py::arg("name"), release_gil())
      .def("function_logs", &PyCluster::function_logs, py::arg("name"), py::arg("after") = 0,
           py::arg("wait_ms") = 0)
      .def("vm_logs", &PyCluster::vm_logs, py::arg("name"), py::arg("after") = 0,
           py::arg("wait_ms") = 0)
      .def("events", &PyCluster::events, py::arg("kind") = "", py::arg("name") = "",
           py::arg("after") = -1, py::arg("wait_ms") = 0)
      .def("changes", &PyCluster::changes, py::arg("kind") = "", py::arg("name") = "",
           py::arg("from_revision") = 1, py::arg("wait_ms") = 0)
      // invoke, function_logs, events and changes release the GIL themselves (to check for Ctrl-C).
      .def("invoke", &PyCluster::invoke, py::arg("name"), py::arg("payload_json"),
           py::arg("timeout") = 0.0)
      .def("invoke_async", &PyCluster::invoke_async, py::arg("name"), py::arg("payload_json"),
           py::arg("timeout"), py::arg("loop"), py::arg("future"), py::arg("resolve"))
      .def("create_vm", &PyCluster::create_vm, py::arg("name"), py::arg("config"),
           py::arg("overrides_json") = "{}", release_gil())
      .def("create_vm_spec", &PyCluster::create_vm_spec, py::arg("name"), py::arg("spec_json"),
           release_gil())
      .def("get_vm", &PyCluster::get_vm, py::arg("name"), release_gil())
      .def("vms", &PyCluster::vms, release_gil())
      .def("delete_vm", &PyCluster::delete_vm, py::arg("name"), release_gil())
      .def("update_vm", &PyCluster::update_vm, py::arg("name"), py::arg("config"),
           py::arg("overrides_json"), release_gil())
      .def("rollback_vm", &PyCluster::rollback_vm, py::arg("name"), py::arg("revision") = 0,
           release_gil())
      .def("switchover_vm", &PyCluster::switchover_vm, py::arg("name"), py::arg("replica"),
           release_gil())
      .def("scale_vm", &PyCluster::scale_vm, py::arg("name"), py::arg("replicas"), release_gil())
      .def("start_vm", &PyCluster::start_vm, py::arg("name"), release_gil())
      .def("stop_vm", &PyCluster::stop_vm, py::arg("name"), release_gil())
      .def("create_trigger", &PyCluster::create_trigger, py::arg("name"), py::arg("spec_json"),
           release_gil())
      .def("get_trigger", &PyCluster::get_trigger, py::arg("name"), release_gil())
      .def("triggers", &PyCluster::triggers, release_gil())
      .def("delete_trigger", &PyCluster::delete_trigger, py::arg("name"), release_gil())
      .def("create_storage_pool", &PyCluster::create_storage_pool, py::arg("name"),
           py::arg("spec_json"), release_gil())
      .def("storage_pool", &PyCluster::storage_pool, py::arg("name"), release_gil())
      .def("storage_pools", &PyCluster::storage_pools, release_gil())
      .def("delete_storage_pool", &PyCluster::delete_storage_pool, py::arg("name"), release_gil())
      .def("volumes", &PyCluster::volumes, release_gil())
      .def("delete_volume", &PyCluster::delete_volume, py::arg("name"), release_gil())
      .def("create_network", &PyCluster::create_network, py::arg("name"), py::arg("spec_json"),
           release_gil())
      .def("network", &PyCluster::network, py::arg("name"), release_gil())
      .def("networks", &PyCluster::networks, release_gil())
      .def("delete_network", &PyCluster::delete_network, py::arg("name"), release_gil())
      .def("create_queue", &PyCluster::create_queue, py::arg("name"), py::arg("spec_json"),
           release_gil())
      .def("queue", &PyCluster::queue, py::arg("name"), release_gil())
      .def("queues", &PyCluster::queues, release_gil())
      .def("delete_queue", &PyCluster::delete_queue, py::arg("name"), release_gil())
      .def("send_messages", &PyCluster::send_messages, py::arg("queue"), py::arg("bodies"),
           release_gil())
      .def("receive_messages", &PyCluster::receive_messages, py::arg("queue"), py::arg("max"),
           py::arg("wait_ms"), py::arg("visibility_ms"), release_gil())
      .def("peek_messages", &PyCluster::peek_messages, py::arg("queue"), py::arg("max"),
           release_gil())
      .def("acknowledge_messages", &PyCluster::acknowledge_messages, py::arg("queue"),
           py::arg("receipts"), release_gil())
      .def("purge_queue", &PyCluster::purge_queue, py::arg("queue"), release_gil())
      .def("publish_event", &PyCluster::publish_event, py::arg("source"), py::arg("data_json"),
           release_gil())
      .def("submit_invocation", &PyCluster::submit_invocation, py::arg("name"),
           py::arg("payload_json"), release_gil())
      .def("invocation", &PyCluster::invocation, py::arg("id"), release_gil())
      .def("nodes", &PyCluster::nodes, release_gil())
      .def("node", &PyCluster::node, py::arg("name"), release_gil())
      .def("change_node", &PyCluster::change_node, py::arg("name"), py::arg("action"),
           release_gil())
      .def("info", &PyCluster::info, release_gil())
      .def("create_token", &PyCluster::create_token, py::arg("role"), py::arg("function") = "",
           py::arg("ttl") = "", py::arg("name") = "", release_gil())
      .def("tokens", &PyCluster::tokens, release_gil())
      .def("revoke_token", &PyCluster::revoke_token, py::arg("name_or_id"), release_gil())
      .def("apply", &PyCluster::apply, py::arg("manifest"), py::arg("dry_run") = false,
           py::arg("prune") = false, py::arg("stack") = "", release_gil())
      .def("apply_objects", &PyCluster::apply_objects, py::arg("objects_json"),
           py::arg("mode") = "apply", py::arg("dry_run") = false, py::arg("prune") = false,
           py::arg("stack") = "", release_gil())
      .def("remove", &PyCluster::remove, py::arg("manifest"), py::arg("dry_run") = false,
           release_gil())
      .def("remove_stack", &PyCluster::remove_stack, py::arg("stack"), py::arg("dry_run") = false,
           release_gil())
      .def("load_manifest", &PyCluster::load_manifest, py::arg("manifest"), release_gil())
      .def("close", &PyCluster::close, release_gil());
}
