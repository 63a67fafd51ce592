// What the store's SQLite files share: a connection set up for durability (WAL, synchronous=FULL)
// with a cache of prepared statements, errors that name a full disk, and group commit. Used by
// the Store's backend (sqlite_store.cpp) and the queues' log (sqlite_queue_log.cpp).
#pragma once

#include <sqlite3.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "blixard/error.hpp"

namespace blixard::store::sqlite {

// A full filesystem says so and where, so that nobody looks for a server that is not running:
// SQLite reports SQLITE_FULL, or an I/O error whose errno is ENOSPC (a WAL or shm write).
std::optional<Error> disk_full(sqlite3* db, const std::string& detail);

[[noreturn]] void throw_sqlite(sqlite3* db);

// One use of a cached prepared statement; resets it when done so its locks and bindings go.
class Query {
 public:
  Query(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;
  ~Query() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  Query& bind(int i, std::int64_t v) {
    if (sqlite3_bind_int64(stmt_, i, v) != SQLITE_OK) throw_sqlite(db_);
    return *this;
  }
  // Keys and values are BLOBs so they order bytewise; an empty one is a zero-length blob, not NULL.
  Query& bind(int i, std::string_view v) {
    if (sqlite3_bind_blob64(stmt_, i, v.empty() ? "" : v.data(), v.size(), SQLITE_STATIC) !=
        SQLITE_OK)
      throw_sqlite(db_);
    return *this;
  }
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw_sqlite(db_);
  }
  void run() {
    while (step()) {
    }
  }
  std::int64_t int64(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string blob(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<std::size_t>(n))
             : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

// One SQLite connection with its statement cache, in WAL mode with synchronous=FULL (a commit is
// on disk when it returns). Not thread-safe: each is used by one thread at a time.
class Db {
 public:
  explicit Db(const std::string& file);
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  ~Db();

  void exec(const char* sql);
  // `sql` must be a string literal: the cache is keyed by its address.
  Query query(const char* sql);
  std::int64_t changes() { return sqlite3_changes64(db_); }
  std::int64_t last_rowid() { return sqlite3_last_insert_rowid(db_); }

 private:
  sqlite3* db_ = nullptr;
  std::unordered_map<const char*, sqlite3_stmt*> stmts_;
};

// Group commit: a writer that finds no commit in flight becomes the leader and commits every
// queued request in one transaction (one fsync) while the others wait. The leader then steps
// down and wakes them, and a waiter whose request is still queued leads the next batch; so the
// old leader's next write can join that batch instead of waiting behind it. A request carries
// `bool done` and `std::exception_ptr error` (set by `commit` for the ones that failed).
template <class Request>
class GroupCommit {
 public:
  // Returns once `req` is committed (or failed: its error is rethrown). `commit` gets the batch.
  template <class Commit>
  void submit(Request& req, Commit&& commit) {
    std::unique_lock lock(mutex_);
    queue_.push_back(&req);
    while (!req.done) {
      if (leading_) {
        done_.wait(lock);
        continue;
      }
      leading_ = true;
      std::vector<Request*> batch;
      batch.swap(queue_);  // holds req: nothing was in flight
      lock.unlock();
      commit(batch);
      lock.lock();
      for (Request* r : batch) r->done = true;
      leading_ = false;
      done_.notify_all();
    }
    if (req.error) std::rethrow_exception(req.error);
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<Request*> queue_;
  bool leading_ = false;
};

}  // namespace blixard::store::sqlite
