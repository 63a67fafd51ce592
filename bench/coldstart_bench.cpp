// Cold start of the echo handler (native and Python) through an embedded cluster, beside
// baselines measured in the same run: the same program started with a bare posix_spawn (vfork +
// exec) speaking the same protocol to its first response, the same under `bwrap --unshare-all`,
// and, for Python, `python3 -c pass` on the same interpreter binary. Each iteration is timed by
// hand (UseManualTime); p50 is a counter. Not run by the test suite.
//
//   coldstart_bench [--benchmark_filter=...]     (BLIXARD_BENCH_PYTHON picks the interpreter)
#include <benchmark/benchmark.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "blixard/blixard.hpp"
#include "handlers/direct.hpp"
#include "runtime/driver.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

const std::string k_payload = R"({"x":1})";

// The echo handler in three builds: native with libstdc++ linked in (as the handler docs advise),
// native on the shared libstdc++ ("dynamic": about 1.5 ms more of loading per start), and Python.
enum class Handler { native, dynamic, python };

const char* label(Handler h) {
  return h == Handler::native ? "native" : h == Handler::dynamic ? "dynamic" : "python";
}
std::string echo_binary(Handler h) {
  return h == Handler::dynamic ? BLIXARD_BENCH_ECHO_DYNAMIC : BLIXARD_BENCH_ECHO;
}
const std::string k_python_code = std::string(BLIXARD_SOURCE_DIR) + "/bench/handlers/python";
const std::string k_runtime_py =
    std::string(BLIXARD_SOURCE_DIR) + "/python/blixard/handler_runtime.py";

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::map<std::string, double> g_p50;  // label -> p50 ms, for the summary

// Runs `once` per iteration; it returns the milliseconds it timed (setup and teardown excluded).
template <class Once>
void manual_loop(benchmark::State& state, const std::string& label, Once&& once) {
  std::vector<double> ms;
  for (auto _ : state) {
    double t = 0;
    try {
      t = once();
    } catch (const std::exception& e) {
      state.SkipWithError(e.what());
      break;
    }
    ms.push_back(t);
    state.SetIterationTime(t / 1000.0);
  }
  if (ms.empty()) return;
  std::vector<double> sorted = ms;
  const double p50 = bench::percentile(sorted, 50);
  state.counters["p50_ms"] = p50;
  state.counters["min_ms"] = sorted.front();
  state.counters["max_ms"] = sorted.back();
  g_p50[label] = p50;
}

// ---- The embedded cluster ----------------------------------------------------------------

struct Env {
  fs::path dir;
  std::optional<blixard::Cluster> cluster;
  int counter = 0;

  Env() {
    std::string tmpl = (fs::temp_directory_path() / "blixard-coldstart-bench-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
    blixard::LocalOptions options;
    options.python = bench::python();
    cluster.emplace(blixard::Cluster::local(dir / "cluster", options));
  }
  ~Env() {
    cluster->close();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};
std::unique_ptr<Env> g_env;

blixard::v1::FunctionSpec spec_for(Handler handler, bool isolate_network = false) {
  blixard::v1::FunctionSpec s;
  s.set_memory_mib(128);
  s.mutable_timeout()->set_seconds(30);
  s.set_isolate_network(isolate_network);
  if (handler == Handler::python) {
    s.set_runtime("python");
    s.set_handler("echo:handler");
    s.set_code(k_python_code);
    (*s.mutable_env())["PYTHONDONTWRITEBYTECODE"] = "1";
  } else {
    s.set_runtime("exec");
    // The binary from the function's code directory (which travels as an archive), as a user's.
    s.add_command(fs::path(echo_binary(handler)).filename().string());
    s.set_code(fs::path(echo_binary(handler)).parent_path().string());
  }
  return s;
}

std::vector<std::string> handler_argv(Handler handler) {
  if (handler == Handler::python) {
    return {bench::python(), k_runtime_py, "echo:handler", k_python_code};
  }
  return {echo_binary(handler)};
}
std::string handler_cwd(Handler handler) {
  return handler == Handler::python ? k_python_code
                                    : fs::path(echo_binary(handler)).parent_path().string();
}

bool skip_python(benchmark::State& state, Handler handler) {
  if (handler == Handler::python && bench::python().empty()) {
    state.SkipWithError("no python3 found (set BLIXARD_BENCH_PYTHON)");
    return true;
  }
  return false;
}

// ---- Blixard: create a function, first invoke ---------------------------------------------

// Create-to-first-response: create_function (a durable store write) + the first invoke. The
// previous iteration's deletion is given 100 ms (untimed) to finish first.
void BM_Blixard_CreateAndInvoke(benchmark::State& state, Handler handler, bool isolate_network) {
  if (skip_python(state, handler)) return;
  auto& cluster = *g_env->cluster;
  const auto spec = spec_for(handler, isolate_network);
  manual_loop(state,
              std::string(label(handler)) + (isolate_network ? "+netns" : "") + ": create+invoke",
              [&] {
                const std::string name = "cold-" + std::to_string(++g_env->counter);
                const auto t0 = Clock::now();
                auto fn = cluster.create_function(name, spec);
                const auto r = fn.invoke(k_payload);
                const double ms = ms_since(t0);
                if (!r.cold_start) throw std::runtime_error("the first call was not a cold start");
                cluster.delete_function(name);
                // The next function is created some time later, not while this one's instance
                // is still being torn down (on 2 cores that teardown would share the timed start).
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                return ms;
              });
}

// create_function alone (a durable store write: WAL + fsync), the part of create+invoke that is
// not the instance's start.
void BM_Blixard_Create(benchmark::State& state) {
  auto& cluster = *g_env->cluster;
  const auto spec = spec_for(Handler::native);
  manual_loop(state, "native: create only", [&] {
    const std::string name = "created-" + std::to_string(++g_env->counter);
    const auto t0 = Clock::now();
    cluster.create_function(name, spec);
    const double ms = ms_since(t0);
    cluster.delete_function(name);
    return ms;
  });
}

// An idle function scaled to zero (keepWarm 50 ms), then invoked: one new instance's start and
// first response, with no store write. Waiting for the scale-down (and 100 ms more) is not timed.
void BM_Blixard_InvokeFromZero(benchmark::State& state, Handler handler) {
  if (skip_python(state, handler)) return;
  auto& cluster = *g_env->cluster;
  auto spec = spec_for(handler);
  spec.mutable_scaling()->mutable_keep_warm()->set_nanos(50'000'000);
  const std::string name = std::string("zero-") + label(handler);
  auto fn = cluster.create_function(name, spec);
  fn.invoke(k_payload);
  manual_loop(state, std::string(label(handler)) + ": invoke from zero", [&] {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (fn.get().status().instances_size() > 0) {
      if (Clock::now() > deadline) throw std::runtime_error("the function never scaled to zero");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // A call comes some time after the scale-down, not on its heels: let the stop finish.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const auto t0 = Clock::now();
    const auto r = fn.invoke(k_payload);
    const double ms = ms_since(t0);
    if (!r.cold_start) throw std::runtime_error("the call was not a cold start");
    return ms;
  });
  cluster.delete_function(name);
}

// ---- The sandbox driver alone: Python from the zygote against a fresh interpreter ----------

// Start-to-first-response of one instance on a driver of its own (no store, no pool), the
// zygote on or off; the stop is not timed. Off is what every Python start cost before the zygote.
void BM_Driver_PythonStart(benchmark::State& state, bool zygote) {
  if (skip_python(state, Handler::python)) return;
  blixard::runtime::SandboxOptions options;
  options.work_dir = g_env->dir / (zygote ? "driver-zygote" : "driver-fresh");
  options.python = bench::python();
  options.python_zygote = zygote;
  auto driver = blixard::runtime::make_sandbox_driver(options);
  blixard::runtime::InstanceOptions instance;
  instance.function = "echo";
  instance.spec = spec_for(Handler::python);
  blixard::runtime::Invocation inv;
  inv.function = "echo";
  inv.spec = instance.spec;
  inv.payload = k_payload;
  inv.request_id = "r";
  driver->start(instance)->stop(std::chrono::seconds(5));  // the zygote is up before timing
  manual_loop(state, std::string("python: instance start, ") + (zygote ? "zygote" : "fresh -S"),
              [&] {
                const auto t0 = Clock::now();
                auto started = driver->start(instance);
                started->call(inv);
                const double ms = ms_since(t0);
                started->stop(std::chrono::seconds(5));
                return ms;
              });
}

// ---- Baselines ----------------------------------------------------------------------------

// posix_spawn of the same program, to its `ready` and first response; the exit is not timed.
void BM_Baseline_Spawn(benchmark::State& state, Handler handler) {
  if (skip_python(state, handler)) return;
  const auto argv = handler_argv(handler);
  const auto env = bench::handler_env(handler == Handler::python);
  manual_loop(state, std::string(label(handler)) + ": bare spawn", [&] {
    const auto t0 = Clock::now();
    bench::DirectInstance instance(argv, env, handler_cwd(handler));
    instance.wait_ready();
    instance.call(k_payload);
    return ms_since(t0);
  });
}

const std::string& bwrap() {
  static const std::string path = bench::run("command -v bwrap 2>/dev/null");
  return path;
}

// The same under `bwrap --unshare-all` (user, ipc, pid, net, uts, cgroup namespaces), with the
// host read-only and a private /tmp, /proc and /dev as a sandbox would give it.
void BM_Baseline_Bwrap(benchmark::State& state, Handler handler) {
  if (skip_python(state, handler)) return;
  if (bwrap().empty()) {
    return state.SkipWithError("bwrap not installed (Debian package bubblewrap): baseline skipped");
  }
  std::vector<std::string> argv{bwrap(), "--unshare-all", "--die-with-parent"};
  argv.insert(argv.end(), {"--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"});
  argv.insert(argv.end(), {"--tmpfs", "/tmp"});
  // A checkout under /tmp (a CI clone) would be hidden by the private /tmp: bind it back.
  for (const std::string& dir : {handler_cwd(handler), std::string(BLIXARD_SOURCE_DIR)}) {
    if (dir.rfind("/tmp/", 0) == 0) argv.insert(argv.end(), {"--ro-bind", dir, dir});
  }
  argv.insert(argv.end(), {"--chdir", handler_cwd(handler), "--"});
  for (auto& a : handler_argv(handler)) argv.push_back(a);
  const auto env = bench::handler_env(handler == Handler::python);
  manual_loop(state, std::string(label(handler)) + ": bwrap --unshare-all", [&] {
    const auto t0 = Clock::now();
    bench::DirectInstance instance(argv, env, handler_cwd(handler));
    instance.wait_ready();
    instance.call(k_payload);
    return ms_since(t0);
  });
}

// `python3 -c pass` with the interpreter binary the cluster runs handlers with.
void BM_Baseline_PythonPass(benchmark::State& state) {
  if (skip_python(state, Handler::python)) return;
  const std::vector<std::string> argv{bench::python(), "-c", "pass"};
  manual_loop(state, "python: -c pass", [&] {
    const auto t0 = Clock::now();
    if (bench::spawn_and_wait(argv) != 0) throw std::runtime_error("python3 -c pass failed");
    return ms_since(t0);
  });
}

constexpr int k_native_runs = 30;
constexpr int k_python_runs = 12;

constexpr Handler k_native = Handler::native;
constexpr Handler k_dynamic = Handler::dynamic;
constexpr Handler k_python = Handler::python;

BENCHMARK_CAPTURE(BM_Baseline_Spawn, native, k_native)->UseManualTime()->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Baseline_Bwrap, native, k_native)->UseManualTime()->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Blixard_CreateAndInvoke, native, k_native, false)
    ->UseManualTime()
    ->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Blixard_CreateAndInvoke, native_netns, k_native, true)
    ->UseManualTime()
    ->Iterations(k_native_runs);
BENCHMARK(BM_Blixard_Create)->UseManualTime()->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Blixard_InvokeFromZero, native, k_native)
    ->UseManualTime()
    ->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Baseline_Spawn, dynamic, k_dynamic)
    ->UseManualTime()
    ->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Baseline_Bwrap, dynamic, k_dynamic)
    ->UseManualTime()
    ->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Blixard_CreateAndInvoke, dynamic, k_dynamic, false)
    ->UseManualTime()
    ->Iterations(k_native_runs);
BENCHMARK_CAPTURE(BM_Blixard_InvokeFromZero, dynamic, k_dynamic)
    ->UseManualTime()
    ->Iterations(k_native_runs);
BENCHMARK(BM_Baseline_PythonPass)->UseManualTime()->Iterations(k_python_runs);
BENCHMARK_CAPTURE(BM_Baseline_Spawn, python, k_python)->UseManualTime()->Iterations(k_python_runs);
BENCHMARK_CAPTURE(BM_Baseline_Bwrap, python, k_python)->UseManualTime()->Iterations(k_python_runs);
BENCHMARK_CAPTURE(BM_Blixard_CreateAndInvoke, python, k_python, false)
    ->UseManualTime()
    ->Iterations(k_python_runs);
BENCHMARK_CAPTURE(BM_Blixard_InvokeFromZero, python, k_python)
    ->UseManualTime()
    ->Iterations(k_python_runs);
BENCHMARK_CAPTURE(BM_Driver_PythonStart, zygote, true)->UseManualTime()->Iterations(k_python_runs);
BENCHMARK_CAPTURE(BM_Driver_PythonStart, fresh, false)->UseManualTime()->Iterations(k_python_runs);

void print_summary() {
  if (g_p50.empty()) return;
  std::printf("\nSummary (p50 ms; ratios against the baselines of the same runtime):\n");
  for (const char* runtime : {"native", "dynamic", "python"}) {
    const std::string rt = runtime;
    auto base = [&](const std::string& what) {
      auto it = g_p50.find(rt + ": " + what);
      return it == g_p50.end() ? 0.0 : it->second;
    };
    for (const auto& [label, p50] : g_p50) {
      if (label.rfind(rt, 0) != 0) continue;
      std::printf("  %-34s %8.2f", label.c_str(), p50);
      for (const char* b : {"bare spawn", "bwrap --unshare-all", "-c pass"}) {
        const double d = base(b);
        if (d > 0 && label != rt + ": " + b) std::printf("   %.2fx %s", p50 / d, b);
      }
      std::printf("\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (bwrap().empty()) {
    std::fprintf(stderr,
                 "coldstart_bench: bwrap not found: the bwrap baselines are skipped "
                 "(apt-get install bubblewrap)\n");
  }
  try {
    g_env = std::make_unique<Env>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "coldstart_bench: cannot set up the cluster: %s\n", e.what());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_summary();
  g_env.reset();  // closes the cluster (no handler outlives it) and removes its temp dir
  return 0;
}
