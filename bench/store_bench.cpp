// Put throughput of the SQLite Store against a baseline of raw SQLite inserts with the same
// durability (WAL + synchronous=FULL, one commit per write), single-threaded and with 4 writers.
// The baseline's writers share one connection behind a mutex, as a plain implementation would.
#include <benchmark/benchmark.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "store/store.hpp"

namespace {

std::string make_temp_dir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/blixard-store-bench-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

const std::string k_value(100, 'v');

// ---- the Store ----

std::string g_store_dir;
std::unique_ptr<blixard::store::Store> g_store;

void BM_StorePut(benchmark::State& state) {
  if (state.thread_index() == 0) {
    g_store_dir = make_temp_dir();
    g_store = blixard::store::open_sqlite(g_store_dir + "/store.db");
  }
  std::string prefix = "bench/" + std::to_string(state.thread_index()) + "/";
  std::int64_t i = 0;
  for (auto _ : state) g_store->put(prefix + std::to_string(i++), k_value);
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    g_store.reset();
    std::filesystem::remove_all(g_store_dir);
  }
}
BENCHMARK(BM_StorePut)->UseRealTime()->Threads(1)->Threads(4);

// ---- the baseline: raw SQLite ----

struct RawDb {
  sqlite3* db = nullptr;
  sqlite3_stmt* insert = nullptr;
  std::mutex mutex;

  explicit RawDb(const std::string& path) {
    if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) throw std::runtime_error("open");
    exec("PRAGMA journal_mode = WAL");
    exec("PRAGMA synchronous = FULL");
    exec("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID");
    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)", -1,
                           &insert, nullptr) != SQLITE_OK)
      throw std::runtime_error(sqlite3_errmsg(db));
  }
  ~RawDb() {
    sqlite3_finalize(insert);
    sqlite3_close(db);
  }
  void exec(const char* sql) {
    if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK)
      throw std::runtime_error(sqlite3_errmsg(db));
  }
  void put(const std::string& key, const std::string& value) {
    std::lock_guard lock(mutex);
    sqlite3_bind_blob(insert, 1, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_blob(insert, 2, value.data(), static_cast<int>(value.size()), SQLITE_STATIC);
    if (sqlite3_step(insert) != SQLITE_DONE) throw std::runtime_error(sqlite3_errmsg(db));
    sqlite3_reset(insert);
  }
};

std::string g_raw_dir;
std::unique_ptr<RawDb> g_raw;

void BM_RawSqliteInsert(benchmark::State& state) {
  if (state.thread_index() == 0) {
    g_raw_dir = make_temp_dir();
    g_raw = std::make_unique<RawDb>(g_raw_dir + "/raw.db");
  }
  std::string prefix = "bench/" + std::to_string(state.thread_index()) + "/";
  std::int64_t i = 0;
  for (auto _ : state) g_raw->put(prefix + std::to_string(i++), k_value);
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    g_raw.reset();
    std::filesystem::remove_all(g_raw_dir);
  }
}
BENCHMARK(BM_RawSqliteInsert)->UseRealTime()->Threads(1)->Threads(4);

}  // namespace

BENCHMARK_MAIN();
