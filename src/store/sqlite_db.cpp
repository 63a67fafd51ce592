#include "store/sqlite_db.hpp"

#include <cerrno>
#include <filesystem>

namespace blixard::store::sqlite {

std::optional<Error> disk_full(sqlite3* db, const std::string& detail) {
  if (db == nullptr) return std::nullopt;
  if ((sqlite3_extended_errcode(db) & 0xff) != SQLITE_FULL && sqlite3_system_errno(db) != ENOSPC) {
    return std::nullopt;
  }
  const char* file = sqlite3_db_filename(db, "main");
  const std::string path = file != nullptr && *file != '\0' ? file : "(unknown path)";
  return Error(errc::unavailable, "disk full: cannot write the store " + path + " (data dir " +
                                      std::filesystem::path(path).parent_path().string() +
                                      "): " + detail + "; free space on its filesystem");
}

void throw_sqlite(sqlite3* db) {
  const std::string detail = sqlite3_errmsg(db);
  if (auto full = disk_full(db, detail)) throw *full;
  throw Error(errc::unavailable, "store: " + detail);
}

Db::Db(const std::string& file) {
  int rc =
      sqlite3_open_v2(file.c_str(), &db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    throw Error(errc::unavailable, msg);
  }
  try {
    sqlite3_extended_result_codes(db_, 1);
    exec("PRAGMA busy_timeout = 10000");
    // WAL lets readers run beside the writer; FULL syncs the log on every commit.
    char* err = nullptr;
    std::string mode;
    auto read_mode = [](void* out, int, char** values, char**) {
      if (values[0]) *static_cast<std::string*>(out) = values[0];
      return 0;
    };
    if (sqlite3_exec(db_, "PRAGMA journal_mode = WAL", read_mode, &mode, &err) != SQLITE_OK) {
      std::string msg = err ? err : sqlite3_errmsg(db_);
      sqlite3_free(err);
      throw Error(errc::unavailable, msg);
    }
    if (mode != "wal") throw Error(errc::unavailable, "cannot enable WAL mode (" + mode + ")");
    exec("PRAGMA synchronous = FULL");
  } catch (...) {
    sqlite3_close_v2(db_);
    throw;
  }
}

Db::~Db() {
  for (auto& [sql, stmt] : stmts_) sqlite3_finalize(stmt);
  sqlite3_close_v2(db_);
}

void Db::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    if (auto full = disk_full(db_, msg)) throw *full;
    throw Error(errc::unavailable, msg);
  }
}

Query Db::query(const char* sql) {
  auto it = stmts_.find(sql);
  if (it == stmts_.end()) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK)
      throw_sqlite(db_);
    it = stmts_.emplace(sql, stmt).first;
  }
  return {db_, it->second};
}

}  // namespace blixard::store::sqlite
