// The SQLite backend of the Store (DESIGN §3), the embedded default: WAL with synchronous=FULL so
// that an acknowledged write survives kill -9, group commit of concurrent transactions, an event
// log read by one dispatcher thread for watches from a revision, and leases with absolute
// wall-clock expiry swept by a background thread.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <exception>
#include <filesystem>
#include <list>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>

#include "blixard/error.hpp"
#include "store/sqlite_db.hpp"
#include "store/store.hpp"

namespace blixard::store {
namespace {

using sqlite::Db;
using sqlite::Query;
using sqlite::throw_sqlite;

using Clock = std::chrono::system_clock;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

// The first key after every key that starts with `prefix`; nullopt when there is none
// (empty prefix, or a prefix of 0xff bytes only).
std::optional<std::string> prefix_end(std::string prefix) {
  while (!prefix.empty() && static_cast<unsigned char>(prefix.back()) == 0xff) prefix.pop_back();
  if (prefix.empty()) return std::nullopt;
  prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
  return prefix;
}

constexpr const char* k_schema = R"sql(
CREATE TABLE IF NOT EXISTS meta (
  id INTEGER PRIMARY KEY CHECK (id = 0),
  revision INTEGER NOT NULL,
  compact_revision INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (id, revision, compact_revision) VALUES (0, 0, 0);
CREATE TABLE IF NOT EXISTS kv (
  key BLOB PRIMARY KEY,
  value BLOB NOT NULL,
  create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS events (
  revision INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  type INTEGER NOT NULL,
  key BLOB NOT NULL,
  value BLOB NOT NULL,
  create_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL,
  PRIMARY KEY (revision, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ttl_ms INTEGER NOT NULL,
  expiry_ms INTEGER NOT NULL);
)sql";

constexpr const char* k_begin = "BEGIN IMMEDIATE";
constexpr const char* k_commit = "COMMIT";
constexpr const char* k_rollback = "ROLLBACK";
constexpr const char* k_savepoint = "SAVEPOINT req";
constexpr const char* k_release = "RELEASE req";
constexpr const char* k_rollback_to = "ROLLBACK TO req";
constexpr const char* k_read_begin = "BEGIN";
constexpr const char* k_read_end = "COMMIT";
constexpr const char* k_meta = "SELECT revision, compact_revision FROM meta WHERE id = 0";
constexpr const char* k_set_revision = "UPDATE meta SET revision = ?1 WHERE id = 0";
constexpr const char* k_set_compacted = "UPDATE meta SET compact_revision = ?1 WHERE id = 0";
constexpr const char* k_get =
    "SELECT value, create_revision, mod_revision, version, lease FROM kv WHERE key = ?1";
constexpr const char* k_range =
    "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
    "WHERE key >= ?1 AND key < ?2 ORDER BY key";
constexpr const char* k_range_open =
    "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
    "WHERE key >= ?1 ORDER BY key";
constexpr const char* k_keys = "SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key";
constexpr const char* k_keys_open = "SELECT key FROM kv WHERE key >= ?1 ORDER BY key";
constexpr const char* k_keys_of_lease = "SELECT key FROM kv WHERE lease = ?1 ORDER BY key";
constexpr const char* k_upsert =
    "INSERT OR REPLACE INTO kv (key, value, create_revision, mod_revision, version, lease) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
constexpr const char* k_delete = "DELETE FROM kv WHERE key = ?1";
constexpr const char* k_log =
    "INSERT INTO events (revision, seq, type, key, value, create_revision, version, lease) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
constexpr const char* k_events =
    "SELECT revision, type, key, value, create_revision, version, lease FROM events "
    "WHERE revision >= ?1 AND revision <= ?2 ORDER BY revision, seq";
constexpr const char* k_compact = "DELETE FROM events WHERE revision <= ?1";
constexpr const char* k_lease_expiry = "SELECT expiry_ms FROM leases WHERE id = ?1";
constexpr const char* k_lease_grant = "INSERT INTO leases (ttl_ms, expiry_ms) VALUES (?1, ?2)";
constexpr const char* k_lease_renew =
    "UPDATE leases SET expiry_ms = ?2 + ttl_ms WHERE id = ?1 AND expiry_ms > ?2";
constexpr const char* k_lease_delete = "DELETE FROM leases WHERE id = ?1";
constexpr const char* k_leases_expired = "SELECT id FROM leases WHERE expiry_ms <= ?1 ORDER BY id";

// A write waiting for the commit leader. The leader fills the results and sets `done`.
struct WriteRequest {
  enum class Kind { txn, grant, keep_alive, revoke, expire };
  Kind kind = Kind::txn;
  const Txn* txn = nullptr;
  std::int64_t lease = 0;
  std::int64_t ttl_ms = 0;
  TxnResult result;
  std::int64_t granted = 0;
  std::exception_ptr error;
  bool done = false;
};

struct Watcher {
  std::string prefix;
  WatchCallback callback;
  std::int64_t next = 0;  // the next revision it needs; only the dispatcher advances it
  bool cancelled = false;
};

// Shared by the store and its Watch handles, so a handle may outlive the store.
struct Hub {
  std::mutex mutex;
  std::condition_variable wake;  // the dispatcher waits on it
  std::condition_variable idle;  // cancelling handles wait on it for a running callback
  std::list<std::shared_ptr<Watcher>> watchers;
  std::int64_t committed = 0;  // the last durable revision
  std::int64_t compacted = 0;  // events with revision <= compacted are gone
  bool stopping = false;
  std::thread::id dispatcher;
  const Watcher* running = nullptr;
};

class WatchHandle final : public Watch {
 public:
  WatchHandle(std::shared_ptr<Hub> hub, std::shared_ptr<Watcher> watcher)
      : hub_(std::move(hub)), watcher_(std::move(watcher)) {}
  ~WatchHandle() override {
    std::unique_lock lock(hub_->mutex);
    watcher_->cancelled = true;
    hub_->watchers.remove(watcher_);
    // From inside its own callback the dispatcher is this thread: waiting would deadlock.
    if (std::this_thread::get_id() != hub_->dispatcher)
      hub_->idle.wait(lock, [&] { return hub_->running != watcher_.get(); });
  }

 private:
  std::shared_ptr<Hub> hub_;
  std::shared_ptr<Watcher> watcher_;
};

bool holds(const Compare& c, std::int64_t actual) {
  switch (c.op) {
    case Compare::Op::equal:
      return actual == c.value;
    case Compare::Op::not_equal:
      return actual != c.value;
    case Compare::Op::less:
      return actual < c.value;
    case Compare::Op::greater:
      return actual > c.value;
  }
  return false;
}

void require_key(const std::string& key) {
  if (key.empty()) throw Error(errc::invalid_spec, "a key must not be empty", "key");
}

class SqliteStore final : public Store {
 public:
  SqliteStore(const std::string& file, SqliteOptions options)
      : options_(options), writer_(file), reader_(file), watcher_db_(file), hub_(new Hub) {
    if (options_.history < 1) options_.history = 1;
    writer_.exec("BEGIN IMMEDIATE");
    try {
      writer_.exec(k_schema);
      writer_.exec("COMMIT");
    } catch (...) {
      writer_.exec("ROLLBACK");
      throw;
    }
    Query q = writer_.query(k_meta);
    if (!q.step()) throw Error(errc::unavailable, "missing meta row");
    hub_->committed = q.int64(0);
    hub_->compacted = q.int64(1);
    revision_ = hub_->committed;
    dispatcher_ = std::thread([this] { dispatch(); });
    sweeper_ = std::thread([this] { sweep(); });
  }

  ~SqliteStore() override {
    {
      std::lock_guard lock(sweep_mutex_);
      sweep_stop_ = true;
    }
    sweep_wake_.notify_all();
    sweeper_.join();
    {
      std::lock_guard lock(hub_->mutex);
      hub_->stopping = true;
    }
    hub_->wake.notify_all();
    dispatcher_.join();
  }

  std::optional<KeyValue> get(const std::string& key) override {
    std::lock_guard lock(read_mutex_);
    Query q = reader_.query(k_get);
    q.bind(1, key);
    if (!q.step()) return std::nullopt;
    return KeyValue{key, q.blob(0), q.int64(1), q.int64(2), q.int64(3), q.int64(4)};
  }

  Range list(const std::string& prefix) override {
    std::lock_guard lock(read_mutex_);
    Range out;
    // One read transaction: the revision and the keys come from the same snapshot.
    reader_.query(k_read_begin).run();
    try {
      {
        Query m = reader_.query(k_meta);
        if (m.step()) out.revision = m.int64(0);
      }
      auto end = prefix_end(prefix);
      Query q = reader_.query(end ? k_range : k_range_open);
      q.bind(1, prefix);
      if (end) q.bind(2, *end);
      while (q.step())
        out.kvs.push_back(
            KeyValue{q.blob(0), q.blob(1), q.int64(2), q.int64(3), q.int64(4), q.int64(5)});
    } catch (...) {
      reader_.query(k_read_end).run();
      throw;
    }
    reader_.query(k_read_end).run();
    return out;
  }

  TxnResult txn(const Txn& t) override {
    WriteRequest req;
    req.kind = WriteRequest::Kind::txn;
    req.txn = &t;
    submit(req);
    return req.result;
  }

  std::int64_t revision() override { return revision_.load(); }

  std::unique_ptr<Watch> watch(const std::string& prefix, std::int64_t from_revision,
                               WatchCallback callback) override {
    if (from_revision < 0)
      throw Error(errc::invalid_spec, "from_revision must not be negative", "from_revision");
    if (!callback) throw Error(errc::invalid_spec, "a watch needs a callback", "callback");
    auto w = std::make_shared<Watcher>();
    w->prefix = prefix;
    w->callback = std::move(callback);
    {
      std::lock_guard lock(hub_->mutex);
      if (hub_->stopping) throw Error(errc::unavailable, "store is closed");
      if (from_revision != 0 && from_revision <= hub_->compacted)
        throw Error(errc::conflict, "compacted: revision " + std::to_string(from_revision) +
                                        " is older than the oldest retained event (" +
                                        std::to_string(hub_->compacted + 1) + ")");
      w->next = from_revision == 0 ? hub_->committed + 1 : from_revision;
      hub_->watchers.push_back(w);
    }
    hub_->wake.notify_all();
    return std::make_unique<WatchHandle>(hub_, std::move(w));
  }

  std::int64_t grant_lease(std::chrono::milliseconds ttl) override {
    if (ttl.count() <= 0) throw Error(errc::invalid_spec, "a lease ttl must be positive", "ttl");
    WriteRequest req;
    req.kind = WriteRequest::Kind::grant;
    req.ttl_ms = ttl.count();
    submit(req);
    return req.granted;
  }

  void keep_alive(std::int64_t lease) override {
    WriteRequest req;
    req.kind = WriteRequest::Kind::keep_alive;
    req.lease = lease;
    submit(req);
  }

  void revoke_lease(std::int64_t lease) override {
    WriteRequest req;
    req.kind = WriteRequest::Kind::revoke;
    req.lease = lease;
    submit(req);
  }

 private:
  // One commit for every request queued beside this one (sqlite::GroupCommit).
  void submit(WriteRequest& req) {
    group_.submit(req, [this](const std::vector<WriteRequest*>& batch) { commit(batch); });
  }

  void commit(const std::vector<WriteRequest*>& batch) {
    std::int64_t start = 0, rev = 0;
    try {
      writer_.query(k_begin).run();
      {
        // Read, not cached: the revision is the database's, whatever happened before.
        Query m = writer_.query(k_meta);
        if (!m.step()) throw Error(errc::unavailable, "store: missing meta row");
        start = rev = m.int64(0);
      }
      if (batch.size() == 1) {
        apply(*batch.front(), rev);  // alone: a failure rolls back the whole transaction below
      } else {
        for (WriteRequest* r : batch) apply_in_savepoint(*r, rev);
      }
      if (rev != start) {
        writer_.query(k_set_revision).bind(1, rev).run();
        compact(rev);
      }
      writer_.query(k_commit).run();
    } catch (...) {
      auto error = std::current_exception();
      try {
        writer_.query(k_rollback).run();
      } catch (...) {
        // The transaction may already be gone (SQLite rolls back on some I/O errors).
      }
      for (WriteRequest* r : batch)
        if (!r->error) r->error = error;
      return;
    }
    if (rev != start) {
      revision_.store(rev);
      {
        std::lock_guard lock(hub_->mutex);
        hub_->committed = rev;
      }
      hub_->wake.notify_all();
    }
  }

  // A savepoint per request of a batch: a failing one rolls back alone, the batch goes on.
  void apply_in_savepoint(WriteRequest& r, std::int64_t& rev) {
    writer_.query(k_savepoint).run();
    std::int64_t before = rev;
    try {
      apply(r, rev);
      writer_.query(k_release).run();
    } catch (...) {
      r.error = std::current_exception();
      rev = before;
      writer_.query(k_rollback_to).run();
      writer_.query(k_release).run();
    }
  }

  // Drops events older than the history, in steps so it is not done on every commit, and never
  // past what a live watcher still has to receive.
  void compact(std::int64_t rev) {
    std::int64_t bound = rev - options_.history;
    std::int64_t step = std::max<std::int64_t>(1, options_.history / 8);
    {
      std::lock_guard lock(hub_->mutex);
      if (bound - hub_->compacted < step) return;
      for (const auto& w : hub_->watchers) bound = std::min(bound, w->next - 1);
      if (bound <= hub_->compacted) return;
      // Raised before the delete so no new watch can start inside the deleted range.
      hub_->compacted = bound;
    }
    writer_.query(k_compact).bind(1, bound).run();
    writer_.query(k_set_compacted).bind(1, bound).run();
  }

  void apply(WriteRequest& r, std::int64_t& rev) {
    switch (r.kind) {
      case WriteRequest::Kind::txn:
        apply_txn(*r.txn, r.result, rev);
        return;
      case WriteRequest::Kind::grant:
        writer_.query(k_lease_grant).bind(1, r.ttl_ms).bind(2, now_ms() + r.ttl_ms).run();
        r.granted = writer_.last_rowid();
        return;
      case WriteRequest::Kind::keep_alive:
        writer_.query(k_lease_renew).bind(1, r.lease).bind(2, now_ms()).run();
        if (writer_.changes() == 0)
          throw Error(errc::not_found, "lease " + std::to_string(r.lease) + " not found or expired",
                      "lease");
        return;
      case WriteRequest::Kind::revoke:
      case WriteRequest::Kind::expire:
        end_lease(r, rev);
        return;
    }
  }

  // Erases the keys of a revoked or expired lease at one revision, then the lease itself.
  // Revoking an unknown lease is a no-op: it may have just expired.
  void end_lease(const WriteRequest& r, std::int64_t& rev) {
    {
      Query q = writer_.query(k_lease_expiry);
      q.bind(1, r.lease);
      if (!q.step()) return;
      if (r.kind == WriteRequest::Kind::expire && q.int64(0) > now_ms()) return;  // renewed
    }
    std::vector<std::string> keys;
    {
      Query q = writer_.query(k_keys_of_lease);
      q.bind(1, r.lease);
      while (q.step()) keys.push_back(q.blob(0));
    }
    std::int64_t next = rev + 1;
    std::int64_t seq = 0;
    for (const auto& key : keys) erase_one(key, next, seq);
    writer_.query(k_lease_delete).bind(1, r.lease).run();
    if (!keys.empty()) rev = next;
  }

  bool erase_one(const std::string& key, std::int64_t next, std::int64_t& seq) {
    writer_.query(k_delete).bind(1, key).run();
    if (writer_.changes() == 0) return false;
    writer_.query(k_log)
        .bind(1, next)
        .bind(2, seq++)
        .bind(3, std::int64_t{1})
        .bind(4, key)
        .bind(5, std::string_view())
        .bind(6, std::int64_t{0})
        .bind(7, std::int64_t{0})
        .bind(8, std::int64_t{0})
        .run();
    return true;
  }

  void apply_txn(const Txn& t, TxnResult& result, std::int64_t& rev) {
    bool ok = true;
    for (const auto& c : t.compares) {
      std::int64_t create = 0, mod = 0, version = 0;  // a missing key compares as all zero
      {
        Query q = writer_.query(k_get);
        q.bind(1, c.key);
        if (q.step()) {
          create = q.int64(1);
          mod = q.int64(2);
          version = q.int64(3);
        }
      }
      std::int64_t actual = c.target == Compare::Target::mod_revision      ? mod
                            : c.target == Compare::Target::create_revision ? create
                                                                           : version;
      if (!holds(c, actual)) {
        ok = false;
        break;
      }
    }
    const auto& ops = ok ? t.success : t.failure;
    std::int64_t next = rev + 1;  // every op of the txn shares one revision, as in etcd
    std::int64_t seq = 0;
    bool wrote = false;
    for (const auto& op : ops) {
      switch (op.type) {
        case Operation::Type::put:
          require_key(op.key);
          put_one(op, next, seq);
          wrote = true;
          break;
        case Operation::Type::erase:
          require_key(op.key);
          wrote |= erase_one(op.key, next, seq);
          break;
        case Operation::Type::erase_prefix: {
          std::vector<std::string> keys;
          {
            auto end = prefix_end(op.key);
            Query q = writer_.query(end ? k_keys : k_keys_open);
            q.bind(1, op.key);
            if (end) q.bind(2, *end);
            while (q.step()) keys.push_back(q.blob(0));
          }
          for (const auto& key : keys) wrote |= erase_one(key, next, seq);
          break;
        }
      }
    }
    if (wrote) rev = next;
    result.succeeded = ok;
    result.revision = rev;
  }

  void put_one(const Operation& op, std::int64_t next, std::int64_t& seq) {
    if (op.lease != 0) {
      Query q = writer_.query(k_lease_expiry);
      q.bind(1, op.lease);
      if (!q.step() || q.int64(0) <= now_ms())
        throw Error(errc::not_found, "lease " + std::to_string(op.lease) + " not found or expired",
                    "lease");
    }
    std::int64_t create = next, version = 1;
    {
      Query q = writer_.query(k_get);
      q.bind(1, op.key);
      if (q.step()) {
        create = q.int64(1);
        version = q.int64(3) + 1;
      }
    }
    writer_.query(k_upsert)
        .bind(1, op.key)
        .bind(2, op.value)
        .bind(3, create)
        .bind(4, next)
        .bind(5, version)
        .bind(6, op.lease)
        .run();
    writer_.query(k_log)
        .bind(1, next)
        .bind(2, seq++)
        .bind(3, std::int64_t{0})
        .bind(4, op.key)
        .bind(5, op.value)
        .bind(6, create)
        .bind(7, version)
        .bind(8, op.lease)
        .run();
  }

  // The dispatcher: for every watcher behind the committed revision, reads the missing events
  // from the log (one query for all of them) and hands each its share, in revision order.
  void dispatch() {
    std::unique_lock lock(hub_->mutex);
    hub_->dispatcher = std::this_thread::get_id();
    while (true) {
      hub_->wake.wait(lock, [&] {
        if (hub_->stopping) return true;
        for (const auto& w : hub_->watchers)
          if (w->next <= hub_->committed) return true;
        return false;
      });
      if (hub_->stopping) return;
      std::int64_t target = hub_->committed;
      std::int64_t from = target;
      std::vector<std::pair<std::shared_ptr<Watcher>, std::int64_t>> due;
      for (const auto& w : hub_->watchers) {
        if (w->next > target) continue;
        due.emplace_back(w, w->next);
        from = std::min(from, w->next);
      }
      lock.unlock();
      std::vector<std::pair<std::int64_t, WatchEvent>> events;
      try {
        events = read_events(from, target);
      } catch (...) {
        // A transient read failure: try again shortly rather than skip revisions.
        lock.lock();
        hub_->wake.wait_for(lock, std::chrono::milliseconds(100), [&] { return hub_->stopping; });
        continue;
      }
      for (auto& [w, next] : due) {
        std::vector<WatchEvent> batch;
        for (const auto& [revision, e] : events)
          if (revision >= next && e.kv.key.compare(0, w->prefix.size(), w->prefix) == 0)
            batch.push_back(e);
        lock.lock();
        if (w->cancelled) {
          lock.unlock();
          continue;
        }
        hub_->running = w.get();
        lock.unlock();
        if (!batch.empty()) {
          try {
            w->callback(batch);
          } catch (...) {
            // A throwing callback must not stop the other watches.
          }
        }
        lock.lock();
        w->next = target + 1;
        hub_->running = nullptr;
        hub_->idle.notify_all();
        lock.unlock();
      }
      lock.lock();
    }
  }

  std::vector<std::pair<std::int64_t, WatchEvent>> read_events(std::int64_t from, std::int64_t to) {
    std::vector<std::pair<std::int64_t, WatchEvent>> out;
    Query q = watcher_db_.query(k_events);
    q.bind(1, from).bind(2, to);
    while (q.step()) {
      WatchEvent e;
      std::int64_t revision = q.int64(0);
      e.type = q.int64(1) == 0 ? WatchEvent::Type::put : WatchEvent::Type::erase;
      e.kv.key = q.blob(2);
      e.kv.mod_revision = revision;
      if (e.type == WatchEvent::Type::put) {
        e.kv.value = q.blob(3);
        e.kv.create_revision = q.int64(4);
        e.kv.version = q.int64(5);
        e.kv.lease = q.int64(6);
      }
      out.emplace_back(revision, std::move(e));
    }
    return out;
  }

  // The lease sweeper: erases the keys of every expired lease, one revision per lease.
  void sweep() {
    std::unique_lock lock(sweep_mutex_);
    while (
        !sweep_wake_.wait_for(lock, options_.lease_sweep_interval, [&] { return sweep_stop_; })) {
      lock.unlock();
      try {
        std::vector<std::int64_t> expired;
        {
          std::lock_guard read(read_mutex_);
          Query q = reader_.query(k_leases_expired);
          q.bind(1, now_ms());
          while (q.step()) expired.push_back(q.int64(0));
        }
        for (std::int64_t id : expired) {
          WriteRequest req;
          req.kind = WriteRequest::Kind::expire;
          req.lease = id;
          submit(req);
        }
      } catch (...) {
        // The store is failing (disk full, I/O error); the next sweep tries again.
      }
      lock.lock();
    }
  }

  SqliteOptions options_;
  Db writer_;      // used by the commit leader only
  Db reader_;      // guarded by read_mutex_
  Db watcher_db_;  // used by the dispatcher thread only
  std::mutex read_mutex_;
  std::shared_ptr<Hub> hub_;
  std::atomic<std::int64_t> revision_{0};

  sqlite::GroupCommit<WriteRequest> group_;

  std::mutex sweep_mutex_;
  std::condition_variable sweep_wake_;
  bool sweep_stop_ = false;

  std::thread dispatcher_;
  std::thread sweeper_;
};

}  // namespace

std::unique_ptr<Store> open_sqlite(const std::string& path, SqliteOptions options) {
  try {
    namespace fs = std::filesystem;
    fs::path file(path);
    std::error_code ec;
    // A directory holds the database as store.db; otherwise `path` is the file itself.
    if (fs::is_directory(file, ec)) {
      file /= "store.db";
    } else if (file.has_parent_path()) {
      fs::create_directories(file.parent_path(), ec);
      if (ec) throw Error(errc::unavailable, ec.message());
    }
    return std::make_unique<SqliteStore>(file.string(), options);
  } catch (const Error& e) {
    throw Error(errc::unavailable, "cannot open store at " + path + ": " + e.message());
  } catch (const std::exception& e) {
    throw Error(errc::unavailable, "cannot open store at " + path + ": " + e.what());
  }
}

}  // namespace blixard::store
