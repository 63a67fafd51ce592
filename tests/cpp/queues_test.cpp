// Durable queues (control/queues.hpp) over the SQLite log, and their delivery to functions
// (control/deliveries.hpp) through an Invoke seam standing in for the function pools: the log's
// conformance suite, acknowledged sends surviving kill -9, visibility, receipts, backoff and dead
// letters, and the pollers' batches, partial failures, throttles, events and async outcomes.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <deque>
#include <set>

#include "control/deliveries.hpp"
#include "control/queues.hpp"
#include "queue_log_conformance.hpp"

namespace blixard::store::testing {
namespace {

std::unique_ptr<QueueLog> open_log(const std::string& dir) {
  return open_sqlite_queue_log(dir + "/queues.db");
}

// The Store's suite comes with TempDir; the store's own test runs it.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(StoreConformance);

INSTANTIATE_TEST_SUITE_P(Sqlite, QueueLogConformance,
                         ::testing::Values(QueueLogBackend{"sqlite", open_log}), log_name);

TEST(SqliteQueueLog, OpenErrorNamesThePath) {
  try {
    open_sqlite_queue_log("/proc/no/such/queues.db");
    FAIL() << "opened a log under /proc";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_NE(e.message().find("/proc/no/such/queues.db"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace blixard::store::testing

namespace blixard::control {
namespace {

using namespace std::chrono_literals;
using store::testing::TempDir;

QueueOptions fast_options() {
  QueueOptions o;
  o.retry_base = 50ms;
  o.retry_max = 200ms;
  return o;
}

v1::QueueSpec spec(std::uint32_t max_receives = 0, const std::string& dead = {},
                   std::chrono::milliseconds visibility = {}) {
  v1::QueueSpec s;
  s.set_max_receives(max_receives);
  s.set_dead_letter_queue(dead);
  if (visibility.count() > 0)
    s.mutable_visibility_timeout()->set_nanos(
        static_cast<std::int32_t>(visibility.count() * 1000000));
  return s;
}

std::unique_ptr<Queues> open_queues(const TempDir& dir) {
  return std::make_unique<Queues>(store::open_sqlite_queue_log(dir.path() + "/queues.db"),
                                  fast_options());
}

TEST(Queues, SendThenReceiveThenAcknowledge) {
  TempDir dir;
  auto q = open_queues(dir);
  q->declare("orders", spec());
  const auto ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const auto before = ms();
  auto ids = q->send("orders", {"a", "b", "c"});
  const auto after = ms();
  ASSERT_EQ(ids.size(), 3U);
  // To the millisecond: a handler measures its wait against it (SQS's SentTimestamp).
  const auto sent = q->peek("orders", 1).at(0).sent_at_ms;
  EXPECT_GE(sent, before);
  EXPECT_LE(sent, after);
  EXPECT_EQ(q->status("orders").depth(), 3U);
  auto got = q->receive("orders", 2, 10s, 0ms);
  ASSERT_EQ(got.size(), 2U);
  EXPECT_EQ(got[0].body, "a");
  EXPECT_EQ(got[0].receives, 1U);
  EXPECT_EQ(q->status("orders").in_flight(), 2U);
  EXPECT_EQ(q->status("orders").depth(), 1U);
  // Hidden while in flight: the next receive takes the third only.
  auto rest = q->receive("orders", 10, 10s, 0ms);
  ASSERT_EQ(rest.size(), 1U);
  EXPECT_EQ(rest[0].body, "c");
  EXPECT_EQ(q->acknowledge("orders", {got[0].receipt, got[1].receipt, "bogus", "1.99"}), 2U);
  EXPECT_EQ(q->acknowledge("orders", {got[0].receipt}), 0U);  // twice: nothing more
  EXPECT_EQ(q->status("orders").in_flight(), 1U);
}

TEST(Queues, UnknownQueueAndOversizedMessageAreClearErrors) {
  TempDir dir;
  auto q = open_queues(dir);
  try {
    q->send("nope", {"x"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::not_found);
    EXPECT_NE(e.message().find("blixard queue create nope"), std::string::npos) << e.message();
  }
  q->declare("q", spec());
  try {
    q->send("q", {"ok", std::string(300 * 1024, 'x')});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::payload_too_large);
    EXPECT_EQ(e.field(), "data");
  }
  EXPECT_EQ(q->status("q").depth(), 0U);  // all or nothing
}

TEST(Queues, AnExpiredVisibilityTimeoutDeliversAgainAndTheOldReceiptIsStale) {
  TempDir dir;
  auto q = open_queues(dir);
  q->declare("q", spec());
  q->send("q", {"m"});
  auto first = q->receive("q", 1, 100ms, 0ms);
  ASSERT_EQ(first.size(), 1U);
  // Comes back after the visibility timeout plus the first retry's backoff.
  auto second = q->receive("q", 1, 10s, 5s);
  ASSERT_EQ(second.size(), 1U);
  EXPECT_EQ(second[0].id, first[0].id);
  EXPECT_EQ(second[0].receives, 2U);
  EXPECT_EQ(q->acknowledge("q", {first[0].receipt}), 0U);  // the old delivery's receipt
  EXPECT_EQ(q->acknowledge("q", {second[0].receipt}), 1U);
}

TEST(Queues, FailedDeliveriesBackOffThenGoToTheDeadLetterQueue) {
  TempDir dir;
  auto q = open_queues(dir);
  q->declare("dead", spec());
  q->declare("q", spec(2, "dead"));
  q->send("q", {"poison"});
  auto a = q->receive("q", 1, 10s, 0ms);
  ASSERT_EQ(a.size(), 1U);
  EXPECT_TRUE(q->fail("q", {a[0].receipt}, true).empty());
  EXPECT_EQ(q->status("q").depth(), 1U);
  EXPECT_TRUE(q->receive("q", 1, 10s, 0ms).empty());  // in its backoff
  auto b = q->receive("q", 1, 10s, 5s);
  ASSERT_EQ(b.size(), 1U);
  EXPECT_EQ(b[0].receives, 2U);
  auto dead = q->fail("q", {b[0].receipt}, true);
  ASSERT_EQ(dead.size(), 1U);
  EXPECT_EQ(q->status("q").depth(), 0U);
  EXPECT_EQ(q->status("q").dead_lettered(), 1U);
  auto letters = q->peek("dead", 10);
  ASSERT_EQ(letters.size(), 1U);
  EXPECT_EQ(letters[0].body, "poison");
}

TEST(Queues, AThrottledDeliveryIsNotCounted) {
  TempDir dir;
  auto q = open_queues(dir);
  q->declare("q", spec(1));
  q->send("q", {"m"});
  auto a = q->receive("q", 1, 10s, 0ms);
  EXPECT_TRUE(q->fail("q", {a[0].receipt}, false).empty());
  auto b = q->receive("q", 1, 10s, 0ms);
  ASSERT_EQ(b.size(), 1U);
  EXPECT_EQ(b[0].receives, 1U);  // the refused attempt did not count
}

TEST(Queues, ABatchWindowWaitsForTheBatchToFill) {
  TempDir dir;
  auto q = open_queues(dir);
  q->declare("q", spec());
  q->send("q", {"1"});
  std::thread later([&] {
    std::this_thread::sleep_for(50ms);  // a second sender, inside the window
    q->send("q", {"2"});
  });
  auto got = q->receive("q", 2, 10s, 5s, 3s);
  later.join();
  EXPECT_EQ(got.size(), 2U);
}

TEST(Queues, MessagesAndCountsSurviveARestartAndPurgeIsDurable) {
  TempDir dir;
  std::int64_t kept = 0;
  {
    auto q = open_queues(dir);
    q->declare("q", spec(5));
    q->declare("gone", spec());
    kept = q->send("q", {"keep"}).front();
    q->send("gone", {"x"});
    auto a = q->receive("q", 1, 10s, 0ms);
    q->fail("q", {a[0].receipt}, true);  // counted: written before close
    q->purge("gone");
  }
  auto q = open_queues(dir);
  q->declare("q", spec(5));
  q->declare("gone", spec());
  EXPECT_EQ(q->status("gone").depth(), 0U);
  auto again = q->receive("q", 1, 10s, 0ms);
  ASSERT_EQ(again.size(), 1U);
  EXPECT_EQ(again[0].id, kept);
  EXPECT_EQ(again[0].receives, 2U);
  // New ids continue after the old ones.
  EXPECT_GT(q->send("q", {"next"}).front(), kept);
}

TEST(Queues, UndeclaredQueuesAreDroppedOnRequest) {
  TempDir dir;
  {
    auto q = open_queues(dir);
    q->declare("orphan", spec());
    q->send("orphan", {"x"});
  }
  {
    auto q = open_queues(dir);
    q->drop_undeclared();
  }
  auto q = open_queues(dir);
  q->declare("orphan", spec());
  EXPECT_EQ(q->status("orphan").depth(), 0U);
}

// Nothing acknowledged is lost on kill -9: the child sends and reports each id once send()
// returned; the parent kills it mid-stream and finds every reported message.
TEST(Queues, AcknowledgedSendsSurviveKill9) {
  TempDir dir;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    try {
      auto q = open_queues(dir);
      q->declare("q", spec());
      for (int i = 0;; ++i) {
        auto id = q->send("q", {"m" + std::to_string(i)}).front();
        if (write(fds[1], &id, sizeof id) != static_cast<ssize_t>(sizeof id)) _exit(3);
      }
    } catch (...) {
      _exit(2);
    }
  }
  close(fds[1]);
  std::set<std::int64_t> acked;
  std::int64_t id = 0;
  while (acked.size() < 100 && read(fds[0], &id, sizeof id) == static_cast<ssize_t>(sizeof id))
    acked.insert(id);
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  while (read(fds[0], &id, sizeof id) == static_cast<ssize_t>(sizeof id)) acked.insert(id);
  close(fds[0]);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the sender exited early with status " << status;
  ASSERT_GE(acked.size(), 100U);
  auto q = open_queues(dir);
  q->declare("q", spec());
  std::set<std::int64_t> found;
  for (const auto& m : q->peek("q", 100000)) found.insert(m.id);
  for (auto a : acked) EXPECT_TRUE(found.contains(a)) << "acknowledged message " << a << " lost";
}

// An Invoke that answers each call as `answer` says, from a thread of its own (as the pools do).
class FakeFunctions {
 public:
  using Answer = std::function<std::pair<std::exception_ptr, std::string>(
      const std::string& function, const std::string& payload)>;
  explicit FakeFunctions(Answer answer) : answer_(std::move(answer)) {}
  ~FakeFunctions() {
    for (auto& t : threads_) t.join();
  }
  Invoke invoke() {
    return [this](const std::string& fn, std::string payload, InvokeDone done) {
      std::lock_guard lock(mutex_);
      threads_.emplace_back([this, fn, payload = std::move(payload), done = std::move(done)] {
        {
          std::lock_guard l(mutex_);
          calls_.push_back({fn, payload});
        }
        changed_.notify_all();
        auto [error, result] = answer_(fn, payload);
        done(error, result);
      });
    };
  }
  // Waits until `n` calls came; all calls so far.
  std::vector<std::pair<std::string, std::string>> wait_calls(std::size_t n) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, 20s, [&] { return calls_.size() >= n; });
    return calls_;
  }

 private:
  Answer answer_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::pair<std::string, std::string>> calls_;
  std::vector<std::thread> threads_;
};

v1::FunctionSpec function_spec() {
  v1::FunctionSpec s;
  s.set_concurrent_executions(10);
  s.mutable_timeout()->set_seconds(1);
  return s;
}

// Polls `cond` for up to 20 s.
template <class F>
bool eventually(F cond) {
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

TEST(Deliveries, AQueueTriggerDeliversBatchesInSqsShapeAndRetriesThePartialFailures) {
  TempDir dir;
  std::shared_ptr<Queues> queues = open_queues(dir);
  queues->declare("orders", spec(5));
  std::atomic<int> calls = 0;
  FakeFunctions fns([&](const std::string&, const std::string& payload) {
    // The first call fails its message "2" through batchItemFailures.
    auto records = boost::json::parse(payload).at("Records").as_array();
    std::string failed;
    if (calls++ == 0) {
      for (const auto& r : records)
        if (r.at("body").as_string() == "2")
          failed = boost::json::value_to<std::string>(r.at("messageId"));
    }
    if (failed.empty()) return std::make_pair(std::exception_ptr{}, std::string("null"));
    return std::make_pair(std::exception_ptr{},
                          "{\"batchItemFailures\":[{\"itemIdentifier\":\"" + failed + "\"}]}");
  });
  DeliveryOptions options;
  options.poll_wait = 50ms;
  Deliveries deliveries(queues, fns.invoke(), nullptr, options);
  deliveries.function_changed("proc", function_spec());
  v1::TriggerSpec t;
  t.set_type("queue");
  t.set_source("orders");
  t.set_function("proc");
  t.set_batch_size(10);
  t.mutable_batch_window()->set_nanos(200'000'000);  // gathers the three into one batch
  queues->send("orders", {"1", "2", "3"});
  deliveries.trigger_changed("orders-queue", t);
  auto seen = fns.wait_calls(2);
  ASSERT_GE(seen.size(), 2U);
  auto first = boost::json::parse(seen[0].second).at("Records").as_array();
  EXPECT_EQ(first.size(), 3U);
  EXPECT_EQ(first[0].at("eventSourceQueue").as_string(), "orders");
  auto second = boost::json::parse(seen[1].second).at("Records").as_array();
  ASSERT_EQ(second.size(), 1U);
  EXPECT_EQ(second[0].at("body").as_string(), "2");
  EXPECT_EQ(second[0].at("attributes").at("ApproximateReceiveCount").as_string(), "2");
  EXPECT_TRUE(eventually([&] {
    auto s = queues->status("orders");
    return s.depth() == 0 && s.in_flight() == 0;
  }));
  deliveries.close();
}

TEST(Deliveries, AThrottledCallIsRetriedWithoutSpendingAnAttempt) {
  TempDir dir;
  std::shared_ptr<Queues> queues = open_queues(dir);
  queues->declare("q", spec(1));  // one counted failure would dead-letter it
  std::atomic<int> calls = 0;
  FakeFunctions fns([&](const std::string&, const std::string&) {
    if (calls++ < 2)
      return std::make_pair(std::make_exception_ptr(Error(errc::throttled, "busy")), std::string());
    return std::make_pair(std::exception_ptr{}, std::string("null"));
  });
  DeliveryOptions options;
  options.poll_wait = 50ms;
  options.throttle_delay = 20ms;
  Deliveries deliveries(queues, fns.invoke(), nullptr, options);
  deliveries.function_changed("f", function_spec());
  v1::TriggerSpec t;
  t.set_type("queue");
  t.set_source("q");
  t.set_function("f");
  deliveries.trigger_changed("q-trigger", t);
  queues->send("q", {"m"});
  fns.wait_calls(3);
  EXPECT_TRUE(eventually([&] { return queues->status("q").depth() == 0; }));
  EXPECT_EQ(queues->status("q").dead_lettered(), 0U);
  deliveries.close();
}

TEST(Deliveries, AnEventReachesEveryTriggerOnItsSourceAndAFailingOneIsDeadLettered) {
  TempDir dir;
  std::shared_ptr<Queues> queues = open_queues(dir);
  FakeFunctions fns([&](const std::string& fn, const std::string&) {
    if (fn == "broken")
      return std::make_pair(std::make_exception_ptr(Error(errc::handler_failed, "boom")),
                            std::string());
    return std::make_pair(std::exception_ptr{}, std::string("null"));
  });
  DeliveryOptions options;
  options.poll_wait = 50ms;
  Deliveries deliveries(queues, fns.invoke(), nullptr, options);
  deliveries.function_changed("pdf", function_spec());
  deliveries.function_changed("broken", function_spec());
  for (const auto& [name, fn] : {std::pair{"pdf-event", "pdf"}, std::pair{"b-event", "broken"}}) {
    v1::TriggerSpec t;
    t.set_type("event");
    t.set_source("invoice-created");
    t.set_function(fn);
    deliveries.trigger_changed(name, t);
  }
  auto reached = deliveries.publish("invoice-created", R"({"invoice": 7})");
  EXPECT_EQ(reached.size(), 2U);
  EXPECT_TRUE(deliveries.publish("nobody-listens", "1").empty());
  EXPECT_THROW(deliveries.publish("invoice-created", "{not json"), Error);
  const auto dead = Deliveries::dead_letters(Deliveries::event_queue("b-event"));
  // Three attempts (two retries, after 50 and 100 ms), then its dead-letter queue.
  EXPECT_TRUE(eventually([&] { return queues->status(dead).depth() == 1; }));
  auto calls = fns.wait_calls(4);
  int pdf = 0;
  for (const auto& [fn, payload] : calls) {
    if (fn != "pdf") continue;
    ++pdf;
    auto e = boost::json::parse(payload).as_object();
    EXPECT_EQ(e.at("source").as_string(), "invoice-created");
    EXPECT_TRUE(e.contains("time") && e.at("time").is_string());  // when it was published
    EXPECT_EQ(e.at("data").at("invoice").as_int64(), 7);
  }
  EXPECT_EQ(pdf, 1);
  deliveries.close();
}

TEST(Deliveries, AnAsyncInvocationReportsItsStateAndOutcome) {
  TempDir dir;
  std::shared_ptr<Queues> queues = open_queues(dir);
  std::mutex gate;
  gate.lock();  // holds the first call until the test looked at it
  FakeFunctions fns([&](const std::string&, const std::string& payload) {
    if (payload == "\"slow\"") {
      std::lock_guard l(gate);
    }
    if (payload == "\"bad\"")
      return std::make_pair(std::make_exception_ptr(Error(errc::handler_failed, "no")),
                            std::string());
    return std::make_pair(std::exception_ptr{}, "{\"echo\":" + payload + "}");
  });
  DeliveryOptions options;
  options.poll_wait = 50ms;
  Deliveries deliveries(queues, fns.invoke(), nullptr, options);
  deliveries.function_changed("f", function_spec());
  EXPECT_THROW(deliveries.submit("nope", "1"), Error);
  const auto slow = deliveries.submit("f", "\"slow\"");
  EXPECT_TRUE(eventually([&] { return deliveries.invocation(slow).state() == "running"; }));
  gate.unlock();
  EXPECT_TRUE(eventually([&] { return deliveries.invocation(slow).state() == "succeeded"; }));
  EXPECT_EQ(deliveries.invocation(slow).result(), "{\"echo\":\"slow\"}");
  EXPECT_GT(deliveries.invocation(slow).finished_at().seconds(), 0);
  const auto bad = deliveries.submit("f", "\"bad\"");
  EXPECT_TRUE(eventually([&] { return deliveries.invocation(bad).state() == "failed"; }));
  auto failed = deliveries.invocation(bad);
  EXPECT_EQ(failed.attempts(), 3U);  // two retries, as Lambda's async invocations
  EXPECT_EQ(failed.error().code(), "handler_failed");
  EXPECT_EQ(queues->status(Deliveries::dead_letters(Deliveries::async_queue("f"))).depth(), 1U);
  try {
    deliveries.invocation("12345678");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::not_found);
  }
  deliveries.close();
}

}  // namespace
}  // namespace blixard::control
