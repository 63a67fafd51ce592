#include "control/queues.hpp"

#include <algorithm>
#include <charconv>

#include <google/protobuf/util/time_util.h>

#include "blixard/error.hpp"

namespace blixard::control {
namespace {

using google::protobuf::util::TimeUtil;

// Not TimeUtil::GetCurrentTime(): it has whole seconds only here, and a message's SentTimestamp
// is what a handler measures its wait against.
std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::chrono::milliseconds to_ms(const google::protobuf::Duration& d) {
  return std::chrono::milliseconds(TimeUtil::DurationToMilliseconds(d));
}

// Outcomes kept in memory until the log surely has them, at most this many.
constexpr std::size_t k_recent_outcomes = 10000;

}  // namespace

Queues::Queues(std::unique_ptr<store::QueueLog> log, QueueOptions options)
    : log_(std::move(log)), options_(options) {
  next_id_ = log_->last_id() + 1;
  for (auto& m : log_->messages()) {
    auto& slot = queues_[m.queue];
    if (!slot) slot = std::make_unique<Queue>();
    Held h;
    h.body = std::move(m.body);
    h.sent_at_ms = m.sent_at_ms;
    h.receives = m.receives;
    slot->bytes += h.body.size();
    slot->ready.push_back(m.id);
    where_[m.id] = m.queue;
    slot->held.emplace(m.id, std::move(h));
  }
  writer_ = std::thread([this] { writer_loop(); });
  timer_ = std::thread([this] { timer_loop(); });
}

Queues::~Queues() {
  close();
  if (timer_.joinable()) timer_.join();
  if (writer_.joinable()) writer_.join();
}

void Queues::close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    for (auto& [name, q] : queues_) q->arrived.notify_all();
    timer_cv_.notify_all();
  }
  std::lock_guard lock(pending_mutex_);
  writer_closing_ = true;
  pending_cv_.notify_all();
}

void Queues::declare(const std::string& name, const v1::QueueSpec& spec) {
  std::lock_guard lock(mutex_);
  auto& slot = queues_[name];
  if (!slot) slot = std::make_unique<Queue>();
  slot->spec = spec;
  slot->declared = true;
  slot->arrived.notify_all();
}

void Queues::forget(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto it = queues_.find(name);
  if (it == queues_.end()) return;
  it->second->declared = false;
  purge_locked(*it->second, name);
  it->second->arrived.notify_all();
}

void Queues::drop_undeclared() {
  std::lock_guard lock(mutex_);
  for (auto& [name, q] : queues_)
    if (!q->declared && !q->held.empty()) purge_locked(*q, name);
}

bool Queues::exists(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = queues_.find(name);
  return it != queues_.end() && it->second->declared;
}

Queues::Queue& Queues::queue_of(const std::string& name) {
  auto it = queues_.find(name);
  if (it == queues_.end() || !it->second->declared)
    throw Error(errc::not_found,
                "no queue named " + name + " (create it with `blixard queue create " + name + "`)");
  return *it->second;
}

const Queues::Queue& Queues::queue_of(const std::string& name) const {
  return const_cast<Queues*>(this)->queue_of(
      name);  // NOLINT(cppcoreguidelines-pro-type-const-cast)
}

std::vector<std::int64_t> Queues::send(const std::string& queue,
                                       const std::vector<std::string>& bodies) {
  store::QueueWrite write;
  {
    std::lock_guard lock(mutex_);
    if (closed_) throw Error(errc::unavailable, "the server is shutting down");
    auto& q = queue_of(queue);
    std::size_t bytes = 0;
    for (std::size_t i = 0; i < bodies.size(); ++i) {
      if (bodies[i].size() > options_.max_message_bytes)
        throw Error(errc::payload_too_large,
                    "message " + std::to_string(i) + " is " + std::to_string(bodies[i].size()) +
                        " bytes, over the limit of " + std::to_string(options_.max_message_bytes),
                    "data");
      bytes += bodies[i].size();
    }
    if (q.bytes + bytes > options_.max_queue_bytes)
      throw Error(errc::throttled, "queue " + queue + " is full (" + std::to_string(q.bytes) +
                                       " bytes waiting): its consumers are behind");
    const auto now = wall_ms();
    for (const auto& body : bodies) {
      store::StoredMessage m;
      m.id = next_id_++;
      m.queue = queue;
      m.body = body;
      m.sent_at_ms = now;
      write.appends.push_back(std::move(m));
    }
  }
  return commit_sends(write);
}

std::vector<std::int64_t> Queues::commit_sends(store::QueueWrite& write) {
  log_->write(write);  // durable before anyone can receive it
  std::vector<std::int64_t> ids;
  ids.reserve(write.appends.size());
  std::lock_guard lock(mutex_);
  for (auto& m : write.appends) {
    ids.push_back(m.id);
    insert_locked(std::move(m));
  }
  return ids;
}

std::vector<std::int64_t> Queues::send_each(const std::vector<std::string>& queues,
                                            const std::string& body) {
  if (body.size() > options_.max_message_bytes)
    throw Error(errc::payload_too_large,
                "the event is " + std::to_string(body.size()) + " bytes, over the limit of " +
                    std::to_string(options_.max_message_bytes),
                "data");
  store::QueueWrite write;
  {
    std::lock_guard lock(mutex_);
    if (closed_) throw Error(errc::unavailable, "the server is shutting down");
    const auto now = wall_ms();
    for (const auto& name : queues) {
      auto& q = queue_of(name);
      if (q.bytes + body.size() > options_.max_queue_bytes)
        throw Error(errc::throttled, "queue " + name + " is full: its consumers are behind");
      store::StoredMessage m;
      m.id = next_id_++;
      m.queue = name;
      m.body = body;
      m.sent_at_ms = now;
      write.appends.push_back(std::move(m));
    }
  }
  return commit_sends(write);
}

void Queues::insert_locked(store::StoredMessage m) {
  auto it = queues_.find(m.queue);
  if (it == queues_.end() || !it->second->declared) {
    // Forgotten while its send was written: the purge ran before, so remove it now.
    later_write([id = m.id](store::QueueWrite& w) { w.removes.push_back(id); });
    return;
  }
  auto& q = *it->second;
  Held h;
  h.body = std::move(m.body);
  h.sent_at_ms = m.sent_at_ms;
  q.bytes += h.body.size();
  q.ready.push_back(m.id);
  where_[m.id] = m.queue;
  q.held.emplace(m.id, std::move(h));
  q.arrived.notify_one();
}

std::vector<QueueMessage> Queues::receive(const std::string& queue, std::size_t max,
                                          std::chrono::milliseconds visibility,
                                          std::chrono::milliseconds wait,
                                          std::chrono::milliseconds window) {
  std::vector<QueueMessage> out;
  if (max == 0) return out;
  std::unique_lock lock(mutex_);
  auto* q = &queue_of(queue);
  if (visibility.count() <= 0) visibility = visibility_of(*q);
  const auto deadline = Clock::now() + wait;
  std::optional<Clock::time_point> fill_by;
  while (!closed_) {
    auto now = Clock::now();
    promote(*q, queue, now);
    while (out.size() < max && !q->ready.empty()) {
      const auto id = q->ready.front();
      q->ready.pop_front();
      auto it = q->held.find(id);
      if (it == q->held.end() || it->second.in_flight || it->second.waiting) continue;  // stale
      auto& m = it->second;
      m.in_flight = true;
      ++m.receives;
      ++m.delivery;
      ++q->in_flight;
      q->later.emplace(now + visibility, std::make_pair(id, m.delivery));
      out.push_back({id, m.body, m.sent_at_ms, m.receives,
                     std::to_string(id) + "." + std::to_string(m.delivery)});
    }
    if (out.size() >= max) break;
    if (!out.empty()) {
      if (!fill_by) fill_by = now + window;
      if (now >= *fill_by) break;
    } else if (now >= deadline) {
      break;
    }
    auto until = out.empty() ? deadline : *fill_by;
    if (!q->later.empty()) until = std::min(until, q->later.begin()->first);
    q->arrived.wait_until(lock, until);
    if (!q->declared) break;  // forgotten meanwhile
  }
  if (!out.empty()) timer_cv_.notify_one();  // the visibility deadlines may be the earliest
  return out;
}

std::vector<QueueMessage> Queues::peek(const std::string& queue, std::size_t max) const {
  std::lock_guard lock(mutex_);
  const auto& q = queue_of(queue);
  std::vector<QueueMessage> out;
  for (const auto& [id, m] : q.held) {
    if (out.size() >= max) break;
    if (m.in_flight || m.waiting) continue;
    out.push_back({id, m.body, m.sent_at_ms, m.receives, {}});
  }
  return out;
}

std::optional<std::pair<std::int64_t, std::uint64_t>> Queues::parse_receipt(const std::string& r) {
  const auto dot = r.find('.');
  if (dot == std::string::npos) return std::nullopt;
  std::int64_t id = 0;
  std::uint64_t delivery = 0;
  const char* end = r.data() + r.size();
  auto a = std::from_chars(r.data(), r.data() + dot, id);
  auto b = std::from_chars(r.data() + dot + 1, end, delivery);
  if (a.ec != std::errc() || a.ptr != r.data() + dot || b.ec != std::errc() || b.ptr != end)
    return std::nullopt;
  return std::make_pair(id, delivery);
}

Queues::Held* Queues::delivered(Queue& q, const std::string& receipt, std::int64_t& id) {
  auto parsed = parse_receipt(receipt);
  if (!parsed) return nullptr;
  auto it = q.held.find(parsed->first);
  if (it == q.held.end() || !it->second.in_flight || it->second.delivery != parsed->second)
    return nullptr;
  id = parsed->first;
  return &it->second;
}

std::size_t Queues::acknowledge(const std::string& queue,
                                const std::vector<std::string>& receipts) {
  std::lock_guard lock(mutex_);
  auto& q = queue_of(queue);
  std::size_t done = 0;
  std::vector<std::int64_t> removed;
  for (const auto& receipt : receipts) {
    std::int64_t id = 0;
    if (delivered(q, receipt, id) == nullptr) continue;
    erase(q, id);
    removed.push_back(id);
    ++done;
  }
  if (!removed.empty())
    later_write([&](store::QueueWrite& w) {
      w.removes.insert(w.removes.end(), removed.begin(), removed.end());
    });
  return done;
}

std::vector<std::int64_t> Queues::fail(const std::string& queue,
                                       const std::vector<std::string>& receipts, bool counted,
                                       std::chrono::milliseconds delay) {
  std::vector<std::int64_t> dead;
  std::lock_guard lock(mutex_);
  auto& q = queue_of(queue);
  const auto now = Clock::now();
  for (const auto& receipt : receipts) {
    std::int64_t id = 0;
    Held* m = delivered(q, receipt, id);
    if (m == nullptr) continue;
    m->in_flight = false;
    --q.in_flight;
    if (counted) {
      if (failed(q, queue, id, *m, now)) dead.push_back(id);
      continue;
    }
    --m->receives;  // as if never received
    ++m->delivery;
    if (delay.count() <= 0) {
      q.ready.push_front(id);
      q.arrived.notify_one();
    } else {
      m->waiting = true;
      q.later.emplace(now + delay, std::make_pair(id, m->delivery));
      timer_cv_.notify_one();
    }
  }
  return dead;
}

bool Queues::failed(Queue& q, const std::string& name, std::int64_t id, Held& m,
                    Clock::time_point now) {
  ++m.delivery;  // the old receipt and visibility deadline no longer apply
  const auto max = q.spec.max_receives();
  if (max > 0 && m.receives >= max) {
    ++q.dead_lettered;
    const auto& target = q.spec.dead_letter_queue();
    auto to = queues_.find(target);
    if (!target.empty() && to != queues_.end() && to->second->declared) {
      store::StoredMessage moved;
      moved.id = id;
      moved.queue = target;
      moved.body = m.body;
      moved.sent_at_ms = m.sent_at_ms;
      erase(q, id);
      later_write([id, &target](store::QueueWrite& w) { w.moves.emplace_back(id, target); });
      insert_locked(std::move(moved));
    } else {
      erase(q, id);
      later_write([id](store::QueueWrite& w) { w.removes.push_back(id); });
    }
    return true;
  }
  later_write([id, n = m.receives](store::QueueWrite& w) { w.receives.emplace_back(id, n); });
  m.waiting = true;
  q.later.emplace(now + backoff(q, m.receives), std::make_pair(id, m.delivery));
  timer_cv_.notify_one();
  return false;
}

void Queues::finish(const std::string& queue, const std::string& receipt,
                    store::StoredOutcome outcome) {
  std::lock_guard lock(mutex_);
  auto& q = queue_of(queue);
  std::int64_t id = 0;
  if (delivered(q, receipt, id) != nullptr) {
    erase(q, id);
  } else if (auto parsed = parse_receipt(receipt)) {
    id = parsed->first;  // a late answer of an attempt given up on: its outcome still counts
  } else {
    return;
  }
  outcome.id = id;
  remember_outcome(outcome);
  later_write([&](store::QueueWrite& w) {
    w.removes.push_back(id);
    w.outcomes.push_back(std::move(outcome));
  });
}

void Queues::keep_outcome(store::StoredOutcome outcome) {
  std::lock_guard lock(mutex_);
  remember_outcome(outcome);
  later_write([&](store::QueueWrite& w) { w.outcomes.push_back(std::move(outcome)); });
}

void Queues::remember_outcome(store::StoredOutcome& outcome) {
  outcome.at_ms = wall_ms();
  recent_outcomes_[outcome.id] = outcome;
  while (recent_outcomes_.size() > k_recent_outcomes)
    recent_outcomes_.erase(recent_outcomes_.begin());
}

std::optional<std::chrono::milliseconds> Queues::visibility_timeout(
    const std::string& queue) const {
  std::lock_guard lock(mutex_);
  const auto& q = queue_of(queue);
  if (!q.spec.has_visibility_timeout()) return std::nullopt;
  return to_ms(q.spec.visibility_timeout());
}

std::size_t Queues::purge(const std::string& queue) {
  std::lock_guard lock(mutex_);
  return purge_locked(queue_of(queue), queue);
}

std::size_t Queues::purge_locked(Queue& q, const std::string& name) {
  const auto n = q.held.size();
  for (const auto& [id, m] : q.held) where_.erase(id);
  q.held.clear();
  q.ready.clear();
  q.later.clear();
  q.bytes = 0;
  q.in_flight = 0;
  later_write([&name](store::QueueWrite& w) { w.purges.push_back(name); });
  return n;
}

void Queues::erase(Queue& q, std::int64_t id) {
  auto it = q.held.find(id);
  if (it == q.held.end()) return;
  if (it->second.in_flight) --q.in_flight;
  q.bytes -= it->second.body.size();
  q.held.erase(it);
  where_.erase(id);
}

std::chrono::milliseconds Queues::visibility_of(const Queue& q) const {
  return q.spec.has_visibility_timeout() ? to_ms(q.spec.visibility_timeout())
                                         : options_.default_visibility;
}

std::chrono::milliseconds Queues::backoff(const Queue& q, std::uint32_t receives) const {
  auto delay = options_.retry_base;
  for (std::uint32_t i = 1; i < receives && delay < options_.retry_max; ++i) delay *= 2;
  return std::min({delay, options_.retry_max, visibility_of(q)});
}

void Queues::promote(Queue& q, const std::string& name, Clock::time_point now) {
  bool woke = false;
  while (!q.later.empty() && q.later.begin()->first <= now) {
    auto [id, delivery] = q.later.begin()->second;
    q.later.erase(q.later.begin());
    auto it = q.held.find(id);
    if (it == q.held.end() || it->second.delivery != delivery) continue;  // stale
    auto& m = it->second;
    if (m.in_flight) {  // its visibility timeout passed: that delivery failed
      m.in_flight = false;
      --q.in_flight;
      (void)failed(q, name, id, m, now);
    } else if (m.waiting) {
      m.waiting = false;
      q.ready.push_back(id);
      woke = true;
    }
  }
  if (woke) q.arrived.notify_all();
}

v1::QueueStatus Queues::status(const std::string& queue) const {
  std::lock_guard lock(mutex_);
  const auto& q = queue_of(queue);
  v1::QueueStatus s;
  s.set_depth(q.held.size() - q.in_flight);
  s.set_in_flight(q.in_flight);
  if (!q.held.empty()) {
    const auto age = wall_ms() - q.held.begin()->second.sent_at_ms;
    s.set_oldest_age_seconds(static_cast<double>(std::max<std::int64_t>(0, age)) / 1000.0);
  }
  s.set_dead_lettered(q.dead_lettered);
  return s;
}

std::vector<std::string> Queues::names() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> out;
  for (const auto& [name, q] : queues_)
    if (q->declared) out.push_back(name);
  return out;
}

std::optional<MessageState> Queues::find(std::int64_t id) const {
  std::lock_guard lock(mutex_);
  auto w = where_.find(id);
  if (w == where_.end()) return std::nullopt;
  const auto& q = *queues_.at(w->second);
  const auto& m = q.held.at(id);
  return MessageState{w->second, m.in_flight, m.receives};
}

std::optional<store::StoredOutcome> Queues::outcome(std::int64_t id) {
  {
    std::lock_guard lock(mutex_);
    auto it = recent_outcomes_.find(id);
    if (it != recent_outcomes_.end()) return it->second;
  }
  return log_->outcome(id);
}

void Queues::later_write(const std::function<void(store::QueueWrite&)>& add) {
  std::lock_guard lock(pending_mutex_);
  add(pending_);
  pending_cv_.notify_one();
}

void Queues::writer_loop() {
  auto expired_at = Clock::time_point{};
  for (;;) {
    store::QueueWrite batch;
    bool last = false;
    {
      std::unique_lock lock(pending_mutex_);
      pending_cv_.wait_for(lock, std::chrono::minutes(1),
                           [&] { return !pending_.empty() || writer_closing_; });
      std::swap(batch, pending_);
      last = writer_closing_;
    }
    if (Clock::now() - expired_at > std::chrono::minutes(1)) {
      batch.expire_outcomes_before_ms =
          wall_ms() -
          std::chrono::duration_cast<std::chrono::milliseconds>(options_.outcome_retention).count();
      expired_at = Clock::now();
    }
    try {
      log_->write(batch);
    } catch (const std::exception&) {
      // Lost acknowledgements and counts only mean a delivery more after a restart.
    }
    if (last) {
      std::lock_guard lock(pending_mutex_);
      if (pending_.empty()) return;
    }
  }
}

void Queues::timer_loop() {
  std::unique_lock lock(mutex_);
  while (!closed_) {
    auto now = Clock::now();
    auto next = now + std::chrono::seconds(1);
    for (auto& [name, q] : queues_) {
      promote(*q, name, now);
      if (!q->later.empty()) next = std::min(next, q->later.begin()->first);
    }
    timer_cv_.wait_until(lock, next);
  }
}

}  // namespace blixard::control
