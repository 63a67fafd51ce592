#include "control/deliveries.hpp"

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <thread>

#include <google/protobuf/util/time_util.h>
#include <boost/json.hpp>

#include "blixard/error.hpp"

namespace blixard::control {
namespace {

using Clock = std::chrono::steady_clock;

using google::protobuf::util::TimeUtil;

std::chrono::milliseconds to_ms(const google::protobuf::Duration& d) {
  return std::chrono::milliseconds(TimeUtil::DurationToMilliseconds(d));
}

// An event trigger's and an async queue's settings: two retries, then the dead-letter queue.
v1::QueueSpec retrying_spec(const std::string& queue) {
  v1::QueueSpec spec;
  spec.set_max_receives(3);
  spec.set_dead_letter_queue(Deliveries::dead_letters(queue));
  return spec;
}

// How a failed call is told to the caller of invocation(): its code and message.
struct Failure {
  std::string code;
  std::string message;
  bool counted = true;  // a failure of the handler, not a refusal to run it
};

Failure failure_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    // Refused before the handler ran (throttled, the function not there, shutting down): not
    // the message's fault, so not one of its attempts.
    const bool refused =
        e.code() == errc::throttled || e.code() == errc::unavailable || e.code() == errc::not_found;
    return {std::string(to_string(e.code())), e.message(), !refused};
  } catch (const std::exception& e) {
    return {"internal", e.what(), true};
  } catch (...) {
    return {"internal", "unknown error", true};
  }
}

std::string error_json(const Failure& f) {
  boost::json::object o;
  o["code"] = f.code;
  o["message"] = f.message;
  return boost::json::serialize(o);
}

}  // namespace

struct Deliveries::Poller {
  std::string key;
  Kind kind = Kind::queue;
  std::string queue;
  std::string function;
  std::uint32_t batch = 1;
  std::chrono::milliseconds window{0};
  std::shared_ptr<Queues> queues;
  std::shared_ptr<Telemetry> telemetry;
  DeliveryOptions options;

  std::mutex mutex;
  std::condition_variable changed;
  std::uint32_t in_flight = 0;
  std::uint32_t limit = 1;
  double growth = 0;  // concurrency earned toward the next step up
  Clock::time_point grown_at = Clock::now();
  bool stop = false;
  std::thread thread;
};

Deliveries::Deliveries(std::shared_ptr<Queues> queues, Invoke invoke,
                       std::shared_ptr<Telemetry> telemetry, DeliveryOptions options)
    : queues_(std::move(queues)),
      invoke_(std::move(invoke)),
      telemetry_(std::move(telemetry)),
      options_(options) {}

Deliveries::~Deliveries() { close(); }

void Deliveries::close() {
  std::map<std::string, std::shared_ptr<Poller>> pollers;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    pollers.swap(pollers_);
    for (auto& p : retired_) pollers.emplace(p->key + "#" + std::to_string(pollers.size()), p);
    retired_.clear();
  }
  for (auto& [key, p] : pollers) {
    {
      std::lock_guard lock(p->mutex);
      p->stop = true;
    }
    p->changed.notify_all();
  }
  for (auto& [key, p] : pollers)
    if (p->thread.joinable()) p->thread.join();
}

void Deliveries::function_changed(const std::string& name, const v1::FunctionSpec& spec) {
  Limits limits;
  limits.concurrency = std::max<std::uint32_t>(1, spec.concurrent_executions());
  if (spec.has_timeout()) limits.timeout = to_ms(spec.timeout());
  const auto queue = async_queue(name);
  queues_->declare(dead_letters(queue), {});
  queues_->declare(queue, retrying_spec(queue));
  // Its poller starts with its first async invocation (or now, for those a restart found): a
  // function never invoked so keeps no thread.
  const bool waiting = queues_->status(queue).depth() > 0;
  std::lock_guard lock(mutex_);
  functions_[name] = limits;
  if (waiting) run_poller(queue, Kind::async, queue, name, 1);
}

void Deliveries::function_removed(const std::string& name) {
  const auto queue = async_queue(name);
  {
    std::lock_guard lock(mutex_);
    functions_.erase(name);
    stop_poller(queue);
  }
  queues_->forget(queue);
  queues_->forget(dead_letters(queue));
}

void Deliveries::trigger_changed(const std::string& name, const v1::TriggerSpec& spec) {
  if (spec.type() != "queue" && spec.type() != "event") {
    trigger_removed(name);  // it may have been one before
    return;
  }
  std::string queue = spec.source();
  Kind kind = Kind::queue;
  std::uint32_t batch = spec.batch_size() > 0 ? spec.batch_size() : options_.default_batch_size;
  if (spec.type() == "event") {
    kind = Kind::event;
    queue = event_queue(name);
    batch = 1;
    queues_->declare(dead_letters(queue), {});
    queues_->declare(queue, retrying_spec(queue));
  }
  std::lock_guard lock(mutex_);
  auto old = triggers_.find(name);
  if (old != triggers_.end() &&
      (old->second.type() != spec.type() || old->second.source() != spec.source() ||
       old->second.function() != spec.function()))
    stop_poller(name);
  triggers_[name] = spec;
  run_poller(name, kind, queue, spec.function(), batch);
}

void Deliveries::trigger_removed(const std::string& name) {
  bool event = false;
  {
    std::lock_guard lock(mutex_);
    auto it = triggers_.find(name);
    if (it == triggers_.end()) return;
    event = it->second.type() == "event";
    triggers_.erase(it);
    stop_poller(name);
  }
  if (event) {
    queues_->forget(event_queue(name));
    queues_->forget(dead_letters(event_queue(name)));
  }
}

std::vector<std::string> Deliveries::publish(const std::string& source,
                                             const std::string& data_json) {
  boost::json::value data;
  try {
    data = boost::json::parse(data_json);
  } catch (const std::exception& e) {
    throw Error(errc::invalid_spec, std::string("the event's data is not JSON: ") + e.what(),
                "data");
  }
  std::vector<std::string> triggers;
  std::vector<std::string> queues;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [name, spec] : triggers_) {
      if (spec.type() == "event" && spec.source() == source) {
        triggers.push_back(name);
        queues.push_back(event_queue(name));
      }
    }
  }
  if (queues.empty()) return triggers;
  boost::json::object body;
  body["source"] = source;
  body["data"] = std::move(data);
  queues_->send_each(queues, boost::json::serialize(body));
  return triggers;
}

bool Deliveries::listens(const std::string& source) const {
  std::lock_guard lock(mutex_);
  return std::any_of(triggers_.begin(), triggers_.end(), [&](const auto& t) {
    return t.second.type() == "event" && t.second.source() == source;
  });
}

bool Deliveries::listens_prefix(const std::string& prefix) const {
  std::lock_guard lock(mutex_);
  return std::any_of(triggers_.begin(), triggers_.end(), [&](const auto& t) {
    return t.second.type() == "event" && t.second.source().starts_with(prefix);
  });
}

std::string Deliveries::submit(const std::string& function, const std::string& payload) {
  const auto queue = async_queue(function);
  {
    std::lock_guard lock(mutex_);
    if (!functions_.contains(function))
      throw Error(errc::not_found, "no function named " + function);
    run_poller(queue, Kind::async, queue, function, 1);
  }
  return std::to_string(queues_->send(queue, {payload}).front());
}

v1::Invocation Deliveries::invocation(const std::string& id) {
  std::int64_t n = 0;
  auto [end, ec] = std::from_chars(id.data(), id.data() + id.size(), n);
  if (ec != std::errc() || end != id.data() + id.size() || n <= 0)
    throw Error(errc::invalid_spec, "an invocation id is a number, not " + id, "id");
  v1::Invocation out;
  out.set_id(id);
  const std::string async = "async:";
  if (auto where = queues_->find(n);
      where && where->queue.starts_with(async) && !where->queue.ends_with(":dead")) {
    out.set_function(where->queue.substr(async.size()));
    out.set_attempts(where->receives);
    out.set_state(where->in_flight ? "running" : where->receives == 0 ? "queued" : "retrying");
    return out;
  }
  auto outcome = queues_->outcome(n);
  if (!outcome) throw Error(errc::not_found, "no invocation " + id + " (or its outcome expired)");
  out.set_function(outcome->function);
  out.set_attempts(outcome->attempts);
  out.set_state(outcome->state);
  *out.mutable_finished_at() = TimeUtil::MillisecondsToTimestamp(outcome->at_ms);
  if (outcome->state == "succeeded") {
    out.set_result(outcome->body);
  } else {
    try {
      auto e = boost::json::parse(outcome->body).as_object();
      out.mutable_error()->set_code(boost::json::value_to<std::string>(e.at("code")));
      out.mutable_error()->set_message(boost::json::value_to<std::string>(e.at("message")));
    } catch (const std::exception&) {
      out.mutable_error()->set_code("internal");
      out.mutable_error()->set_message(outcome->body);
    }
  }
  return out;
}

Deliveries::Limits Deliveries::limits_of(const std::string& function) const {
  std::lock_guard lock(mutex_);
  auto it = functions_.find(function);
  return it == functions_.end() ? Limits{} : it->second;
}

void Deliveries::run_poller(const std::string& key, Kind kind, const std::string& queue,
                            const std::string& function, std::uint32_t batch) {
  if (closed_) return;
  std::chrono::milliseconds window{0};
  if (kind == Kind::queue) {
    auto t = triggers_.find(key);
    if (t != triggers_.end() && t->second.has_batch_window())
      window = to_ms(t->second.batch_window());
  }
  auto it = pollers_.find(key);
  if (it != pollers_.end()) {
    std::lock_guard lock(it->second->mutex);
    it->second->batch = batch;
    it->second->window = window;
    return;
  }
  auto p = std::make_shared<Poller>();
  p->key = key;
  p->kind = kind;
  p->queue = queue;
  p->function = function;
  p->batch = batch;
  p->queues = queues_;
  p->telemetry = telemetry_;
  p->options = options_;
  p->limit = options_.initial_pollers;
  p->window = window;
  pollers_[key] = p;
  p->thread = std::thread([this, p] { poll(p); });
}

void Deliveries::stop_poller(const std::string& key) {
  auto it = pollers_.find(key);
  if (it == pollers_.end()) return;
  auto p = it->second;
  pollers_.erase(it);
  {
    std::lock_guard lock(p->mutex);
    p->stop = true;
  }
  p->changed.notify_all();
  // Joined at close(): its receive ends within poll_wait, and the caller (a store watch) must
  // not wait for it.
  retired_.push_back(std::move(p));
}

void Deliveries::poll(const std::shared_ptr<Poller>& p) {
  for (;;) {
    std::uint32_t batch = 1;
    std::chrono::milliseconds window{0};
    {
      std::unique_lock lock(p->mutex);
      p->changed.wait(lock, [&] { return p->stop || p->in_flight < p->limit; });
      if (p->stop) return;
      batch = p->batch;
      window = p->window;
    }
    const auto limits = limits_of(p->function);
    std::vector<QueueMessage> messages;
    try {
      // Lambda's default for a queue: six times the function's timeout, so a message is not
      // delivered again while a call with it may still run.
      auto visibility = queues_->visibility_timeout(p->queue).value_or(limits.timeout * 6);
      messages = queues_->receive(p->queue, batch, visibility, options_.poll_wait, window);
    } catch (const Error&) {
      // The queue does not exist (yet): a trigger may name one before it is created.
      std::unique_lock lock(p->mutex);
      p->changed.wait_for(lock, options_.poll_wait, [&] { return p->stop; });
      continue;
    }
    // Concurrency follows the backlog: the batches waiting plus those in flight, between the
    // first pollers and the function's limit, growing by at most pollers_per_second.
    std::uint64_t depth = 0;
    try {
      depth = queues_->status(p->queue).depth();
    } catch (const Error&) {
    }
    {
      std::lock_guard lock(p->mutex);
      const auto cap = std::max<std::uint32_t>(1, limits.concurrency);
      const auto floor = std::min(options_.initial_pollers, cap);
      const auto wanted = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(
          p->in_flight + (messages.empty() ? 0 : 1) + (depth + batch - 1) / batch, floor, cap));
      const auto now = Clock::now();
      if (wanted > p->limit) {
        p->growth +=
            std::chrono::duration<double>(now - p->grown_at).count() * options_.pollers_per_second;
        const auto step = static_cast<std::uint32_t>(p->growth);
        if (step > 0) {
          p->limit = std::min(wanted, p->limit + step);
          p->growth -= step;
        }
      } else {
        p->limit = wanted;
        p->growth = 0;
      }
      p->grown_at = now;
      if (messages.empty()) continue;
      ++p->in_flight;
    }
    auto batch_ptr = std::make_shared<const std::vector<QueueMessage>>(std::move(messages));
    std::string payload;
    try {
      payload = payload_of(*p, *batch_ptr);
    } catch (const std::exception& e) {
      // A body we did not write (an event's is ours): deliver it as text rather than never.
      payload = batch_ptr->front().body;
    }
    invoke_(p->function, std::move(payload),
            [p, batch_ptr](const std::exception_ptr& error, const std::string& result) {
              delivered(*p, *batch_ptr, error, result);
              {
                std::lock_guard lock(p->mutex);
                --p->in_flight;
              }
              p->changed.notify_all();
            });
  }
}

std::string Deliveries::payload_of(const Poller& p, const std::vector<QueueMessage>& batch) {
  if (p.kind == Kind::async) return batch.front().body;
  if (p.kind == Kind::event) {
    auto event = boost::json::parse(batch.front().body).as_object();
    event["id"] = std::to_string(batch.front().id);
    // When it was published: its message's send.
    event["time"] = TimeUtil::ToString(TimeUtil::MillisecondsToTimestamp(batch.front().sent_at_ms));
    event["attempt"] = batch.front().receives;
    return boost::json::serialize(event);
  }
  // SQS's event shape, so that a handler written for Lambda reads it unchanged.
  boost::json::array records;
  for (const auto& m : batch) {
    boost::json::object attributes;
    attributes["ApproximateReceiveCount"] = std::to_string(m.receives);
    attributes["SentTimestamp"] = std::to_string(m.sent_at_ms);
    boost::json::object r;
    r["messageId"] = std::to_string(m.id);
    r["receiptHandle"] = m.receipt;
    r["body"] = m.body;
    r["attributes"] = std::move(attributes);
    r["eventSource"] = "blixard:queue";
    r["eventSourceQueue"] = p.queue;
    records.push_back(std::move(r));
  }
  boost::json::object event;
  event["Records"] = std::move(records);
  return boost::json::serialize(event);
}

void Deliveries::delivered(const Poller& p, const std::vector<QueueMessage>& batch,
                           const std::exception_ptr& error, const std::string& result) {
  auto& queues = *p.queues;
  try {
    std::vector<std::string> receipts;
    receipts.reserve(batch.size());
    for (const auto& m : batch) receipts.push_back(m.receipt);
    if (!error) {
      if (p.kind == Kind::async) {
        store::StoredOutcome o;
        o.function = p.function;
        o.state = "succeeded";
        o.body = result;
        o.attempts = batch.front().receives;
        queues.finish(p.queue, batch.front().receipt, std::move(o));
        return;
      }
      // A queue handler may answer {"batchItemFailures": [{"itemIdentifier": id}]}: those
      // failed, the rest succeeded (Lambda's partial batch response).
      std::vector<std::string> failed;
      if (p.kind == Kind::queue) {
        boost::system::error_code ec;
        auto answer = boost::json::parse(result, ec);
        const auto* o = ec ? nullptr : answer.if_object();
        const auto* items = o ? o->if_contains("batchItemFailures") : nullptr;
        if (items != nullptr && items->is_array()) {
          for (const auto& item : items->as_array()) {
            const auto* io = item.if_object();
            const auto* id = io ? io->if_contains("itemIdentifier") : nullptr;
            if (id == nullptr || !id->is_string()) continue;
            for (const auto& m : batch)
              if (std::to_string(m.id) == id->as_string()) failed.push_back(m.receipt);
          }
        }
      }
      std::vector<std::string> succeeded;
      for (const auto& r : receipts)
        if (std::find(failed.begin(), failed.end(), r) == failed.end()) succeeded.push_back(r);
      queues.acknowledge(p.queue, succeeded);
      if (!failed.empty()) {
        auto dead = queues.fail(p.queue, failed, true);
        record(p, "Retrying",
               std::to_string(failed.size()) + " of " + std::to_string(batch.size()) +
                   " messages of " + p.queue + " failed (the handler's batchItemFailures)");
        if (!dead.empty())
          record(p, "DeadLettered",
                 std::to_string(dead.size()) + " messages of " + p.queue + " after " +
                     std::to_string(batch.front().receives) + " receives");
      }
      return;
    }
    const auto failure = failure_of(error);
    if (!failure.counted) {
      queues.fail(p.queue, receipts, false, p.options.throttle_delay);
      return;
    }
    auto dead = queues.fail(p.queue, receipts, true);
    if (p.kind == Kind::async && !dead.empty()) {
      store::StoredOutcome o;
      o.id = batch.front().id;
      o.function = p.function;
      o.state = "failed";
      o.body = error_json(failure);
      o.attempts = batch.front().receives;
      queues.keep_outcome(std::move(o));
    }
    if (dead.empty()) {
      record(p, "Retrying",
             p.queue + ": attempt " + std::to_string(batch.front().receives) + " failed (" +
                 failure.code + ": " + failure.message + ")");
    } else {
      record(p, "DeadLettered",
             std::to_string(dead.size()) + " messages of " + p.queue + " moved to " +
                 dead_letters(p.queue) + " after " + std::to_string(batch.front().receives) +
                 " attempts (" + failure.code + ": " + failure.message + ")");
    }
  } catch (const std::exception&) {
    // The queue went away meanwhile (its trigger or function was deleted): nothing to settle.
  }
}

void Deliveries::record(const Poller& p, const char* reason, const std::string& message) {
  if (!p.telemetry) return;
  v1::WatchEvent e;
  e.set_type("record");
  e.set_kind("functions");
  e.set_name(p.function);
  e.set_reason(reason);
  e.set_message(message);
  p.telemetry->publish(std::move(e));
}

}  // namespace blixard::control
