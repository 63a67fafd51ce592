// Durable queues (DESIGN §5), SQS's model: a sent message is on disk before send returns; a
// receive hides what it takes for a visibility timeout; an acknowledged message is gone; a failed
// delivery comes back after a backoff that doubles, and after the queue's maxReceives it moves to
// the queue's dead-letter queue (or, with none, is dropped with a record). Messages live in memory
// for delivery and in a store::QueueLog for durability; a restart loads the log and delivers
// again what was in flight (at least once).
//
// What is written when: a send is durable before it returns. An acknowledgement, a failure's
// count and a dead-letter move are written in the background (they are not what a caller waits
// for), so a server killed meanwhile delivers that message again, or counts that delivery
// again: never fewer deliveries, never a lost message.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "blixard/v1/queue.pb.h"
#include "store/queue_log.hpp"

namespace blixard::control {

struct QueueOptions {
  // The first retry of a failed delivery waits this long; each next one twice as long, up to
  // retry_max (and never longer than the queue's visibility timeout).
  std::chrono::milliseconds retry_base{1000};
  std::chrono::milliseconds retry_max{std::chrono::minutes(1)};
  // A queue's visibility timeout when its spec sets none (a trigger passes its own).
  std::chrono::milliseconds default_visibility{std::chrono::seconds(30)};
  // SQS's message limit; past it a send is refused (payload_too_large).
  std::size_t max_message_bytes = std::size_t{256} * 1024;
  // What one queue may hold in memory; past it a send is throttled (the consumer is behind).
  std::size_t max_queue_bytes = std::size_t{256} << 20;
  // How long a finished async invocation's outcome is kept.
  std::chrono::milliseconds outcome_retention{std::chrono::hours(24)};
};

// A message as a receiver gets it.
struct QueueMessage {
  std::int64_t id = 0;
  std::string body;
  std::int64_t sent_at_ms = 0;
  std::uint32_t receives = 0;  // this delivery included
  std::string receipt;         // names this delivery: acknowledging an older one does nothing
};

// Where a message is now (async invocations report it).
struct MessageState {
  std::string queue;
  bool in_flight = false;
  std::uint32_t receives = 0;
};

class Queues {
 public:
  // Loads what `log` holds; its queues exist once declared (see drop_undeclared).
  explicit Queues(std::unique_ptr<store::QueueLog> log, QueueOptions options = {});
  ~Queues();
  Queues(const Queues&) = delete;
  Queues& operator=(const Queues&) = delete;

  // Creates or changes a queue (a stored Queue object, or one of the triggers' own).
  void declare(const std::string& name, const v1::QueueSpec& spec);
  // The queue is gone: its messages are purged.
  void forget(const std::string& name);
  // Purges the messages of queues nobody declared (their trigger was deleted while no server
  // ran). Called once the server has declared every queue it knows.
  void drop_undeclared();
  bool exists(const std::string& name) const;

  // Appends bodies to a queue, durable when it returns; their ids. Throws not_found (no such
  // queue), payload_too_large (a body over max_message_bytes), throttled (the queue is full).
  std::vector<std::int64_t> send(const std::string& queue, const std::vector<std::string>& bodies);
  // One body to each of `queues` in one durable write (an event's fan-out); their ids.
  std::vector<std::int64_t> send_each(const std::vector<std::string>& queues,
                                      const std::string& body);

  // Takes up to `max` visible messages and hides them for `visibility`. Waits up to `wait` for
  // the first; once one came, up to `window` more for the batch to fill (Lambda's batching
  // window). Empty when nothing came in time or the queues close. not_found for no such queue.
  std::vector<QueueMessage> receive(const std::string& queue, std::size_t max,
                                    std::chrono::milliseconds visibility,
                                    std::chrono::milliseconds wait,
                                    std::chrono::milliseconds window = {});
  // Up to `max` messages that a receive could take now, without taking them.
  std::vector<QueueMessage> peek(const std::string& queue, std::size_t max) const;
  // Processed: the deliveries named by `receipts` are gone. Stale or unknown receipts are
  // ignored (the message came back and was delivered again); returns how many were acknowledged.
  std::size_t acknowledge(const std::string& queue, const std::vector<std::string>& receipts);
  // These deliveries failed. `counted`: they count toward maxReceives and come back after the
  // backoff (or move to the dead-letter queue); not counted (a throttled call): they come back
  // after `delay` as if never received. Returns the ids that were dead-lettered (or dropped).
  std::vector<std::int64_t> fail(const std::string& queue, const std::vector<std::string>& receipts,
                                 bool counted, std::chrono::milliseconds delay = {});
  // The delivery of an async invocation ended: acknowledged (or, for a failed last attempt,
  // dropped) and its outcome kept (stamped now), in one write.
  void finish(const std::string& queue, const std::string& receipt, store::StoredOutcome outcome);
  // Keeps what an async invocation came to (stamped now) without touching its message (a last
  // failure: the message went to the dead-letter queue).
  void keep_outcome(store::StoredOutcome outcome);
  // The queue's own visibility timeout, if its spec sets one.
  std::optional<std::chrono::milliseconds> visibility_timeout(const std::string& queue) const;
  // Removes every message of the queue; how many.
  std::size_t purge(const std::string& queue);

  v1::QueueStatus status(const std::string& queue) const;
  // Every queue known, declared or not, by name.
  std::vector<std::string> names() const;
  // nullopt once the message is gone (acknowledged, dropped, purged).
  std::optional<MessageState> find(std::int64_t id) const;
  // What a finished async invocation came to, while it is kept.
  std::optional<store::StoredOutcome> outcome(std::int64_t id);

  // Wakes every receive (they answer empty) and writes what is pending.
  void close();

 private:
  using Clock = std::chrono::steady_clock;
  struct Held {
    std::string body;
    std::int64_t sent_at_ms = 0;
    std::uint32_t receives = 0;
    std::uint64_t delivery = 0;  // bumped by each receive and failure; a receipt names one
    bool in_flight = false;      // received, not yet acknowledged or failed
    bool waiting = false;        // failed, back after its backoff
  };
  struct Queue {
    v1::QueueSpec spec;
    bool declared = false;
    std::map<std::int64_t, Held> held;  // by id: the oldest first
    std::deque<std::int64_t> ready;     // visible now, in send order (may hold stale ids)
    // Not visible until then: a retry's backoff, or a delivery's visibility deadline.
    std::multimap<Clock::time_point, std::pair<std::int64_t, std::uint64_t>> later;
    std::size_t bytes = 0;
    std::size_t in_flight = 0;
    std::uint64_t dead_lettered = 0;  // moved to the dead-letter queue or dropped, since start
    std::condition_variable arrived;  // mutex_
  };

  Queue& queue_of(const std::string& name);  // mutex_ held; not_found unless declared
  const Queue& queue_of(const std::string& name) const;
  // mutex_ held: messages whose time came become visible; expired deliveries count as failed.
  void promote(Queue& q, const std::string& name, Clock::time_point now);
  // mutex_ held: a failed, counted delivery of `id`: back later, or dead-lettered (true).
  bool failed(Queue& q, const std::string& name, std::int64_t id, Held& m, Clock::time_point now);
  void erase(Queue& q, std::int64_t id);  // mutex_ held
  // Writes the appends of `write` (mutex_ not held), then lets them be received; their ids.
  std::vector<std::int64_t> commit_sends(store::QueueWrite& write);
  // mutex_ held: a durable message joins its queue (dropped if the queue is gone meanwhile).
  void insert_locked(store::StoredMessage m);
  std::size_t purge_locked(Queue& q, const std::string& name);
  // mutex_ held: stamps `outcome` finished now and keeps it at hand until the log has it.
  void remember_outcome(store::StoredOutcome& outcome);
  // mutex_ held: the in-flight message `receipt` names in `q` (its id in `id`), or null.
  Held* delivered(Queue& q, const std::string& receipt, std::int64_t& id);
  std::chrono::milliseconds backoff(const Queue& q, std::uint32_t receives) const;
  std::chrono::milliseconds visibility_of(const Queue& q) const;
  // Parses "<id>.<delivery>"; nullopt for a malformed receipt.
  static std::optional<std::pair<std::int64_t, std::uint64_t>> parse_receipt(const std::string& r);
  // mutex_ held: queues a background write.
  void later_write(const std::function<void(store::QueueWrite&)>& add);
  void writer_loop();
  void timer_loop();

  std::unique_ptr<store::QueueLog> log_;
  QueueOptions options_;

  mutable std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Queue>> queues_;
  std::unordered_map<std::int64_t, std::string> where_;  // message id -> queue
  std::int64_t next_id_ = 1;
  // Outcomes written but maybe not yet readable from the log (the background write), by id.
  std::map<std::int64_t, store::StoredOutcome> recent_outcomes_;
  bool closed_ = false;

  // Taken under mutex_ (later_write), never the other way round.
  std::mutex pending_mutex_;
  std::condition_variable pending_cv_;
  store::QueueWrite pending_;
  bool writer_closing_ = false;       // pending_mutex_
  std::condition_variable timer_cv_;  // mutex_: a new `later` entry may be the earliest
  std::thread writer_;
  std::thread timer_;
};

}  // namespace blixard::control
