// The control plane's API semantics (see service.hpp).
#include "api/service.hpp"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <mutex>
#include <random>
#include <set>

#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>
#include <boost/json.hpp>

#include "api/apply_plan.hpp"
#include "blixard/spec.hpp"
#include "blixard/version.hpp"
#include "common/defaults.hpp"
#include "common/json.hpp"
#include "common/json_check.hpp"
#include "common/subnet.hpp"

namespace blixard::api {
namespace {

using google::protobuf::util::TimeUtil;

// The most messages one receive or peek answers with.
constexpr std::uint32_t k_max_receive = 1000;

constexpr int k_apply_attempts = 5;
// A blob no function names is removed once unused for this long (stored, or asked after): the
// apply that names an upload comes well within it.
constexpr auto k_unnamed_blob_grace = std::chrono::minutes(15);
// changes(): at most this many events per answer (whole revisions: it may hold a few more), and
// how long it waits for the store's watch to deliver the history it asked for.
constexpr std::size_t k_changes_per_answer = 1000;
constexpr auto k_changes_catch_up = std::chrono::seconds(5);

std::string random_hex(std::size_t bytes) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr std::array<char, 16> k_digits{'0', '1', '2', '3', '4', '5', '6', '7',
                                                 '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};
  std::string out;
  out.reserve(bytes * 2);
  for (std::size_t i = 0; i < bytes; ++i) {
    auto b = static_cast<unsigned>(rng() & 0xff);
    out.push_back(k_digits[b >> 4]);
    out.push_back(k_digits[b & 0xf]);
  }
  return out;
}

template <class T>
T decode(const store::KeyValue& kv) {
  T object;
  if (!object.ParseFromString(kv.value)) {
    throw Error(errc::internal, "stored object at " + kv.key + " is corrupt");
  }
  object.mutable_metadata()->set_resource_version(kv.mod_revision);
  object.mutable_metadata()->set_create_revision(kv.create_revision);
  return object;
}

template <class T>
T read_object(store::Store& store, const char* prefix, const char* kind, const std::string& name) {
  auto kv = store.get(prefix + name);
  if (!kv) throw Error(errc::not_found, std::string(kind) + " \"" + name + "\" not found", "name");
  return decode<T>(*kv);
}

template <class List>
List list_objects(store::Store& store, const char* prefix) {
  auto range = store.list(prefix);
  List list;
  for (const auto& kv : range.kvs) {
    *list.add_items() = decode<std::decay_t<decltype(list.items(0))>>(kv);
  }
  list.set_revision(range.revision);
  return list;
}

constexpr const char* k_registry_prefix = "/registry/";
constexpr std::string_view k_tokens_prefix = "/registry/tokens/";

// A store change under /registry/<kind>/<name> as an event of the watch stream.
v1::WatchEvent to_watch_event(const store::WatchEvent& change) {
  v1::WatchEvent event;
  const std::string_view key = change.kv.key;
  auto rest = key.substr(std::string_view(k_registry_prefix).size());
  auto slash = rest.find('/');
  event.set_type(change.type == store::WatchEvent::Type::put ? "put" : "delete");
  event.set_kind(std::string(rest.substr(0, slash)));
  event.set_name(slash == std::string_view::npos ? std::string()
                                                 : std::string(rest.substr(slash + 1)));
  event.set_store_revision(change.kv.mod_revision);
  if (change.type != store::WatchEvent::Type::put) return event;
  if (event.kind() == "functions") {
    event.set_object_json(to_json(decode<v1::Function>(change.kv)));
  } else if (event.kind() == "vms") {
    event.set_object_json(to_json(decode<v1::Vm>(change.kv)));
  } else if (event.kind() == "triggers") {
    event.set_object_json(to_json(decode<v1::Trigger>(change.kv)));
  } else if (event.kind() == "storagepools") {
    event.set_object_json(to_json(decode<v1::StoragePool>(change.kv)));
  } else if (event.kind() == "networks") {
    event.set_object_json(to_json(decode<v1::Network>(change.kv)));
  } else if (event.kind() == "volumes") {
    event.set_object_json(to_json(decode<v1::Volume>(change.kv)));
  } else if (event.kind() == "nodes") {
    event.set_object_json(to_json(decode<v1::Node>(change.kv)));
  } else if (event.kind() == "instances") {
    v1::FunctionInstance instance;
    if (instance.ParseFromString(change.kv.value)) event.set_object_json(to_json(instance));
  } else if (event.kind() == "vmrevisions") {  // name "<vm>/<revision>"
    v1::VmRevision revision;
    if (revision.ParseFromString(change.kv.value)) event.set_object_json(to_json(revision));
  }
  return event;
}

// The highest revision in a batch of watch events (batches hold whole revisions).
std::int64_t last_revision(const std::vector<store::WatchEvent>& changes) {
  std::int64_t last = 0;
  for (const auto& change : changes) last = std::max(last, change.kv.mod_revision);
  return last;
}

}  // namespace

Service::Service(std::shared_ptr<store::Store> store, std::shared_ptr<store::BlobStore> blobs,
                 std::unique_ptr<store::QueueLog> queue_log,
                 std::shared_ptr<control::NodeRegistry> nodes, std::string node_name,
                 std::shared_ptr<spdlog::logger> logger)
    : store_(std::move(store)),
      blobs_(std::move(blobs)),
      nodes_(std::move(nodes)),
      node_name_(std::move(node_name)),
      logger_(std::move(logger)) {
  if (!logger_) logger_ = std::make_shared<spdlog::logger>("blixard");
  tokens_ = std::make_unique<TokenRegistry>(store_);
  // The instances a previous run recorded are gone with it (a joined agent's are fenced when it
  // joins again): start from none.
  records_ = std::make_unique<control::InstanceRecords>(store_, logger_);
  records_->clear();
  registry_watch_ = store_->watch(k_registry_prefix, 0, [this](const auto& changes) {
    bool tokens_changed = false;
    for (const auto& change : changes) {
      // Tokens are nobody's business but an admin's: not even their names go to the stream.
      if (change.kv.key.starts_with(k_tokens_prefix)) {
        tokens_changed = true;
        continue;
      }
      try {
        telemetry_->publish(to_watch_event(change));
      } catch (const std::exception& e) {
        // One undecodable object must not stop the stream (nor throw into the store's thread).
        logger_->warn("cannot publish the change of {}: {}", change.kv.key, e.what());
      }
    }
    // A token revoked through another server stops working here too, not at the next miss.
    if (tokens_changed) tokens_->refresh();
  });
  pools_ = std::make_unique<control::FunctionPools>(nodes_, telemetry_);
  pools_->observe([records = records_.get()](const v1::FunctionInstance& instance, bool gone) {
    if (gone) {
      records->forget(instance.function(), instance.node(), instance.name());
    } else {
      records->record(instance);
    }
  });
  queues_ = std::make_shared<control::Queues>(std::move(queue_log));
  start_deliveries();
  // Functions stored before this start (their minInstances), then every change from here on.
  auto existing = store_->list(k_functions_prefix);
  for (const auto& kv : existing.kvs) {
    try {
      auto fn = decode<v1::Function>(kv);
      deliveries_->function_changed(fn.metadata().name(), fn.spec());
      pools_->update(fn.metadata().name(), kv.mod_revision, fn.spec());
      cache_spec(fn.metadata().name(), kv.mod_revision, fn.spec());
    } catch (const Error& e) {
      logger_->warn("function at {}: {}", kv.key, e.what());
    }
  }
  functions_seen_ = existing.revision;
  collect_blobs();
  volumes_ = std::make_shared<control::Volumes>(store_);
  networks_ = std::make_shared<control::Networks>(store_);
  // Each set's revisions as an earlier run stored them (those of sets deleted while no server
  // watched go first).
  auto revisions = std::make_shared<control::StoredVmRevisions>(store_);
  try {
    revisions->erase_orphans(k_vms_prefix);
  } catch (const std::exception& e) {
    logger_->warn("erasing the revisions of deleted vms: {}", e.what());
  }
  vm_sets_ = std::make_unique<control::VmSets>(nodes_, telemetry_, volumes_, networks_, revisions,
                                               std::make_shared<control::StoredPrimaries>(store_));
  auto vms = store_->list(k_vms_prefix);
  for (const auto& kv : vms.kvs) {
    try {
      auto vm = decode<v1::Vm>(kv);
      vm_sets_->update(vm.metadata().name(), kv.mod_revision, vm.spec());
    } catch (const Error& e) {
      logger_->warn("vm at {}: {}", kv.key, e.what());
    }
  }
  vms_watch_ = store_->watch(k_vms_prefix, vms.revision + 1, [this](const auto& changes) {
    for (const auto& change : changes) {
      const std::string name = change.kv.key.substr(std::string_view(k_vms_prefix).size());
      try {
        if (change.type == store::WatchEvent::Type::put) {
          vm_sets_->update(name, change.kv.mod_revision, decode<v1::Vm>(change.kv).spec());
        } else {
          vm_sets_->remove(name);
          networks_->release(name);  // its replicas' addresses (a set made again gets new ones)
        }
      } catch (const std::exception& e) {
        logger_->warn("vm {}: {}", name, e.what());
      }
    }
  });
  functions_watch_ =
      store_->watch(k_functions_prefix, existing.revision + 1, [this](const auto& changes) {
        for (const auto& change : changes) {
          const std::string name =
              change.kv.key.substr(std::string_view(k_functions_prefix).size());
          try {
            if (change.type == store::WatchEvent::Type::put) {
              auto spec = decode<v1::Function>(change.kv).spec();
              deliveries_->function_changed(name, spec);
              pools_->update(name, change.kv.mod_revision, spec);
              cache_spec(name, change.kv.mod_revision, std::move(spec));
            } else {
              {
                std::unique_lock lock(specs_mutex_);
                specs_.erase(name);
              }
              pools_->remove(name);
              deliveries_->function_removed(name);
            }
          } catch (const std::exception& e) {
            // An undecodable put leaves no stale spec behind: invoke reads the store instead.
            std::unique_lock lock(specs_mutex_);
            specs_.erase(name);
            logger_->warn("function {}: {}", name, e.what());
          }
        }
        // After the batch: every change of its revisions is in the cache.
        functions_seen_ = std::max(functions_seen_.load(), last_revision(changes));
      });
  // Triggers stored before this start, then every change: the queue and event ones poll.
  auto triggers = store_->list(k_triggers_prefix);
  for (const auto& kv : triggers.kvs) {
    try {
      auto t = decode<v1::Trigger>(kv);
      deliveries_->trigger_changed(t.metadata().name(), t.spec());
    } catch (const Error& e) {
      logger_->warn("trigger at {}: {}", kv.key, e.what());
    }
  }
  triggers_watch_ =
      store_->watch(k_triggers_prefix, triggers.revision + 1, [this](const auto& changes) {
        for (const auto& change : changes) {
          const std::string name = change.kv.key.substr(std::string_view(k_triggers_prefix).size());
          try {
            if (change.type == store::WatchEvent::Type::put) {
              deliveries_->trigger_changed(name, decode<v1::Trigger>(change.kv).spec());
            } else {
              deliveries_->trigger_removed(name);
            }
          } catch (const std::exception& e) {
            logger_->warn("trigger {}: {}", name, e.what());
          }
        }
      });
  // Every queue this server knows of is declared now: messages of any other one (an event
  // trigger deleted while no server ran) have nobody to go to.
  queues_->drop_undeclared();
  cluster_events_ = std::thread([this] { bridge_cluster_events(); });
}

namespace {

constexpr std::string_view k_cluster_sources = "blixard.";

// The source a stream event is published on, or "" for none. The delivery machinery's own
// records (Invoked, Retrying, DeadLettered) are not: a trigger on them would feed itself.
std::string cluster_source(const v1::WatchEvent& e) {
  if (e.type() == "record") {
    if (e.reason() == "Invoked" || e.reason() == "Retrying" || e.reason() == "DeadLettered")
      return {};
    return std::string(k_cluster_sources) + e.kind() + "." + e.reason();
  }
  if (e.type() == "put" && e.kind() == "nodes") {  // stored on a change of phase only
    try {
      auto node = boost::json::parse(e.object_json()).as_object();
      const auto& phase = node.at("status").at("phase").as_string();
      return std::string(k_cluster_sources) + "nodes." + std::string(phase);
    } catch (const std::exception&) {
      return {};
    }
  }
  return {};
}

}  // namespace

void Service::bridge_cluster_events() {
  std::int64_t after = -1;
  while (!closed_) {
    if (!deliveries_->listens_prefix(std::string(k_cluster_sources))) {
      std::unique_lock lock(cluster_events_mutex_);
      cluster_events_cv_.wait_for(lock, std::chrono::milliseconds(500),
                                  [&] { return closed_.load(); });
      after = -1;  // nobody listened meanwhile: from now on
      continue;
    }
    auto list = telemetry_->events("", "", after, std::chrono::seconds(1));
    after = list.next();
    for (const auto& e : list.events()) {
      const auto source = cluster_source(e);
      if (source.empty() || !deliveries_->listens(source)) continue;
      try {
        deliveries_->publish(source, to_json(e));
      } catch (const std::exception& ex) {
        logger_->warn("publishing {}: {}", source, ex.what());
      }
    }
  }
}

void Service::start_deliveries() {
  delivery_thread_ = std::thread([this] {
    auto work = boost::asio::make_work_guard(delivery_io_);
    delivery_io_.run();
  });
  auto invoke = [this](const std::string& function, std::string payload, control::InvokeDone done) {
    v1::InvokeRequest request;
    request.set_function(function);
    request.set_payload(std::move(payload));
    try {
      try_invoke_async(
          request, delivery_io_.get_executor(),
          [done](const std::exception_ptr& error, v1::InvokeResponse out) {
            if (error) return done(error, {});
            done(nullptr, std::move(*out.mutable_result()));
          },
          nullptr);
    } catch (...) {
      done(std::current_exception(), {});
    }
  };
  deliveries_ = std::make_unique<control::Deliveries>(queues_, std::move(invoke), telemetry_);
  // Queues stored before this start, then every change.
  auto queues = store_->list(k_queues_prefix);
  for (const auto& kv : queues.kvs) {
    try {
      auto q = decode<v1::Queue>(kv);
      queues_->declare(q.metadata().name(), q.spec());
    } catch (const Error& e) {
      logger_->warn("queue at {}: {}", kv.key, e.what());
    }
  }
  queues_watch_ = store_->watch(k_queues_prefix, queues.revision + 1, [this](const auto& changes) {
    for (const auto& change : changes) {
      const std::string name = change.kv.key.substr(std::string_view(k_queues_prefix).size());
      try {
        if (change.type == store::WatchEvent::Type::put) {
          queues_->declare(name, decode<v1::Queue>(change.kv).spec());
        } else {
          queues_->forget(name);
        }
      } catch (const std::exception& e) {
        logger_->warn("queue {}: {}", name, e.what());
      }
    }
  });
}

void Service::cache_spec(const std::string& function, std::int64_t version, v1::FunctionSpec spec) {
  auto stored = std::make_shared<StoredSpec>();
  stored->version = version;
  stored->spec = std::move(spec);
  std::unique_lock lock(specs_mutex_);
  auto& slot = specs_[function];
  if (!slot || slot->version < version) slot = std::move(stored);
}

std::shared_ptr<const Service::StoredSpec> Service::stored_spec(const std::string& function) {
  if (functions_seen_.load() >= functions_written_.load()) {
    std::shared_lock lock(specs_mutex_);
    if (auto it = specs_.find(function); it != specs_.end()) return it->second;
  }
  const auto fn = read_object<v1::Function>(*store_, k_functions_prefix, "function", function);
  auto stored = std::make_shared<StoredSpec>();
  stored->version = fn.metadata().resource_version();
  stored->spec = fn.spec();
  return stored;
}

Service::~Service() { shutdown(); }

void Service::check_code(const v1::ObjectSet& set) {
  const bool platform = !set.stack().empty();
  for (int i = 0; i < set.functions_size(); ++i) {
    const auto& spec = set.functions(i).spec();
    const std::string at = platform ? "spec.functions[" + std::to_string(i) + "]." : "spec.";
    if (!spec.code().empty()) {
      throw Error(errc::invalid_spec,
                  "the server does not read code paths (" + spec.code() +
                      "): pack the directory, upload it to PUT /v1/blobs/{digest} and set "
                      "codeDigest (the SDK and the CLI do this for you)",
                  at + "code");
    }
    const auto& digest = spec.code_digest();
    if (digest.empty()) continue;
    if (!blobs_) throw Error(errc::unavailable, "this server keeps no code", at + "codeDigest");
    if (!blobs_->has(digest)) {
      throw Error(errc::invalid_spec,
                  "no code archive " + digest + " on the server: upload it first (PUT /v1/blobs/" +
                      digest + ")",
                  at + "codeDigest");
    }
  }
}

bool Service::has_blob(const std::string& digest) {
  if (!blobs_) throw Error(errc::unavailable, "this server keeps no blobs");
  return blobs_->has(digest);
}

v1::Blob Service::put_blob(const std::string& digest, const std::string& bytes) {
  if (!blobs_) throw Error(errc::unavailable, "this server keeps no blobs");
  if (bytes.size() > k_max_code_archive_bytes) {
    throw Error(errc::payload_too_large,
                "a code archive may be at most " + std::to_string(k_max_code_archive_bytes >> 20) +
                    " MiB, this one is " + std::to_string(bytes.size()) + " bytes");
  }
  blobs_->put(digest, bytes);
  v1::Blob blob;
  blob.set_digest(digest);
  blob.set_size(bytes.size());
  return blob;
}

std::optional<std::string> Service::get_blob(const std::string& digest) {
  if (!blobs_) throw Error(errc::unavailable, "this server keeps no blobs");
  return blobs_->get(digest);
}

void Service::collect_blobs() {
  if (!blobs_) return;
  try {
    std::set<std::string> named;
    for (const auto& kv : store_->list(k_functions_prefix).kvs) {
      v1::Function fn;
      if (fn.ParseFromString(kv.value)) named.insert(fn.spec().code_digest());
    }
    const auto before = std::chrono::system_clock::now() - k_unnamed_blob_grace;
    for (const auto& blob : blobs_->list()) {
      if (!named.contains(blob.digest) && blob.used_at < before) blobs_->remove(blob.digest);
    }
  } catch (const std::exception& e) {
    logger_->warn("collecting unused code archives: {}", e.what());
  }
}

void Service::shutdown() {
  if (closed_.exchange(true)) return;
  registry_watch_.reset();
  functions_watch_.reset();
  vms_watch_.reset();
  queues_watch_.reset();
  triggers_watch_.reset();
  deliveries_->close();  // no new calls from the pollers; those in flight fail below
  // New calls fail, then the nodes stop their instances (starts in progress fail at once), then
  // the calls in flight fail with `unavailable`.
  pools_->close();
  nodes_->shutdown();
  vm_sets_->shutdown();
  pools_->shutdown();
  {
    std::lock_guard lock(cluster_events_mutex_);
    cluster_events_cv_.notify_all();
  }
  telemetry_->close();  // wakes the cluster events' long poll too
  if (cluster_events_.joinable()) cluster_events_.join();
  queues_->close();  // wakes receives, writes what is pending
  delivery_io_.stop();
  if (delivery_thread_.joinable()) delivery_thread_.join();
}

v1::ApplyResult Service::apply(const v1::ObjectSet& input, const detail::ApplyOptions& options) {
  if (closed_) throw Error(errc::unavailable, "the cluster is closed");
  const PreparedApply prepared = prepare_apply(input, options);
  // A dry run's client names its code by digest without uploading it: nothing runs it.
  if (options.mode != detail::ApplyMode::remove && !options.dry_run) check_code(prepared.set);
  const SnapshotQuery query = snapshot_query(prepared);

  for (int attempt = 0; attempt < k_apply_attempts; ++attempt) {
    Snapshot snapshot;
    auto keep = [&](store::KeyValue& kv) {
      snapshot.insert_or_assign(std::move(kv.key),
                                StoredObject{std::move(kv.value), kv.mod_revision});
    };
    for (const auto& key : query.keys) {
      if (auto kv = store_->get(key)) keep(*kv);
    }
    for (const auto& prefix : query.prefixes) {
      for (auto& kv : store_->list(prefix).kvs) keep(kv);
    }
    ApplyPlan plan = plan_apply(prepared, snapshot, TimeUtil::GetCurrentTime());
    v1::ApplyResult& result = plan.result;
    if (plan.writes.empty() || options.dry_run) {
      result.set_revision(store_->revision());
      return result;
    }

    store::Txn txn;
    for (const auto& e : plan.expected) {
      txn.compares.push_back({e.key, store::Compare::Target::mod_revision,
                              store::Compare::Op::equal, e.resource_version});
    }
    for (auto& w : plan.writes) {
      txn.success.push_back(
          {w.type == Write::Type::put ? store::Operation::Type::put : store::Operation::Type::erase,
           std::move(w.key), std::move(w.value), 0});
    }
    auto outcome = store_->txn(txn);
    if (outcome.succeeded) {
      const bool wrote_functions =
          std::any_of(txn.success.begin(), txn.success.end(),
                      [](auto& op) { return op.key.starts_with(k_functions_prefix); });
      if (wrote_functions) {
        // Invokes from now on wait for the watch to bring this revision into the spec cache.
        auto written = functions_written_.load();
        while (written < outcome.revision &&
               !functions_written_.compare_exchange_weak(written, outcome.revision)) {
        }
      }
      result.set_revision(outcome.revision);
      bool dropped_code = false;
      for (const auto& item : result.items()) {
        if (item.action() != "unchanged") {
          logger_->info("{} {} {}", item.kind(), item.name(), item.action());
          dropped_code |= item.kind() == "function" && item.action() != "created";
        }
      }
      if (dropped_code) collect_blobs();
      return result;
    }
    // Someone wrote one of these keys meanwhile: plan again from what is stored now.
  }
  throw Error(errc::conflict, "objects kept changing while being applied; try again");
}

v1::Function Service::get_function(const std::string& name) {
  auto fn = read_object<v1::Function>(*store_, k_functions_prefix, "function", name);
  fill_status(fn);
  return fn;
}

// The stored instances, with what only the pools' memory knows (busy, calls in flight, an
// instance still starting or stopping) laid over them.
void Service::fill_status(v1::Function& fn) {
  v1::FunctionStatus live;
  pools_->fill_status(fn.metadata().name(), live);
  std::unordered_map<std::string, const v1::FunctionInstance*> by_name;
  for (const auto& in : live.instances()) by_name.emplace(in.node() + "/" + in.name(), &in);
  auto& status = *fn.mutable_status();
  status.clear_instances();
  std::uint32_t busy = 0, warm = 0;
  for (auto& stored : records_->list(fn.metadata().name())) {
    auto* in = status.add_instances();
    *in = std::move(stored);
    if (auto it = by_name.find(in->node() + "/" + in->name()); it != by_name.end()) {
      in->set_phase(it->second->phase());
      in->set_in_flight(it->second->in_flight());
      by_name.erase(it);
    }
    busy += in->phase() == "Busy" ? 1 : 0;
    warm += in->phase() == "Warm" ? 1 : 0;
  }
  for (const auto& in : live.instances()) {  // starting: not stored until ready
    if (by_name.contains(in.node() + "/" + in.name())) *status.add_instances() = in;
  }
  status.set_instances_running(busy);
  status.set_instances_warm(warm);
}

v1::Vm Service::get_vm(const std::string& name) {
  auto vm = read_object<v1::Vm>(*store_, k_vms_prefix, "vm", name);
  fill_status(vm);
  return vm;
}

void Service::fill_status(v1::Vm& vm) {
  vm_sets_->fill_status(vm.metadata().name(), vm.spec(), *vm.mutable_status());
}

void Service::fill_status(v1::Trigger& trigger) {
  std::lock_guard lock(public_url_mutex_);
  if (trigger.spec().type() == "http" && !public_url_.empty()) {
    trigger.mutable_status()->set_url(public_url_ + trigger.spec().path());
  }
}

void Service::set_public_url(std::string url) {
  std::lock_guard lock(public_url_mutex_);
  public_url_ = std::move(url);
}

v1::Trigger Service::get_trigger(const std::string& name) {
  auto trigger = read_object<v1::Trigger>(*store_, k_triggers_prefix, "trigger", name);
  fill_status(trigger);
  return trigger;
}

v1::FunctionList Service::list_functions() {
  auto list = list_objects<v1::FunctionList>(*store_, k_functions_prefix);
  for (auto& fn : *list.mutable_items()) fill_status(fn);
  return list;
}

v1::VmList Service::list_vms() {
  auto list = list_objects<v1::VmList>(*store_, k_vms_prefix);
  for (auto& vm : *list.mutable_items()) fill_status(vm);
  return list;
}

v1::TriggerList Service::list_triggers() {
  auto list = list_objects<v1::TriggerList>(*store_, k_triggers_prefix);
  for (auto& trigger : *list.mutable_items()) fill_status(trigger);
  return list;
}

v1::StoragePool Service::get_storage_pool(const std::string& name) {
  auto pool = read_object<v1::StoragePool>(*store_, k_storage_pools_prefix, "storage pool", name);
  const auto volumes = list_volumes();
  fill_status(pool, volumes);
  return pool;
}

v1::StoragePoolList Service::list_storage_pools() {
  auto list = list_objects<v1::StoragePoolList>(*store_, k_storage_pools_prefix);
  const auto volumes = list_volumes();
  for (auto& pool : *list.mutable_items()) fill_status(pool, volumes);
  return list;
}

void Service::fill_status(v1::StoragePool& pool, const v1::VolumeList& volumes) {
  std::uint32_t count = 0;
  std::uint64_t allocated = 0;
  for (const auto& v : volumes.items()) {
    if (v.spec().storage().pool() != pool.metadata().name()) continue;
    ++count;
    allocated += v.spec().storage().size_mib();
  }
  pool.mutable_status()->set_volumes(count);
  pool.mutable_status()->set_allocated_mib(allocated);
}

v1::Network Service::get_network(const std::string& name) {
  auto network = read_object<v1::Network>(*store_, k_networks_prefix, "network", name);
  fill_status(network);
  return network;
}

v1::NetworkList Service::list_networks() {
  auto list = list_objects<v1::NetworkList>(*store_, k_networks_prefix);
  for (auto& network : *list.mutable_items()) fill_status(network);
  return list;
}

void Service::fill_status(v1::Network& network) {
  const auto& name = network.metadata().name();
  auto& status = *network.mutable_status();
  status.set_addresses(networks_->held(name));
  status.set_bridge(net::bridge_name(name));
  status.set_vni(net::vni_of(name));
}

v1::VolumeList Service::list_volumes() {
  return list_objects<v1::VolumeList>(*store_, k_volumes_prefix);
}

v1::Volume Service::delete_volume(const std::string& name) {
  if (closed_) throw Error(errc::unavailable, "the cluster is closed");
  auto volume = read_object<v1::Volume>(*store_, k_volumes_prefix, "volume", name);
  const auto& vm_name = volume.spec().vm();
  if (!volume.status().attached_to().empty()) {
    throw Error(errc::conflict, "volume " + name + " is in use by replica " +
                                    volume.status().attached_to() + " of vm " + vm_name +
                                    ": stop the vm (or scale it below that replica) first");
  }
  if (auto kv = store_->get(k_vms_prefix + vm_name)) {
    const auto vm = decode<v1::Vm>(*kv);
    if (!vm.spec().stopped() && vm.spec().replicas() >= volume.spec().ordinal()) {
      throw Error(errc::conflict, "vm " + vm_name + " still wants replica " + name +
                                      ", which would start again on a new, empty volume: stop "
                                      "the vm, scale it down or delete it first");
    }
  }
  if (!volume.status().format().empty()) {  // made on a node: its data goes first
    const auto where = volumes_->removal(volume);
    std::shared_ptr<control::Node> node;
    if (!where.node.empty()) {
      node = nodes_->find(where.node);
      if (!node) {
        throw Error(errc::unavailable, "volume " + name + " lives on node " + where.node +
                                           " (pool " + where.pool +
                                           " is node-local), which is not connected");
      }
    } else {
      const auto stored = list_objects<v1::NodeList>(*store_, control::k_nodes_prefix);
      for (const auto& n : stored.items()) {
        if ((node = nodes_->find(n.metadata().name()))) break;
      }
      if (!node) throw Error(errc::unavailable, "no node is connected to remove volume " + name);
    }
    node->remove_volume(where.attachment);
  }
  store::Txn txn;
  txn.compares.push_back({k_volumes_prefix + name, store::Compare::Target::mod_revision,
                          store::Compare::Op::equal, volume.metadata().resource_version()});
  txn.success.push_back({store::Operation::Type::erase, k_volumes_prefix + name, {}, 0});
  if (!store_->txn(txn).succeeded) {
    throw Error(errc::conflict, "volume " + name + " changed while being deleted; try again");
  }
  logger_->info("volume {} deleted", name);
  return volume;
}

v1::NodeList Service::list_nodes() {
  auto list = list_objects<v1::NodeList>(*store_, control::k_nodes_prefix);
  for (auto& node : *list.mutable_items()) fill_status(node);
  return list;
}

v1::Node Service::get_node(const std::string& name) {
  auto node = read_object<v1::Node>(*store_, control::k_nodes_prefix, "node", name);
  fill_status(node);
  return node;
}

void Service::fill_status(v1::Node& node) {
  const auto load = pools_->load_on(node.metadata().name());
  node.mutable_status()->set_instances(load.instances);
  node.mutable_status()->set_allocated_memory_mib(load.memory_mib);
  if (auto rtt = nodes_->round_trip(node.metadata().name())) {
    node.mutable_status()->set_rtt_us(rtt->count());
  }
  auto& peers = *node.mutable_status()->mutable_peer_rtt_us();
  for (const auto& [peer, rtt] : nodes_->peer_round_trips(node.metadata().name())) {
    peers[peer] = rtt.count();
  }
}

v1::Node Service::change_node(const std::string& name, NodeAction action) {
  if (closed_) throw Error(errc::unavailable, "the cluster is closed");
  read_object<v1::Node>(*store_, control::k_nodes_prefix, "node", name);  // not_found
  nodes_->cordon(name, action != NodeAction::uncordon);
  if (action == NodeAction::drain) pools_->drain_node(name);
  return get_node(name);
}

std::shared_ptr<runtime::Invocation> Service::invocation_of(const v1::InvokeRequest& request,
                                                            std::int64_t& version) {
  if (closed_) throw Error(errc::unavailable, "the cluster is closed");
  // The stored spec only (the pools' status is not needed per call), cached: no store read.
  const auto fn = stored_spec(request.function());
  const auto& spec = fn->spec;
  version = fn->version;

  std::string payload = request.payload().empty() ? "{}" : request.payload();
  const std::size_t max_payload =
      spec.max_payload_bytes() != 0 ? spec.max_payload_bytes() : k_default_max_payload_bytes;
  if (payload.size() > max_payload) {
    throw Error(errc::payload_too_large,
                "payload is " + std::to_string(payload.size()) + " bytes; the limit is " +
                    std::to_string(max_payload),
                "payload");
  }
  if (auto check = check_json_text(payload); !check.ok()) {
    throw Error(errc::invalid_spec, json_problem(check, "payload"), "payload");
  }

  auto invocation = std::make_shared<runtime::Invocation>();
  invocation->function = request.function();
  invocation->spec = spec;
  invocation->payload = std::move(payload);
  invocation->request_id = request.request_id().empty() ? random_hex(8) : request.request_id();
  if (request.has_timeout()) {
    invocation->timeout =
        std::chrono::milliseconds(TimeUtil::DurationToMilliseconds(request.timeout()));
  }
  return invocation;
}

v1::InvokeResponse Service::response_of(const runtime::Invocation& invocation,
                                        runtime::InvocationResult outcome) {
  v1::InvokeResponse response;
  response.set_request_id(invocation.request_id);
  response.set_result(std::move(outcome.result));
  response.set_cold_start(outcome.cold_start);
  response.set_node(std::move(outcome.node));
  *response.mutable_duration() = TimeUtil::MicrosecondsToDuration(outcome.duration.count());
  return response;
}

v1::InvokeResponse Service::invoke(const v1::InvokeRequest& request) {
  std::int64_t version = 0;
  const auto invocation = invocation_of(request, version);
  return response_of(*invocation, pools_->invoke(version, *invocation));
}

bool Service::try_invoke_async(const v1::InvokeRequest& request,
                               const boost::asio::any_io_executor& executor,
                               InvokeCompletion complete, std::shared_ptr<detail::Caller> caller) {
  std::int64_t version = 0;
  auto invocation = invocation_of(request, version);
  invocation->caller = std::move(caller);
  return pools_->try_invoke_async(
      version, invocation, executor,
      // Holds what it needs: the service may be closing once the pool let go of the call.
      [invocation, complete = std::move(complete)](const std::exception_ptr& error,
                                                   runtime::InvocationResult outcome) {
        if (error) return complete(error, {});
        complete(nullptr, response_of(*invocation, std::move(outcome)));
      });
}

namespace {

// A queue the server made for a trigger or a function ("event:<trigger>", "async:<fn>:dead"):
// not a stored object, but listed and readable like one so that its dead letters can be seen.
bool is_internal_queue(const std::string& name) { return name.find(':') != std::string::npos; }

v1::QueueMessageList message_list(const std::string& queue,
                                  const std::vector<control::QueueMessage>& messages) {
  v1::QueueMessageList out;
  out.set_queue(queue);
  for (const auto& m : messages) {
    auto& item = *out.add_items();
    item.set_id(std::to_string(m.id));
    item.set_body(m.body);
    item.set_receipt(m.receipt);
    item.set_receives(m.receives);
    *item.mutable_sent_at() = TimeUtil::MillisecondsToTimestamp(m.sent_at_ms);
  }
  return out;
}

}  // namespace

void Service::ensure_queue(const std::string& name) {
  if (closed_) throw Error(errc::unavailable, "the cluster is closed");
  if (is_internal_queue(name) || queues_->exists(name)) return;
  // Stored by an apply whose change the queues watch has not delivered yet.
  auto kv = store_->get(k_queues_prefix + name);
  if (!kv) {
    throw Error(errc::not_found,
                "no queue named " + name + " (create it with `blixard queue create " + name + "`)",
                "name");
  }
  queues_->declare(name, decode<v1::Queue>(*kv).spec());
}

v1::Queue Service::get_queue(const std::string& name) {
  v1::Queue q;
  if (is_internal_queue(name)) {
    q.mutable_metadata()->set_name(name);
  } else {
    q = read_object<v1::Queue>(*store_, k_queues_prefix, "queue", name);
  }
  ensure_queue(name);
  *q.mutable_status() = queues_->status(name);
  return q;
}

v1::QueueList Service::list_queues() {
  auto list = list_objects<v1::QueueList>(*store_, k_queues_prefix);
  for (auto& q : *list.mutable_items()) {
    try {
      *q.mutable_status() = queues_->status(q.metadata().name());
    } catch (const Error&) {
      // Stored after the queues watch last ran: nothing sent to it yet.
    }
  }
  for (const auto& name : queues_->names()) {
    if (!is_internal_queue(name)) continue;
    auto& q = *list.add_items();
    q.mutable_metadata()->set_name(name);
    try {
      *q.mutable_status() = queues_->status(name);
    } catch (const Error&) {
    }
  }
  return list;
}

v1::SendResult Service::send_messages(const std::string& queue, const v1::SendRequest& request) {
  if (request.bodies_size() == 0)
    throw Error(errc::invalid_spec, "nothing to send: give at least one message", "bodies");
  ensure_queue(queue);
  std::vector<std::string> bodies(request.bodies().begin(), request.bodies().end());
  v1::SendResult out;
  out.set_queue(queue);
  for (auto id : queues_->send(queue, bodies)) out.add_ids(std::to_string(id));
  return out;
}

v1::QueueMessageList Service::receive_messages(const std::string& queue,
                                               const v1::ReceiveRequest& request) {
  const std::uint32_t max = request.max() == 0 ? 1 : request.max();
  if (max > k_max_receive)
    throw Error(errc::invalid_spec, "max must be at most " + std::to_string(k_max_receive), "max");
  const auto wait = std::chrono::milliseconds(TimeUtil::DurationToMilliseconds(request.wait()));
  if (wait.count() < 0 || wait > std::chrono::seconds(20))
    throw Error(errc::invalid_spec, "wait must be between 0s and 20s", "wait");
  const auto visibility =
      std::chrono::milliseconds(TimeUtil::DurationToMilliseconds(request.visibility_timeout()));
  if (visibility.count() < 0 || visibility > std::chrono::hours(12))
    throw Error(errc::invalid_spec, "visibilityTimeout must be between 0s and 12h",
                "visibilityTimeout");
  ensure_queue(queue);
  return message_list(queue, queues_->receive(queue, max, visibility, wait));
}

v1::QueueMessageList Service::peek_messages(const std::string& queue, std::uint32_t max) {
  if (max > k_max_receive)
    throw Error(errc::invalid_spec, "max must be at most " + std::to_string(k_max_receive), "max");
  ensure_queue(queue);
  return message_list(queue, queues_->peek(queue, max == 0 ? 10 : max));
}

v1::QueueCount Service::acknowledge_messages(const std::string& queue,
                                             const v1::AckRequest& request) {
  ensure_queue(queue);
  std::vector<std::string> receipts(request.receipts().begin(), request.receipts().end());
  v1::QueueCount out;
  out.set_queue(queue);
  out.set_count(queues_->acknowledge(queue, receipts));
  return out;
}

v1::QueueCount Service::purge_queue(const std::string& queue) {
  ensure_queue(queue);
  v1::QueueCount out;
  out.set_queue(queue);
  out.set_count(queues_->purge(queue));
  return out;
}

v1::PublishResult Service::publish_event(const v1::PublishRequest& request) {
  if (closed_) throw Error(errc::unavailable, "the cluster is closed");
  const auto& source = request.source();
  if (source.empty() || source.size() > 256 ||
      std::any_of(source.begin(), source.end(),
                  [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }))
    throw Error(errc::invalid_spec, "an event needs a source: one word of up to 256 bytes",
                "source");
  // The stored triggers decide who gets it, not how far the triggers watch has come: a trigger
  // created just before the publish must not miss it.
  for (const auto& kv : store_->list(k_triggers_prefix).kvs) {
    try {
      auto t = decode<v1::Trigger>(kv);
      if (t.spec().type() == "event" && t.spec().source() == source)
        deliveries_->trigger_changed(t.metadata().name(), t.spec());
    } catch (const Error& e) {
      logger_->warn("trigger at {}: {}", kv.key, e.what());
    }
  }
  v1::PublishResult out;
  out.set_source(source);
  for (auto& t : deliveries_->publish(source, request.data().empty() ? "null" : request.data()))
    out.add_triggers(std::move(t));
  return out;
}

v1::Invocation Service::submit_invocation(const v1::InvokeRequest& request) {
  std::int64_t version = 0;
  const auto invocation = invocation_of(request, version);  // not_found, payload checks
  const auto stored = stored_spec(request.function());
  if (!queues_->exists(control::Deliveries::async_queue(request.function())))
    deliveries_->function_changed(request.function(), stored->spec);  // ahead of its watch
  auto id = deliveries_->submit(request.function(), invocation->payload);
  v1::Invocation out;
  out.set_id(std::move(id));
  out.set_function(request.function());
  out.set_state("queued");
  return out;
}

v1::Invocation Service::get_invocation(const std::string& id) {
  return deliveries_->invocation(id);
}

v1::ServerInfo Service::info() {
  v1::ServerInfo info;
  info.set_version(std::string(version()));
  info.set_node(node_name_);
  info.set_revision(store_->revision());
  return info;
}

v1::FunctionMetrics Service::function_metrics(const std::string& name) {
  read_object<v1::Function>(*store_, k_functions_prefix, "function", name);  // not_found
  return telemetry_->metrics(name);
}

std::string Service::prometheus_metrics() { return telemetry_->prometheus(); }

v1::LogChunk Service::function_logs(const std::string& name, std::int64_t after,
                                    std::chrono::milliseconds wait) {
  read_object<v1::Function>(*store_, k_functions_prefix, "function", name);  // not_found
  return telemetry_->logs(name, after, wait);
}

v1::LogChunk Service::vm_logs(const std::string& name, std::int64_t after,
                              std::chrono::milliseconds wait) {
  read_object<v1::Vm>(*store_, k_vms_prefix, "vm", name);  // not_found
  return telemetry_->logs(control::VmSets::log_key(name), after, wait);
}

v1::WatchEventList Service::events(const std::string& kind, const std::string& name,
                                   std::int64_t after, std::chrono::milliseconds wait) {
  // After shutdown this answers at once with what is kept (telemetry is closed).
  return telemetry_->events(kind, name, after, wait);
}

// A watch on the whole keyspace, not just /registry/: every revision then has an event, so the
// watch is known to have caught up once it saw the revision the store had at the call.
v1::WatchEventList Service::changes(const std::string& kind, const std::string& name,
                                    std::int64_t from_revision, std::chrono::milliseconds wait) {
  if (from_revision < 1) {
    throw Error(errc::invalid_spec,
                "from must be a store revision (1 or more), not " + std::to_string(from_revision),
                "from");
  }
  struct Collected {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<v1::WatchEvent> events;
    std::int64_t seen = 0;  // the last whole revision taken in
    bool full = false;      // the answer holds enough: later batches wait for the next call
  };
  auto c = std::make_shared<Collected>();
  const std::string name_prefix = name + "/";
  const std::int64_t current = store_->revision();
  std::unique_ptr<store::Watch> watch;
  try {
    watch = store_->watch("", from_revision, [c, kind, name, name_prefix](const auto& batch) {
      std::lock_guard lock(c->mutex);
      if (c->full) return;
      for (const auto& change : batch) {
        c->seen = std::max(c->seen, change.kv.mod_revision);
        const std::string_view key = change.kv.key;
        if (!key.starts_with(k_registry_prefix) || key.starts_with(k_tokens_prefix)) continue;
        auto event = to_watch_event(change);
        if (!kind.empty() && event.kind() != kind && event.kind() != kind + "s") continue;
        if (!name.empty() && event.name() != name && !event.name().starts_with(name_prefix)) {
          continue;
        }
        c->events.push_back(std::move(event));
      }
      c->full = c->events.size() >= k_changes_per_answer;
      c->changed.notify_all();
    });
  } catch (const Error& e) {
    if (e.code() != errc::conflict) throw;
    throw Error(errc::conflict,
                "revision " + std::to_string(from_revision) +
                    " was compacted away: list again and watch from the list's revision",
                "from");
  }
  std::unique_lock lock(c->mutex);
  // What the store kept comes first (bounded, should the store's watch thread be slow)...
  c->changed.wait_for(lock, k_changes_catch_up,
                      [&] { return c->full || c->seen >= current || from_revision > current; });
  // ...then, when there was none, the first change within `wait`.
  // (In slices, so that a shutdown ends the wait.)
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (c->events.empty() && !closed_ && std::chrono::steady_clock::now() < deadline) {
    c->changed.wait_until(
        lock, std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(100)),
        [&] { return !c->events.empty(); });
  }
  v1::WatchEventList list;
  for (auto& e : c->events) *list.add_events() = std::move(e);
  list.set_next(std::max(from_revision, c->seen + 1));
  c->full = true;  // the watch's later batches are not this answer's
  lock.unlock();
  watch.reset();
  return list;
}

// Tokens: the registry's (api/token_registry.cpp).
v1::TokenCreated Service::create_token(const v1::TokenRequest& request) {
  return tokens_->create(request);
}
v1::TokenList Service::list_tokens() { return tokens_->list(); }
v1::Token Service::revoke_token(const std::string& name_or_id) {
  return tokens_->revoke(name_or_id);
}
std::optional<v1::Token> Service::verify_token(std::string_view secret) {
  return tokens_->verify(secret);
}

}  // namespace blixard::api
