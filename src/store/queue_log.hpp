// The messages of durable queues (DESIGN §5: queue and event triggers, async invocations), kept
// beside the Store rather than in it: a message is written once, read back only after a crash and
// removed when processed, so it needs neither revisions nor watches, and a burst of sends must not
// push the objects' watch history out of the Store. What an async invocation came to (its
// outcome) is kept here too. Implementations pass tests/cpp/queue_log_conformance.hpp.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace blixard::store {

struct StoredMessage {
  std::int64_t id = 0;  // unique in the log; see QueueLog::last_id
  std::string queue;
  std::string body;
  std::int64_t sent_at_ms = 0;  // wall clock, Unix milliseconds
  std::uint32_t receives = 0;   // deliveries counted so far (failed ones, see control/queues.hpp)
};

// What a finished async invocation came to, kept until it is `expired`.
struct StoredOutcome {
  std::int64_t id = 0;  // the invocation's message id
  std::string function;
  std::string state;  // "succeeded", "failed", "dead-lettered"
  std::string body;   // the result (succeeded) or the error (otherwise), JSON
  std::uint32_t attempts = 0;
  std::int64_t at_ms = 0;  // when it finished
};

// One atomic change of the log.
struct QueueWrite {
  std::vector<StoredMessage> appends;  // ids chosen by the caller, above last_id()
  std::vector<std::pair<std::int64_t, std::uint32_t>> receives;  // message id -> its count
  // Message id -> the queue it moves to (a dead-letter queue); its count starts again at 0.
  std::vector<std::pair<std::int64_t, std::string>> moves;
  std::vector<std::int64_t> removes;  // message ids
  std::vector<std::string> purges;    // every message of these queues
  std::vector<StoredOutcome> outcomes;
  std::int64_t expire_outcomes_before_ms = 0;  // outcomes older than this go (0: none)

  bool empty() const {
    return appends.empty() && receives.empty() && moves.empty() && removes.empty() &&
           purges.empty() && outcomes.empty() && expire_outcomes_before_ms == 0;
  }
};

class QueueLog {
 public:
  virtual ~QueueLog() = default;
  // Atomic, and durable once it returns. Concurrent writes share commits (group commit). A
  // receive count, move or removal of a message the log does not hold is ignored.
  virtual void write(const QueueWrite& write) = 0;
  // Every message held, by id: what a restarted server delivers.
  virtual std::vector<StoredMessage> messages() = 0;
  virtual std::optional<StoredOutcome> outcome(std::int64_t id) = 0;
  // The highest id ever appended (0 for a new log), removed or not: ids are never reused.
  virtual std::int64_t last_id() = 0;
};

// Opens (creating if needed) the log at `path`, a SQLite file of its own (WAL, synchronous=FULL).
// Throws blixard::Error(errc::unavailable) naming the path when it cannot be opened or written.
std::unique_ptr<QueueLog> open_sqlite_queue_log(const std::string& path);

}  // namespace blixard::store
