// The Store conformance suite (DESIGN §3): the behaviour every backend (sqlite, etcd) must share,
// written against the Store interface alone. A backend's test file includes this header once and
// instantiates it in one line:
//   INSTANTIATE_TEST_SUITE_P(Etcd, StoreConformance, ::testing::Values(StoreBackend{"etcd", open}),
//                            store_backend_name);
// Tests keep their keys under a per-test prefix and compare revisions relative to where they
// started, so a backend whose stores share state (one etcd) passes too.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "blixard/error.hpp"
#include "store/store.hpp"

namespace blixard::store::testing {

struct StoreBackend {
  std::string name;
  // Opens (or reopens) the store whose data lives under `dir`, an existing empty directory.
  std::function<std::unique_ptr<Store>(const std::string& dir)> open;
  // How many recent revisions of watch history the opened store keeps; 0 when it cannot be made
  // to compact within a test (the compaction test is then skipped).
  std::int64_t history = 0;
  // A lease ttl the backend honours; lease tests wait a few of them.
  std::chrono::milliseconds short_ttl{1000};
};

inline std::string store_backend_name(const ::testing::TestParamInfo<StoreBackend>& info) {
  return info.param.name;
}

// A fresh directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/blixard-store-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Polls `condition` until it holds or `timeout` passes.
inline bool wait_until(const std::function<bool()>& condition,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Collects watch events; checks as they arrive that batches come in revision order and that a
// revision is never split across batches.
class EventSink {
 public:
  WatchCallback callback() {
    return [this](const std::vector<WatchEvent>& batch) {
      std::lock_guard lock(mutex_);
      ++batches_;
      for (const auto& e : batch) {
        if (!events_.empty()) {
          auto last = events_.back().kv.mod_revision;
          if (e.kv.mod_revision < last) ordered_ = false;
          if (e.kv.mod_revision == last && &e == &batch.front()) split_ = true;
        }
        events_.push_back(e);
      }
    };
  }
  std::vector<WatchEvent> events() const {
    std::lock_guard lock(mutex_);
    return events_;
  }
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return events_.size();
  }
  bool ordered() const {
    std::lock_guard lock(mutex_);
    return ordered_ && !split_;
  }
  bool wait_for(std::size_t n) {
    return wait_until([&] { return size() >= n; });
  }
  // Waits until an event for `key` arrived.
  bool wait_for_key(const std::string& key) {
    return wait_until([&] {
      std::lock_guard lock(mutex_);
      return std::any_of(events_.begin(), events_.end(),
                         [&](const WatchEvent& e) { return e.kv.key == key; });
    });
  }

 private:
  mutable std::mutex mutex_;
  std::vector<WatchEvent> events_;
  int batches_ = 0;
  bool ordered_ = true;
  bool split_ = false;
};

inline Operation put_op(std::string key, std::string value, std::int64_t lease = 0) {
  return Operation{Operation::Type::put, std::move(key), std::move(value), lease};
}
inline Operation erase_op(std::string key) {
  return Operation{Operation::Type::erase, std::move(key), {}, 0};
}
inline Operation erase_prefix_op(std::string prefix) {
  return Operation{Operation::Type::erase_prefix, std::move(prefix), {}, 0};
}
inline Compare compare(std::string key, Compare::Target target, Compare::Op op, std::int64_t v) {
  return Compare{std::move(key), target, op, v};
}

template <class F>
errc error_code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "expected a blixard::Error";
  return errc::internal;
}

class StoreConformance : public ::testing::TestWithParam<StoreBackend> {
 protected:
  void SetUp() override {
    store_ = GetParam().open(dir_.path());
    ASSERT_TRUE(store_);
    ns_ = std::string("conformance/") +
          ::testing::UnitTest::GetInstance()->current_test_info()->name() + "/";
    r0_ = store_->revision();
  }
  void TearDown() override { store_.reset(); }

  void reopen() {
    store_.reset();
    store_ = GetParam().open(dir_.path());
  }
  // A key inside this test's namespace.
  std::string k(std::string_view s) const { return ns_ + std::string(s); }
  std::vector<std::string> keys(const Range& r) const {
    std::vector<std::string> out;
    for (const auto& kv : r.kvs) out.push_back(kv.key.substr(ns_.size()));
    return out;
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
  std::string ns_;
  std::int64_t r0_ = 0;
};

using Target = Compare::Target;
using Op = Compare::Op;
using namespace std::chrono_literals;

// ---- get / put / list ----

TEST_P(StoreConformance, GetMissingKeyIsEmpty) { EXPECT_FALSE(store_->get(k("nope")).has_value()); }

TEST_P(StoreConformance, PutThenGet) {
  auto r = store_->put(k("a"), "hello");
  EXPECT_TRUE(r.succeeded);
  EXPECT_EQ(r.revision, r0_ + 1);
  auto kv = store_->get(k("a"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->key, k("a"));
  EXPECT_EQ(kv->value, "hello");
  EXPECT_EQ(kv->create_revision, r0_ + 1);
  EXPECT_EQ(kv->mod_revision, r0_ + 1);
  EXPECT_EQ(kv->version, 1);
  EXPECT_EQ(kv->lease, 0);
  EXPECT_EQ(store_->revision(), r0_ + 1);
}

TEST_P(StoreConformance, BinaryValuesRoundTrip) {
  std::string value("\0\x01\xff binary\n", 11);
  store_->put(k("bin"), value);
  store_->put(k("empty"), "");
  EXPECT_EQ(store_->get(k("bin"))->value, value);
  auto empty = store_->get(k("empty"));
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->value, "");
}

TEST_P(StoreConformance, OverwriteKeepsCreateRevisionAndBumpsVersion) {
  store_->put(k("a"), "1");
  store_->put(k("other"), "x");
  auto r = store_->put(k("a"), "2");
  auto kv = store_->get(k("a"));
  ASSERT_TRUE(kv);
  EXPECT_EQ(kv->value, "2");
  EXPECT_EQ(kv->create_revision, r0_ + 1);
  EXPECT_EQ(kv->mod_revision, r.revision);
  EXPECT_EQ(kv->mod_revision, r0_ + 3);
  EXPECT_EQ(kv->version, 2);
}

TEST_P(StoreConformance, ListByPrefixIsSortedAndBounded) {
  for (const char* key : {"a/2", "a/10", "a/1", "a", "a0", "ab", "b/1", "a/\xff\xff"})
    store_->put(k(key), key);
  auto r = store_->list(k("a/"));
  EXPECT_EQ(keys(r), (std::vector<std::string>{"a/1", "a/10", "a/2", "a/\xff\xff"}));
  EXPECT_EQ(r.revision, store_->revision());
  EXPECT_EQ(r.kvs[0].value, "a/1");
  EXPECT_EQ(keys(store_->list(k(""))),
            (std::vector<std::string>{"a", "a/1", "a/10", "a/2", "a/\xff\xff", "a0", "ab", "b/1"}));
  EXPECT_TRUE(store_->list(k("c")).kvs.empty());
  // A key equal to the prefix belongs to it.
  EXPECT_EQ(keys(store_->list(k("a0"))), (std::vector<std::string>{"a0"}));
}

TEST_P(StoreConformance, EmptyKeyIsInvalid) {
  EXPECT_EQ(error_code_of([&] { store_->put("", "x"); }), errc::invalid_spec);
  EXPECT_EQ(store_->revision(), r0_);
}

// ---- revisions and transactions ----

TEST_P(StoreConformance, OneRevisionPerWritingTxn) {
  Txn t;
  t.success = {put_op(k("x"), "1"), put_op(k("y"), "2"), put_op(k("z"), "3")};
  auto r = store_->txn(t);
  EXPECT_TRUE(r.succeeded);
  EXPECT_EQ(r.revision, r0_ + 1);
  for (const char* key : {"x", "y", "z"}) {
    auto kv = store_->get(k(key));
    ASSERT_TRUE(kv);
    EXPECT_EQ(kv->mod_revision, r0_ + 1);
  }
  // Erasing a missing key writes nothing: no new revision.
  r = store_->erase(k("missing"));
  EXPECT_EQ(r.revision, r0_ + 1);
  EXPECT_EQ(store_->revision(), r0_ + 1);
  // Neither does a txn whose compare fails and has no failure ops.
  Txn c;
  c.compares = {compare(k("x"), Target::version, Op::equal, 5)};
  c.success = {put_op(k("x"), "never")};
  r = store_->txn(c);
  EXPECT_FALSE(r.succeeded);
  EXPECT_EQ(r.revision, r0_ + 1);
  EXPECT_EQ(store_->get(k("x"))->value, "1");
  EXPECT_EQ(store_->revision(), r0_ + 1);
}

TEST_P(StoreConformance, CasSucceedsOnCurrentModRevisionAndFailsOnStale) {
  auto first = store_->put(k("obj"), "v1");
  Txn t;
  t.compares = {compare(k("obj"), Target::mod_revision, Op::equal, first.revision)};
  t.success = {put_op(k("obj"), "v2")};
  auto r = store_->txn(t);
  EXPECT_TRUE(r.succeeded);
  EXPECT_EQ(r.revision, first.revision + 1);
  // The same compare is now stale.
  t.success = {put_op(k("obj"), "v3")};
  r = store_->txn(t);
  EXPECT_FALSE(r.succeeded);
  EXPECT_EQ(r.revision, first.revision + 1);
  EXPECT_EQ(store_->get(k("obj"))->value, "v2");
}

TEST_P(StoreConformance, CreateIfAbsentThroughCreateRevisionZero) {
  Txn t;
  t.compares = {compare(k("lock"), Target::create_revision, Op::equal, 0)};
  t.success = {put_op(k("lock"), "first")};
  EXPECT_TRUE(store_->txn(t).succeeded);
  t.success = {put_op(k("lock"), "second")};
  EXPECT_FALSE(store_->txn(t).succeeded);
  EXPECT_EQ(store_->get(k("lock"))->value, "first");
}

TEST_P(StoreConformance, MissingKeyComparesAsZero) {
  for (auto target : {Target::mod_revision, Target::create_revision, Target::version}) {
    Txn t;
    t.compares = {compare(k("ghost"), target, Op::equal, 0)};
    EXPECT_TRUE(store_->txn(t).succeeded);
    t.compares = {compare(k("ghost"), target, Op::greater, 0)};
    EXPECT_FALSE(store_->txn(t).succeeded);
  }
}

TEST_P(StoreConformance, CompareOperators) {
  store_->put(k("n"), "a");
  store_->put(k("n"), "b");  // version 2
  auto check = [&](Target target, Op op, std::int64_t v) {
    Txn t;
    t.compares = {compare(k("n"), target, op, v)};
    return store_->txn(t).succeeded;
  };
  EXPECT_TRUE(check(Target::version, Op::equal, 2));
  EXPECT_TRUE(check(Target::version, Op::not_equal, 1));
  EXPECT_FALSE(check(Target::version, Op::not_equal, 2));
  EXPECT_TRUE(check(Target::version, Op::less, 3));
  EXPECT_FALSE(check(Target::version, Op::less, 2));
  EXPECT_TRUE(check(Target::version, Op::greater, 1));
  EXPECT_FALSE(check(Target::version, Op::greater, 2));
  EXPECT_TRUE(check(Target::create_revision, Op::equal, r0_ + 1));
  EXPECT_TRUE(check(Target::mod_revision, Op::equal, r0_ + 2));
  EXPECT_TRUE(check(Target::mod_revision, Op::greater, r0_ + 1));
  // All compares must hold.
  Txn t;
  t.compares = {compare(k("n"), Target::version, Op::equal, 2),
                compare(k("n"), Target::version, Op::equal, 3)};
  EXPECT_FALSE(store_->txn(t).succeeded);
}

TEST_P(StoreConformance, FailureBranchRunsWhenACompareFails) {
  store_->put(k("cfg"), "old");
  Txn t;
  t.compares = {compare(k("cfg"), Target::version, Op::equal, 7)};
  t.success = {put_op(k("cfg"), "new")};
  t.failure = {put_op(k("conflicts"), "1"), erase_op(k("cfg"))};
  auto r = store_->txn(t);
  EXPECT_FALSE(r.succeeded);
  EXPECT_EQ(r.revision, r0_ + 2);
  EXPECT_FALSE(store_->get(k("cfg")));
  ASSERT_TRUE(store_->get(k("conflicts")));
  EXPECT_EQ(store_->get(k("conflicts"))->mod_revision, r0_ + 2);
}

TEST_P(StoreConformance, EraseAndErasePrefix) {
  for (const char* key : {"d/1", "d/2", "d/sub/3", "d", "e/1"}) store_->put(k(key), "v");
  auto r = store_->erase(k("d/1"));
  EXPECT_EQ(r.revision, r0_ + 6);
  EXPECT_FALSE(store_->get(k("d/1")));
  Txn t;
  t.success = {erase_prefix_op(k("d/"))};
  r = store_->txn(t);
  EXPECT_EQ(r.revision, r0_ + 7);  // every key of the prefix at one revision
  EXPECT_EQ(keys(store_->list(k(""))), (std::vector<std::string>{"d", "e/1"}));
  // An empty prefix range writes nothing.
  r = store_->txn(t);
  EXPECT_EQ(r.revision, r0_ + 7);
  // A re-created key starts over.
  store_->put(k("d/1"), "again");
  auto kv = store_->get(k("d/1"));
  EXPECT_EQ(kv->version, 1);
  EXPECT_EQ(kv->create_revision, r0_ + 8);
}

// ---- watches ----

TEST_P(StoreConformance, WatchReplaysFromPastRevisionThenStreamsLive) {
  auto r1 = store_->put(k("a1"), "1").revision;
  store_->put(k("a2"), "2");
  store_->erase(k("a1"));
  EventSink sink;
  auto w = store_->watch(k(""), r1, sink.callback());
  ASSERT_TRUE(sink.wait_for(3));
  Txn t;
  t.success = {put_op(k("a3"), "3"), put_op(k("a4"), "4")};
  store_->txn(t);
  store_->put(k("end"), "");
  ASSERT_TRUE(sink.wait_for_key(k("end")));
  auto ev = sink.events();
  ASSERT_EQ(ev.size(), 6u);
  std::vector<std::int64_t> revs;
  for (const auto& e : ev) revs.push_back(e.kv.mod_revision);
  EXPECT_EQ(revs, (std::vector<std::int64_t>{r1, r1 + 1, r1 + 2, r1 + 3, r1 + 3, r1 + 4}));
  EXPECT_EQ(ev[0].type, WatchEvent::Type::put);
  EXPECT_EQ(ev[0].kv.key, k("a1"));
  EXPECT_EQ(ev[2].type, WatchEvent::Type::erase);
  EXPECT_EQ(ev[2].kv.key, k("a1"));
  EXPECT_EQ(ev[3].kv.key, k("a3"));
  EXPECT_EQ(ev[4].kv.key, k("a4"));
  EXPECT_TRUE(sink.ordered());
}

TEST_P(StoreConformance, WatchEventsCarryTheKeyValue) {
  EventSink sink;
  auto w = store_->watch(k(""), 0, sink.callback());
  store_->put(k("x"), "one");
  store_->put(k("x"), "two");
  store_->erase(k("x"));
  ASSERT_TRUE(sink.wait_for(3));
  auto ev = sink.events();
  EXPECT_EQ(ev[0].kv.value, "one");
  EXPECT_EQ(ev[0].kv.version, 1);
  EXPECT_EQ(ev[0].kv.create_revision, r0_ + 1);
  EXPECT_EQ(ev[0].kv.mod_revision, r0_ + 1);
  EXPECT_EQ(ev[1].kv.value, "two");
  EXPECT_EQ(ev[1].kv.version, 2);
  EXPECT_EQ(ev[1].kv.create_revision, r0_ + 1);
  EXPECT_EQ(ev[1].kv.mod_revision, r0_ + 2);
  EXPECT_EQ(ev[2].type, WatchEvent::Type::erase);
  EXPECT_EQ(ev[2].kv.key, k("x"));
  EXPECT_EQ(ev[2].kv.mod_revision, r0_ + 3);
}

TEST_P(StoreConformance, WatchFiltersByPrefix) {
  EventSink sink;
  auto w = store_->watch(k("a/"), 0, sink.callback());
  store_->put(k("a/1"), "");
  store_->put(k("b/1"), "");
  store_->put(k("a"), "");
  store_->put(k("a0"), "");
  store_->put(k("a/2"), "");
  ASSERT_TRUE(sink.wait_for_key(k("a/2")));
  auto ev = sink.events();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].kv.key, k("a/1"));
  EXPECT_EQ(ev[1].kv.key, k("a/2"));
}

TEST_P(StoreConformance, WatchFromNowSkipsThePast) {
  store_->put(k("before"), "");
  EventSink sink;
  auto w = store_->watch(k(""), 0, sink.callback());
  store_->put(k("after"), "");
  ASSERT_TRUE(sink.wait_for_key(k("after")));
  auto ev = sink.events();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kv.mod_revision, r0_ + 2);
}

TEST_P(StoreConformance, WatchCancellationStopsCallbacks) {
  EventSink cancelled, kept;
  auto w1 = store_->watch(k(""), 0, cancelled.callback());
  auto w2 = store_->watch(k(""), 0, kept.callback());
  store_->put(k("a"), "");
  ASSERT_TRUE(cancelled.wait_for(1));
  ASSERT_TRUE(kept.wait_for(1));
  w1.reset();
  store_->put(k("b"), "");
  store_->put(k("c"), "");
  ASSERT_TRUE(kept.wait_for(3));
  EXPECT_EQ(cancelled.size(), 1u);
}

TEST_P(StoreConformance, WatchCanBeCancelledFromItsOwnCallback) {
  std::mutex m;
  std::unique_ptr<Watch> w;
  std::atomic<int> calls{0};
  std::atomic<bool> gone{false};
  {
    std::lock_guard lock(m);
    w = store_->watch(k(""), 0, [&](const std::vector<WatchEvent>&) {
      ++calls;
      std::unique_ptr<Watch> mine;
      {
        std::lock_guard lock(m);
        mine = std::move(w);
      }
      mine.reset();  // must not deadlock
      gone = true;
    });
  }
  store_->put(k("a"), "");
  ASSERT_TRUE(wait_until([&] { return gone.load(); }));
  EventSink later;
  auto w2 = store_->watch(k(""), 0, later.callback());
  store_->put(k("b"), "");
  ASSERT_TRUE(later.wait_for(1));
  EXPECT_EQ(calls.load(), 1);
}

TEST_P(StoreConformance, WatchDestructorWaitsForARunningCallback) {
  std::promise<void> entered, release;
  auto release_f = release.get_future().share();
  std::atomic<bool> finished{false};
  std::atomic<bool> first{true};
  auto w = store_->watch(k(""), 0, [&](const std::vector<WatchEvent>&) {
    if (!first.exchange(false)) return;
    entered.set_value();
    release_f.wait();
    finished = true;
  });
  store_->put(k("a"), "");
  entered.get_future().wait();
  std::atomic<bool> finished_at_return{false};
  std::thread canceller([&] {
    w.reset();
    finished_at_return = finished.load();
  });
  // Give the canceller time to block in the destructor; the outcome does not depend on it.
  std::this_thread::sleep_for(50ms);
  release.set_value();
  canceller.join();
  EXPECT_TRUE(finished_at_return.load());
}

TEST_P(StoreConformance, WatchFromCompactedRevisionIsAConflict) {
  const auto history = GetParam().history;
  if (history == 0) GTEST_SKIP() << "the backend cannot be made to compact in a test";
  for (std::int64_t i = 0; i < 3 * history + 10; ++i) store_->put(k("churn"), std::to_string(i));
  auto rev = store_->revision();
  EXPECT_EQ(error_code_of([&] { store_->watch(k(""), r0_ + 1, [](const auto&) {}); }),
            errc::conflict);
  // The most recent `history` revisions are still there.
  EventSink sink;
  auto w = store_->watch(k(""), rev - history + 1, sink.callback());
  ASSERT_TRUE(sink.wait_for(static_cast<std::size_t>(history)));
  auto ev = sink.events();
  EXPECT_EQ(ev.front().kv.mod_revision, rev - history + 1);
  EXPECT_EQ(ev.back().kv.mod_revision, rev);
}

// ---- leases ----

TEST_P(StoreConformance, LeaseExpiryErasesItsKeysWithEvents) {
  const auto ttl = GetParam().short_ttl;
  auto lease = store_->grant_lease(ttl);
  EXPECT_NE(lease, 0);
  store_->put(k("node/1"), "a", lease);
  store_->put(k("node/2"), "b", lease);
  store_->put(k("kept"), "c");
  EXPECT_EQ(store_->get(k("node/1"))->lease, lease);
  EventSink sink;  // from the next revision: the lease may expire before the watch starts
  auto w = store_->watch(k(""), store_->revision() + 1, sink.callback());
  ASSERT_TRUE(wait_until([&] { return !store_->get(k("node/1")) && !store_->get(k("node/2")); },
                         ttl + 15s));
  EXPECT_TRUE(store_->get(k("kept")));
  ASSERT_TRUE(sink.wait_for(2));
  auto ev = sink.events();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].type, WatchEvent::Type::erase);
  EXPECT_EQ(ev[1].type, WatchEvent::Type::erase);
  EXPECT_EQ(ev[0].kv.mod_revision, ev[1].kv.mod_revision);  // one revision for the lease
  EXPECT_EQ(error_code_of([&] { store_->keep_alive(lease); }), errc::not_found);
}

TEST_P(StoreConformance, KeepAliveExtendsALease) {
  using Clock = std::chrono::steady_clock;
  const auto ttl = GetParam().short_ttl;
  // The key may go only once no renewal came within the TTL. A loaded machine can stall this
  // thread (or the store's commits) past the TTL between two renewals; such a round proves
  // nothing and runs again. A key gone while each check came within the TTL of the renewal
  // before it is a failure: that renewal began before the check minus the TTL.
  for (int round = 0; round < 5; ++round) {
    auto previous = Clock::now();
    auto lease = store_->grant_lease(ttl);
    store_->put(k("hb"), "", lease);
    const auto until = previous + 3 * ttl;
    bool stalled = false;
    while (!stalled && Clock::now() < until) {
      const auto call = Clock::now();
      bool present = true;
      try {
        store_->keep_alive(lease);
      } catch (const Error& e) {
        if (e.code() != errc::not_found) throw;
        present = false;
      }
      present = present && store_->get(k("hb")).has_value();
      stalled = Clock::now() - previous >= ttl;
      if (!stalled) {
        ASSERT_TRUE(present) << "expired despite keep-alives";
      }
      previous = call;
      std::this_thread::sleep_for(ttl / 5);  // the heartbeat period under test
    }
    if (stalled) {
      store_->revoke_lease(lease);
      continue;
    }
    ASSERT_TRUE(wait_until([&] { return !store_->get(k("hb")); }, ttl + 15s));
    return;
  }
  FAIL() << "every round stalled past the " << ttl.count() << " ms TTL";
}

TEST_P(StoreConformance, RevokeErasesKeysAtOnce) {
  auto lease = store_->grant_lease(60s);
  store_->put(k("a"), "", lease);
  store_->put(k("b"), "", lease);
  store_->put(k("c"), "");
  auto before = store_->revision();
  store_->revoke_lease(lease);
  EXPECT_FALSE(store_->get(k("a")));
  EXPECT_FALSE(store_->get(k("b")));
  EXPECT_TRUE(store_->get(k("c")));
  EXPECT_EQ(store_->revision(), before + 1);
  EXPECT_EQ(error_code_of([&] { store_->keep_alive(lease); }), errc::not_found);
  EXPECT_NO_THROW(store_->revoke_lease(lease));  // already gone: a no-op
}

TEST_P(StoreConformance, RewritingAKeyWithoutLeaseDetachesIt) {
  auto lease = store_->grant_lease(60s);
  store_->put(k("a"), "leased", lease);
  store_->put(k("a"), "free");
  EXPECT_EQ(store_->get(k("a"))->lease, 0);
  store_->revoke_lease(lease);
  EXPECT_TRUE(store_->get(k("a")));
}

TEST_P(StoreConformance, UnknownLeaseIsNotFound) {
  const std::int64_t unknown = 0x5eed5eed5eedLL;
  EXPECT_EQ(error_code_of([&] { store_->put(k("a"), "", unknown); }), errc::not_found);
  EXPECT_FALSE(store_->get(k("a")));
  EXPECT_EQ(store_->revision(), r0_);
  EXPECT_EQ(error_code_of([&] { store_->keep_alive(unknown); }), errc::not_found);
  // A failing op aborts its whole txn.
  Txn t;
  t.success = {put_op(k("b"), ""), put_op(k("c"), "", unknown)};
  EXPECT_EQ(error_code_of([&] { store_->txn(t); }), errc::not_found);
  EXPECT_FALSE(store_->get(k("b")));
  EXPECT_EQ(store_->revision(), r0_);
}

TEST_P(StoreConformance, LeasesSurviveReopen) {
  auto lease = store_->grant_lease(60s);
  store_->put(k("a"), "x", lease);
  reopen();
  EXPECT_NO_THROW(store_->keep_alive(lease));
  ASSERT_TRUE(store_->get(k("a")));
  EXPECT_EQ(store_->get(k("a"))->lease, lease);
  store_->revoke_lease(lease);
  EXPECT_FALSE(store_->get(k("a")));
}

// ---- durability and concurrency ----

TEST_P(StoreConformance, ReopenKeepsDataRevisionAndHistory) {
  store_->put(k("a"), "1");
  store_->put(k("b"), "2");
  store_->erase(k("a"));
  auto rev = store_->revision();
  reopen();
  EXPECT_EQ(store_->revision(), rev);
  EXPECT_FALSE(store_->get(k("a")));
  EXPECT_EQ(store_->get(k("b"))->value, "2");
  EXPECT_EQ(store_->put(k("c"), "3").revision, rev + 1);
  EventSink sink;
  auto w = store_->watch(k(""), r0_ + 1, sink.callback());
  ASSERT_TRUE(sink.wait_for(4));
  EXPECT_EQ(sink.events()[2].type, WatchEvent::Type::erase);
}

TEST_P(StoreConformance, ConcurrentWritersProduceAGaplessRevisionSequence) {
  constexpr int k_threads = 4, k_puts = 25;
  EventSink sink;
  auto w = store_->watch(k(""), r0_ + 1, sink.callback());
  std::mutex m;
  std::vector<std::int64_t> revs;
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < k_puts; ++i) {
        auto r = store_->put(k("t" + std::to_string(t) + "/" + std::to_string(i)), "v");
        std::lock_guard lock(m);
        revs.push_back(r.revision);
      }
    });
  for (auto& th : threads) th.join();
  std::sort(revs.begin(), revs.end());
  std::vector<std::int64_t> expected;
  for (int i = 1; i <= k_threads * k_puts; ++i) expected.push_back(r0_ + i);
  EXPECT_EQ(revs, expected);
  EXPECT_EQ(store_->revision(), r0_ + k_threads * k_puts);
  ASSERT_TRUE(sink.wait_for(k_threads * k_puts));
  std::vector<std::int64_t> seen;
  for (const auto& e : sink.events()) seen.push_back(e.kv.mod_revision);
  EXPECT_EQ(seen, expected);
}

TEST_P(StoreConformance, ConcurrentCasIncrementsLoseNoUpdate) {
  constexpr int k_threads = 4, k_increments = 10;
  std::vector<std::thread> threads;
  for (int t = 0; t < k_threads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < k_increments; ++i) {
        while (true) {
          auto kv = store_->get(k("counter"));
          Txn txn;
          txn.compares = {
              compare(k("counter"), Target::mod_revision, Op::equal, kv ? kv->mod_revision : 0)};
          txn.success = {put_op(k("counter"), std::to_string(kv ? std::stoi(kv->value) + 1 : 1))};
          if (store_->txn(txn).succeeded) break;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(store_->get(k("counter"))->value, std::to_string(k_threads * k_increments));
  EXPECT_EQ(store_->get(k("counter"))->version, k_threads * k_increments);
}

}  // namespace blixard::store::testing
