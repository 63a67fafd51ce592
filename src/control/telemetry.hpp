// What the control plane observes about functions: counters and latency summaries per function
// (for `function metrics` and /metrics), the lines instances write (for `function logs`), and an
// event stream of object changes and records such as scale-ups (for `function watch`).
// Thread-safe; recording is cheap (no I/O) because it sits on the invocation path.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "blixard/v1/api.pb.h"
#include "blixard/v1/event.pb.h"

namespace blixard::control {

// How a call ended: ran (ok, error, timeout), refused at admission (throttled), or dropped
// before it started because its caller had gone (abandoned).
enum class Outcome { ok, error, timeout, throttled, abandoned };

struct TelemetryOptions {
  std::size_t log_lines_per_function = 10000;     // older lines are dropped
  std::size_t log_bytes_per_function = 8u << 20;  // ... and past this many bytes of text
  std::size_t events_kept = 10000;                // older events are dropped
  std::size_t max_batch = 1000;                   // most lines/events one long poll returns
  std::chrono::milliseconds max_wait{std::chrono::minutes(5)};  // longest a long poll waits
  // Time source of the last-hour window (tests move it); empty: steady_clock.
  std::function<std::chrono::steady_clock::time_point()> clock;
};

// Longer log lines are cut to this many bytes (at a UTF-8 boundary).
inline constexpr std::size_t k_max_log_line = std::size_t{16} * 1024;

class Telemetry {
 public:
  explicit Telemetry(TelemetryOptions options = {});
  ~Telemetry();

  // One finished (or refused) invocation. `duration` is request-to-response; zero for throttled.
  // As Lambda counts: a throttled call is not an invocation; a timeout is also an error;
  // `cold_start` counts invocations that waited for a new instance.
  void record_invocation(const std::string& function, Outcome outcome,
                         std::chrono::microseconds duration, bool cold_start);
  // A new instance became ready after `init` (create-to-ready): the init-duration histogram.
  void record_cold_start(const std::string& function, std::chrono::microseconds init);
  // Current in-flight calls and instances of a function (the pool reports them on change).
  void set_gauges(const std::string& function, std::uint32_t concurrent, std::uint32_t busy,
                  std::uint32_t warm, const std::map<std::string, std::uint32_t>& by_node);
  // Forgets a deleted function's metrics and logs.
  void forget(const std::string& function);

  // One line an instance (on `node`) wrote, without its newline. Invalid UTF-8 becomes U+FFFD.
  void append_log(const std::string& function, const std::string& instance, const std::string& node,
                  const std::string& stream, std::string text);

  // A record (type "record") or an object change (type "put"/"delete"); the sequence and time
  // are filled in here.
  void publish(v1::WatchEvent event);

  v1::FunctionMetrics metrics(const std::string& function) const;
  // All functions in the Prometheus text exposition format.
  std::string prometheus() const;

  // Long polls, see detail::Backend: what came after `after` at once, else wait up to `wait`
  // for something new. `after` < 0 starts at the end (only new ones); an `after` from a previous
  // server life (past the newest sequence) starts from the oldest kept. `kind`/`name` empty: all.
  v1::LogChunk logs(const std::string& function, std::int64_t after,
                    std::chrono::milliseconds wait) const;
  v1::WatchEventList events(const std::string& kind, const std::string& name, std::int64_t after,
                            std::chrono::milliseconds wait) const;

  // Wakes every long poll (shutdown).
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace blixard::control
