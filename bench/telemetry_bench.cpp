// Cost of recording an invocation (the invocation hot path) beside the cheapest possible
// baselines in the same binary: one bare std::atomic increment and a std::mutex-guarded counter.
// Run: build-*/bench/telemetry_bench [--benchmark_repetitions=3]
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>

#include "control/telemetry.hpp"

namespace {

using blixard::control::Outcome;
using blixard::control::Telemetry;

Telemetry& telemetry() {
  static Telemetry t;
  return t;
}

std::atomic<std::uint64_t> g_atomic{0};
std::mutex g_mutex;
std::uint64_t g_guarded = 0;

void BM_BaselineAtomicIncrement(benchmark::State& state) {
  for (auto _ : state) g_atomic.fetch_add(1, std::memory_order_relaxed);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_BaselineAtomicIncrement)->Threads(1)->Threads(2)->UseRealTime();

void BM_BaselineMutexCounter(benchmark::State& state) {
  for (auto _ : state) {
    std::lock_guard lock(g_mutex);
    ++g_guarded;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_BaselineMutexCounter)->Threads(1)->Threads(2)->UseRealTime();

// Every thread records into the same function (one hot function).
void BM_RecordInvocation(benchmark::State& state) {
  const std::string function = "echo";
  auto& t = telemetry();
  std::int64_t us = 100;
  for (auto _ : state) {
    t.record_invocation(function, Outcome::ok, std::chrono::microseconds(us), false);
    us = us < 100000 ? us * 3 / 2 : 100;  // spread over the buckets
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RecordInvocation)->Threads(1)->Threads(2)->UseRealTime();

// Each thread records into its own function.
void BM_RecordInvocationOwnFunction(benchmark::State& state) {
  const std::string function = "fn-" + std::to_string(state.thread_index());
  auto& t = telemetry();
  std::int64_t us = 100;
  for (auto _ : state) {
    t.record_invocation(function, Outcome::ok, std::chrono::microseconds(us), false);
    us = us < 100000 ? us * 3 / 2 : 100;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RecordInvocationOwnFunction)->Threads(2)->UseRealTime();

void BM_SetGauges(benchmark::State& state) {
  auto& t = telemetry();
  const std::map<std::string, std::uint32_t> by_node{{"local", 1}};
  std::uint32_t n = 0;
  for (auto _ : state) t.set_gauges("echo", ++n & 7, 1, 0, by_node);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SetGauges);

void BM_AppendLog(benchmark::State& state) {
  auto& t = telemetry();
  const std::string text(80, 'x');
  for (auto _ : state) t.append_log("echo", "i-1", "node1", "stdout", text);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AppendLog);

// Reading: metrics of one function, and /metrics with 100 functions.
void BM_Metrics(benchmark::State& state) {
  auto& t = telemetry();
  t.record_invocation("echo", Outcome::ok, std::chrono::microseconds(100), false);
  for (auto _ : state) benchmark::DoNotOptimize(t.metrics("echo"));
}
BENCHMARK(BM_Metrics);

void BM_Prometheus100Functions(benchmark::State& state) {
  Telemetry t;
  for (int i = 0; i < 100; ++i) {
    for (int j = 0; j < 100; ++j) {
      t.record_invocation("fn-" + std::to_string(i), Outcome::ok,
                          std::chrono::microseconds(100 * j), j == 0);
    }
  }
  std::size_t bytes = 0;
  for (auto _ : state) {
    auto text = t.prometheus();
    bytes = text.size();
    benchmark::DoNotOptimize(text);
  }
  state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_Prometheus100Functions);

}  // namespace

BENCHMARK_MAIN();
