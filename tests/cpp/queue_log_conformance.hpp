// The QueueLog conformance suite (store/queue_log.hpp): what every implementation of the queues'
// log must do, written against the interface alone. A backend instantiates it in one line:
//   INSTANTIATE_TEST_SUITE_P(Sqlite, QueueLogConformance,
//                            ::testing::Values(QueueLogBackend{"sqlite", open}), log_name);
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "store/queue_log.hpp"
#include "store_conformance.hpp"  // TempDir

namespace blixard::store::testing {

struct QueueLogBackend {
  std::string name;
  // Opens (or reopens) the log whose data lives under `dir`.
  std::function<std::unique_ptr<QueueLog>(const std::string& dir)> open;
};

inline std::string log_name(const ::testing::TestParamInfo<QueueLogBackend>& info) {
  return info.param.name;
}

class QueueLogConformance : public ::testing::TestWithParam<QueueLogBackend> {
 protected:
  std::unique_ptr<QueueLog> open() { return GetParam().open(dir_.path()); }
  static StoredMessage message(std::int64_t id, const std::string& queue, const std::string& body) {
    StoredMessage m;
    m.id = id;
    m.queue = queue;
    m.body = body;
    m.sent_at_ms = 1000 + id;
    return m;
  }
  TempDir dir_;
};

TEST_P(QueueLogConformance, AppendedMessagesAreThereAfterAReopenInIdOrder) {
  {
    auto log = open();
    EXPECT_EQ(log->last_id(), 0);
    QueueWrite w;
    w.appends = {message(2, "b", "two"), message(1, "a", std::string("o\0ne", 4))};
    log->write(w);
    EXPECT_EQ(log->last_id(), 2);
  }
  auto log = open();
  auto all = log->messages();
  ASSERT_EQ(all.size(), 2U);
  EXPECT_EQ(all[0].id, 1);
  EXPECT_EQ(all[0].queue, "a");
  EXPECT_EQ(all[0].body, std::string("o\0ne", 4));  // bodies are bytes, not C strings
  EXPECT_EQ(all[0].sent_at_ms, 1001);
  EXPECT_EQ(all[1].id, 2);
  EXPECT_EQ(log->last_id(), 2);
}

TEST_P(QueueLogConformance, IdsAreNeverReusedEvenWhenEveryMessageIsGone) {
  {
    auto log = open();
    QueueWrite w;
    w.appends = {message(7, "a", "x")};
    log->write(w);
    QueueWrite r;
    r.removes = {7};
    log->write(r);
  }
  auto log = open();
  EXPECT_TRUE(log->messages().empty());
  EXPECT_EQ(log->last_id(), 7);
}

TEST_P(QueueLogConformance, CountsMovesRemovesAndPurgesApply) {
  auto log = open();
  QueueWrite w;
  w.appends = {message(1, "a", "1"), message(2, "a", "2"), message(3, "a", "3"),
               message(4, "b", "4")};
  log->write(w);
  QueueWrite c;
  c.receives = {{1, 3}, {99, 1}};  // an unknown id is ignored
  c.moves = {{2, "a-dead"}};
  c.removes = {3, 98};
  log->write(c);
  auto all = log->messages();
  ASSERT_EQ(all.size(), 3U);
  EXPECT_EQ(all[0].receives, 3U);
  EXPECT_EQ(all[1].queue, "a-dead");
  EXPECT_EQ(all[1].receives, 0U);
  EXPECT_EQ(all[2].id, 4);
  QueueWrite p;
  p.purges = {"a"};
  log->write(p);
  all = log->messages();
  ASSERT_EQ(all.size(), 2U);  // a-dead and b stay
  EXPECT_EQ(all[0].queue, "a-dead");
  EXPECT_EQ(all[1].queue, "b");
}

TEST_P(QueueLogConformance, OutcomesAreKeptUntilExpired) {
  auto log = open();
  StoredOutcome o;
  o.id = 5;
  o.function = "f";
  o.state = "succeeded";
  o.body = "{\"ok\":1}";
  o.attempts = 2;
  o.at_ms = 5000;
  QueueWrite w;
  w.outcomes = {o};
  log->write(w);
  auto got = log->outcome(5);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->function, "f");
  EXPECT_EQ(got->state, "succeeded");
  EXPECT_EQ(got->body, "{\"ok\":1}");
  EXPECT_EQ(got->attempts, 2U);
  EXPECT_FALSE(log->outcome(6));
  QueueWrite e;
  e.expire_outcomes_before_ms = 5001;
  log->write(e);
  EXPECT_FALSE(log->outcome(5));
}

TEST_P(QueueLogConformance, ConcurrentWritersAllLand) {
  auto log = open();
  constexpr int k_threads = 8;
  constexpr int k_each = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_each; ++i) {
        QueueWrite w;
        w.appends = {message(1 + t * k_each + i, "q", std::to_string(i))};
        log->write(w);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(log->messages().size(), static_cast<std::size_t>(k_threads * k_each));
  EXPECT_EQ(log->last_id(), k_threads * k_each);
}

}  // namespace blixard::store::testing
