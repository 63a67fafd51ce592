// Function telemetry through its interface: counters, histogram percentiles within their error
// bound, the last-hour window, a checked Prometheus exposition, and the log and event long polls.
#include "control/telemetry.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <future>
#include <map>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

namespace {

using blixard::control::k_max_log_line;
using blixard::control::Outcome;
using blixard::control::Telemetry;
using blixard::control::TelemetryOptions;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// ---- A small checker of the Prometheus text format 0.0.4 ----

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> type
  std::vector<Sample> samples;
};

bool valid_metric_name(const std::string& s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':';
  });
}

// The family a sample belongs to (histogram samples carry a suffix).
std::string family_of(const Exposition& e, const std::string& name) {
  if (e.types.count(name)) return name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      auto base = name.substr(0, name.size() - s.size());
      if (e.types.count(base) && e.types.at(base) == "histogram") return base;
    }
  }
  return {};
}

// Parses the text, failing the test on anything malformed.
Exposition parse_exposition(const std::string& text) {
  Exposition e;
  std::map<std::string, bool> helped;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  EXPECT_TRUE(text.empty() || text.back() == '\n') << "the last line must end with a newline";
  while (std::getline(in, line)) {
    ++n;
    SCOPED_TRACE("line " + std::to_string(n) + ": " + line);
    EXPECT_FALSE(line.empty());
    if (line.rfind("# HELP ", 0) == 0) {
      auto rest = line.substr(7);
      auto name = rest.substr(0, rest.find(' '));
      EXPECT_TRUE(valid_metric_name(name));
      EXPECT_FALSE(helped[name]) << "HELP twice";
      EXPECT_EQ(e.types.count(name), 0u) << "HELP after TYPE or samples";
      helped[name] = true;
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream words(line.substr(7));
      std::string name, type;
      words >> name >> type;
      EXPECT_TRUE(valid_metric_name(name));
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram" ||
                  type == "summary" || type == "untyped")
          << type;
      EXPECT_EQ(e.types.count(name), 0u) << "TYPE twice";
      for (const auto& s : e.samples) EXPECT_NE(family_of(e, s.name), name) << "TYPE after samples";
      e.types[name] = type;
      continue;
    }
    EXPECT_NE(line[0], '#') << "unknown comment";
    Sample s;
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    EXPECT_TRUE(valid_metric_name(s.name)) << s.name;
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        auto eq = line.find('=', i);
        EXPECT_NE(eq, std::string::npos);
        if (eq == std::string::npos) return e;
        auto label = line.substr(i, eq - i);
        EXPECT_TRUE(valid_metric_name(label)) << label;
        i = eq + 1;
        EXPECT_EQ(line[i], '"');
        ++i;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\') {
            ++i;
            EXPECT_TRUE(line[i] == '\\' || line[i] == '"' || line[i] == 'n') << "bad escape";
            value += line[i] == 'n' ? '\n' : line[i];
          } else {
            value += line[i];
          }
          ++i;
        }
        EXPECT_LT(i, line.size()) << "unterminated label value";
        ++i;
        EXPECT_EQ(s.labels.count(label), 0u) << "label twice";
        s.labels[label] = value;
        if (i < line.size() && line[i] == ',') ++i;
      }
      EXPECT_EQ(line[i], '}');
      ++i;
    }
    EXPECT_EQ(line[i], ' ');
    auto value = line.substr(i + 1);
    EXPECT_EQ(value.find(' '), std::string::npos) << "no timestamps expected";
    if (value == "+Inf") {
      s.value = INFINITY;
    } else {
      std::size_t used = 0;
      s.value = std::stod(value, &used);
      EXPECT_EQ(used, value.size()) << value;
    }
    EXPECT_FALSE(family_of(e, s.name).empty()) << "sample before its TYPE";
    e.samples.push_back(std::move(s));
  }
  for (const auto& [name, type] : e.types) EXPECT_TRUE(helped[name]) << name << " has no HELP";
  return e;
}

// Histogram rules: per series, buckets cumulative with increasing le, ending at +Inf == _count.
void check_histograms(const Exposition& e) {
  for (const auto& [family, type] : e.types) {
    if (type != "histogram") continue;
    std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // series -> (le, n)
    std::map<std::string, double> counts;
    for (const auto& s : e.samples) {
      auto labels = s.labels;
      labels.erase("le");
      std::string series;
      for (const auto& [k, v] : labels) series += k + "=" + v + ",";
      if (s.name == family + "_bucket") {
        ASSERT_EQ(s.labels.count("le"), 1u);
        const auto& le = s.labels.at("le");
        buckets[series].emplace_back(le == "+Inf" ? INFINITY : std::stod(le), s.value);
      } else if (s.name == family + "_count") {
        counts[series] = s.value;
      }
    }
    EXPECT_FALSE(buckets.empty()) << family;
    for (const auto& [series, list] : buckets) {
      SCOPED_TRACE(family + " " + series);
      ASSERT_FALSE(list.empty());
      for (std::size_t i = 1; i < list.size(); ++i) {
        EXPECT_LT(list[i - 1].first, list[i].first) << "le not increasing";
        EXPECT_LE(list[i - 1].second, list[i].second) << "buckets not cumulative";
      }
      EXPECT_TRUE(std::isinf(list.back().first)) << "last bucket is not +Inf";
      ASSERT_EQ(counts.count(series), 1u) << "no _count";
      EXPECT_EQ(list.back().second, counts.at(series));
    }
  }
}

double value_of(const Exposition& e, const std::string& name,
                const std::map<std::string, std::string>& labels) {
  for (const auto& s : e.samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  ADD_FAILURE() << "no sample " << name;
  return -1;
}

blixard::v1::WatchEvent record(const std::string& kind, const std::string& name,
                               const std::string& reason) {
  blixard::v1::WatchEvent e;
  e.set_type("record");
  e.set_kind(kind);
  e.set_name(name);
  e.set_reason(reason);
  return e;
}

// ---- Counters and summaries ----

TEST(TelemetryTest, CountersFollowLambdaSemantics) {
  Telemetry t;
  t.record_invocation("f", Outcome::ok, microseconds(1000), true);
  t.record_invocation("f", Outcome::ok, microseconds(2000), false);
  t.record_invocation("f", Outcome::error, microseconds(3000), false);
  t.record_invocation("f", Outcome::timeout, microseconds(4000), false);
  t.record_invocation("f", Outcome::throttled, microseconds(0), false);
  t.record_invocation("g", Outcome::ok, microseconds(10), false);
  t.record_cold_start("f", microseconds(5000));

  auto m = t.metrics("f");
  EXPECT_EQ(m.function(), "f");
  EXPECT_EQ(m.invocations(), 4u);  // the throttled call never ran
  EXPECT_EQ(m.invocations_last_hour(), 4u);
  EXPECT_EQ(m.errors(), 2u);  // a timeout is an error too
  EXPECT_EQ(m.timeouts(), 1u);
  EXPECT_EQ(m.throttles(), 1u);
  EXPECT_EQ(m.cold_starts(), 1u);
  EXPECT_EQ(m.duration().count(), 4u);
  EXPECT_DOUBLE_EQ(m.duration().avg_ms(), 2.5);
  EXPECT_EQ(m.cold_start().count(), 1u);
  EXPECT_NEAR(m.cold_start().p50_ms(), 5.0, 5.0 / 64);
  EXPECT_EQ(t.metrics("g").invocations(), 1u);

  auto unknown = t.metrics("nobody");
  EXPECT_EQ(unknown.function(), "nobody");
  EXPECT_EQ(unknown.invocations(), 0u);
  EXPECT_EQ(unknown.duration().count(), 0u);
  EXPECT_EQ(unknown.duration().p99_ms(), 0.0);
}

TEST(TelemetryTest, GaugesAndForget) {
  Telemetry t;
  t.set_gauges("f", 3, 2, 1, {{"a", 2}, {"b", 1}});
  auto m = t.metrics("f");
  EXPECT_EQ(m.concurrent_executions(), 3u);
  EXPECT_EQ(m.instances_busy(), 2u);
  EXPECT_EQ(m.instances_warm(), 1u);
  EXPECT_EQ(m.instances_by_node().at("a"), 2u);
  EXPECT_EQ(m.instances_by_node().at("b"), 1u);
  t.set_gauges("f", 0, 0, 1, {{"a", 1}});
  m = t.metrics("f");
  EXPECT_EQ(m.concurrent_executions(), 0u);
  EXPECT_EQ(m.instances_by_node().size(), 1u);

  t.record_invocation("f", Outcome::ok, microseconds(5), false);
  t.append_log("f", "i1", "node1", "stdout", "hello");
  t.forget("f");
  EXPECT_EQ(t.metrics("f").invocations(), 0u);
  EXPECT_EQ(t.metrics("f").instances_warm(), 0u);
  EXPECT_EQ(t.logs("f", 0, milliseconds(0)).lines_size(), 0);
  EXPECT_EQ(t.prometheus().find("function=\"f\""), std::string::npos);
}

// Percentiles of known distributions land within the histogram's bound (a bucket is at most 1/64
// of its value wide; the midpoint is reported).
TEST(TelemetryTest, PercentilesWithinErrorBound) {
  Telemetry t;
  std::vector<std::int64_t> values;
  for (std::int64_t v = 1; v <= 100000; ++v) values.push_back(v);  // uniform 1 µs .. 100 ms
  std::mt19937 rng(7);
  std::shuffle(values.begin(), values.end(), rng);
  for (auto v : values) t.record_invocation("u", Outcome::ok, microseconds(v), false);

  auto d = t.metrics("u").duration();
  EXPECT_EQ(d.count(), 100000u);
  EXPECT_NEAR(d.avg_ms(), 50.0005, 1e-9);  // the sum is exact
  EXPECT_NEAR(d.p50_ms(), 50.0, 50.0 / 64);
  EXPECT_NEAR(d.p99_ms(), 99.0, 99.0 / 64);

  // Log-normal: compare with the exact order statistics.
  std::lognormal_distribution<double> dist(std::log(20000.0), 1.0);
  std::vector<std::int64_t> sample;
  for (int i = 0; i < 50000; ++i) sample.push_back(static_cast<std::int64_t>(dist(rng)) + 1);
  for (auto v : sample) t.record_cold_start("ln", microseconds(v));
  std::sort(sample.begin(), sample.end());
  auto exact = [&](double q) {
    auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sample.size())));
    return static_cast<double>(sample[rank - 1]) / 1000.0;
  };
  auto c = t.metrics("ln").cold_start();
  EXPECT_NEAR(c.p50_ms(), exact(0.50), exact(0.50) / 64 + 0.001);
  EXPECT_NEAR(c.p99_ms(), exact(0.99), exact(0.99) / 64 + 0.001);

  // Small values are exact; huge ones saturate rather than overflow.
  t.record_invocation("s", Outcome::ok, microseconds(7), false);
  EXPECT_DOUBLE_EQ(t.metrics("s").duration().p99_ms(), 0.007);
  t.record_invocation("big", Outcome::ok, std::chrono::hours(10), false);
  EXPECT_GT(t.metrics("big").duration().p50_ms(), 3600e3);
  EXPECT_LT(t.metrics("big").duration().p50_ms(), 4300e3);
}

TEST(TelemetryTest, LastHourWindowSlides) {
  auto now = std::make_shared<std::atomic<std::int64_t>>(0);  // seconds of fake time
  TelemetryOptions options;
  const auto start = Clock::now();
  options.clock = [now, start] { return start + std::chrono::seconds(now->load()); };
  Telemetry t(options);

  auto at = [&](std::int64_t seconds, int n) {
    now->store(seconds);
    for (int i = 0; i < n; ++i) t.record_invocation("f", Outcome::ok, microseconds(1), false);
  };
  at(0, 5);         // minute 0
  at(30 * 60, 7);   // minute 30
  at(59 * 60, 11);  // minute 59
  EXPECT_EQ(t.metrics("f").invocations_last_hour(), 23u);
  now->store(60 * 60);  // minute 60: minute 0 has left the window
  EXPECT_EQ(t.metrics("f").invocations_last_hour(), 18u);
  at(60 * 60 + 5, 2);  // reuses minute 0's slot
  EXPECT_EQ(t.metrics("f").invocations_last_hour(), 20u);
  now->store(89 * 60 + 59);  // minutes 30..89
  EXPECT_EQ(t.metrics("f").invocations_last_hour(), 20u);
  now->store(90 * 60);  // minutes 31..90: minute 30 has left
  EXPECT_EQ(t.metrics("f").invocations_last_hour(), 13u);
  now->store(5 * 3600);
  EXPECT_EQ(t.metrics("f").invocations_last_hour(), 0u);
  EXPECT_EQ(t.metrics("f").invocations(), 25u);
}

TEST(TelemetryTest, ConcurrentRecordingLosesNothing) {
  Telemetry t;
  constexpr int k_threads = 4, k_each = 20000;
  std::vector<std::thread> threads;
  for (int i = 0; i < k_threads; ++i) {
    threads.emplace_back([&t, i] {
      for (int j = 0; j < k_each; ++j) {
        t.record_invocation(j % 2 ? "a" : "b", Outcome::ok, microseconds(j + i), j % 100 == 0);
      }
    });
  }
  for (auto& th : threads) th.join();
  auto a = t.metrics("a"), b = t.metrics("b");
  EXPECT_EQ(a.invocations() + b.invocations(), std::uint64_t{k_threads * k_each});
  EXPECT_EQ(a.duration().count() + b.duration().count(), std::uint64_t{k_threads * k_each});
  EXPECT_EQ(a.invocations_last_hour() + b.invocations_last_hour(),
            std::uint64_t{k_threads * k_each});
  EXPECT_EQ(b.cold_starts(), std::uint64_t{k_threads * k_each / 100});
}

// ---- Prometheus ----

TEST(TelemetryTest, PrometheusTextParsesAndAgrees) {
  Telemetry t;
  EXPECT_EQ(t.prometheus(), "");  // no functions, no families
  // Off the bucket bounds: a value within 1/64 of a bound may be counted in the next bucket.
  for (int i = 1; i <= 100; ++i) {
    t.record_invocation("echo", Outcome::ok, milliseconds(i) + microseconds(300), i == 1);
  }
  t.record_invocation("echo", Outcome::error, milliseconds(2), false);
  t.record_invocation("echo", Outcome::throttled, microseconds(0), false);
  t.record_invocation("echo", Outcome::abandoned, microseconds(0), true);  // not an invocation
  t.record_cold_start("echo", milliseconds(3));
  const std::string odd = "we\"ird\\na\nme";  // label escaping
  t.record_invocation(odd, Outcome::timeout, std::chrono::seconds(2), false);
  t.set_gauges("echo", 2, 2, 1, {{"node-1", 3}});

  const auto text = t.prometheus();
  SCOPED_TRACE(text);
  auto e = parse_exposition(text);
  check_histograms(e);

  const std::map<std::string, std::string> echo{{"function", "echo"}};
  EXPECT_EQ(e.types.at("blixard_function_invocations_total"), "counter");
  EXPECT_EQ(e.types.at("blixard_function_duration_seconds"), "histogram");
  EXPECT_EQ(e.types.at("blixard_function_init_duration_seconds"), "histogram");
  EXPECT_EQ(e.types.at("blixard_function_concurrent_executions"), "gauge");
  EXPECT_EQ(e.types.at("blixard_function_instances"), "gauge");
  EXPECT_EQ(value_of(e, "blixard_function_invocations_total", echo), 101);
  EXPECT_EQ(value_of(e, "blixard_function_errors_total", echo), 1);
  EXPECT_EQ(value_of(e, "blixard_function_throttles_total", echo), 1);
  EXPECT_EQ(value_of(e, "blixard_function_abandoned_total", echo), 1);
  EXPECT_EQ(value_of(e, "blixard_function_timeouts_total", echo), 0);
  EXPECT_EQ(value_of(e, "blixard_function_cold_starts_total", echo), 1);
  EXPECT_EQ(value_of(e, "blixard_function_duration_seconds_count", echo), 101);
  EXPECT_NEAR(value_of(e, "blixard_function_duration_seconds_sum", echo), 5.082, 1e-9);
  // 1.3..100.3 ms and one 2 ms call: <= 10 ms holds 10 of them, <= 50 ms 50, <= 100 ms 100.
  EXPECT_EQ(value_of(e, "blixard_function_duration_seconds_bucket",
                     {{"function", "echo"}, {"le", "0.01"}}),
            10);
  EXPECT_EQ(value_of(e, "blixard_function_duration_seconds_bucket",
                     {{"function", "echo"}, {"le", "0.05"}}),
            50);
  EXPECT_EQ(value_of(e, "blixard_function_duration_seconds_bucket",
                     {{"function", "echo"}, {"le", "0.1"}}),
            100);
  EXPECT_EQ(value_of(e, "blixard_function_duration_seconds_bucket",
                     {{"function", "echo"}, {"le", "+Inf"}}),
            101);
  EXPECT_EQ(value_of(e, "blixard_function_init_duration_seconds_count", echo), 1);
  EXPECT_EQ(value_of(e, "blixard_function_concurrent_executions", echo), 2);
  EXPECT_EQ(value_of(e, "blixard_function_instances", {{"function", "echo"}, {"state", "busy"}}),
            2);
  EXPECT_EQ(value_of(e, "blixard_function_instances", {{"function", "echo"}, {"state", "warm"}}),
            1);
  EXPECT_EQ(
      value_of(e, "blixard_function_node_instances", {{"function", "echo"}, {"node", "node-1"}}),
      3);
  const std::map<std::string, std::string> weird{{"function", odd}};
  EXPECT_EQ(value_of(e, "blixard_function_timeouts_total", weird), 1);
  EXPECT_EQ(value_of(e, "blixard_function_errors_total", weird), 1);
}

// ---- Logs ----

TEST(TelemetryTest, LogsReturnAtOnceAndContinue) {
  Telemetry t;
  t.append_log("f", "i1", "node1", "stdout", "one");
  t.append_log("g", "i2", "node1", "stdout", "other function");
  t.append_log("f", "i1", "node1", "stderr", "two");
  auto chunk = t.logs("f", 0, milliseconds(0));
  ASSERT_EQ(chunk.lines_size(), 2);
  EXPECT_EQ(chunk.lines(0).text(), "one");
  EXPECT_EQ(chunk.lines(0).instance(), "i1");
  EXPECT_EQ(chunk.lines(1).stream(), "stderr");
  EXPECT_TRUE(chunk.lines(1).has_time());
  EXPECT_LT(chunk.lines(0).sequence(), chunk.lines(1).sequence());
  EXPECT_EQ(chunk.next(), chunk.lines(1).sequence());

  auto rest = t.logs("f", chunk.next(), milliseconds(0));
  EXPECT_EQ(rest.lines_size(), 0);
  EXPECT_EQ(rest.next(), chunk.next());
  t.append_log("f", "i1", "node1", "stdout", "three");
  rest = t.logs("f", chunk.next(), milliseconds(0));
  ASSERT_EQ(rest.lines_size(), 1);
  EXPECT_EQ(rest.lines(0).text(), "three");

  // From the end: only what comes next.
  auto tail = t.logs("f", -1, milliseconds(0));
  EXPECT_EQ(tail.lines_size(), 0);
  EXPECT_EQ(t.logs("f", tail.next(), milliseconds(0)).lines_size(), 0);
  // A position from a previous server life starts over.
  EXPECT_EQ(t.logs("f", 1000000, milliseconds(0)).lines_size(), 3);
}

TEST(TelemetryTest, LogLongPollWakesOnAppendAndTimesOut) {
  Telemetry t;
  const auto start = Clock::now();
  auto empty = t.logs("f", 0, milliseconds(100));
  EXPECT_GE(Clock::now() - start, milliseconds(100));
  EXPECT_EQ(empty.lines_size(), 0);
  EXPECT_EQ(empty.next(), 0);

  auto waiting =
      std::async(std::launch::async, [&] { return t.logs("f", 0, milliseconds(30000)); });
  EXPECT_EQ(waiting.wait_for(milliseconds(50)), std::future_status::timeout);
  t.append_log("other", "i", "node1", "stdout", "not this one");
  EXPECT_EQ(waiting.wait_for(milliseconds(50)), std::future_status::timeout);
  const auto appended = Clock::now();
  t.append_log("f", "i", "node1", "stdout", "wake up");
  ASSERT_EQ(waiting.wait_for(milliseconds(10000)), std::future_status::ready);
  EXPECT_LT(Clock::now() - appended, milliseconds(5000));
  auto chunk = waiting.get();
  ASSERT_EQ(chunk.lines_size(), 1);
  EXPECT_EQ(chunk.lines(0).text(), "wake up");
}

TEST(TelemetryTest, LogRingOverflowTruncationAndUtf8) {
  TelemetryOptions options;
  options.log_lines_per_function = 5;
  options.max_batch = 3;
  Telemetry t(options);
  for (int i = 0; i < 12; ++i)
    t.append_log("f", "i", "node1", "stdout", "line " + std::to_string(i));
  auto first = t.logs("f", 0, milliseconds(0));  // the oldest kept, in batches
  ASSERT_EQ(first.lines_size(), 3);
  EXPECT_EQ(first.lines(0).text(), "line 7");
  auto second = t.logs("f", first.next(), milliseconds(0));
  ASSERT_EQ(second.lines_size(), 2);
  EXPECT_EQ(second.lines(1).text(), "line 11");

  std::string big(40000, 'x');
  big.replace(k_max_log_line - 1, 3, "\xE2\x82\xAC");  // a 3-byte character across the cut
  t.append_log("f", "i", "node1", "stdout", big);
  t.append_log("f", "i", "node1", "stdout", "bad \xFF\xC0 bytes \xE2\x82");
  auto lines = t.logs("f", second.next(), milliseconds(0));
  ASSERT_EQ(lines.lines_size(), 2);
  EXPECT_EQ(lines.lines(0).text(), std::string(k_max_log_line - 1, 'x'));
  EXPECT_EQ(lines.lines(1).text(), "bad \xEF\xBF\xBD\xEF\xBF\xBD bytes \xEF\xBF\xBD\xEF\xBF\xBD");
  std::string wire;
  EXPECT_TRUE(lines.SerializeToString(&wire));
  blixard::v1::LogChunk back;
  EXPECT_TRUE(back.ParseFromString(wire));  // protobuf rejects invalid UTF-8 in strings
}

TEST(TelemetryTest, LogBytesBound) {
  TelemetryOptions options;
  options.log_bytes_per_function = 100 * 1024;
  Telemetry t(options);
  for (int i = 0; i < 100; ++i)
    t.append_log("f", "i", "node1", "stdout", std::string(10 * 1024, 'a'));
  auto chunk = t.logs("f", 0, milliseconds(0));
  EXPECT_EQ(chunk.lines_size(), 10);
}

TEST(TelemetryTest, CloseAndForgetWakeLongPolls) {
  Telemetry t;
  auto log_poll =
      std::async(std::launch::async, [&] { return t.logs("f", 0, milliseconds(30000)); });
  auto gone_poll =
      std::async(std::launch::async, [&] { return t.logs("gone", 0, milliseconds(30000)); });
  auto event_poll =
      std::async(std::launch::async, [&] { return t.events("", "", 0, milliseconds(30000)); });
  EXPECT_EQ(log_poll.wait_for(milliseconds(50)), std::future_status::timeout);
  EXPECT_EQ(event_poll.wait_for(milliseconds(0)), std::future_status::timeout);

  // Forgetting a function ends its followers; the others keep waiting.
  // (The poll registers its buffer on entry; retry forget until it has.)
  const auto deadline = Clock::now() + milliseconds(10000);
  while (gone_poll.wait_for(milliseconds(10)) != std::future_status::ready &&
         Clock::now() < deadline) {
    t.forget("gone");
  }
  ASSERT_EQ(gone_poll.wait_for(milliseconds(0)), std::future_status::ready);
  EXPECT_EQ(gone_poll.get().lines_size(), 0);
  EXPECT_EQ(log_poll.wait_for(milliseconds(0)), std::future_status::timeout);

  const auto closed = Clock::now();
  t.close();
  ASSERT_EQ(log_poll.wait_for(milliseconds(10000)), std::future_status::ready);
  ASSERT_EQ(event_poll.wait_for(milliseconds(10000)), std::future_status::ready);
  EXPECT_LT(Clock::now() - closed, milliseconds(5000));
  EXPECT_EQ(log_poll.get().lines_size(), 0);
  EXPECT_EQ(event_poll.get().events_size(), 0);
  // Closed: later polls do not wait.
  const auto after_close = Clock::now();
  t.logs("f", 0, milliseconds(30000));
  t.events("", "", 0, milliseconds(30000));
  EXPECT_LT(Clock::now() - after_close, milliseconds(5000));
}

// ---- Events ----

TEST(TelemetryTest, EventsSequenceFilterAndContinue) {
  Telemetry t;
  t.publish(record("functions", "a", "ScaledUp"));
  blixard::v1::WatchEvent put;
  put.set_type("put");
  put.set_kind("triggers");
  put.set_name("a-http");
  put.set_store_revision(42);
  t.publish(put);
  t.publish(record("functions", "b", "Placed"));
  t.publish(record("functions", "a", "ScaledDown"));

  auto all = t.events("", "", 0, milliseconds(0));
  ASSERT_EQ(all.events_size(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(all.events(i).sequence(), i + 1);
  EXPECT_TRUE(all.events(0).has_time());
  EXPECT_EQ(all.events(1).store_revision(), 42);
  EXPECT_EQ(all.next(), 4);

  auto a = t.events("functions", "a", 0, milliseconds(0));
  ASSERT_EQ(a.events_size(), 2);
  EXPECT_EQ(a.events(0).reason(), "ScaledUp");
  EXPECT_EQ(a.events(1).reason(), "ScaledDown");
  EXPECT_EQ(t.events("function", "a", 0, milliseconds(0)).events_size(), 2);  // singular works
  EXPECT_EQ(t.events("triggers", "", 0, milliseconds(0)).events_size(), 1);
  EXPECT_EQ(t.events("", "b", 0, milliseconds(0)).events_size(), 1);
  EXPECT_EQ(t.events("vms", "", 0, milliseconds(0)).events_size(), 0);

  auto later = t.events("functions", "a", 1, milliseconds(0));
  ASSERT_EQ(later.events_size(), 1);
  EXPECT_EQ(later.events(0).sequence(), 4);
  EXPECT_EQ(t.events("", "", -1, milliseconds(0)).next(), 4);
  EXPECT_EQ(t.events("", "", 99, milliseconds(0)).events_size(), 4);  // previous server life
}

TEST(TelemetryTest, EventLongPollWakesOnlyForMatches) {
  Telemetry t;
  const auto start = Clock::now();
  auto none = t.events("functions", "a", 0, milliseconds(100));
  EXPECT_GE(Clock::now() - start, milliseconds(100));
  EXPECT_EQ(none.events_size(), 0);

  auto waiting = std::async(std::launch::async,
                            [&] { return t.events("functions", "a", 0, milliseconds(30000)); });
  EXPECT_EQ(waiting.wait_for(milliseconds(50)), std::future_status::timeout);
  t.publish(record("functions", "b", "Placed"));  // filtered out: keeps waiting
  EXPECT_EQ(waiting.wait_for(milliseconds(50)), std::future_status::timeout);
  t.publish(record("functions", "a", "ColdStart"));
  ASSERT_EQ(waiting.wait_for(milliseconds(10000)), std::future_status::ready);
  auto got = waiting.get();
  ASSERT_EQ(got.events_size(), 1);
  EXPECT_EQ(got.events(0).reason(), "ColdStart");
  EXPECT_EQ(got.next(), 2);

  // A filtered poll that times out still advances past what it skipped.
  t.publish(record("functions", "b", "Placed"));
  auto skipped = t.events("functions", "a", got.next(), milliseconds(10));
  EXPECT_EQ(skipped.events_size(), 0);
  EXPECT_EQ(skipped.next(), 3);
}

TEST(TelemetryTest, EventRingOverflow) {
  TelemetryOptions options;
  options.events_kept = 10;
  options.max_batch = 4;
  Telemetry t(options);
  for (int i = 1; i <= 25; ++i) t.publish(record("functions", "f", std::to_string(i)));
  auto first = t.events("", "", 0, milliseconds(0));
  ASSERT_EQ(first.events_size(), 4);
  EXPECT_EQ(first.events(0).sequence(), 16);  // the oldest kept
  EXPECT_EQ(first.next(), 19);
  std::int64_t next = first.next();
  int seen = 4;
  while (true) {
    auto batch = t.events("", "", next, milliseconds(0));
    if (batch.events_size() == 0) break;
    seen += batch.events_size();
    next = batch.next();
  }
  EXPECT_EQ(seen, 10);
  EXPECT_EQ(next, 25);
}

}  // namespace
