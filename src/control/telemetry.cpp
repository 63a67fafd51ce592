// Function telemetry (see telemetry.hpp): lock-light counters and log-linear latency histograms
// per function, per-function log rings and one event ring, each with a long poll.
#include "control/telemetry.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <time.h>

#include <google/protobuf/util/time_util.h>

namespace blixard::control {
namespace {

using Clock = std::chrono::steady_clock;

// The minute ring needs minutes, not nanoseconds: the coarse monotonic clock (same clock as
// steady_clock, tick resolution) costs a few ns where steady_clock::now() costs ~20.
Clock::time_point coarse_now() {
  timespec ts{};
  if (::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) return Clock::now();
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
      std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
}

std::atomic<std::uint64_t> g_next_telemetry_id{1};

// HDR-style histogram of microseconds: values below 2^k_sub_bits are exact; above, each power of
// two is cut into 2^(k_sub_bits-1) equal buckets, so a bucket is at most 1/64 of its values wide
// (a reported midpoint is within 0.8%). Values saturate at 2^32 µs (71 minutes).
constexpr unsigned k_sub_bits = 7;
constexpr std::uint64_t k_sub_count = 1u << k_sub_bits;
constexpr std::uint64_t k_half = k_sub_count / 2;
constexpr std::uint64_t k_max_value = (std::uint64_t{1} << 32) - 1;

constexpr std::size_t bucket_index(std::uint64_t v) {
  v = std::min(v, k_max_value);
  if (v < k_sub_count) return static_cast<std::size_t>(v);
  const unsigned msb = 63 - static_cast<unsigned>(std::countl_zero(v));
  const unsigned shift = msb - (k_sub_bits - 1);
  return static_cast<std::size_t>(k_sub_count + (shift - 1) * k_half + ((v >> shift) - k_half));
}

constexpr std::size_t k_buckets = bucket_index(k_max_value) + 1;

constexpr std::uint64_t bucket_lower(std::size_t i) {
  if (i < k_sub_count) return i;
  const std::uint64_t j = i - k_sub_count;
  const unsigned shift = static_cast<unsigned>(j / k_half) + 1;
  return (j % k_half + k_half) << shift;
}

// Largest value the bucket holds.
constexpr std::uint64_t bucket_upper(std::size_t i) {
  return i + 1 < k_buckets ? bucket_lower(i + 1) - 1 : k_max_value;
}

static_assert(bucket_index(bucket_lower(1000)) == 1000);
static_assert(bucket_upper(k_buckets - 1) == k_max_value);

struct HistogramSnapshot {
  std::vector<std::uint64_t> counts;
  std::uint64_t count = 0;
  std::uint64_t sum_us = 0;

  // The midpoint of the bucket holding the q-quantile, in microseconds.
  double quantile(double q) const {
    if (count == 0) return 0;
    auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count)));
    rank = std::clamp<std::uint64_t>(rank, 1, count);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      seen += counts[i];
      if (seen >= rank) {
        return (static_cast<double>(bucket_lower(i)) + static_cast<double>(bucket_upper(i))) / 2;
      }
    }
    return static_cast<double>(k_max_value);
  }
};

class Histogram {
 public:
  void record(std::uint64_t us) {
    counts_[bucket_index(us)].fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(us, std::memory_order_relaxed);
  }

  // Prometheus buckets in one pass without copying: for each increasing bound (µs) the values
  // <= it, counting only buckets wholly at or below it (values are integer µs); then the total.
  struct Cumulative {
    std::vector<std::uint64_t> at_most;
    std::uint64_t count = 0;
    std::uint64_t sum_us = 0;
  };
  Cumulative cumulative(const std::vector<std::uint64_t>& le_us) const {
    Cumulative c;
    std::size_t i = 0;
    for (auto le : le_us) {
      for (; i < k_buckets && bucket_upper(i) <= le; ++i) {
        c.count += counts_[i].load(std::memory_order_relaxed);
      }
      c.at_most.push_back(c.count);
    }
    for (; i < k_buckets; ++i) c.count += counts_[i].load(std::memory_order_relaxed);
    c.sum_us = sum_us_.load(std::memory_order_relaxed);
    return c;
  }

  HistogramSnapshot snapshot() const {
    HistogramSnapshot s;
    s.counts.resize(k_buckets);
    for (std::size_t i = 0; i < k_buckets; ++i) {
      s.counts[i] = counts_[i].load(std::memory_order_relaxed);
      s.count += s.counts[i];
    }
    // Read after the buckets, so the sum may include a value the buckets missed; never the reverse.
    s.sum_us = sum_us_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  std::array<std::atomic<std::uint64_t>, k_buckets> counts_{};
  std::atomic<std::uint64_t> sum_us_{0};
};

// Invocations per minute of the last hour: each slot packs (minute mod 2^24, count) in one word so
// recording is a fetch_add in the common case and a CAS when the slot's minute rolls over.
class MinuteRing {
 public:
  static constexpr std::size_t k_slots = 60;

  void add(std::int64_t minute) {
    auto& slot = slots_[static_cast<std::size_t>(minute) % k_slots];
    const std::uint64_t tag = tag_of(minute);
    std::uint64_t old = slot.load(std::memory_order_relaxed);
    while (true) {
      if ((old >> k_count_bits) == tag) {
        slot.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      if (slot.compare_exchange_weak(old, (tag << k_count_bits) | 1, std::memory_order_relaxed)) {
        return;
      }
    }
  }

  // Invocations in the minute `minute` and the 59 before it.
  std::uint64_t last_hour(std::int64_t minute) const {
    std::uint64_t total = 0;
    for (std::int64_t m = minute - static_cast<std::int64_t>(k_slots) + 1; m <= minute; ++m) {
      if (m < 0) continue;
      const std::uint64_t v =
          slots_[static_cast<std::size_t>(m) % k_slots].load(std::memory_order_relaxed);
      if ((v >> k_count_bits) == tag_of(m)) total += v & k_count_mask;
    }
    return total;
  }

 private:
  static constexpr unsigned k_count_bits = 40;
  static constexpr std::uint64_t k_count_mask = (std::uint64_t{1} << k_count_bits) - 1;
  // Minute 0 is tagged 1 so a zeroed slot matches no minute.
  static std::uint64_t tag_of(std::int64_t minute) {
    return (static_cast<std::uint64_t>(minute) & ((std::uint64_t{1} << 24) - 1)) + 1;
  }

  std::array<std::atomic<std::uint64_t>, k_slots> slots_{};
};

struct FunctionStats {
  std::atomic<std::uint64_t> invocations{0}, errors{0}, throttles{0}, timeouts{0}, cold_starts{0},
      abandoned{0};
  MinuteRing per_minute;
  Histogram duration;
  Histogram init;
  std::atomic<std::uint32_t> concurrent{0}, busy{0}, warm{0};
  std::mutex nodes_mutex;
  std::map<std::string, std::uint32_t> by_node;
};

struct LogBuffer {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<v1::LogLine> lines;  // sequences increasing
  std::size_t bytes = 0;
  bool forgotten = false;  // the function was deleted: wake and end long polls
};

// Replaces invalid UTF-8 (protobuf strings must be valid) with U+FFFD.
std::string sanitize_utf8(std::string text) {
  auto valid_at = [&](std::size_t i) -> std::size_t {  // length of a valid sequence, or 0
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
    const unsigned char c = b(0);
    if (c < 0x80) return 1;
    std::size_t n;
    std::uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 2, cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3, cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4, cp = c & 0x07;
    } else {
      return 0;
    }
    if (i + n > text.size()) return 0;
    for (std::size_t k = 1; k < n; ++k) {
      if ((b(k) & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (b(k) & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return 0;
    }
    return n;
  };
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t n = valid_at(i);
    if (n == 0) break;
    i += n;
  }
  if (i == text.size()) return text;  // the common case: nothing to fix
  std::string out = text.substr(0, i);
  while (i < text.size()) {
    const std::size_t n = valid_at(i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(text, i, n);
      i += n;
    }
  }
  return out;
}

void truncate_utf8(std::string& text, std::size_t limit) {
  if (text.size() <= limit) return;
  std::size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  text.resize(cut);
}

bool kind_matches(const std::string& want, const std::string& have) {
  // "function" and "functions" both name the functions kind.
  return want.empty() || want == have || want + "s" == have;
}

void append_number(std::string& out, double v) {
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  std::array<char, 64> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  out.append(buf.data(), end);
}

void append_number(std::string& out, std::uint64_t v) { out += std::to_string(v); }

// Label values escape backslash, double quote and newline (text format 0.0.4).
void append_label_value(std::string& out, const std::string& v) {
  out += '"';
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  out += '"';
}

void append_family(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

// Bucket bounds (seconds) of the exposed histograms, coarse cuts of the fine histogram.
constexpr std::array<double, 16> k_duration_le{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5,   1,      2.5,   5,    10,    30,   60,  300};
constexpr std::array<double, 13> k_init_le{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25,  0.5,    1,     2.5,  5,     10};

v1::LatencySummary summarize(const HistogramSnapshot& h) {
  v1::LatencySummary s;
  s.set_count(h.count);
  if (h.count == 0) return s;
  s.set_avg_ms(static_cast<double>(h.sum_us) / static_cast<double>(h.count) / 1000.0);
  s.set_p50_ms(h.quantile(0.50) / 1000.0);
  s.set_p99_ms(h.quantile(0.99) / 1000.0);
  return s;
}

}  // namespace

struct Telemetry::Impl {
  explicit Impl(TelemetryOptions o) : options(std::move(o)) {
    if (!options.clock) options.clock = coarse_now;
    epoch = options.clock();
    options.events_kept = std::max<std::size_t>(options.events_kept, 1);
    options.log_lines_per_function = std::max<std::size_t>(options.log_lines_per_function, 1);
    options.max_batch = std::max<std::size_t>(options.max_batch, 1);
  }

  std::int64_t minute_now() const {
    auto since = options.clock() - epoch;
    return std::chrono::duration_cast<std::chrono::minutes>(since).count();
  }

  template <class T>
  std::shared_ptr<T> find(std::unordered_map<std::string, std::shared_ptr<T>>& map,
                          const std::string& function, bool create) {
    {
      std::shared_lock lock(map_mutex);
      auto it = map.find(function);
      if (it != map.end()) return it->second;
    }
    if (!create) return nullptr;
    std::unique_lock lock(map_mutex);
    auto& slot = map[function];
    if (!slot) slot = std::make_shared<T>();
    return slot;
  }

  // The hot path: each thread remembers the last function it recorded for, valid until a
  // forget() (the only thing that drops map entries) bumps `generation`, so a run of calls for
  // one function takes no lock at all.
  FunctionStats& stats_of(const std::string& f) {
    struct Cached {
      std::uint64_t owner = 0;
      std::uint64_t generation = 0;
      std::string function;
      std::shared_ptr<FunctionStats> stats;
    };
    thread_local Cached cached;
    const std::uint64_t gen = generation.load(std::memory_order_acquire);
    if (cached.owner == id && cached.generation == gen && cached.function == f) {
      return *cached.stats;
    }
    cached.stats = find(stats, f, true);
    cached.owner = id;
    cached.generation = gen;
    cached.function = f;
    return *cached.stats;
  }
  std::shared_ptr<LogBuffer> logs_of(const std::string& f) { return find(logs, f, true); }

  TelemetryOptions options;
  Clock::time_point epoch;

  // One lock for both maps: taken shared on every record, exclusive only to add or forget.
  std::shared_mutex map_mutex;
  std::unordered_map<std::string, std::shared_ptr<FunctionStats>> stats;
  std::unordered_map<std::string, std::shared_ptr<LogBuffer>> logs;
  // Global, so a follower's position stays valid across a function's delete and re-create.
  std::atomic<std::int64_t> log_sequence{0};

  std::mutex events_mutex;
  std::condition_variable events_changed;
  std::deque<v1::WatchEvent> events;  // sequences contiguous
  std::int64_t event_sequence = 0;

  std::atomic<bool> closed{false};
  const std::uint64_t id = g_next_telemetry_id.fetch_add(1);  // tells instances apart in caches
  std::atomic<std::uint64_t> generation{0};                   // bumped by forget()
};

Telemetry::Telemetry(TelemetryOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

Telemetry::~Telemetry() { close(); }

void Telemetry::record_invocation(const std::string& function, Outcome outcome,
                                  std::chrono::microseconds duration, bool cold_start) {
  auto* s = &impl_->stats_of(function);
  constexpr auto relaxed = std::memory_order_relaxed;
  if (outcome == Outcome::throttled) {
    s->throttles.fetch_add(1, relaxed);
    return;
  }
  if (outcome == Outcome::abandoned) {
    s->abandoned.fetch_add(1, relaxed);
    return;
  }
  s->invocations.fetch_add(1, relaxed);
  if (outcome != Outcome::ok) s->errors.fetch_add(1, relaxed);
  if (outcome == Outcome::timeout) s->timeouts.fetch_add(1, relaxed);
  if (cold_start) s->cold_starts.fetch_add(1, relaxed);
  s->duration.record(static_cast<std::uint64_t>(std::max<std::int64_t>(duration.count(), 0)));
  s->per_minute.add(impl_->minute_now());
}

void Telemetry::record_cold_start(const std::string& function, std::chrono::microseconds init) {
  impl_->stats_of(function).init.record(
      static_cast<std::uint64_t>(std::max<std::int64_t>(init.count(), 0)));
}

void Telemetry::set_gauges(const std::string& function, std::uint32_t concurrent,
                           std::uint32_t busy, std::uint32_t warm,
                           const std::map<std::string, std::uint32_t>& by_node) {
  auto* s = &impl_->stats_of(function);
  s->concurrent.store(concurrent, std::memory_order_relaxed);
  s->busy.store(busy, std::memory_order_relaxed);
  s->warm.store(warm, std::memory_order_relaxed);
  std::lock_guard lock(s->nodes_mutex);
  if (s->by_node != by_node) s->by_node = by_node;
}

void Telemetry::forget(const std::string& function) {
  std::shared_ptr<LogBuffer> logs;
  {
    std::unique_lock lock(impl_->map_mutex);
    if (impl_->stats.erase(function) != 0)
      impl_->generation.fetch_add(1, std::memory_order_release);
    auto it = impl_->logs.find(function);
    if (it != impl_->logs.end()) {
      logs = std::move(it->second);
      impl_->logs.erase(it);
    }
  }
  if (logs) {
    std::lock_guard lock(logs->mutex);
    logs->forgotten = true;
    logs->changed.notify_all();
  }
}

void Telemetry::append_log(const std::string& function, const std::string& instance,
                           const std::string& node, const std::string& stream, std::string text) {
  truncate_utf8(text, k_max_log_line);
  text = sanitize_utf8(std::move(text));
  truncate_utf8(text, k_max_log_line);  // replacement characters are longer than what they replace

  v1::LogLine line;
  line.set_instance(sanitize_utf8(instance));
  line.set_node(node);
  line.set_stream(stream);
  line.set_text(std::move(text));
  *line.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();

  auto buffer = impl_->logs_of(function);
  std::lock_guard lock(buffer->mutex);
  line.set_sequence(++impl_->log_sequence);
  buffer->bytes += line.text().size();
  buffer->lines.push_back(std::move(line));
  while (buffer->lines.size() > impl_->options.log_lines_per_function ||
         (buffer->bytes > impl_->options.log_bytes_per_function && buffer->lines.size() > 1)) {
    buffer->bytes -= buffer->lines.front().text().size();
    buffer->lines.pop_front();
  }
  buffer->changed.notify_all();
}

void Telemetry::publish(v1::WatchEvent event) {
  if (!event.has_time()) {
    *event.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  }
  std::lock_guard lock(impl_->events_mutex);
  event.set_sequence(++impl_->event_sequence);
  impl_->events.push_back(std::move(event));
  while (impl_->events.size() > impl_->options.events_kept) impl_->events.pop_front();
  impl_->events_changed.notify_all();
}

v1::FunctionMetrics Telemetry::metrics(const std::string& function) const {
  v1::FunctionMetrics m;
  m.set_function(function);
  auto s = impl_->find(impl_->stats, function, false);
  if (!s) return m;
  constexpr auto relaxed = std::memory_order_relaxed;
  m.set_invocations(s->invocations.load(relaxed));
  m.set_invocations_last_hour(s->per_minute.last_hour(impl_->minute_now()));
  m.set_errors(s->errors.load(relaxed));
  m.set_throttles(s->throttles.load(relaxed));
  m.set_timeouts(s->timeouts.load(relaxed));
  m.set_abandoned(s->abandoned.load(relaxed));
  m.set_cold_starts(s->cold_starts.load(relaxed));
  *m.mutable_cold_start() = summarize(s->init.snapshot());
  *m.mutable_duration() = summarize(s->duration.snapshot());
  m.set_concurrent_executions(s->concurrent.load(relaxed));
  m.set_instances_busy(s->busy.load(relaxed));
  m.set_instances_warm(s->warm.load(relaxed));
  std::lock_guard lock(s->nodes_mutex);
  for (const auto& [node, n] : s->by_node) (*m.mutable_instances_by_node())[node] = n;
  return m;
}

std::string Telemetry::prometheus() const {
  std::vector<std::pair<std::string, std::shared_ptr<FunctionStats>>> all;
  {
    std::shared_lock lock(impl_->map_mutex);
    all.assign(impl_->stats.begin(), impl_->stats.end());
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  constexpr auto relaxed = std::memory_order_relaxed;

  std::string out;
  out.reserve(512 + all.size() * 3072);
  auto sample = [&](const char* name, const std::string& function, auto value,
                    const char* extra_label = nullptr, const std::string* extra_value = nullptr) {
    out += name;
    out += "{function=";
    append_label_value(out, function);
    if (extra_label != nullptr) {
      out += ',';
      out += extra_label;
      out += '=';
      append_label_value(out, *extra_value);
    }
    out += "} ";
    append_number(out, value);
    out += '\n';
  };
  auto counter = [&](const char* name, const char* help,
                     std::atomic<std::uint64_t> FunctionStats::*field) {
    if (all.empty()) return;
    append_family(out, name, "counter", help);
    for (const auto& [function, s] : all) sample(name, function, ((*s).*field).load(relaxed));
  };
  auto histogram = [&](const char* name, const char* help, Histogram FunctionStats::*field,
                       const auto& bounds) {
    if (all.empty()) return;
    append_family(out, name, "histogram", help);
    const std::string bucket = std::string(name) + "_bucket";
    std::vector<std::string> le_texts;
    std::vector<std::uint64_t> le_us;
    for (double le : bounds) {
      append_number(le_texts.emplace_back(), le);
      le_us.push_back(static_cast<std::uint64_t>(std::llround(le * 1e6)));
    }
    for (std::size_t i = 0; i < all.size(); ++i) {
      // One pass per series, so its _bucket and _count agree.
      const auto h = ((*all[i].second).*field).cumulative(le_us);
      for (std::size_t b = 0; b < le_us.size(); ++b) {
        sample(bucket.c_str(), all[i].first, h.at_most[b], "le", &le_texts[b]);
      }
      const std::string inf = "+Inf";
      sample(bucket.c_str(), all[i].first, h.count, "le", &inf);
      sample((std::string(name) + "_sum").c_str(), all[i].first,
             static_cast<double>(h.sum_us) / 1e6);
      sample((std::string(name) + "_count").c_str(), all[i].first, h.count);
    }
  };

  counter("blixard_function_invocations_total", "Invocations that ran (throttled calls excluded).",
          &FunctionStats::invocations);
  counter("blixard_function_errors_total", "Invocations that failed, timeouts included.",
          &FunctionStats::errors);
  counter("blixard_function_throttles_total",
          "Calls refused past maxInstances or concurrentExecutions.", &FunctionStats::throttles);
  counter("blixard_function_abandoned_total",
          "Calls not started because their caller had gone while they waited for an instance.",
          &FunctionStats::abandoned);
  counter("blixard_function_timeouts_total", "Invocations that ran past their timeout.",
          &FunctionStats::timeouts);
  counter("blixard_function_cold_starts_total", "Invocations that waited for a new instance.",
          &FunctionStats::cold_starts);
  histogram("blixard_function_duration_seconds", "Request-to-response time of invocations.",
            &FunctionStats::duration, k_duration_le);
  histogram("blixard_function_init_duration_seconds",
            "Create-to-ready time of new instances (cold starts).", &FunctionStats::init,
            k_init_le);
  if (!all.empty()) {
    append_family(out, "blixard_function_concurrent_executions", "gauge",
                  "Invocations in flight now.");
    for (const auto& [function, s] : all) {
      sample("blixard_function_concurrent_executions", function,
             std::uint64_t{s->concurrent.load(relaxed)});
    }
    append_family(out, "blixard_function_instances", "gauge",
                  "Instances by state: busy (serving) or warm (idle).");
    const std::string warm = "warm", busy = "busy";
    for (const auto& [function, s] : all) {
      sample("blixard_function_instances", function, std::uint64_t{s->busy.load(relaxed)}, "state",
             &busy);
      sample("blixard_function_instances", function, std::uint64_t{s->warm.load(relaxed)}, "state",
             &warm);
    }
    append_family(out, "blixard_function_node_instances", "gauge",
                  "Instances (busy and warm) per node.");
    for (const auto& [function, s] : all) {
      std::lock_guard lock(s->nodes_mutex);
      for (const auto& [node, n] : s->by_node) {
        sample("blixard_function_node_instances", function, std::uint64_t{n}, "node", &node);
      }
    }
  }
  return out;
}

v1::LogChunk Telemetry::logs(const std::string& function, std::int64_t after,
                             std::chrono::milliseconds wait) const {
  auto buffer = impl_->logs_of(function);
  const auto deadline =
      Clock::now() + std::clamp(wait, std::chrono::milliseconds(0), impl_->options.max_wait);
  v1::LogChunk chunk;
  std::unique_lock lock(buffer->mutex);
  const std::int64_t newest = impl_->log_sequence.load();
  if (after < 0) after = newest;
  if (after > newest) after = 0;  // a position from a previous server life
  while (true) {
    auto it = std::upper_bound(
        buffer->lines.begin(), buffer->lines.end(), after,
        [](std::int64_t a, const v1::LogLine& line) { return a < line.sequence(); });
    for (; it != buffer->lines.end() &&
           static_cast<std::size_t>(chunk.lines_size()) < impl_->options.max_batch;
         ++it) {
      *chunk.add_lines() = *it;
    }
    if (chunk.lines_size() > 0 || impl_->closed || buffer->forgotten) break;
    if (buffer->changed.wait_until(lock, deadline) == std::cv_status::timeout) {
      // One last look: a line may have come with the timeout.
      if (!buffer->lines.empty() && buffer->lines.back().sequence() > after) continue;
      break;
    }
  }
  chunk.set_next(chunk.lines_size() > 0 ? chunk.lines(chunk.lines_size() - 1).sequence() : after);
  return chunk;
}

v1::WatchEventList Telemetry::events(const std::string& kind, const std::string& name,
                                     std::int64_t after, std::chrono::milliseconds wait) const {
  const auto deadline =
      Clock::now() + std::clamp(wait, std::chrono::milliseconds(0), impl_->options.max_wait);
  v1::WatchEventList list;
  std::unique_lock lock(impl_->events_mutex);
  const std::int64_t newest = impl_->event_sequence;
  if (after < 0) after = newest;
  if (after > newest) after = 0;
  // Scan from `after`; filtered-out events still advance `next`, so a poll need not see them again.
  std::int64_t scanned = after;
  while (true) {
    auto& ring = impl_->events;
    const std::int64_t first = ring.empty() ? impl_->event_sequence + 1 : ring.front().sequence();
    const std::int64_t from = std::max(scanned + 1, first);
    for (auto i = static_cast<std::size_t>(from - first);
         i < ring.size() && static_cast<std::size_t>(list.events_size()) < impl_->options.max_batch;
         ++i) {
      const auto& e = ring[i];
      scanned = e.sequence();
      if (kind_matches(kind, e.kind()) && (name.empty() || name == e.name())) {
        *list.add_events() = e;
      }
    }
    if (list.events_size() > 0 || impl_->closed) break;
    if (impl_->events_changed.wait_until(lock, deadline) == std::cv_status::timeout) {
      if (impl_->event_sequence > scanned) continue;
      break;
    }
  }
  list.set_next(scanned);
  return list;
}

void Telemetry::close() {
  impl_->closed = true;
  {
    std::lock_guard lock(impl_->events_mutex);
    impl_->events_changed.notify_all();
  }
  std::vector<std::shared_ptr<LogBuffer>> buffers;
  {
    std::shared_lock lock(impl_->map_mutex);
    for (const auto& [name, b] : impl_->logs) buffers.push_back(b);
  }
  for (auto& b : buffers) {
    std::lock_guard lock(b->mutex);
    b->changed.notify_all();
  }
}

}  // namespace blixard::control
