// The first slice through every layer, driven through the public C++ SDK: an embedded cluster on
// a temporary dir, objects created, listed, kept across reopen, functions invoked in the sandbox.
#include <gtest/gtest.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "blixard/blixard.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using blixard::Cluster;
using blixard::errc;
using blixard::Error;
using blixard::test_support::expect_error;
using blixard::test_support::python;

namespace {

const fs::path k_data = fs::path(BLIXARD_TEST_DATA) / "cluster";

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("blixard-cluster-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override {
    fs::remove_all(dir_);
    // Every instance of this process is gone, its cgroups too (they are named <fn>-<pid>-<n>).
    const std::string mine = "-" + std::to_string(::getpid()) + "-";
    for (const char* root : {"/sys/fs/cgroup/memory/blixard", "/sys/fs/cgroup/pids/blixard",
                             "/sys/fs/cgroup/blixard"}) {
      std::error_code ec;
      for (const auto& entry : fs::directory_iterator(root, ec)) {
        EXPECT_EQ(entry.path().filename().string().find(mine), std::string::npos)
            << "leaked cgroup " << entry.path();
      }
    }
  }

  Cluster open() {
    blixard::LocalOptions options;
    options.python = python();
    return Cluster::local(dir_, options);
  }

  fs::path dir_;
};

TEST_F(ClusterTest, CreateInvokeListDeleteFunction) {
  auto c = open();
  auto fn = c.create_function("echo", k_data / "echo.yaml");
  EXPECT_EQ(fn.get().spec().memory_mib(), 64u);
  EXPECT_EQ(fn.get().spec().runtime(), "python");

  auto result = fn.invoke(R"({"x": 1})");
  EXPECT_NE(result.result.find(R"("x": 1)"), std::string::npos) << result.result;
  EXPECT_NE(result.result.find(R"("function": "echo")"), std::string::npos) << result.result;
  EXPECT_EQ(result.node, "local");
  EXPECT_FALSE(result.request_id.empty());

  ASSERT_EQ(c.functions().size(), 1u);
  EXPECT_EQ(c.functions()[0].metadata().name(), "echo");
  c.delete_function("echo");
  EXPECT_TRUE(c.functions().empty());
  expect_error([&] { fn.invoke("{}"); }, errc::not_found);
}

TEST_F(ClusterTest, FlagsOverrideTheConfigFile) {
  auto c = open();
  auto fn =
      c.create_function("echo", k_data / "echo.yaml",
                        R"({"memory": "128M", "timeout": "30s", "concurrentExecutions": 100})");
  auto spec = fn.get().spec();
  EXPECT_EQ(spec.memory_mib(), 128u);
  EXPECT_EQ(spec.timeout().seconds(), 30);
  EXPECT_EQ(spec.concurrent_executions(), 100u);
  auto e = expect_error(
      [&] { c.create_function("other", k_data / "echo.yaml", R"({"memory": "lots"})"); },
      errc::invalid_spec);
  EXPECT_EQ(e.field(), "memory");
}

TEST_F(ClusterTest, ObjectsAreKeptAcrossReopen) {
  {
    auto c = open();
    c.apply(k_data / "platform.yaml");
  }
  auto c = open();
  EXPECT_EQ(c.functions().size(), 2u);
  ASSERT_EQ(c.vms().size(), 1u);
  EXPECT_EQ(c.vms()[0].spec().replicas(), 2u);
  EXPECT_EQ(c.vms()[0].metadata().stack(), "shop");
  ASSERT_EQ(c.triggers().size(), 1u);
  EXPECT_EQ(c.triggers()[0].spec().path(), "/api/echo");
  EXPECT_EQ(c.triggers()[0].spec().function(), "echo");
  EXPECT_NE(c.function("echo").invoke("[1,2]").result.find("[1, 2]"), std::string::npos);
}

// Each stored object's resource version by kind and name: what an apply that rewrote nothing
// leaves as it was.
std::map<std::string, std::int64_t> resource_versions(Cluster& c) {
  std::map<std::string, std::int64_t> out;
  for (const auto& f : c.functions())
    out["function/" + f.metadata().name()] = f.metadata().resource_version();
  for (const auto& v : c.vms()) out["vm/" + v.metadata().name()] = v.metadata().resource_version();
  for (const auto& t : c.triggers())
    out["trigger/" + t.metadata().name()] = t.metadata().resource_version();
  return out;
}

TEST_F(ClusterTest, ApplyReportsCreatedUnchangedConfigured) {
  auto c = open();
  auto first = c.apply(k_data / "platform.yaml");
  for (const auto& item : first.items()) EXPECT_EQ(item.action(), "created") << item.name();
  const auto versions = resource_versions(c);
  auto second = c.apply(k_data / "platform.yaml");
  for (const auto& item : second.items()) EXPECT_EQ(item.action(), "unchanged") << item.name();
  // (The store's revision moves on: the VM controller records the set's revision.)
  EXPECT_EQ(resource_versions(c), versions) << "nothing was rewritten";

  auto removed = c.remove(k_data / "platform.yaml");
  EXPECT_EQ(removed.items_size(), 4);  // two functions, a vm, the echo function's trigger
  EXPECT_TRUE(c.functions().empty());
  EXPECT_TRUE(c.vms().empty());
  EXPECT_TRUE(c.triggers().empty());
}

// Only a declaration change reconfigures: the same objects read from another file are unchanged.
TEST_F(ClusterTest, AMovedManifestLeavesItsObjectsUnchanged) {
  auto c = open();
  c.apply(k_data / "platform.yaml");
  const auto versions = resource_versions(c);
  auto set = blixard::load_manifest(k_data / "platform.yaml", c.spec_options());
  const std::string source = set.functions(0).metadata().source();
  for (auto& fn : *set.mutable_functions()) fn.mutable_metadata()->set_source("/moved/p.yaml");
  for (auto& vm : *set.mutable_vms()) vm.mutable_metadata()->set_source("/moved/p.yaml");
  auto moved = c.apply(set);
  for (const auto& item : moved.items()) EXPECT_EQ(item.action(), "unchanged") << item.name();
  EXPECT_EQ(resource_versions(c), versions) << "nothing was rewritten";
  EXPECT_EQ(c.function("echo").get().metadata().source(), source);
}

// Code travels as an archive named by its digest (DESIGN §5): what runs is the code as it was
// when the function was created, wherever the client kept it; the server never reads a path.
TEST_F(ClusterTest, CodeIsKeptByDigestAndRunsAsItWasWhenApplied) {
  const fs::path src = dir_.string() + "-src";
  const fs::path copy = dir_.string() + "-copy";
  struct Cleanup {
    std::vector<fs::path> dirs;
    ~Cleanup() {
      for (const auto& d : dirs) fs::remove_all(d);
    }
  } cleanup{{src, copy}};
  auto write_handler = [&](const fs::path& d, int v) {
    fs::create_directories(d);
    std::ofstream(d / "version.py") << "def handler(e, c):\n    return {'v': " << v << "}\n";
  };
  write_handler(src, 1);
  auto c = open();
  blixard::v1::FunctionSpec spec;
  spec.set_runtime("python");
  spec.set_handler("version:handler");
  spec.set_code(src.string());
  auto fn = c.create_function("version", spec);
  const auto stored = fn.get().spec();
  EXPECT_TRUE(stored.code().empty()) << "the server kept the client's path";
  ASSERT_TRUE(stored.code_digest().starts_with("sha256:")) << stored.code_digest();

  write_handler(src, 2);  // after create: the function does not change under it
  EXPECT_EQ(fn.invoke("{}").result, R"({"v": 1})");

  // Applying it again: the same code from another directory is unchanged, new code configures.
  blixard::v1::ObjectSet set;
  auto* f = set.add_functions();
  f->mutable_metadata()->set_name("version");
  *f->mutable_spec() = spec;
  fs::create_directories(copy);
  fs::copy(src, copy, fs::copy_options::recursive);
  write_handler(copy, 1);
  f->mutable_spec()->set_code(copy.string());
  EXPECT_EQ(c.apply(set).items(0).action(), "unchanged");
  f->mutable_spec()->set_code(src.string());
  EXPECT_EQ(c.apply(set).items(0).action(), "configured");
  EXPECT_NE(fn.get().spec().code_digest(), stored.code_digest());
  EXPECT_EQ(fn.invoke("{}").result, R"({"v": 2})") << "new calls run the new code";
}

TEST_F(ClusterTest, TheServerRefusesCodePathsAndUnknownDigests) {
  auto c = open();
  blixard::v1::ObjectSet set;
  auto* f = set.add_functions();
  f->mutable_metadata()->set_name("raw");
  f->mutable_spec()->set_runtime("python");
  f->mutable_spec()->set_handler("echo:handler");
  f->mutable_spec()->set_code(k_data.string());
  // Straight to the server, past the SDK that packs: a path is refused, naming the field.
  auto e = expect_error([&] { c.backend()->apply(set, {}); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.code");
  EXPECT_NE(e.message().find("PUT /v1/blobs"), std::string::npos) << e.message();

  f->mutable_spec()->clear_code();
  f->mutable_spec()->set_code_digest("sha256:" + std::string(64, '0'));
  e = expect_error([&] { c.backend()->apply(set, {}); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.codeDigest");
  EXPECT_NE(e.message().find("upload it first"), std::string::npos) << e.message();
  f->mutable_spec()->set_code_digest("sha256:short");
  e = expect_error([&] { c.backend()->apply(set, {}); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.codeDigest");

  // Through the SDK a missing directory is the client's error, naming the field.
  f->mutable_spec()->clear_code_digest();
  f->mutable_spec()->set_code((dir_ / "no-such-dir").string());
  e = expect_error([&] { c.apply(set); }, errc::invalid_spec);
  EXPECT_NE(e.field().find("code"), std::string::npos) << e.field();
  EXPECT_TRUE(c.functions().empty());
}

// apply as a reconciler, through the SDK: a dry run reports each change with its diff and
// changes nothing; prune deletes what left the stack's manifest; a queue trigger's missing queue
// is made for it; a stack is deleted whole, with no file.
TEST_F(ClusterTest, ApplyDryRunPruneAndDeleteAStack) {
  const fs::path manifests = dir_.string() + "-manifests";
  struct Cleanup {
    fs::path dir;
    ~Cleanup() { fs::remove_all(dir); }
  } cleanup{manifests};
  fs::create_directories(manifests);
  const std::string echo = (k_data / "echo.yaml").string();
  std::ofstream(manifests / "v1.yaml")
      << "apiVersion: blixard.dev/v1\nkind: Platform\nmetadata: {name: shop}\nspec:\n"
      << "  functions:\n"
      << "    - {name: api, config: " << echo << ", triggers: [{type: queue, source: orders}]}\n"
      << "    - {name: extra, config: " << echo << "}\n"
      << "  queues:\n    - {name: audit, visibilityTimeout: 45s, maxReceives: 3}\n";
  std::ofstream(manifests / "v2.yaml")
      << "apiVersion: blixard.dev/v1\nkind: Platform\nmetadata: {name: shop}\nspec:\n"
      << "  functions:\n"
      << "    - {name: api, config: " << echo
      << ", memory: 96M, triggers: [{type: queue, source: orders}]}\n";
  auto actions = [](const blixard::v1::ApplyResult& r) {
    std::vector<std::string> out;
    for (const auto& item : r.items())
      out.push_back(item.kind() + "/" + item.name() + "=" + item.action());
    return out;
  };

  auto c = open();
  EXPECT_EQ(actions(c.apply(manifests / "v1.yaml")),
            (std::vector<std::string>{"function/api=created", "function/extra=created",
                                      "queue/audit=created", "queue/orders=created",
                                      "trigger/api-queue=created"}));
  const auto versions = resource_versions(c);

  const auto dry = c.apply(manifests / "v2.yaml", {.dry_run = true, .prune = true});
  EXPECT_EQ(actions(dry),
            (std::vector<std::string>{"function/api=configured", "queue/orders=unchanged",
                                      "trigger/api-queue=unchanged", "function/extra=pruned",
                                      "queue/audit=pruned"}));
  EXPECT_NE(dry.items(0).diff().find("-  memory: 64\n+  memory: 96\n"), std::string::npos)
      << dry.items(0).diff();
  EXPECT_EQ(resource_versions(c), versions) << "a dry run changed something";
  EXPECT_EQ(c.function("api").get().spec().memory_mib(), 64U);

  // Without prune what left the manifest stays; with it, it goes.
  EXPECT_EQ(actions(c.apply(manifests / "v2.yaml"))[0], "function/api=configured");
  EXPECT_EQ(c.functions().size(), 2U);
  const auto pruned = c.apply(manifests / "v2.yaml", {.prune = true});
  EXPECT_EQ(actions(pruned),
            (std::vector<std::string>{"function/api=unchanged", "queue/orders=unchanged",
                                      "trigger/api-queue=unchanged", "function/extra=pruned",
                                      "queue/audit=pruned"}));
  EXPECT_EQ(c.functions().size(), 1U);
  EXPECT_EQ(c.function("api").get().spec().memory_mib(), 96U);

  // The stack, deleted with no file: its function, trigger and the queue made for it.
  EXPECT_EQ(actions(c.remove_stack("shop")),
            (std::vector<std::string>{"function/api=deleted", "trigger/api-queue=deleted",
                                      "queue/orders=deleted"}));
  EXPECT_TRUE(c.functions().empty());
  EXPECT_TRUE(c.triggers().empty());
  EXPECT_TRUE(c.remove_stack("shop").items().empty());

  // A manifest of plain objects joins the stack it is given; prune needs one.
  std::ofstream(manifests / "plain.yaml")
      << "apiVersion: blixard.dev/v1\nkind: Function\nmetadata: {name: tool}\nspec: {config: "
      << echo << "}\n";
  const auto e =
      expect_error([&] { c.apply(manifests / "plain.yaml", {.prune = true}); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "stack");
  c.apply(manifests / "plain.yaml", {.stack = "tools"});
  EXPECT_EQ(c.function("tool").get().metadata().stack(), "tools");
  EXPECT_EQ(
      expect_error([&] { c.apply(manifests / "v2.yaml", {.stack = "tools"}); }, errc::invalid_spec)
          .field(),
      "stack");
  EXPECT_EQ(actions(c.remove_stack("tools")), std::vector<std::string>{"function/tool=deleted"});
}

TEST_F(ClusterTest, BadManifestChangesNothing) {
  auto c = open();
  auto e = expect_error([&] { c.apply(k_data / "bad-platform.yaml"); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.functions[1].memory");
  EXPECT_EQ(e.status().line(), 11u);
  EXPECT_TRUE(c.functions().empty());
}

TEST_F(ClusterTest, HandlerFailuresAreClearErrors) {
  auto c = open();
  c.apply(k_data / "platform.yaml");
  auto boom = expect_error([&] { c.function("boom").invoke(R"({"why": "testing"})"); },
                           errc::handler_failed);
  EXPECT_NE(std::string(boom.what()).find("boom: testing"), std::string::npos) << boom.what();

  blixard::v1::FunctionSpec crash;
  crash.set_runtime("python");
  crash.set_handler("funcs:crash");
  crash.set_code((k_data / "code").string());
  auto crashing = c.create_function("crash", crash);
  expect_error([&] { crashing.invoke("{}"); }, errc::handler_failed);

  blixard::v1::FunctionSpec slow = crash;
  slow.set_handler("funcs:slow");
  slow.mutable_timeout()->set_seconds(1);
  auto sleeper = c.create_function("slow", slow);
  expect_error([&] { sleeper.invoke(R"({"seconds": 30})"); }, errc::timeout);

  // The failing functions did not hurt the others.
  EXPECT_NE(c.function("echo").invoke("{}").result.find("echo"), std::string::npos);
}

TEST_F(ClusterTest, BadInputIsRejectedByName) {
  auto c = open();
  c.create_function("echo", k_data / "echo.yaml");
  auto e = expect_error([&] { c.function("echo").invoke("{not json"); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "payload");
  expect_error([&] { c.function("missing").invoke("{}"); }, errc::not_found);
  expect_error([&] { c.create_function("echo", k_data / "echo.yaml"); }, errc::already_exists);
  auto spaced = expect_error([&] { c.create_function("my function", k_data / "echo.yaml"); },
                             errc::invalid_spec);
  EXPECT_NE(spaced.field().find("name"), std::string::npos);
  expect_error([&] { c.delete_vm("nothing"); }, errc::not_found);
  EXPECT_EQ(c.functions().size(), 1u);
}

TEST_F(ClusterTest, DataDirMustBeWritableAndUnshared) {
  auto c = open();
  expect_error([&] { open(); }, errc::unavailable);  // locked by `c`
  fs::path file = dir_ / "a-file";
  std::ofstream(file) << "x";
  blixard::LocalOptions options;
  auto e = expect_error([&] { Cluster::local(file / "sub", options); }, errc::unavailable);
  EXPECT_NE(std::string(e.what()).find("a-file"), std::string::npos);
}

TEST_F(ClusterTest, TheLocalNodeIsListed) {
  auto c = open();
  auto nodes = c.nodes();
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].metadata().name(), "local");
  EXPECT_EQ(nodes[0].status().phase(), "Ready");
  EXPECT_FALSE(nodes[0].spec().labels().at("arch").empty());
}

TEST_F(ClusterTest, InvocationsAppearInTheEventStream) {
  auto c = open();
  auto fn = c.create_function("echo", k_data / "echo.yaml");
  auto first = fn.invoke("{}");
  auto second = fn.invoke("{}");
  EXPECT_TRUE(first.cold_start);
  EXPECT_FALSE(second.cold_start);
  auto events = c.backend()->events("functions", "echo", 0, std::chrono::milliseconds(0));
  std::vector<std::string> reasons;
  for (const auto& e : events.events()) {
    if (e.type() == "record") reasons.push_back(e.reason());
  }
  auto at = [&](const std::string& r) {
    return std::find(reasons.begin(), reasons.end(), r) - reasons.begin();
  };
  ASSERT_LT(at("ColdStart"), static_cast<long>(reasons.size()))
      << ::testing::PrintToString(reasons);
  ASSERT_LT(at("Invoked"), static_cast<long>(reasons.size())) << ::testing::PrintToString(reasons);
  EXPECT_LT(at("Placed"), at("ColdStart"));
  EXPECT_LT(at("ColdStart"), at("Invoked"));
  EXPECT_EQ(fn.metrics().invocations(), 2u);
  EXPECT_EQ(fn.metrics().cold_starts(), 1u);
}

TEST_F(ClusterTest, AsyncInvokeWorksWithEveryCompletionToken) {
  namespace asio = boost::asio;
  auto c = open();
  auto fn = c.create_function("echo", k_data / "echo.yaml");

  // A future.
  auto future = fn.async_invoke(R"({"via": "future"})", asio::use_future);
  EXPECT_NE(future.get().result.find("future"), std::string::npos);

  // A coroutine on the caller's io_context, and a callback; run() returns when both completed.
  asio::io_context io;
  std::string from_coroutine;
  std::exception_ptr from_callback;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto r = co_await fn.async_invoke(R"({"via": "coroutine"})", asio::use_awaitable);
        from_coroutine = r.result;
      },
      asio::detached);
  c.function("missing").async_invoke(
      "{}", asio::bind_executor(
                io, [&](std::exception_ptr e, blixard::InvokeResult) { from_callback = e; }));
  io.run();
  EXPECT_NE(from_coroutine.find("coroutine"), std::string::npos);
  ASSERT_TRUE(from_callback);
  expect_error([&] { std::rethrow_exception(from_callback); }, errc::not_found);
}

// funcs:slow, which sleeps event["seconds"], with a timeout of a minute.
blixard::v1::FunctionSpec slow_spec() {
  blixard::v1::FunctionSpec slow;
  slow.set_runtime("python");
  slow.set_handler("funcs:slow");
  slow.set_code((k_data / "code").string());
  slow.mutable_timeout()->set_seconds(60);
  return slow;
}

TEST_F(ClusterTest, AsyncInvokeTakesAPerCallTimeout) {
  auto c = open();
  auto fn = c.create_function("slow", slow_spec());
  auto future = fn.async_invoke(R"({"seconds": 30})", std::chrono::milliseconds(300),
                                boost::asio::use_future);
  const auto e = expect_error([&] { future.get(); }, errc::timeout);
  EXPECT_NE(std::string(e.what()).find("timed out after 300ms"), std::string::npos) << e.what();
}

TEST_F(ClusterTest, AsyncInvokeOnWarmInstancesAnswersAndTimesOut) {
  auto c = open();
  auto slow = slow_spec();
  slow.mutable_scaling()->set_min_instances(2);
  auto fn = c.create_function("slow", slow);
  ASSERT_TRUE(
      blixard::test_support::eventually([&] { return fn.get().status().instances_warm() == 2; }));
  // Warm calls are read on the SDK's own reactor with no thread waiting for them.
  std::vector<std::future<blixard::InvokeResult>> calls;
  for (int i = 0; i < 12; ++i) {
    calls.push_back(fn.async_invoke(R"({"seconds": 0.01})", boost::asio::use_future));
  }
  for (auto& call : calls) {
    const auto r = call.get();
    EXPECT_EQ(r.result, "\"done\"");
    EXPECT_FALSE(r.request_id.empty());
  }
  auto late = fn.async_invoke(R"({"seconds": 30})", std::chrono::milliseconds(300),
                              boost::asio::use_future);
  const auto e = expect_error([&] { late.get(); }, errc::timeout);
  EXPECT_NE(std::string(e.what()).find("timed out after 300ms"), std::string::npos) << e.what();
  EXPECT_EQ(fn.metrics().invocations(), 13u);  // twelve answers and the timeout
}

// Status from the store (DESIGN §4): a ready instance is a stored object, so status reads it from
// the store and a watch from a store revision sees it come, and go when the next run starts.
TEST_F(ClusterTest, InstancesAreStoredObjectsWatchedFromAStoreRevision) {
  using namespace std::chrono_literals;
  std::int64_t created = 0;
  std::string instance;
  {
    auto c = open();
    auto fn = c.create_function("echo", k_data / "echo.yaml");
    created = fn.get().metadata().resource_version();
    ASSERT_TRUE(fn.invoke("{}").cold_start);
    const auto status = fn.get().status();
    ASSERT_EQ(status.instances_size(), 1);
    const auto& in = status.instances(0);
    instance = in.name();
    EXPECT_EQ(in.function(), "echo");
    EXPECT_EQ(in.node(), "local");
    EXPECT_EQ(in.phase(), "Warm");
    EXPECT_GT(in.epoch(), 0);
    EXPECT_EQ(in.memory_mib(), 64u);
    EXPECT_GT(in.cold_start_us(), 0);
    EXPECT_EQ(status.instances_warm(), 1u);

    // From the function's own revision: its put first, then its instance's.
    auto changes = c.backend()->changes("", "echo", created, 0ms);
    ASSERT_GE(changes.events_size(), 2) << changes.DebugString();
    EXPECT_EQ(changes.events(0).kind(), "functions");
    EXPECT_EQ(changes.events(0).store_revision(), created);
    const auto& put = changes.events(changes.events_size() - 1);
    EXPECT_EQ(put.type(), "put");
    EXPECT_EQ(put.kind(), "instances");
    EXPECT_EQ(put.name(), "echo/local/" + instance);
    EXPECT_GT(put.store_revision(), created);
    EXPECT_NE(put.object_json().find(R"("node":"local")"), std::string::npos) << put.object_json();
    // The kind filter keeps only instances; nothing is left after `next`.
    auto only = c.backend()->changes("instance", "echo", created, 0ms);
    ASSERT_EQ(only.events_size(), 1);
    EXPECT_EQ(only.events(0).name(), put.name());
    EXPECT_EQ(c.backend()->changes("", "", only.next(), 0ms).events_size(), 0);
    // A long poll from there answers with nothing when nothing changes...
    const auto began = std::chrono::steady_clock::now();
    EXPECT_EQ(c.backend()->changes("", "", only.next(), 300ms).events_size(), 0);
    EXPECT_GE(std::chrono::steady_clock::now() - began, 300ms);
    // ...and a watch from the instance's revision on sees the next object change.
    c.create_function("other", k_data / "echo.yaml");
    auto next = c.backend()->changes("functions", "", only.next(), 5s);
    ASSERT_EQ(next.events_size(), 1);
    EXPECT_EQ(next.events(0).name(), "other");

    const auto bad =
        expect_error([&] { c.backend()->changes("", "", 0, 0ms); }, errc::invalid_spec);
    EXPECT_EQ(bad.field(), "from");
  }
  // The instance ended with its server: the next one starts from none, and says so in the store.
  auto c = open();
  EXPECT_EQ(c.function("echo").get().status().instances_size(), 0);
  auto gone = c.backend()->changes("instances", "", created, 0ms);
  ASSERT_FALSE(gone.events().empty());
  EXPECT_EQ(gone.events(gone.events_size() - 1).type(), "delete");
  EXPECT_EQ(gone.events(gone.events_size() - 1).name(), "echo/local/" + instance);
}

}  // namespace

// Queues, events and async invocations through the C++ SDK (docs/queues.md).
TEST_F(ClusterTest, QueuesSendReceiveAcknowledgeAndFeedTheirTriggers) {
  auto c = open();
  blixard::v1::QueueSpec spec;
  spec.set_max_receives(3);
  auto q = c.create_queue("jobs", spec);
  auto ids = q.send(std::vector<std::string>{R"({"n":1})", R"({"n":2})"});
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(q.get().status().depth(), 2u);
  auto got = q.receive(5);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].body(), R"({"n":1})");
  EXPECT_EQ(q.acknowledge({got[0].receipt(), got[1].receipt()}), 2u);
  EXPECT_EQ(q.get().status().depth(), 0u);
  expect_error([&] { c.queue("nope").send("1"); }, errc::not_found);

  // A trigger drains what is sent; the function's metrics count the calls.
  c.create_function("echo", k_data / "echo.yaml");
  blixard::v1::TriggerSpec t;
  t.set_type("queue");
  t.set_source("jobs");
  t.set_function("echo");
  c.create_trigger("jobs-trigger", t);
  q.send(R"({"n":3})");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    auto st = q.get().status();
    if (st.depth() == 0 && st.in_flight() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(q.get().status().depth(), 0u);
  EXPECT_GE(c.function("echo").metrics().invocations(), 1u);
}

TEST_F(ClusterTest, AsyncInvocationsAndEventsAreDurableAndReported) {
  auto c = open();
  auto fn = c.create_function("echo", k_data / "echo.yaml");
  auto inv = fn.submit(R"({"hello": 1})");
  EXPECT_EQ(inv.state(), "queued");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  blixard::v1::Invocation now;
  while (std::chrono::steady_clock::now() < deadline) {
    now = c.invocation(inv.id());
    if (now.state() == "succeeded") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(now.state(), "succeeded");
  EXPECT_NE(now.result().find(R"("hello": 1)"), std::string::npos) << now.result();
  expect_error([&] { c.invocation("999999999"); }, errc::not_found);

  blixard::v1::TriggerSpec t;
  t.set_type("event");
  t.set_source("invoice-created");
  t.set_function("echo");
  c.create_trigger("on-invoice", t);
  auto published = c.publish("invoice-created", R"({"invoiceId": "INV-1"})");
  ASSERT_EQ(published.triggers_size(), 1);
  EXPECT_EQ(published.triggers(0), "on-invoice");
  expect_error([&] { c.publish("invoice-created", "{bad"); }, errc::invalid_spec);
}
