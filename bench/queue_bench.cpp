// Durable queues (docs/queues.md): what a send costs and what a queue trigger delivers.
//   BM_Send/threads:N        Queue::send of one message through the embedded cluster, durable
//                            when it returns (group commit shares an fsync among the senders)
//   BM_SendBatch10/threads:N the same, ten messages a call (SendMessageBatch's size)
//   BM_RawSqlite/threads:N   the baseline: one INSERT and COMMIT per message in a SQLite file with
//                            the same settings (WAL, synchronous=FULL), writers sharing a
//                            connection behind a mutex as a hand-written store would
//   BM_SendToProcessed       one message at a time: send until its trigger's call returned and
//                            acknowledged it (p50/p99 in the counters)
//   BM_TriggerThroughput     20,000 messages sent by 8 threads in batches of 10 while the queue
//                            trigger (batches of 10) drains them into a no-op native handler:
//                            messages/s from the first send to the last acknowledgement
#include <benchmark/benchmark.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "blixard/cluster.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

const std::string k_body = R"({"orderId":"A-1001","items":[{"price":19.99,"quantity":2}]})";

struct Env {
  fs::path dir;
  std::optional<blixard::Cluster> cluster;

  Env() {
    std::string tmpl = (fs::temp_directory_path() / "blixard-queue-bench-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
    cluster.emplace(blixard::Cluster::local(dir / "cluster"));
    cluster->create_queue("sink");  // sends only: nobody consumes it
    blixard::v1::FunctionSpec s;
    s.set_memory_mib(128);
    s.mutable_timeout()->set_seconds(30);
    s.set_concurrent_executions(16);
    s.mutable_scaling()->set_min_instances(4);
    s.mutable_scaling()->mutable_keep_warm()->set_seconds(60);
    s.set_runtime("exec");
    s.add_command(fs::path(BLIXARD_BENCH_ECHO).filename().string());
    s.set_code(fs::path(BLIXARD_BENCH_ECHO).parent_path().string());
    cluster->create_function("noop", s).invoke("{}");
    cluster->create_queue("work");
    blixard::v1::TriggerSpec t;
    t.set_type("queue");
    t.set_source("work");
    t.set_function("noop");
    t.set_batch_size(10);
    cluster->create_trigger("work-trigger", t);
  }
  ~Env() {
    cluster->close();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  bool drained(const std::string& queue) {
    auto st = cluster->queue(queue).get().status();
    return st.depth() == 0 && st.in_flight() == 0;
  }
};

Env& env() {
  static Env e;
  return e;
}

void BM_Send(benchmark::State& state) {
  auto q = env().cluster->queue("sink");
  for (auto _ : state) q.send(k_body);
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) q.purge();
}
BENCHMARK(BM_Send)->Threads(1)->Threads(16)->Threads(64)->UseRealTime();

void BM_SendBatch10(benchmark::State& state) {
  auto q = env().cluster->queue("sink");
  const std::vector<std::string> batch(10, k_body);
  for (auto _ : state) q.send(batch);
  state.SetItemsProcessed(state.iterations() * 10);
  if (state.thread_index() == 0) q.purge();
}
BENCHMARK(BM_SendBatch10)->Threads(1)->Threads(16)->UseRealTime();

struct RawDb {
  sqlite3* db = nullptr;
  std::mutex mutex;
  RawDb() {
    auto path = env().dir / "raw.db";
    sqlite3_open(path.c_str(), &db);
    sqlite3_exec(db,
                 "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                 "CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, body BLOB)",
                 nullptr, nullptr, nullptr);
  }
};

void BM_RawSqlite(benchmark::State& state) {
  static RawDb raw;
  sqlite3_stmt* stmt = nullptr;
  {
    std::lock_guard lock(raw.mutex);
    sqlite3_prepare_v2(raw.db, "INSERT INTO m (body) VALUES (?1)", -1, &stmt, nullptr);
  }
  for (auto _ : state) {
    std::lock_guard lock(raw.mutex);
    sqlite3_exec(raw.db, "BEGIN", nullptr, nullptr, nullptr);
    sqlite3_bind_blob(stmt, 1, k_body.data(), static_cast<int>(k_body.size()), SQLITE_STATIC);
    sqlite3_step(stmt);
    sqlite3_reset(stmt);
    sqlite3_exec(raw.db, "COMMIT", nullptr, nullptr, nullptr);
  }
  std::lock_guard lock(raw.mutex);
  sqlite3_finalize(stmt);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RawSqlite)->Threads(1)->Threads(16)->UseRealTime();

void BM_SendToProcessed(benchmark::State& state) {
  auto& e = env();
  auto q = e.cluster->queue("work");
  std::vector<double> ms;
  for (auto _ : state) {
    const auto start = Clock::now();
    q.send(k_body);
    while (!e.drained("work")) std::this_thread::sleep_for(std::chrono::microseconds(50));
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  state.counters["p50_ms"] = ms[ms.size() / 2];
  state.counters["p99_ms"] = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
}
BENCHMARK(BM_SendToProcessed)->Iterations(300)->UseRealTime();

void BM_TriggerThroughput(benchmark::State& state) {
  auto& e = env();
  constexpr int k_threads = 8;
  constexpr int k_batches = 250;  // per thread: 8 x 250 x 10 = 20,000 messages
  for (auto _ : state) {
    const auto start = Clock::now();
    std::vector<std::thread> senders;
    for (int t = 0; t < k_threads; ++t) {
      senders.emplace_back([&] {
        auto q = e.cluster->queue("work");
        const std::vector<std::string> batch(10, k_body);
        for (int i = 0; i < k_batches; ++i) q.send(batch);
      });
    }
    for (auto& s : senders) s.join();
    while (!e.drained("work")) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(s);
    state.counters["messages_per_s"] = k_threads * k_batches * 10 / s;
  }
  state.SetItemsProcessed(state.iterations() * k_threads * k_batches * 10);
}
BENCHMARK(BM_TriggerThroughput)->Iterations(3)->UseManualTime();

}  // namespace

BENCHMARK_MAIN();
