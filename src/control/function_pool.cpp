// Function pools: warm instances, cold starts, throttling, scale to zero and autoscaling on this
// node (see function_pool.hpp). One mutex guards every pool; it is never held while an instance
// starts, runs a call or stops, so a burst of cold calls starts its instances in parallel.
#include "control/function_pool.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <list>

#include <google/protobuf/util/time_util.h>

namespace blixard::control {
namespace {

using google::protobuf::util::TimeUtil;
using std::chrono::milliseconds;

milliseconds to_ms(const google::protobuf::Duration& d) {
  return milliseconds(d.seconds() * 1000 + d.nanos() / 1'000'000);
}

// Time-weighted in-flight concurrency in one-second buckets (Knative's average concurrency).
class ConcurrencyWindow {
 public:
  using Clock = std::chrono::steady_clock;

  void set(Clock::time_point now, double concurrency) {
    advance(now);
    current_ = concurrency;
  }

  // Average over the last `window` (never longer than the kept history).
  double average(Clock::time_point now, milliseconds window) {
    advance(now);
    const double seconds = std::max(0.001, window.count() / 1000.0);
    const double from = to_seconds(now) - seconds;
    double area = 0;
    for (const auto& [start, a] : buckets_) {
      // A bucket partly inside the window counts in proportion.
      const double overlap = std::clamp(start + 1.0 - from, 0.0, 1.0);
      area += a * overlap;
    }
    return area / seconds;
  }

 private:
  static double to_seconds(Clock::time_point t) {
    return std::chrono::duration<double>(t.time_since_epoch()).count();
  }

  void advance(Clock::time_point now) {
    double t = to_seconds(last_ == Clock::time_point{} ? now : last_);
    const double end = to_seconds(now);
    last_ = now;
    while (t < end) {
      const double second = std::floor(t);
      const double step = std::min(end, second + 1.0) - t;
      if (buckets_.empty() || buckets_.back().first != second) buckets_.emplace_back(second, 0.0);
      buckets_.back().second += current_ * step;
      t += step;
    }
    while (!buckets_.empty() && buckets_.front().first < end - 61) buckets_.pop_front();
  }

  Clock::time_point last_{};
  double current_ = 0;
  std::deque<std::pair<double, double>> buckets_;  // (start second, concurrency x seconds)
};

// The string at `field` ("imagePath", "body.path") of a call's JSON event: its input path, for
// placement. Empty when the function names no field or the event has no string there.
std::string data_path_of(const std::string& payload, const std::string& field) {
  if (field.empty()) return {};
  boost::system::error_code ec;
  boost::json::value event = boost::json::parse(payload, ec);
  if (ec) return {};
  const boost::json::value* at = &event;
  std::size_t start = 0;
  while (start <= field.size()) {
    const std::size_t dot = std::min(field.find('.', start), field.size());
    const auto* object = at->if_object();
    if (object == nullptr) return {};
    at = object->if_contains(std::string_view(field).substr(start, dot - start));
    if (at == nullptr) return {};
    start = dot + 1;
  }
  const auto* path = at->if_string();
  return path != nullptr ? std::string(*path) : std::string();
}

}  // namespace

struct FunctionPools::Slot {
  enum class Phase { starting, ready, stopping, gone };
  std::string name;  // the instance's name once started
  std::string function;
  std::string node;           // where it runs, once placed
  sched::Resources reserved;  // what its placement reserved there
  std::int64_t epoch = 0;     // its node's fencing epoch at placement
  bool recorded = false;      // the observer was told it is ready (and is told when it ends)
  std::int64_t version = 0;
  Phase phase = Phase::starting;
  std::shared_ptr<runtime::Instance> instance;
  std::optional<Error> start_error;
  std::uint32_t in_flight = 0;
  Clock::time_point last_used = Clock::now();
  // The execution context whose reactor read this instance's last asynchronous answer: its pipe
  // is registered there, so another call from that context costs no re-registration.
  const void* reactor = nullptr;
  google::protobuf::Timestamp started_at = TimeUtil::GetCurrentTime();
};

struct FunctionPools::Pool {
  std::string name;
  std::int64_t version = 0;
  v1::FunctionSpec spec;
  bool deleted = false;
  std::list<std::shared_ptr<Slot>> slots;
  std::uint32_t in_flight = 0;
  ConcurrencyWindow window;
  std::uint32_t desired = 0;  // the autoscaler's instance count
  Clock::time_point panic_until{};
  std::uint32_t background_starts = 0;
  // Background starts (minInstances) that fail back off, so a broken handler is no busy loop.
  Clock::time_point retry_after{};
  milliseconds backoff{0};

  std::uint32_t target() const {
    return std::max<std::uint32_t>(1, spec.scaling().target_concurrency());
  }
  // Instances of the current spec, starting or running (what maxInstances caps).
  std::uint32_t current_instances() const {
    std::uint32_t n = 0;
    for (const auto& s : slots) {
      if (s->version == version &&
          (s->phase == Slot::Phase::starting || s->phase == Slot::Phase::ready)) {
        ++n;
      }
    }
    return n;
  }
};

FunctionPools::FunctionPools(std::shared_ptr<NodeRegistry> nodes,
                             std::shared_ptr<Telemetry> telemetry, PoolOptions options, Place place)
    : nodes_(std::move(nodes)),
      telemetry_(std::move(telemetry)),
      options_(options),
      place_(std::move(place)) {
  if (!place_) {
    place_ = [registry = nodes_.get()](const PlacementRequest& r) { return registry->place(r); };
  }
  maintenance_ = std::thread([this] { maintenance_loop(); });
}

FunctionPools::~FunctionPools() { shutdown(); }

void FunctionPools::end_slot(Slot& slot) {
  if (slot.phase == Slot::Phase::gone) return;
  slot.phase = Slot::Phase::gone;
  if (!slot.node.empty()) nodes_->release(slot.node, slot.reserved);
  if (slot.recorded && observer_) {
    v1::FunctionInstance gone;
    gone.set_name(slot.name);
    gone.set_function(slot.function);
    gone.set_node(slot.node);
    observer_(gone, true);
  }
}

void FunctionPools::observe(InstanceObserver observer) {
  std::lock_guard lock(mutex_);
  observer_ = std::move(observer);
}

FunctionPools::Pool& FunctionPools::pool_for(const std::string& function) {
  auto& p = pools_[function];
  if (!p) {
    p = std::make_unique<Pool>();
    p->name = function;
  }
  return *p;
}

// Called with mutex_ held.
void FunctionPools::apply_spec(Pool& pool, std::int64_t version, const v1::FunctionSpec& spec) {
  // An older (or the same) read than what we run; a re-created function has a newer version.
  if (version <= pool.version) return;
  const bool changed = pool.version != 0;
  pool.version = version;
  pool.spec = spec;
  pool.deleted = false;
  if (!changed) return;
  // New calls go to new-spec instances; idle old ones stop now, busy ones when their calls end.
  std::uint32_t draining = 0;
  for (auto& s : pool.slots) {
    if (s->version != version && s->phase == Slot::Phase::ready) {
      s->phase = Slot::Phase::stopping;
      ++draining;
    }
  }
  if (draining > 0) {
    record(pool.name, "ScaledDown",
           "draining " + std::to_string(draining) + " instance(s) of the previous spec");
  }
  changed_.notify_all();
}

void FunctionPools::update(const std::string& function, std::int64_t version,
                           const v1::FunctionSpec& spec) {
  std::lock_guard lock(mutex_);
  if (closed_) return;
  apply_spec(pool_for(function), version, spec);
  changed_.notify_all();  // the maintenance loop starts minInstances
}

void FunctionPools::remove(const std::string& function) {
  std::vector<std::shared_ptr<runtime::Instance>> kill;
  {
    std::lock_guard lock(mutex_);
    auto it = pools_.find(function);
    if (it == pools_.end()) return;
    Pool& pool = *it->second;
    pool.deleted = true;
    for (auto& s : pool.slots) {
      if (s->instance) kill.push_back(s->instance);
      if (s->phase != Slot::Phase::starting) s->phase = Slot::Phase::stopping;
    }
    if (!kill.empty()) {
      record(function, "ScaledDown",
             "function deleted: stopping " + std::to_string(kill.size()) + " instance(s)");
    }
  }
  for (auto& in : kill) in->kill();
  changed_.notify_all();
  telemetry_->forget(function);
}

void FunctionPools::record(const std::string& function, const char* reason,
                           const std::string& message, const std::string& node) {
  v1::WatchEvent e;
  e.set_type("record");
  e.set_kind("functions");
  e.set_name(function);
  e.set_reason(reason);
  e.set_message(message);
  e.set_node(node);
  telemetry_->publish(std::move(e));
}

void FunctionPools::throttle(Pool& pool, const std::string& why) {
  const std::string message = "function \"" + pool.name + "\" is throttled: " + why;
  telemetry_->record_invocation(pool.name, Outcome::throttled, std::chrono::microseconds(0), false);
  record(pool.name, "Throttled", why);
  throw Error(errc::throttled, message);
}

void FunctionPools::note_concurrency(Pool& pool) {
  pool.window.set(Clock::now(), pool.in_flight);
  publish_gauges(pool);
}

void FunctionPools::publish_gauges(const Pool& pool) {
  std::uint32_t busy = 0, warm = 0;
  for (const auto& s : pool.slots) {
    if (s->phase != Slot::Phase::ready && s->phase != Slot::Phase::stopping) continue;
    if (s->in_flight > 0) {
      ++busy;
    } else if (s->phase == Slot::Phase::ready) {
      ++warm;
    }
  }
  std::map<std::string, std::uint32_t> by_node;
  for (const auto& s : pool.slots) {
    if (s->phase == Slot::Phase::ready || s->phase == Slot::Phase::stopping) ++by_node[s->node];
  }
  telemetry_->set_gauges(pool.name, pool.in_flight, busy, warm, by_node);
}

runtime::InvocationResult FunctionPools::invoke(std::int64_t version,
                                                const runtime::Invocation& inv) {
  return invoke_attempt(version, inv, 0);
}

void FunctionPools::retire(const std::string& function, const std::shared_ptr<Slot>& slot,
                           const std::string& why) {
  {
    std::lock_guard lock(mutex_);
    if (slot->phase != Slot::Phase::ready) return;
    slot->phase = Slot::Phase::stopping;  // its exit is then expected: reported here, not there
    auto it = pools_.find(function);
    if (it != pools_.end()) {
      if (!why.empty() && !it->second->deleted && !closed_) {
        record(function, "Failed", "instance " + slot->name + " " + why, slot->node);
      }
      publish_gauges(*it->second);
    }
  }
  changed_.notify_all();
}

std::shared_ptr<FunctionPools::Slot> FunctionPools::pick_ready(Pool& pool,
                                                               const void* reactor) const {
  const std::uint32_t target = pool.target();
  std::shared_ptr<Slot> slot;
  // A ready instance of the current spec with room: one whose pipe the caller's reactor already
  // watches (an answer read on another io thread costs a cross-thread handoff: with four calls
  // per instance the HTTP trigger went from about 16k to 25k calls/s, bench/RESULTS.md), then the
  // busiest (pack calls, so the others idle out), then the most recently used (warm caches).
  auto better = [reactor](const Slot& a, const Slot& b) {
    const bool a_here = reactor != nullptr && a.reactor == reactor;
    const bool b_here = reactor != nullptr && b.reactor == reactor;
    if (a_here != b_here) return a_here;
    if (a.in_flight != b.in_flight) return a.in_flight > b.in_flight;
    return a.last_used > b.last_used;
  };
  for (auto& s : pool.slots) {
    if (s->version != pool.version || s->phase != Slot::Phase::ready || s->in_flight >= target) {
      continue;
    }
    if (!slot || better(*s, *slot)) slot = s;
  }
  return slot;
}

FunctionPools::Pool& FunctionPools::admit(std::int64_t version, const runtime::Invocation& inv) {
  if (closed_) throw Error(errc::unavailable, "the cluster is shut down");
  Pool& pool = pool_for(inv.function);
  apply_spec(pool, version, inv.spec);
  if (pool.deleted) throw Error(errc::unavailable, "function \"" + inv.function + "\" was deleted");
  // Counted here, at arrival, cold or warm: a call waiting for a start holds its place. Set to 0
  // (reserved concurrency 0), every call is throttled; unset (an unvalidated spec), no cap.
  const std::uint32_t limit = pool.spec.concurrent_executions();
  if (pool.spec.has_concurrent_executions() && pool.in_flight >= limit) {
    throttle(pool, "at its limit of " + std::to_string(limit) + " concurrent executions");
  }
  return pool;
}

void FunctionPools::take_place(Pool& pool, Slot& slot) {
  ++slot.in_flight;
  ++pool.in_flight;
  note_concurrency(pool);
}

bool FunctionPools::give_place(const std::string& function, Slot& slot) {
  --slot.in_flight;
  slot.last_used = Clock::now();
  auto it = pools_.find(function);
  if (it == pools_.end()) return true;
  Pool& pool = *it->second;
  --pool.in_flight;
  note_concurrency(pool);
  // Only someone waiting for this call to end needs waking: the maintenance loop to stop a drained
  // slot or a deleted pool, close() for the calls in flight. Waking it on every call costs each
  // warm call a context switch.
  return closed_ || pool.deleted || (slot.in_flight == 0 && slot.version != pool.version);
}

void FunctionPools::release_place(const std::string& function, Slot& slot) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    wake = give_place(function, slot);
  }
  if (wake) changed_.notify_all();
}

Error FunctionPools::map_error(const std::string& function, const Error& e) const {
  auto it = pools_.find(function);
  if (it == pools_.end() || it->second->deleted) {
    return {errc::unavailable, "function \"" + function + "\" was deleted"};
  }
  if (closed_) return {errc::unavailable, "the cluster is shut down"};
  return e;
}

void FunctionPools::record_success(const std::string& function, const std::string& request_id,
                                   const Slot& slot, const runtime::InvocationResult& out) {
  telemetry_->record_invocation(function, Outcome::ok, out.duration, out.cold_start);
  // `function watch` shows where each call ran; about a microsecond beside tens per call.
  record(function, out.cold_start ? "ColdStart" : "Invoked",
         "request " + request_id + " served by " + slot.name + " in " +
             std::to_string(out.duration.count()) + " us",
         slot.node);
}

FunctionPools::Failure FunctionPools::call_failed(const std::string& function,
                                                  const std::shared_ptr<Slot>& slot,
                                                  const runtime::Instance& instance,
                                                  const Error& raw, bool cold, bool first_try) {
  // A crash or a timeout kill ends the instance; its exit is reported asynchronously, so take it
  // out of rotation now or the next call could be handed the dead instance.
  const bool dead = !instance.alive();
  if (dead) retire(function, slot, raw.code() == errc::timeout ? "" : "ended: " + raw.message());
  bool wake = false;
  Failure out{Error(errc::internal, ""), false};
  {
    std::lock_guard lock(mutex_);
    wake = give_place(function, *slot);
    out.error = map_error(function, raw);
  }
  if (wake) changed_.notify_all();
  if (dead && first_try && raw.code() == errc::unavailable &&
      out.error.code() == errc::unavailable && out.error.message() == raw.message()) {
    // The instance died before this call reached it: nothing ran, so try a live one.
    out.retry = true;
    return out;
  }
  record_failure(function, out.error, cold);
  return out;
}

void FunctionPools::record_failure(const std::string& function, const Error& e, bool cold) {
  if (e.code() == errc::timeout) {
    telemetry_->record_invocation(function, Outcome::timeout, std::chrono::microseconds(0), cold);
    record(function, "TimedOut", e.message());
  } else {
    telemetry_->record_invocation(function, Outcome::error, std::chrono::microseconds(0), cold);
  }
}

// mutex_ held, the call admitted into `pool`: the slot it takes (a ready one with room, a starting
// one it may share, or a new one it starts), its place taken at once so that a call waiting for a
// cold start counts toward concurrentExecutions and its instance toward maxInstances.
FunctionPools::Placement FunctionPools::place(Pool& pool, std::shared_ptr<Slot> ready) {
  Placement p;
  p.spec = pool.spec;
  p.slot = std::move(ready);
  if (!p.slot && pool.target() > 1) {
    // Share an instance that is starting, as its other calls will.
    for (auto& s : pool.slots) {
      if (s->version == pool.version && s->phase == Slot::Phase::starting &&
          s->in_flight < pool.target()) {
        p.slot = s;
        p.cold = true;
        break;
      }
    }
  }
  if (!p.slot) {
    const std::uint32_t max = p.spec.scaling().max_instances();
    if (max != 0 && pool.current_instances() >= max) {
      throttle(pool, "all of its " + std::to_string(max) + " instances are busy (maxInstances)");
    }
    // Every caller that finds no room starts its own instance, without waiting for others.
    p.slot = std::make_shared<Slot>();
    p.slot->function = pool.name;
    p.slot->version = pool.version;
    p.slot->name = pool.name + "-starting-" + std::to_string(++slot_counter_);
    pool.slots.push_back(p.slot);
    p.cold = p.starter = true;
  }
  take_place(pool, *p.slot);
  return p;
}

runtime::InvocationResult FunctionPools::invoke_attempt(std::int64_t version,
                                                        const runtime::Invocation& inv,
                                                        int attempt) {
  Placement p;
  {
    std::lock_guard lock(mutex_);
    Pool& pool = admit(version, inv);
    p = place(pool, pick_ready(pool, nullptr));
  }
  return run_placed(version, inv, p, attempt);
}

runtime::InvocationResult FunctionPools::run_placed(std::int64_t version,
                                                    const runtime::Invocation& inv,
                                                    const Placement& p, int attempt) {
  const std::string& function = inv.function;
  const auto& slot = p.slot;
  const bool cold = p.cold;
  if (p.starter) {
    start_slot(function, slot, p.spec,
               data_path_of(inv.payload, p.spec.placement().data_path_from()),
               inv.caller ? inv.caller->address() : std::string());
  } else if (cold) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return slot->phase != Slot::Phase::starting; });
  }
  std::shared_ptr<runtime::Instance> instance;
  std::optional<Error> start_error;
  {
    std::lock_guard lock(mutex_);
    instance = slot->instance;
    start_error = slot->start_error;
  }
  if (!instance) {
    Error e(errc::internal, "");
    {
      std::lock_guard lock(mutex_);
      give_place(function, *slot);
      e = map_error(function,
                    start_error ? *start_error : Error(errc::unavailable, "instance stopped"));
    }
    telemetry_->record_invocation(function,
                                  e.code() == errc::timeout ? Outcome::timeout : Outcome::error,
                                  std::chrono::microseconds(0), true);
    throw e;
  }
  if (inv.abandoned()) {
    // Its client hung up while it waited: the instance stays (warm) for the next call, this one
    // is not started.
    release_place(function, *slot);
    telemetry_->record_invocation(function, Outcome::abandoned, std::chrono::microseconds(0), cold);
    throw Error(errc::unavailable, "the caller went away before the call started");
  }

  try {
    auto out = instance->call(inv);
    out.cold_start = cold;
    out.node = slot->node;
    release_place(function, *slot);
    record_success(function, inv.request_id, *slot, out);
    return out;
  } catch (const Error& raw) {
    Failure f = call_failed(function, slot, *instance, raw, cold, attempt == 0);
    if (f.retry) return invoke_attempt(version, inv, attempt + 1);
    throw f.error;
  }
}

bool FunctionPools::try_invoke_async(std::int64_t version,
                                     const std::shared_ptr<const runtime::Invocation>& inv,
                                     const boost::asio::any_io_executor& executor,
                                     runtime::CallCompletion complete) {
  std::shared_ptr<Slot> slot;
  std::shared_ptr<runtime::Instance> instance;
  Placement cold;
  {
    std::lock_guard lock(mutex_);
    Pool& pool = admit(version, *inv);
    const void* reactor = &boost::asio::query(executor, boost::asio::execution::context);
    slot = pick_ready(pool, reactor);
    if (slot) {
      slot->reactor = reactor;
      instance = slot->instance;
      take_place(pool, *slot);
    } else {
      // Admitted now, before it waits for a start: a burst past the caps is throttled at once
      // instead of queueing for a thread.
      cold = place(pool, nullptr);
    }
  }
  if (cold.slot) {
    detach_call(inv, complete, cold,
                [this, version, inv, cold] { return run_placed(version, *inv, cold, 0); });
    return true;
  }
  auto call =
      std::make_shared<AsyncCall>(AsyncCall{version, inv, slot, instance, std::move(complete)});
  bool sent = false;
  try {
    sent = instance->call_async(
        *inv, executor,
        [this, call](const std::exception_ptr& error, runtime::InvocationResult out) {
          async_done(*call, error, std::move(out));
        });
  } catch (const Error& raw) {
    Failure f = call_failed(inv->function, slot, *instance, raw, false, true);
    if (!f.retry) throw f.error;
    // Nothing ran: a live instance takes it, or a new one (admitted again, on a thread).
    detach_call(inv, call->complete, {},
                [this, version, inv] { return invoke_attempt(version, *inv, 1); });
    return true;
  }
  if (!sent) {
    // Its pipe is full of calls queued ahead: this one keeps its place and waits on a thread.
    Placement queued;
    queued.slot = slot;
    detach_call(inv, call->complete, queued,
                [this, version, inv, queued] { return run_placed(version, *inv, queued, 0); });
  }
  return true;
}

void FunctionPools::detach_call(const std::shared_ptr<const runtime::Invocation>& inv,
                                const runtime::CallCompletion& complete, const Placement& placed,
                                std::function<runtime::InvocationResult()> body) {
  if (inv->caller) inv->caller->watch();  // it waits: a caller that hangs up meanwhile is noticed
  {
    std::lock_guard lock(mutex_);
    ++background_threads_;  // shutdown() waits for it
  }
  try {
    std::thread([this, body = std::move(body), complete] {
      std::exception_ptr failed;
      runtime::InvocationResult out;
      try {
        out = body();
      } catch (...) {
        failed = std::current_exception();
      }
      background_done();
      complete(failed, std::move(out));
    }).detach();
  } catch (const std::system_error& e) {
    // No thread: the call gives its place (and the start it would make) back and fails now.
    {
      std::lock_guard lock(mutex_);
      --background_threads_;
      if (placed.slot) {
        if (placed.starter) {
          end_slot(*placed.slot);
          auto it = pools_.find(inv->function);
          if (it != pools_.end()) it->second->slots.remove(placed.slot);
        }
        give_place(inv->function, *placed.slot);
      }
    }
    changed_.notify_all();
    throw Error(errc::unavailable, std::string("cannot run the call: ") + e.what());
  }
}

void FunctionPools::async_done(const AsyncCall& call, const std::exception_ptr& error,
                               runtime::InvocationResult out) {
  const std::string& function = call.inv->function;
  if (!error) {
    out.cold_start = false;
    out.node = call.slot->node;
    record_success(function, call.inv->request_id, *call.slot, out);
    // The last touch of this object: shutdown() may end it once the place is given back.
    std::unique_lock lock(mutex_);
    if (give_place(function, *call.slot)) changed_.notify_all();
    lock.unlock();
    call.complete(nullptr, std::move(out));
    return;
  }
  Error raw(errc::internal, "");
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    raw = e;
  } catch (const std::exception& e) {
    raw = Error(errc::internal, e.what());
  } catch (...) {
    raw = Error(errc::internal, "unknown exception");
  }
  // Counted as a background thread before the place is given back, so shutdown() waits for the
  // retry below too.
  {
    std::lock_guard lock(mutex_);
    ++background_threads_;
  }
  Failure f = call_failed(function, call.slot, *call.instance, raw, false, true);
  if (f.retry) {
    // The retry may have to start an instance: not on the caller's reactor.
    try {
      std::thread([this, version = call.version, inv = call.inv, complete = call.complete] {
        std::exception_ptr failed;
        runtime::InvocationResult again;
        try {
          again = invoke_attempt(version, *inv, 1);
        } catch (...) {
          failed = std::current_exception();
        }
        background_done();
        complete(failed, std::move(again));
      }).detach();
      return;
    } catch (const std::system_error& e) {
      f.error = Error(errc::unavailable, std::string("cannot retry the call: ") + e.what());
    }
  }
  background_done();
  call.complete(std::make_exception_ptr(f.error), {});
}

void FunctionPools::background_done() {
  std::lock_guard lock(mutex_);
  --background_threads_;
  changed_.notify_all();
}

void FunctionPools::start_slot(const std::string& function, const std::shared_ptr<Slot>& slot,
                               const v1::FunctionSpec& spec, const std::string& data_path,
                               const std::string& caller_address) {
  runtime::InstanceOptions options;
  options.function = function;
  options.spec = spec;
  std::weak_ptr<Slot> weak = slot;
  options.on_exit = [this, function, weak](const runtime::InstanceExit& exit) {
    on_instance_exit(function, weak, exit);
  };
  std::shared_ptr<runtime::Instance> instance;
  std::optional<Error> error;
  Placed placed;
  try {
    PlacementRequest request;
    request.function = function;
    request.spec = &spec;
    request.data_path = data_path;
    request.caller_address = caller_address;
    {
      // One placement at a time, from counting the function's instances per node to recording
      // where this one goes: concurrent cold starts each see the others (spreadAcross).
      std::lock_guard placing(placement_mutex_);
      {
        std::lock_guard lock(mutex_);
        if (auto it = pools_.find(function); it != pools_.end()) {
          for (const auto& s : it->second->slots) {
            if (!s->node.empty() && s->phase != Slot::Phase::gone)
              ++request.instances_per_node[s->node];
          }
        }
      }
      placed = place_(request);
      std::lock_guard lock(mutex_);
      slot->node = placed.node->name();
      slot->reserved = placed.reserved;
      slot->epoch = placed.epoch;
    }
    // Each line says where it was written.
    options.on_log = [telemetry = telemetry_, function, node = placed.node->name()](
                         const std::string& instance, const std::string& stream, std::string line) {
      telemetry->append_log(function, instance, node, stream, std::move(line));
    };
    instance = placed.node->start({placed.epoch, options});
  } catch (const Error& e) {
    error = e;
  }
  std::vector<std::shared_ptr<runtime::Instance>> kill;
  {
    std::lock_guard lock(mutex_);
    auto it = pools_.find(function);
    Pool* pool = it == pools_.end() ? nullptr : it->second.get();
    if (error) {
      slot->start_error = *error;
      end_slot(*slot);
      if (pool != nullptr) {
        pool->slots.remove(slot);
        record(function, "Failed", "instance did not start: " + error->message());
      }
    } else {
      slot->instance = instance;
      slot->name = instance->name();
      slot->started_at = TimeUtil::GetCurrentTime();
      slot->last_used = Clock::now();
      const bool dead = slot->phase == Slot::Phase::gone;  // exited already
      if (closed_ || pool == nullptr || pool->deleted) {
        slot->phase = Slot::Phase::stopping;
        kill.push_back(instance);
      } else if (!dead) {
        slot->phase = slot->version == pool->version ? Slot::Phase::ready : Slot::Phase::stopping;
      }
      if (!dead && observer_) {
        v1::FunctionInstance ready;
        ready.set_name(slot->name);
        ready.set_function(function);
        ready.set_node(slot->node);
        ready.set_phase("Warm");
        *ready.mutable_started_at() = slot->started_at;
        ready.set_epoch(slot->epoch);
        ready.set_memory_mib(slot->reserved.memory_mib);
        ready.set_cold_start_us(
            std::chrono::duration_cast<std::chrono::microseconds>(instance->init_duration())
                .count());
        slot->recorded = true;
        observer_(ready, false);
      }
      const auto init = instance->init_duration();
      telemetry_->record_cold_start(function, init);
      record(function, "Placed",
             "instance " + slot->name + " placed on node " + slot->node + ": " + placed.reasons,
             slot->node);
      if (pool != nullptr) {
        record(function, "ScaledUp",
               "instance " + slot->name + " ready in " +
                   std::to_string(init.count() / 1000.0).substr(0, 6) + " ms (" +
                   std::to_string(pool->current_instances()) + " instance(s))");
        publish_gauges(*pool);
      }
    }
  }
  changed_.notify_all();
  for (auto& in : kill) in->kill();
}

void FunctionPools::start_in_background(Pool& pool, std::uint32_t count) {
  for (std::uint32_t i = 0; i < count; ++i) {
    auto slot = std::make_shared<Slot>();
    slot->function = pool.name;
    slot->version = pool.version;
    slot->name = pool.name + "-starting-" + std::to_string(++slot_counter_);
    pool.slots.push_back(slot);
    ++pool.background_starts;
    ++background_threads_;
    // On its own thread: the maintenance loop must not wait for an instance to get ready.
    try {
      std::thread([this, function = pool.name, slot, spec = pool.spec] {
        start_slot(function, slot, spec);
        std::lock_guard lock(mutex_);
        auto it = pools_.find(function);
        if (it != pools_.end()) {
          Pool& p = *it->second;
          --p.background_starts;
          if (slot->start_error) {
            p.backoff = std::min(milliseconds(30'000), std::max(milliseconds(1000), p.backoff * 2));
            p.retry_after = Clock::now() + p.backoff;
          } else {
            p.backoff = milliseconds(0);
          }
        }
        --background_threads_;
        changed_.notify_all();
      }).detach();
    } catch (const std::system_error&) {
      pool.slots.remove(slot);
      --pool.background_starts;
      --background_threads_;
      return;
    }
  }
}

void FunctionPools::on_instance_exit(const std::string& function, const std::weak_ptr<Slot>& weak,
                                     const runtime::InstanceExit& exit) {
  {
    std::lock_guard lock(mutex_);
    auto slot = weak.lock();
    if (!slot) return;
    const bool expected = exit.requested || slot->phase == Slot::Phase::stopping;
    end_slot(*slot);
    auto it = pools_.find(function);
    if (it != pools_.end()) {
      it->second->slots.remove(slot);
      if (!expected && !it->second->deleted && !closed_) {
        record(function, "Failed", "instance " + exit.instance + " " + exit.reason, slot->node);
      }
      publish_gauges(*it->second);
    }
  }
  changed_.notify_all();
}

FunctionPools::Load FunctionPools::load_on(const std::string& node) const {
  Load load;
  std::lock_guard lock(mutex_);
  for (const auto& [name, pool] : pools_) {
    for (const auto& s : pool->slots) {
      if (s->node != node || s->phase == Slot::Phase::gone) continue;
      ++load.instances;
      load.memory_mib += pool->spec.memory_mib();
    }
  }
  return load;
}

std::uint32_t FunctionPools::drain_node(const std::string& node) {
  std::uint32_t count = 0;
  {
    std::lock_guard lock(mutex_);
    for (auto& [name, pool] : pools_) {
      std::uint32_t here = 0;
      for (auto& s : pool->slots) {
        if (s->node != node || s->phase == Slot::Phase::gone) continue;
        ++here;
        if (s->phase == Slot::Phase::ready) s->phase = Slot::Phase::stopping;
      }
      if (here > 0) {
        record(name, "ScaledDown",
               "draining " + std::to_string(here) + " instance(s) off node " + node, node);
        publish_gauges(*pool);
      }
      count += here;
    }
  }
  changed_.notify_all();  // the maintenance loop stops the idle ones and starts replacements
  return count;
}

void FunctionPools::fill_status(const std::string& function, v1::FunctionStatus& status) const {
  std::lock_guard lock(mutex_);
  status.clear_instances();
  status.set_instances_running(0);
  status.set_instances_warm(0);
  auto it = pools_.find(function);
  if (it == pools_.end()) return;
  std::uint32_t busy = 0, warm = 0;
  for (const auto& s : it->second->slots) {
    if (s->phase == Slot::Phase::gone) continue;
    auto* in = status.add_instances();
    in->set_name(s->name);
    in->set_function(function);
    in->set_node(s->node);
    in->set_in_flight(s->in_flight);
    *in->mutable_started_at() = s->started_at;
    if (s->phase == Slot::Phase::starting) {
      in->set_phase("Starting");
    } else if (s->in_flight > 0) {
      in->set_phase("Busy");
      ++busy;
    } else if (s->phase == Slot::Phase::stopping) {
      in->set_phase("Stopping");
    } else {
      in->set_phase("Warm");
      ++warm;
    }
  }
  status.set_instances_running(busy);
  status.set_instances_warm(warm);
}

// ---- the maintenance loop: reaping, minInstances, autoscaling ----

void FunctionPools::maintenance_loop() {
  std::unique_lock lock(mutex_);
  while (!closed_) {
    std::vector<std::shared_ptr<runtime::Instance>> to_stop;
    tick(to_stop);
    if (!to_stop.empty()) {
      lock.unlock();
      for (auto& in : to_stop) in->stop(options_.stop_grace);
      to_stop.clear();
      lock.lock();
      continue;
    }
    changed_.wait_for(lock, options_.tick);
  }
}

// Called with mutex_ held; fills `to_stop` with instances to stop outside the lock.
void FunctionPools::tick(std::vector<std::shared_ptr<runtime::Instance>>& to_stop) {
  const auto now = Clock::now();
  for (auto it = pools_.begin(); it != pools_.end();) {
    Pool& pool = *it->second;
    if (pool.deleted) {
      if (pool.slots.empty() && pool.in_flight == 0 && pool.background_starts == 0) {
        it = pools_.erase(it);
        continue;
      }
      ++it;
      continue;
    }
    const auto& scaling = pool.spec.scaling();
    const milliseconds keep_warm =
        scaling.has_keep_warm() ? to_ms(scaling.keep_warm()) : milliseconds(60'000);
    const std::uint32_t target = pool.target();

    // Autoscaler: desired = ceil(average concurrency / target) over the stable window, or over
    // the panic window while panicking (then never scaling down).
    const auto stable = std::max(milliseconds(100), std::min(options_.stable_window, keep_warm));
    const auto panic = std::max(
        milliseconds(100),
        milliseconds(static_cast<long long>(stable.count() * options_.panic_window_fraction)));
    const double avg_stable = pool.window.average(now, stable);
    const double avg_panic = pool.window.average(now, panic);
    const auto want = [&](double avg) {
      // A sliver of demand rounds down, so an idle function can reach zero.
      return static_cast<std::uint32_t>(std::ceil(avg / target - 0.05));
    };
    const std::uint32_t want_stable = want(avg_stable);
    const std::uint32_t want_panic = want(avg_panic);
    std::uint32_t current = pool.current_instances();
    if (want_panic > 1 &&
        want_panic >= options_.panic_threshold * std::max<std::uint32_t>(1, current)) {
      pool.panic_until = now + stable;
    }
    if (now < pool.panic_until) {
      pool.desired = std::max({pool.desired, want_panic, want_stable});
    } else {
      pool.desired = want_stable;
    }
    const std::uint32_t max = scaling.max_instances();
    const std::uint32_t floor = std::max(scaling.min_instances(), pool.desired);

    // Drained instances of an old spec, once their calls are done.
    for (auto s = pool.slots.begin(); s != pool.slots.end();) {
      if ((*s)->phase == Slot::Phase::stopping && (*s)->in_flight == 0 && (*s)->instance) {
        to_stop.push_back((*s)->instance);
        end_slot(**s);
        s = pool.slots.erase(s);
      } else {
        ++s;
      }
    }
    // Idle past keepWarm, oldest first, down to the floor.
    std::vector<std::shared_ptr<Slot>> idle;
    for (auto& s : pool.slots) {
      if (s->version == pool.version && s->phase == Slot::Phase::ready && s->in_flight == 0 &&
          now - s->last_used >= keep_warm) {
        idle.push_back(s);
      }
    }
    std::sort(idle.begin(), idle.end(),
              [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
    std::uint32_t stopped = 0;
    for (auto& s : idle) {
      if (current <= floor) break;
      to_stop.push_back(s->instance);
      end_slot(*s);
      pool.slots.remove(s);
      --current;
      ++stopped;
    }
    if (stopped > 0) {
      record(pool.name, "ScaledDown",
             "stopped " + std::to_string(stopped) + " instance(s) idle for " +
                 std::to_string(keep_warm.count()) + " ms (" + std::to_string(current) + " left)");
      publish_gauges(pool);
    }
    // Up to minInstances (after a create, an update or a crash) and to what the autoscaler wants.
    std::uint32_t goal = std::max(scaling.min_instances(), pool.desired);
    if (max != 0) goal = std::min(goal, max);
    if (current < goal && now >= pool.retry_after) start_in_background(pool, goal - current);
    ++it;
  }
}

void FunctionPools::close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
}

void FunctionPools::shutdown() {
  std::vector<std::shared_ptr<runtime::Instance>> kill;
  {
    std::lock_guard lock(mutex_);
    if (shut_down_) return;
    shut_down_ = true;
    closed_ = true;
    for (auto& [name, pool] : pools_) {
      for (auto& s : pool->slots) {
        if (s->instance) kill.push_back(s->instance);
      }
    }
  }
  changed_.notify_all();
  if (maintenance_.joinable()) maintenance_.join();
  for (auto& in : kill) in->kill();
  // Callers in flight fail (their instances are dead) and starts in progress end; the instance
  // threads' exit callbacks need this object, so wait for them.
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] {
    if (background_threads_ != 0) return false;
    for (auto& [name, pool] : pools_) {
      if (pool->in_flight != 0) return false;
      for (auto& s : pool->slots) {
        if (s->instance && s->phase != Slot::Phase::gone) {
          s->instance->kill();  // started after the first sweep
          return false;
        }
      }
    }
    return true;
  });
}

}  // namespace blixard::control
