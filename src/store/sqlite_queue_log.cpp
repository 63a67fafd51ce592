// The queues' log in SQLite: a file of its own beside store.db, so that sends commit in their own
// group (one fsync for every send that arrived meanwhile) without waiting behind object writes.
#include <algorithm>
#include <filesystem>
#include <mutex>

#include "blixard/error.hpp"
#include "store/queue_log.hpp"
#include "store/sqlite_db.hpp"

namespace blixard::store {
namespace {

using sqlite::Db;

constexpr const char* k_schema = R"sql(
CREATE TABLE IF NOT EXISTS meta (
  id INTEGER PRIMARY KEY CHECK (id = 0),
  last_id INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (id, last_id) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS messages (
  id INTEGER PRIMARY KEY,
  queue BLOB NOT NULL,
  body BLOB NOT NULL,
  sent_at INTEGER NOT NULL,
  receives INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue);
CREATE TABLE IF NOT EXISTS outcomes (
  id INTEGER PRIMARY KEY,
  function BLOB NOT NULL,
  state BLOB NOT NULL,
  body BLOB NOT NULL,
  attempts INTEGER NOT NULL,
  at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outcomes_by_time ON outcomes (at);
)sql";

constexpr const char* k_begin = "BEGIN IMMEDIATE";
constexpr const char* k_commit = "COMMIT";
constexpr const char* k_rollback = "ROLLBACK";
constexpr const char* k_last_id = "SELECT last_id FROM meta WHERE id = 0";
constexpr const char* k_raise_last_id = "UPDATE meta SET last_id = max(last_id, ?1) WHERE id = 0";
constexpr const char* k_append =
    "INSERT OR REPLACE INTO messages (id, queue, body, sent_at, receives) VALUES (?1, ?2, ?3, ?4, "
    "?5)";
constexpr const char* k_count = "UPDATE messages SET receives = ?2 WHERE id = ?1";
constexpr const char* k_move = "UPDATE messages SET queue = ?2, receives = 0 WHERE id = ?1";
constexpr const char* k_remove = "DELETE FROM messages WHERE id = ?1";
constexpr const char* k_purge = "DELETE FROM messages WHERE queue = ?1";
constexpr const char* k_put_outcome =
    "INSERT OR REPLACE INTO outcomes (id, function, state, body, attempts, at) VALUES (?1, ?2, ?3, "
    "?4, ?5, ?6)";
constexpr const char* k_expire = "DELETE FROM outcomes WHERE at < ?1";
constexpr const char* k_messages =
    "SELECT id, queue, body, sent_at, receives FROM messages ORDER BY id";
constexpr const char* k_outcome =
    "SELECT function, state, body, attempts, at FROM outcomes WHERE id = ?1";

class SqliteQueueLog final : public QueueLog {
 public:
  explicit SqliteQueueLog(const std::string& file) : writer_(file), reader_(file) {
    writer_.exec(k_schema);
    auto q = writer_.query(k_last_id);
    last_id_ = q.step() ? q.int64(0) : 0;
  }

  void write(const QueueWrite& write) override {
    if (write.empty()) return;
    Request req;
    req.write = &write;
    group_.submit(req, [this](const std::vector<Request*>& batch) { commit(batch); });
  }

  std::vector<StoredMessage> messages() override {
    std::lock_guard lock(read_mutex_);
    std::vector<StoredMessage> out;
    auto q = reader_.query(k_messages);
    while (q.step()) {
      StoredMessage m;
      m.id = q.int64(0);
      m.queue = q.blob(1);
      m.body = q.blob(2);
      m.sent_at_ms = q.int64(3);
      m.receives = static_cast<std::uint32_t>(q.int64(4));
      out.push_back(std::move(m));
    }
    return out;
  }

  std::optional<StoredOutcome> outcome(std::int64_t id) override {
    std::lock_guard lock(read_mutex_);
    auto q = reader_.query(k_outcome);
    q.bind(1, id);
    if (!q.step()) return std::nullopt;
    StoredOutcome o;
    o.id = id;
    o.function = q.blob(0);
    o.state = q.blob(1);
    o.body = q.blob(2);
    o.attempts = static_cast<std::uint32_t>(q.int64(3));
    o.at_ms = q.int64(4);
    return o;
  }

  std::int64_t last_id() override {
    std::lock_guard lock(id_mutex_);
    return last_id_;
  }

 private:
  struct Request {
    const QueueWrite* write = nullptr;
    bool done = false;
    std::exception_ptr error;
  };

  // One transaction for the whole batch: its writes cannot fail alone (ids are the callers',
  // rows are replaced), only the commit can, and then it fails them all.
  void commit(const std::vector<Request*>& batch) {
    std::int64_t highest = 0;
    try {
      writer_.query(k_begin).run();
      for (const Request* r : batch) apply(*r->write, highest);
      if (highest > 0) writer_.query(k_raise_last_id).bind(1, highest).run();
      writer_.query(k_commit).run();
    } catch (...) {
      auto error = std::current_exception();
      try {
        writer_.query(k_rollback).run();
      } catch (...) {
        // The transaction may already be gone (SQLite rolls back on some I/O errors).
      }
      for (Request* r : batch) r->error = error;
      return;
    }
    std::lock_guard lock(id_mutex_);
    last_id_ = std::max(last_id_, highest);
  }

  void apply(const QueueWrite& w, std::int64_t& highest) {
    for (const auto& m : w.appends) {
      writer_.query(k_append)
          .bind(1, m.id)
          .bind(2, m.queue)
          .bind(3, m.body)
          .bind(4, m.sent_at_ms)
          .bind(5, std::int64_t{m.receives})
          .run();
      highest = std::max(highest, m.id);
    }
    for (const auto& [id, count] : w.receives)
      writer_.query(k_count).bind(1, id).bind(2, std::int64_t{count}).run();
    for (const auto& [id, queue] : w.moves) writer_.query(k_move).bind(1, id).bind(2, queue).run();
    for (std::int64_t id : w.removes) writer_.query(k_remove).bind(1, id).run();
    for (const auto& queue : w.purges) writer_.query(k_purge).bind(1, queue).run();
    for (const auto& o : w.outcomes) {
      writer_.query(k_put_outcome)
          .bind(1, o.id)
          .bind(2, o.function)
          .bind(3, o.state)
          .bind(4, o.body)
          .bind(5, std::int64_t{o.attempts})
          .bind(6, o.at_ms)
          .run();
    }
    if (w.expire_outcomes_before_ms > 0)
      writer_.query(k_expire).bind(1, w.expire_outcomes_before_ms).run();
  }

  Db writer_;  // used by the commit leader only
  std::mutex read_mutex_;
  Db reader_;
  std::mutex id_mutex_;
  std::int64_t last_id_ = 0;
  sqlite::GroupCommit<Request> group_;
};

}  // namespace

std::unique_ptr<QueueLog> open_sqlite_queue_log(const std::string& path) {
  try {
    namespace fs = std::filesystem;
    fs::path file(path);
    std::error_code ec;
    if (file.has_parent_path()) {
      fs::create_directories(file.parent_path(), ec);
      if (ec) throw Error(errc::unavailable, ec.message());
    }
    return std::make_unique<SqliteQueueLog>(file.string());
  } catch (const Error& e) {
    throw Error(errc::unavailable, "cannot open the queue log at " + path + ": " + e.message());
  } catch (const std::exception& e) {
    throw Error(errc::unavailable, "cannot open the queue log at " + path + ": " + e.what());
  }
}

}  // namespace blixard::store
