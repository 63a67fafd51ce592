// apply's planner as a pure function: object sets and snapshots in, store writes and per-object
// actions out. No store: a map that takes the planned writes stands in for one.
#include "api/apply_plan.hpp"
#include "api/apply_diff.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "blixard/error.hpp"
#include "test_support.hpp"

namespace {

using blixard::test_support::expect_error;

namespace v1 = blixard::v1;
using blixard::errc;
using blixard::Error;
using blixard::api::ApplyPlan;
using blixard::api::plan_apply;
using blixard::api::prepare_apply;
using blixard::api::Snapshot;
using blixard::api::snapshot_query;
using blixard::api::StoredObject;
using blixard::api::unified_diff;
using blixard::api::Write;
using Mode = blixard::detail::ApplyMode;
using Options = blixard::detail::ApplyOptions;

google::protobuf::Timestamp at(std::int64_t seconds) {
  google::protobuf::Timestamp t;
  t.set_seconds(seconds);
  return t;
}

v1::Function* add_function(v1::ObjectSet& set, const std::string& name,
                           const std::string& source = "/work/a/app.yaml") {
  auto* fn = set.add_functions();
  fn->mutable_metadata()->set_name(name);
  fn->mutable_metadata()->set_source(source);
  fn->mutable_spec()->set_runtime("python");
  fn->mutable_spec()->set_handler("app:handler");
  return fn;
}

void add_inline_trigger(v1::Function& fn, const std::string& type, const std::string& where) {
  auto* t = fn.mutable_spec()->add_triggers();
  t->set_type(type);
  if (type == "http") {
    t->set_path(where);
  } else {
    t->set_source(where);
  }
}

v1::Trigger* add_http_trigger(v1::ObjectSet& set, const std::string& name,
                              const std::string& function, const std::string& path) {
  auto* t = set.add_triggers();
  t->mutable_metadata()->set_name(name);
  t->mutable_spec()->set_type("http");
  t->mutable_spec()->set_function(function);
  t->mutable_spec()->set_path(path);
  return t;
}

// A store in miniature: commits a plan's writes at the next revision, after checking its
// expectations as the store's compare-and-swap would.
class FakeStore {
 public:
  ApplyPlan plan(const v1::ObjectSet& set, const Options& options = {}, std::int64_t now = 1000) {
    return plan_apply(prepare_apply(set, options), snapshot_, at(now));
  }

  // Plans and commits; the plan as planned.
  ApplyPlan apply(const v1::ObjectSet& set, const Options& options = {}, std::int64_t now = 1000) {
    ApplyPlan p = plan(set, options, now);
    commit(p);
    return p;
  }

  void commit(const ApplyPlan& p) {
    for (const auto& e : p.expected) {
      auto it = snapshot_.find(e.key);
      const std::int64_t actual = it == snapshot_.end() ? 0 : it->second.resource_version;
      ASSERT_EQ(actual, e.resource_version) << e.key;
    }
    if (p.writes.empty()) return;
    ++revision_;
    for (const auto& w : p.writes) {
      if (w.type == Write::Type::put) {
        snapshot_[w.key] = StoredObject{w.value, revision_};
      } else {
        snapshot_.erase(w.key);
      }
    }
  }

  template <class T>
  T get(const std::string& key) const {
    T object;
    EXPECT_TRUE(object.ParseFromString(snapshot_.at(key).value)) << key;
    return object;
  }

  Snapshot& snapshot() { return snapshot_; }
  std::int64_t revision() const { return revision_; }

 private:
  Snapshot snapshot_;
  std::int64_t revision_ = 0;
};

// "kind/name=action" for each item, in order.
std::vector<std::string> actions(const ApplyPlan& p) {
  std::vector<std::string> out;
  for (const auto& item : p.result.items()) {
    out.push_back(item.kind() + "/" + item.name() + "=" + item.action());
  }
  return out;
}

v1::ObjectSet platform() {
  v1::ObjectSet set;
  auto* echo = add_function(set, "echo");
  add_inline_trigger(*echo, "http", "/api/echo");
  auto* vm = set.add_vms();
  vm->mutable_metadata()->set_name("web");
  vm->mutable_metadata()->set_source("/work/a/app.yaml");
  vm->mutable_spec()->set_replicas(2);
  return set;
}

TEST(ApplyPlan, CreatesEveryObjectOfANewSet) {
  FakeStore store;
  const auto p = store.plan(platform(), {.mode = Mode::apply}, 1234);
  EXPECT_EQ(actions(p), (std::vector<std::string>{"function/echo=created", "vm/web=created",
                                                  "trigger/echo-http=created"}));
  ASSERT_EQ(p.writes.size(), 3u);
  for (const auto& w : p.writes) EXPECT_EQ(w.type, Write::Type::put);
  // Each key is expected absent: a concurrent create makes the transaction fail, not overwrite.
  ASSERT_EQ(p.expected.size(), 3u);
  for (const auto& e : p.expected) EXPECT_EQ(e.resource_version, 0) << e.key;
  EXPECT_EQ(p.result.revision(), 0) << "the revision is the committer's";

  store.commit(p);
  const auto fn = store.get<v1::Function>("/registry/functions/echo");
  EXPECT_EQ(fn.metadata().created_at().seconds(), 1234);
  EXPECT_EQ(fn.metadata().source(), "/work/a/app.yaml");
  const auto trigger = store.get<v1::Trigger>("/registry/triggers/echo-http");
  EXPECT_EQ(trigger.spec().function(), "echo");
  EXPECT_EQ(trigger.spec().path(), "/api/echo");
  EXPECT_EQ(trigger.metadata().labels().at(blixard::api::k_owner_label), "echo");
}

TEST(ApplyPlan, TheSameSetAgainIsUnchangedAndWritesNothing) {
  FakeStore store;
  store.apply(platform());
  const auto p = store.plan(platform(), {.mode = Mode::apply}, 2000);
  EXPECT_EQ(actions(p), (std::vector<std::string>{"function/echo=unchanged", "vm/web=unchanged",
                                                  "trigger/echo-http=unchanged"}));
  EXPECT_TRUE(p.writes.empty());
}

TEST(ApplyPlan, AMovedManifestIsUnchanged) {
  FakeStore store;
  store.apply(platform());
  v1::ObjectSet moved = platform();
  moved.mutable_functions(0)->mutable_metadata()->set_source("/elsewhere/app.yaml");
  moved.mutable_vms(0)->mutable_metadata()->set_source("/elsewhere/app.yaml");
  // Its configs moved with it: the spec names them at their new path.
  moved.mutable_functions(0)->mutable_spec()->set_config("/elsewhere/echo.yaml");
  moved.mutable_vms(0)->mutable_spec()->set_config("/elsewhere/web.nix");
  const auto p = store.plan(moved);
  EXPECT_EQ(actions(p), (std::vector<std::string>{"function/echo=unchanged", "vm/web=unchanged",
                                                  "trigger/echo-http=unchanged"}));
  EXPECT_TRUE(p.writes.empty()) << "a new source path alone rewrote objects";
}

TEST(ApplyPlan, AChangedSpecOrLabelIsConfigured) {
  FakeStore store;
  store.apply(platform(), {.mode = Mode::apply}, 100);
  const std::int64_t first = store.revision();

  v1::ObjectSet changed = platform();
  changed.mutable_functions(0)->mutable_spec()->set_memory_mib(256);
  (*changed.mutable_vms(0)->mutable_metadata()->mutable_labels())["tier"] = "front";
  changed.mutable_vms(0)->mutable_metadata()->set_source("/elsewhere/app.yaml");
  const auto p = store.plan(changed, {.mode = Mode::apply}, 200);
  EXPECT_EQ(actions(p), (std::vector<std::string>{"function/echo=configured", "vm/web=configured",
                                                  "trigger/echo-http=unchanged"}));
  ASSERT_EQ(p.writes.size(), 2u);
  // Guarded by the revisions they were planned against, the unchanged trigger's too.
  for (const auto& e : p.expected) EXPECT_EQ(e.resource_version, first) << e.key;
  EXPECT_EQ(p.expected.size(), 3u);

  store.commit(p);
  const auto fn = store.get<v1::Function>("/registry/functions/echo");
  EXPECT_EQ(fn.spec().memory_mib(), 256u);
  EXPECT_EQ(fn.metadata().created_at().seconds(), 100) << "created_at is the first apply's";
  // A rewritten object names the manifest it now comes from.
  EXPECT_EQ(store.get<v1::Vm>("/registry/vms/web").metadata().source(), "/elsewhere/app.yaml");
}

TEST(ApplyPlan, StatusAndStoreOwnedMetadataAreNotDeclared) {
  FakeStore store;
  v1::ObjectSet set;
  auto* fn = add_function(set, "echo");
  fn->mutable_metadata()->set_resource_version(77);
  fn->mutable_metadata()->set_create_revision(70);
  fn->mutable_status()->set_instances_running(2);
  store.apply(set);
  const auto stored = store.get<v1::Function>("/registry/functions/echo");
  EXPECT_FALSE(stored.has_status());
  EXPECT_EQ(stored.metadata().resource_version(), 0);
  EXPECT_EQ(stored.metadata().create_revision(), 0);
  // Nor do they make a difference on the next apply.
  fn->mutable_status()->set_instances_warm(1);
  EXPECT_EQ(actions(store.plan(set)), std::vector<std::string>{"function/echo=unchanged"});
}

TEST(ApplyPlan, OwnedTriggersAreReplacedWithTheirFunction) {
  FakeStore store;
  store.apply(platform());
  // Another function's explicit trigger is not the echo function's to delete.
  v1::ObjectSet other;
  add_function(other, "other");
  add_http_trigger(other, "other-web", "other", "/api/other");
  store.apply(other);

  v1::ObjectSet set;
  auto* echo = add_function(set, "echo");
  add_inline_trigger(*echo, "queue", "orders");
  add_inline_trigger(*echo, "event", "a");
  add_inline_trigger(*echo, "event", "b");
  const auto p = store.plan(set);
  EXPECT_EQ(actions(p), (std::vector<std::string>{
                            "function/echo=configured", "trigger/echo-http=deleted",
                            "queue/orders=created", "trigger/echo-queue=created",
                            "trigger/echo-event-0=created", "trigger/echo-event-1=created"}));
  store.commit(p);
  EXPECT_EQ(store.snapshot().count("/registry/triggers/echo-http"), 0u);
  EXPECT_EQ(store.get<v1::Trigger>("/registry/triggers/echo-event-1").spec().source(), "b");
  EXPECT_EQ(store.snapshot().count("/registry/triggers/other-web"), 1u);
}

TEST(ApplyPlan, OwnedTriggersAreDeletedWithTheirFunction) {
  FakeStore store;
  store.apply(platform());
  const std::int64_t rev = store.revision();
  // remove names the objects as a manifest does; inline triggers are found by their owner label.
  const auto p = store.plan(platform(), {.mode = Mode::remove});
  EXPECT_EQ(actions(p), (std::vector<std::string>{"function/echo=deleted", "vm/web=deleted",
                                                  "trigger/echo-http=deleted"}));
  ASSERT_EQ(p.writes.size(), 3u);
  for (const auto& w : p.writes) EXPECT_EQ(w.type, Write::Type::erase) << w.key;
  for (const auto& e : p.expected) EXPECT_EQ(e.resource_version, rev) << e.key;
  store.commit(p);
  EXPECT_TRUE(store.snapshot().empty());
}

TEST(ApplyPlan, TheHttpPathOfADeletedTriggerIsFreeInTheSameApply) {
  FakeStore store;
  v1::ObjectSet before;
  add_inline_trigger(*add_function(before, "old"), "http", "/api/x");
  store.apply(before);

  v1::ObjectSet after;
  add_function(after, "old");
  add_inline_trigger(*add_function(after, "new"), "http", "/api/x");
  const auto p = store.plan(after);
  EXPECT_EQ(actions(p),
            (std::vector<std::string>{"function/old=configured", "function/new=created",
                                      "trigger/old-http=deleted", "trigger/new-http=created"}));
}

TEST(ApplyPlan, ATriggerNeedsItsFunctionAndHoldsItToItsRevision) {
  FakeStore store;
  v1::ObjectSet missing;
  add_http_trigger(missing, "web", "nobody", "/api/web");
  auto e = expect_error([&] { store.plan(missing); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "triggers[0].spec.function");

  v1::ObjectSet fn;
  add_function(fn, "nobody");
  store.apply(fn);
  const auto p = store.plan(missing);
  EXPECT_EQ(actions(p), std::vector<std::string>{"trigger/web=created"});
  // Deleting the function meanwhile fails the commit instead of leaving the trigger orphaned.
  bool held = false;
  for (const auto& x : p.expected) {
    if (x.key == "/registry/functions/nobody") held = x.resource_version == store.revision();
  }
  EXPECT_TRUE(held);
}

TEST(ApplyPlan, AnHttpPathBelongsToOneTrigger) {
  FakeStore store;
  v1::ObjectSet first;
  add_function(first, "a");
  add_http_trigger(first, "a-web", "a", "/api/x");
  store.apply(first);

  v1::ObjectSet second;
  add_function(second, "b");
  add_http_trigger(second, "b-web", "b", "/api/x");
  auto e = expect_error([&] { store.plan(second); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "triggers[0].spec.path");
  EXPECT_NE(std::string(e.what()).find("a-web"), std::string::npos) << e.what();

  // Re-declaring the trigger that holds the path is fine.
  EXPECT_EQ(actions(store.plan(first)),
            (std::vector<std::string>{"function/a=unchanged", "trigger/a-web=unchanged"}));
}

TEST(ApplyPlan, AnInlineTriggerMustNotShadowAnExplicitOne) {
  FakeStore store;
  v1::ObjectSet set;
  add_inline_trigger(*add_function(set, "echo"), "http", "/api/echo");
  add_http_trigger(set, "echo-http", "echo", "/api/other");
  auto e = expect_error([&] { store.plan(set); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.functions[0].triggers[0]");
}

TEST(ApplyPlan, InvalidObjectsAreRefusedByField) {
  FakeStore store;
  v1::ObjectSet set;
  add_function(set, "echo");
  add_function(set, "echo");
  auto dup = expect_error([&] { store.plan(set); }, errc::invalid_spec);
  EXPECT_EQ(dup.field(), "functions[1].metadata.name");

  v1::ObjectSet bad;
  add_function(bad, "echo")->mutable_spec()->set_runtime("cobol");
  auto runtime = expect_error([&] { store.plan(bad); }, errc::invalid_spec);
  EXPECT_NE(runtime.field().find("runtime"), std::string::npos) << runtime.field();

  // remove is not validated, yet one object is named once.
  v1::ObjectSet web;
  web.add_vms()->mutable_metadata()->set_name("web");
  store.apply(web);
  v1::ObjectSet twice;
  twice.add_vms()->mutable_metadata()->set_name("web");
  twice.add_vms()->mutable_metadata()->set_name("web");
  auto removed =
      expect_error([&] { store.plan(twice, {.mode = Mode::remove}); }, errc::invalid_spec);
  EXPECT_EQ(removed.field(), "vms[1].metadata.name");
}

TEST(ApplyPlan, CreateRefusesWhatExistsAndRemoveWhatDoesNot) {
  FakeStore store;
  v1::ObjectSet set;
  add_function(set, "one");
  add_function(set, "two");
  auto missing = expect_error([&] { store.plan(set, {.mode = Mode::remove}); }, errc::not_found);
  EXPECT_EQ(missing.field(), "functions[0].metadata.name");

  v1::ObjectSet one;
  add_function(one, "one");
  EXPECT_EQ(actions(store.apply(one, {.mode = Mode::create})),
            std::vector<std::string>{"function/one=created"});
  auto exists =
      expect_error([&] { store.plan(set, {.mode = Mode::create}); }, errc::already_exists);
  EXPECT_EQ(exists.field(), "functions[0].metadata.name");
  missing = expect_error([&] { store.plan(set, {.mode = Mode::remove}); }, errc::not_found);
  EXPECT_EQ(missing.field(), "functions[1].metadata.name");
  // apply creates or updates.
  EXPECT_EQ(actions(store.plan(set)),
            (std::vector<std::string>{"function/one=unchanged", "function/two=created"}));
}

TEST(ApplyPlan, ACorruptStoredObjectIsRepairedAndACorruptTriggerReported) {
  FakeStore store;
  store.apply(platform());
  store.snapshot()["/registry/vms/web"].value = "\xff\xff not a message";
  auto p = store.plan(platform());
  EXPECT_EQ(actions(p)[1], "vm/web=configured");

  store.snapshot()["/registry/triggers/zzz"] = StoredObject{"\xff\xff", 9};
  auto e = expect_error([&] { store.plan(platform()); }, errc::internal);
  EXPECT_NE(std::string(e.what()).find("/registry/triggers/zzz"), std::string::npos);
}

TEST(ApplyPlan, TheSnapshotQueryNamesWhatThePlanReads) {
  v1::ObjectSet set = platform();
  add_http_trigger(set, "ext", "stored-fn", "/api/ext");
  const auto q = snapshot_query(prepare_apply(set, {}));
  EXPECT_EQ(q.keys,
            (std::vector<std::string>{"/registry/functions/echo", "/registry/functions/stored-fn",
                                      "/registry/vms/web"}));
  EXPECT_EQ(q.prefixes, (std::vector<std::string>{"/registry/triggers/", "/registry/queues/"}));

  v1::ObjectSet vms_only;
  vms_only.add_vms()->mutable_metadata()->set_name("web");
  EXPECT_TRUE(snapshot_query(prepare_apply(vms_only, {})).prefixes.empty());
}

}  // namespace

namespace {

v1::Vm* add_vm_on_pool(v1::ObjectSet& set, const std::string& name, const std::string& pool) {
  auto* vm = set.add_vms();
  vm->mutable_metadata()->set_name(name);
  vm->mutable_spec()->mutable_storage()->set_pool(pool);
  return vm;
}

TEST(ApplyPlan, AVmNamesAPoolThatExistsAndAPoolInUseStays) {
  FakeStore store;
  v1::ObjectSet vm_only;
  add_vm_on_pool(vm_only, "db", "ssd-pool");
  const auto e = expect_error([&] { store.plan(vm_only); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.storage.pool");
  EXPECT_NE(std::string(e.what()).find("blixard storage pool create ssd-pool"), std::string::npos);

  // Declared in the same set: one transaction makes both.
  v1::ObjectSet both = vm_only;
  auto* pool = both.add_storage_pools();
  pool->mutable_metadata()->set_name("ssd-pool");
  pool->mutable_spec()->set_path("/srv/ssd");
  EXPECT_EQ(actions(store.apply(both)),
            (std::vector<std::string>{"storage pool/ssd-pool=created", "vm/db=created"}));
  // Once stored, the VM alone applies, guarded by the pool's version.
  const auto again = store.plan(vm_only);
  bool guarded = false;
  for (const auto& x : again.expected) guarded |= x.key == "/registry/storagepools/ssd-pool";
  EXPECT_TRUE(guarded);

  v1::ObjectSet pool_only;
  *pool_only.add_storage_pools() = *pool;
  expect_error([&] { store.plan(pool_only, {.mode = Mode::remove}); }, errc::conflict);
  // With the VM that uses it: both go.
  EXPECT_EQ(actions(store.apply(both, {.mode = Mode::remove})),
            (std::vector<std::string>{"storage pool/ssd-pool=deleted", "vm/db=deleted"}));
}

}  // namespace

namespace {

// A Platform's set as the loader makes it: the set and each object name the stack.
v1::ObjectSet in_stack(v1::ObjectSet set, const std::string& stack) {
  set.set_stack(stack);
  for (auto& f : *set.mutable_functions()) f.mutable_metadata()->set_stack(stack);
  for (auto& v : *set.mutable_vms()) v.mutable_metadata()->set_stack(stack);
  for (auto& q : *set.mutable_queues()) q.mutable_metadata()->set_stack(stack);
  for (auto& p : *set.mutable_storage_pools()) p.mutable_metadata()->set_stack(stack);
  return set;
}

bool holds(FakeStore& store, const std::string& key) { return store.snapshot().contains(key); }

TEST(ApplyPlan, PruneDeletesWhatLeftTheStackAndNothingElse) {
  FakeStore store;
  v1::ObjectSet shop;
  add_function(shop, "a");
  add_inline_trigger(*add_function(shop, "b"), "http", "/b");
  shop.add_vms()->mutable_metadata()->set_name("web");
  store.apply(in_stack(shop, "shop"));
  v1::ObjectSet blog;
  add_function(blog, "other");
  store.apply(in_stack(blog, "blog"));
  v1::ObjectSet loose;
  add_function(loose, "loose");
  store.apply(loose);

  v1::ObjectSet smaller;
  add_function(smaller, "a");
  smaller = in_stack(smaller, "shop");
  // Without prune what left the manifest stays.
  EXPECT_EQ(actions(store.plan(smaller)), std::vector<std::string>{"function/a=unchanged"});
  const auto p = store.apply(smaller, {.prune = true});
  EXPECT_EQ(actions(p), (std::vector<std::string>{"function/a=unchanged", "function/b=pruned",
                                                  "trigger/b-http=pruned", "vm/web=pruned"}));
  EXPECT_FALSE(holds(store, "/registry/functions/b"));
  EXPECT_FALSE(holds(store, "/registry/triggers/b-http"));
  EXPECT_FALSE(holds(store, "/registry/vms/web"));
  EXPECT_TRUE(holds(store, "/registry/functions/other")) << "another stack's";
  EXPECT_TRUE(holds(store, "/registry/functions/loose")) << "no stack's";
  // Each pruned object was deleted at the version it was read at.
  bool guarded = false;
  for (const auto& e : p.expected)
    guarded |= e.key == "/registry/vms/web" && e.resource_version > 0;
  EXPECT_TRUE(guarded);

  // Prune needs a stack to know what is its to delete.
  v1::ObjectSet plain;
  add_function(plain, "loose");
  EXPECT_EQ(expect_error([&] { store.plan(plain, {.prune = true}); }, errc::invalid_spec).field(),
            "stack");
}

TEST(ApplyPlan, AStackNamedForAPlainListHoldsItsObjectsAndMustMatchThePlatform) {
  FakeStore store;
  v1::ObjectSet plain;
  add_inline_trigger(*add_function(plain, "echo"), "http", "/echo");
  store.apply(plain, {.stack = "tools"});
  EXPECT_EQ(store.get<v1::Function>("/registry/functions/echo").metadata().stack(), "tools");
  EXPECT_EQ(store.get<v1::Trigger>("/registry/triggers/echo-http").metadata().stack(), "tools");
  // The same list in the same stack again: unchanged; without the stack it would move out of it.
  EXPECT_EQ(actions(store.plan(plain, {.stack = "tools"}))[0], "function/echo=unchanged");
  EXPECT_EQ(actions(store.plan(plain))[0], "function/echo=configured");

  const auto e = expect_error([&] { store.plan(in_stack(plain, "shop"), {.stack = "tools"}); },
                              errc::invalid_spec);
  EXPECT_EQ(e.field(), "stack");
  EXPECT_NE(std::string(e.what()).find("\"shop\""), std::string::npos) << e.what();
  EXPECT_EQ(
      expect_error([&] { store.plan(plain, {.stack = "Not A Name"}); }, errc::invalid_spec).field(),
      "stack");

  // remove with an empty set and the stack: the whole stack goes.
  EXPECT_EQ(actions(store.apply({}, {.mode = Mode::remove, .prune = true, .stack = "tools"})),
            (std::vector<std::string>{"function/echo=deleted", "trigger/echo-http=deleted"}));
  EXPECT_TRUE(store.snapshot().empty());
}

v1::ObjectSet worker(const std::string& queue) {
  v1::ObjectSet set;
  add_inline_trigger(*add_function(set, "worker"), "queue", queue);
  return set;
}

TEST(ApplyPlan, AQueueTriggerCreatesItsMissingQueueWhichGoesWithIt) {
  FakeStore store;
  const auto shop = in_stack(worker("orders-queue"), "shop");
  EXPECT_EQ(actions(store.apply(shop)),
            (std::vector<std::string>{"function/worker=created", "queue/orders-queue=created",
                                      "trigger/worker-queue=created"}));
  const auto queue = store.get<v1::Queue>("/registry/queues/orders-queue");
  EXPECT_EQ(queue.metadata().labels().at("blixard.dev/created-for"), "worker-queue");
  EXPECT_EQ(queue.metadata().stack(), "shop");
  // The default spec: no visibility timeout of its own, so the trigger's (6x its function's
  // timeout) applies; no dead letters.
  EXPECT_FALSE(queue.spec().has_visibility_timeout());
  EXPECT_EQ(queue.spec().max_receives(), 0U);

  // Applied again, with prune: the queue is still the trigger's, unchanged and kept.
  const auto again = store.apply(shop, {.prune = true});
  EXPECT_TRUE(again.writes.empty());
  EXPECT_EQ(actions(again)[1], "queue/orders-queue=unchanged");

  // Deleting the manifest deletes the queue made for it.
  EXPECT_EQ(actions(store.apply(shop, {.mode = Mode::remove})),
            (std::vector<std::string>{"function/worker=deleted", "trigger/worker-queue=deleted",
                                      "queue/orders-queue=deleted"}));
  EXPECT_TRUE(store.snapshot().empty());
}

TEST(ApplyPlan, AQueueThatExistsOrThatAnotherTriggerReadsIsNotTheTriggers) {
  FakeStore store;
  // Declared in the set: no second queue, and the declaration owns it.
  v1::ObjectSet declared = worker("jobs");
  declared.add_queues()->mutable_metadata()->set_name("jobs");
  EXPECT_EQ(actions(store.apply(declared)),
            (std::vector<std::string>{"function/worker=created", "queue/jobs=created",
                                      "trigger/worker-queue=created"}));
  EXPECT_FALSE(store.get<v1::Queue>("/registry/queues/jobs")
                   .metadata()
                   .labels()
                   .contains("blixard.dev/created-for"));
  store.apply(worker("jobs"), {.mode = Mode::remove});
  EXPECT_TRUE(holds(store, "/registry/queues/jobs")) << "a declared queue outlives its readers";

  // Made for one trigger and read by another: it stays while that one does.
  store.apply(worker("shared"));
  v1::ObjectSet other;
  add_inline_trigger(*add_function(other, "auditor"), "queue", "shared");
  EXPECT_EQ(
      actions(store.apply(other)),
      (std::vector<std::string>{"function/auditor=created", "trigger/auditor-queue=created"}));
  store.apply(worker("shared"), {.mode = Mode::remove});
  EXPECT_TRUE(holds(store, "/registry/queues/shared"));
}

TEST(ApplyPlan, QueuesAreValidatedByField) {
  FakeStore store;
  auto queue = [](const std::string& name) {
    v1::ObjectSet set;
    set.add_queues()->mutable_metadata()->set_name(name);
    return set;
  };
  auto field_of = [&](const v1::ObjectSet& set) {
    return expect_error([&] { store.plan(set); }, errc::invalid_spec).field();
  };
  auto q = queue("orders");
  q.mutable_queues(0)->mutable_spec()->mutable_visibility_timeout()->set_nanos(500'000'000);
  EXPECT_EQ(field_of(q), "spec.visibilityTimeout");
  q = queue("orders");
  q.mutable_queues(0)->mutable_spec()->mutable_visibility_timeout()->set_seconds(13 * 3600);
  EXPECT_EQ(field_of(q), "spec.visibilityTimeout");
  q = queue("orders");
  q.mutable_queues(0)->mutable_spec()->set_max_receives(1001);
  EXPECT_EQ(field_of(q), "spec.maxReceives");
  q = queue("orders");
  q.mutable_queues(0)->mutable_spec()->set_dead_letter_queue("orders-dead");
  EXPECT_EQ(field_of(q), "spec.deadLetterQueue") << "needs maxReceives";
  q.mutable_queues(0)->mutable_spec()->set_max_receives(5);
  EXPECT_EQ(field_of(q), "spec.deadLetterQueue") << "names no queue";
  q.mutable_queues(0)->mutable_spec()->set_dead_letter_queue("orders");
  EXPECT_EQ(field_of(q), "spec.deadLetterQueue") << "names itself";
  EXPECT_EQ(field_of(queue("Orders")), "metadata.name");

  // A dead-letter queue in the set, or stored (and then held to its version).
  q.mutable_queues(0)->mutable_spec()->set_dead_letter_queue("orders-dead");
  auto both = q;
  both.add_queues()->mutable_metadata()->set_name("orders-dead");
  EXPECT_EQ(actions(store.plan(both)),
            (std::vector<std::string>{"queue/orders=created", "queue/orders-dead=created"}));
  store.apply(queue("orders-dead"));
  const auto p = store.plan(q);
  bool guarded = false;
  for (const auto& e : p.expected) guarded |= e.key == "/registry/queues/orders-dead";
  EXPECT_TRUE(guarded);

  // In a Platform, errors name the entry.
  auto platform_queue = in_stack(queue("orders"), "shop");
  platform_queue.mutable_queues(0)->mutable_spec()->set_max_receives(2000);
  EXPECT_EQ(field_of(platform_queue), "spec.queues[0].maxReceives");
}

TEST(ApplyPlan, ADryRunDiffsEachChangeLiveAgainstMerged) {
  FakeStore store;
  store.apply(platform());
  auto changed = platform();
  changed.mutable_functions(0)->mutable_spec()->set_memory_mib(256);
  add_function(changed, "added");
  const auto p = store.plan(changed, {.dry_run = true});
  ASSERT_EQ(actions(p),
            (std::vector<std::string>{"function/echo=configured", "function/added=created",
                                      "vm/web=unchanged", "trigger/echo-http=unchanged"}));
  const std::string& diff = p.result.items(0).diff();
  EXPECT_TRUE(diff.starts_with("--- live/function/echo\n+++ merged/function/echo\n@@ ")) << diff;
  EXPECT_NE(diff.find("\n-  memory: 128\n+  memory: 256\n"), std::string::npos) << diff;
  EXPECT_EQ(diff.find("source"), std::string::npos) << "where the manifest lives is no change";
  EXPECT_NE(p.result.items(1).diff().find("\n+  handler: app:handler\n"), std::string::npos)
      << p.result.items(1).diff();
  EXPECT_TRUE(p.result.items(2).diff().empty());

  // Without dry_run: no diffs. Pruned objects diff to nothing.
  EXPECT_TRUE(store.plan(changed).result.items(0).diff().empty());
  const auto removed = store.plan(platform(), {.mode = Mode::remove, .dry_run = true});
  EXPECT_NE(removed.result.items(0).diff().find("\n-  name: echo\n"), std::string::npos)
      << removed.result.items(0).diff();
}

TEST(ApplyDiff, UnifiedDiffHasHunksWithThreeLinesOfContext) {
  EXPECT_EQ(unified_diff("a\nb\nc\n", "a\nb\nc\n", "x", "y"), "");
  EXPECT_EQ(unified_diff("a\nb\nc\n", "a\nB\nc\n", "x", "y"),
            "--- x\n+++ y\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n");
  EXPECT_EQ(unified_diff("", "a\n", "x", "y"), "--- x\n+++ y\n@@ -0,0 +1 @@\n+a\n");
  // Changes eight lines apart: two hunks.
  std::string before, after;
  for (int i = 1; i <= 12; ++i) {
    before += std::to_string(i) + "\n";
    after += (i == 2 || i == 11 ? "x" : std::to_string(i)) + "\n";
  }
  EXPECT_EQ(unified_diff(before, after, "x", "y"),
            "--- x\n+++ y\n@@ -1,5 +1,5 @@\n 1\n-2\n+x\n 3\n 4\n 5\n"
            "@@ -8,5 +8,5 @@\n 8\n 9\n 10\n-11\n+x\n 12\n");
}

TEST(ApplyPlan, APoolOrNetworkStillUsedIsNotPruned) {
  FakeStore store;
  v1::ObjectSet shop;
  auto* pool = shop.add_storage_pools();
  pool->mutable_metadata()->set_name("ssd");
  pool->mutable_spec()->set_path("/srv/ssd");
  add_function(shop, "a");
  store.apply(in_stack(shop, "shop"));
  v1::ObjectSet db;
  add_vm_on_pool(db, "db", "ssd");
  store.apply(db);  // another stack's VM uses the shop's pool

  v1::ObjectSet smaller;
  add_function(smaller, "a");
  const auto e =
      expect_error([&] { store.plan(in_stack(smaller, "shop"), {.prune = true}); }, errc::conflict);
  EXPECT_NE(std::string(e.what()).find("vm \"db\""), std::string::npos) << e.what();
  store.apply(db, {.mode = Mode::remove});
  EXPECT_EQ(actions(store.apply(in_stack(smaller, "shop"), {.prune = true})),
            (std::vector<std::string>{"function/a=unchanged", "storage pool/ssd=pruned"}));
}

}  // namespace
