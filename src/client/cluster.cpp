// blixard::Cluster and the object handles: thin shapes over a detail::Backend, which is the
// in-process control plane (Cluster::local) or the HTTP client (Cluster::connect).
#include "blixard/cluster.hpp"

#include <google/protobuf/util/time_util.h>

#include <map>
#include <mutex>

#include "client/http_backend.hpp"
#include "common/code_archive.hpp"
#include "server/local.hpp"

namespace blixard {

namespace {
// The digest of each code directory this client packed, under the tree's fingerprint: applying
// the same code again walks the tree rather than packing it.
struct PackedCode {
  std::mutex mutex;
  std::map<std::string, std::pair<std::string, std::string>> by_path;  // fingerprint, digest
};
}  // namespace

struct Cluster::State {
  SpecOptions spec;
  PackedCode packed;
  std::shared_ptr<detail::AsyncContext> async = std::make_shared<detail::AsyncContext>();
  std::shared_ptr<api::Service> service;  // set for an embedded cluster
};

Cluster::Cluster(std::shared_ptr<detail::Backend> backend, std::shared_ptr<State> state)
    : backend_(std::move(backend)), state_(std::move(state)) {}

Cluster Cluster::local(const std::filesystem::path& dir, const LocalOptions& options) {
  server::LocalServiceOptions service_options;
  service_options.node_name = options.node_name;
  service_options.python = options.python;
  service_options.logger = options.logger;
  auto state = std::make_shared<State>();
  state->spec = options.spec;
  state->service = server::open_local_service(dir, service_options);
  return {state->service, state};
}

Cluster Cluster::connect(const std::string& url, const ConnectOptions& options) {
  auto state = std::make_shared<State>();
  state->spec = options.spec;
  return {client::make_http_backend(url, options.token, options.timeout), state};
}

const SpecOptions& Cluster::spec_options() const { return state_->spec; }

void Cluster::close() {
  if (state_->service) state_->service->shutdown();
}

namespace {

// Packs each function's `code` directory, uploads the archive unless the server has it already
// and names the code by that digest: neither the server nor any agent reads the client's paths
// (DESIGN §5). A directory several functions name is packed once.
// With `upload` false (a dry run) the archive is only named: packed for its digest, not sent.
std::string upload_dir(detail::Backend& backend, PackedCode& packed, const std::string& dir,
                       bool upload) {
  const std::string fingerprint = code_fingerprint(dir);
  if (!fingerprint.empty()) {
    std::string digest;
    {
      std::lock_guard lock(packed.mutex);
      if (auto it = packed.by_path.find(dir);
          it != packed.by_path.end() && it->second.first == fingerprint) {
        digest = it->second.second;
      }
    }
    // Unless the server dropped it meanwhile (it keeps only what functions name).
    if (!digest.empty() && (!upload || backend.has_blob(digest))) return digest;
  }
  const CodeArchive archive = pack_code(dir);
  if (upload && !backend.has_blob(archive.digest)) {
    backend.put_blob(archive.digest, archive.bytes);
  }
  if (!fingerprint.empty()) {
    std::lock_guard lock(packed.mutex);
    packed.by_path[dir] = {fingerprint, archive.digest};
  }
  return archive.digest;
}

void upload_code(detail::Backend& backend, PackedCode& packed, v1::ObjectSet& set, bool upload) {
  std::map<std::string, std::string> digests;
  for (int i = 0; i < set.functions_size(); ++i) {
    auto& spec = *set.mutable_functions(i)->mutable_spec();
    if (spec.code().empty()) continue;
    auto [known, fresh] = digests.try_emplace(spec.code());
    if (fresh) {
      try {
        known->second = upload_dir(backend, packed, spec.code(), upload);
      } catch (const Error& e) {
        const std::string at =
            !set.stack().empty() ? "spec.functions[" + std::to_string(i) + "]." : "spec.";
        throw Error(e.code(), e.message(), e.field().empty() ? "" : at + e.field());
      }
    }
    spec.set_code_digest(known->second);
    spec.clear_code();
  }
}

template <class T>
T named(const std::string& name) {
  T object;
  object.mutable_metadata()->set_name(name);
  return object;
}

}  // namespace

Function Cluster::create_function(const std::string& name, const v1::FunctionSpec& spec) {
  v1::ObjectSet set;
  auto* fn = set.add_functions();
  *fn = named<v1::Function>(name);
  *fn->mutable_spec() = spec;
  apply(set, {.mode = detail::ApplyMode::create});
  return function(name);
}

Function Cluster::create_function(const std::string& name, const std::filesystem::path& config,
                                  const std::string& overrides_json) {
  auto spec = load_function_config(config, state_->spec);
  merge_function_overrides(spec, overrides_json);
  return create_function(name, spec);
}

Function Cluster::function(const std::string& name) { return {backend_, name, state_->async}; }

std::vector<v1::Function> Cluster::functions() {
  auto list = backend_->list_functions();
  return {list.items().begin(), list.items().end()};
}

void Cluster::delete_function(const std::string& name) { function(name).remove(); }

Vm Cluster::create_vm(const std::string& name, const v1::VmSpec& spec) {
  v1::ObjectSet set;
  auto* vm = set.add_vms();
  *vm = named<v1::Vm>(name);
  *vm->mutable_spec() = spec;
  backend_->apply(set, {.mode = detail::ApplyMode::create});
  return this->vm(name);
}

Vm Cluster::create_vm(const std::string& name, const std::filesystem::path& config,
                      const std::string& overrides_json) {
  auto spec = load_vm_config(config, state_->spec);
  merge_vm_overrides(spec, overrides_json);
  return create_vm(name, spec);
}

Vm Cluster::update_vm(const std::string& name, const std::filesystem::path& config,
                      const std::string& overrides_json) {
  auto spec = load_vm_config(config, state_->spec);
  merge_vm_overrides(spec, overrides_json);
  vm(name).update(std::move(spec));
  return vm(name);
}

Vm Cluster::vm(const std::string& name) { return {backend_, name}; }

std::vector<v1::Vm> Cluster::vms() {
  auto list = backend_->list_vms();
  return {list.items().begin(), list.items().end()};
}

void Cluster::delete_vm(const std::string& name) { vm(name).remove(); }

Trigger Cluster::create_trigger(const std::string& name, const v1::TriggerSpec& spec) {
  v1::ObjectSet set;
  auto* trigger = set.add_triggers();
  *trigger = named<v1::Trigger>(name);
  *trigger->mutable_spec() = spec;
  backend_->apply(set, {.mode = detail::ApplyMode::create});
  return this->trigger(name);
}

Trigger Cluster::trigger(const std::string& name) { return {backend_, name}; }

std::vector<v1::Trigger> Cluster::triggers() {
  auto list = backend_->list_triggers();
  return {list.items().begin(), list.items().end()};
}

void Cluster::delete_trigger(const std::string& name) { trigger(name).remove(); }

Queue Cluster::create_queue(const std::string& name, const v1::QueueSpec& spec) {
  v1::ObjectSet set;
  auto* queue = set.add_queues();
  *queue = named<v1::Queue>(name);
  *queue->mutable_spec() = spec;
  backend_->apply(set, {.mode = detail::ApplyMode::create});
  return this->queue(name);
}

Queue Cluster::queue(const std::string& name) { return {backend_, name}; }

std::vector<v1::Queue> Cluster::queues() {
  auto list = backend_->list_queues();
  return {list.items().begin(), list.items().end()};
}

void Cluster::delete_queue(const std::string& name) { queue(name).remove(); }

v1::PublishResult Cluster::publish(const std::string& source, const std::string& data_json) {
  v1::PublishRequest request;
  request.set_source(source);
  request.set_data(data_json);
  return backend_->publish_event(request);
}

v1::Invocation Cluster::invocation(const std::string& id) { return backend_->get_invocation(id); }

v1::StoragePool Cluster::create_storage_pool(const std::string& name,
                                             const v1::StoragePoolSpec& spec) {
  v1::ObjectSet set;
  auto* pool = set.add_storage_pools();
  *pool = named<v1::StoragePool>(name);
  *pool->mutable_spec() = spec;
  backend_->apply(set, {.mode = detail::ApplyMode::create});
  return storage_pool(name);
}

v1::StoragePool Cluster::storage_pool(const std::string& name) {
  return backend_->get_storage_pool(name);
}

std::vector<v1::StoragePool> Cluster::storage_pools() {
  auto list = backend_->list_storage_pools();
  return {list.items().begin(), list.items().end()};
}

void Cluster::delete_storage_pool(const std::string& name) {
  v1::ObjectSet set;
  *set.add_storage_pools() = named<v1::StoragePool>(name);
  backend_->apply(set, {.mode = detail::ApplyMode::remove});
}

std::vector<v1::Volume> Cluster::volumes() {
  auto list = backend_->list_volumes();
  return {list.items().begin(), list.items().end()};
}

void Cluster::delete_volume(const std::string& name) { backend_->delete_volume(name); }

v1::Network Cluster::create_network(const std::string& name, const v1::NetworkSpec& spec) {
  v1::ObjectSet set;
  auto* network = set.add_networks();
  *network = named<v1::Network>(name);
  *network->mutable_spec() = spec;
  backend_->apply(set, {.mode = detail::ApplyMode::create});
  return this->network(name);
}

v1::Network Cluster::network(const std::string& name) { return backend_->get_network(name); }

std::vector<v1::Network> Cluster::networks() {
  auto list = backend_->list_networks();
  return {list.items().begin(), list.items().end()};
}

void Cluster::delete_network(const std::string& name) {
  v1::ObjectSet set;
  *set.add_networks() = named<v1::Network>(name);
  backend_->apply(set, {.mode = detail::ApplyMode::remove});
}

std::vector<v1::Node> Cluster::nodes() {
  auto list = backend_->list_nodes();
  return {list.items().begin(), list.items().end()};
}

v1::Node Cluster::node(const std::string& name) { return backend_->get_node(name); }
v1::Node Cluster::cordon_node(const std::string& name) {
  return backend_->change_node(name, detail::Backend::NodeAction::cordon);
}
v1::Node Cluster::uncordon_node(const std::string& name) {
  return backend_->change_node(name, detail::Backend::NodeAction::uncordon);
}
v1::Node Cluster::drain_node(const std::string& name) {
  return backend_->change_node(name, detail::Backend::NodeAction::drain);
}

v1::TokenCreated Cluster::create_token(const v1::TokenRequest& request) {
  return backend_->create_token(request);
}
std::vector<v1::Token> Cluster::tokens() {
  auto list = backend_->list_tokens();
  return {std::make_move_iterator(list.mutable_items()->begin()),
          std::make_move_iterator(list.mutable_items()->end())};
}
v1::Token Cluster::revoke_token(const std::string& name_or_id) {
  return backend_->revoke_token(name_or_id);
}

v1::ServerInfo Cluster::info() { return backend_->info(); }

v1::ApplyResult Cluster::apply(const std::filesystem::path& manifest,
                               const detail::ApplyOptions& options) {
  return apply(load_manifest(manifest, state_->spec), options);
}

v1::ApplyResult Cluster::apply(const v1::ObjectSet& set, const detail::ApplyOptions& options) {
  if (options.mode == detail::ApplyMode::remove) return backend_->apply(set, options);
  v1::ObjectSet packed = set;
  upload_code(*backend_, state_->packed, packed, !options.dry_run);
  return backend_->apply(packed, options);
}

v1::ApplyResult Cluster::remove(const std::filesystem::path& manifest,
                                const detail::ApplyOptions& options) {
  auto remove = options;
  remove.mode = detail::ApplyMode::remove;
  return backend_->apply(load_manifest(manifest, state_->spec), remove);
}

v1::ApplyResult Cluster::remove_stack(const std::string& stack, bool dry_run) {
  return backend_->apply(
      {}, {.mode = detail::ApplyMode::remove, .dry_run = dry_run, .prune = true, .stack = stack});
}

// ---- handles ----

v1::Function Function::get() const { return backend_->get_function(name_); }

v1::FunctionMetrics Function::metrics() const { return backend_->function_metrics(name_); }

InvokeResult Function::invoke(const std::string& payload_json,
                              std::chrono::milliseconds timeout) const {
  return invoke_on(*backend_, name_, payload_json, timeout);
}

static v1::InvokeRequest invoke_request(const std::string& name, const std::string& payload_json,
                                        std::chrono::milliseconds timeout) {
  v1::InvokeRequest request;
  request.set_function(name);
  request.set_payload(payload_json);
  if (timeout.count() > 0) {
    *request.mutable_timeout() =
        google::protobuf::util::TimeUtil::MillisecondsToDuration(timeout.count());
  }
  return request;
}

static InvokeResult invoke_result(const v1::InvokeResponse& response) {
  InvokeResult result;
  result.result = response.result();
  result.cold_start = response.cold_start();
  result.node = response.node();
  result.request_id = response.request_id();
  result.duration = std::chrono::microseconds(
      google::protobuf::util::TimeUtil::DurationToMicroseconds(response.duration()));
  return result;
}

InvokeResult Function::invoke_on(detail::Backend& backend, const std::string& name,
                                 const std::string& payload_json,
                                 std::chrono::milliseconds timeout) {
  return invoke_result(backend.invoke(invoke_request(name, payload_json, timeout)));
}

bool Function::start_invoke(detail::Backend& backend, const std::string& name,
                            const std::string& payload_json, std::chrono::milliseconds timeout,
                            const boost::asio::any_io_executor& executor,
                            const Completion& complete) {
  return backend.try_invoke_async(
      invoke_request(name, payload_json, timeout), executor,
      [complete](const std::exception_ptr& error, const v1::InvokeResponse& response) {
        if (error) return complete(error, {});
        complete(nullptr, invoke_result(response));
      },
      nullptr);
}

template <class T>
static void remove_one(detail::Backend& backend, const std::string& name,
                       T* (v1::ObjectSet::*add)()) {
  v1::ObjectSet set;
  (set.*add)()->mutable_metadata()->set_name(name);
  backend.apply(set, {.mode = detail::ApplyMode::remove});
}

v1::Invocation Function::submit(const std::string& payload_json) const {
  v1::InvokeRequest request;
  request.set_function(name_);
  request.set_payload(payload_json);
  return backend_->submit_invocation(request);
}

void Function::remove() const { remove_one(*backend_, name_, &v1::ObjectSet::add_functions); }

v1::Vm Vm::get() const { return backend_->get_vm(name_); }

namespace {

// Reads the set, changes its spec, applies it back (as `kubectl apply` of an edited manifest).
template <typename Change>
v1::Vm change_vm(detail::Backend& backend, const std::string& name, Change change) {
  v1::Vm vm = backend.get_vm(name);
  v1::ObjectSet set;
  auto& out = *set.add_vms();
  out.mutable_metadata()->set_name(name);
  *out.mutable_metadata()->mutable_labels() = vm.metadata().labels();
  // Still its stack's: a scaled set is neither pruned by mistake nor reconfigured by the next
  // apply of its manifest for that alone.
  out.mutable_metadata()->set_stack(vm.metadata().stack());
  *out.mutable_spec() = vm.spec();
  change(*out.mutable_spec());
  backend.apply(set, {});
  return backend.get_vm(name);
}

}  // namespace

v1::Vm Vm::scale(std::uint32_t replicas) const {
  if (replicas == 0) {
    throw Error(errc::invalid_spec,
                "replicas must be at least 1 (`vm stop` stops every replica and keeps the set)",
                "replicas");
  }
  return change_vm(*backend_, name_, [&](v1::VmSpec& spec) { spec.set_replicas(replicas); });
}

v1::Vm Vm::update(v1::VmSpec spec) const {
  return change_vm(*backend_, name_, [&](v1::VmSpec& stored) {
    if (spec.replicas() == 0) spec.set_replicas(stored.replicas());
    spec.set_stopped(stored.stopped());
    // A new config does not drop what the set was deployed with: its volumes and its network
    // stay unless the update names others, as its replica count does.
    const auto& keep = stored.storage();
    if (spec.storage().pool().empty() && spec.storage().class_().empty() &&
        (!keep.pool().empty() || !keep.class_().empty())) {
      const std::string mount = spec.storage().mount_point();
      *spec.mutable_storage() = keep;
      if (!mount.empty()) spec.mutable_storage()->set_mount_point(mount);
    }
    if (spec.network().empty()) spec.set_network(stored.network());
    stored = std::move(spec);
  });
}

v1::Vm Vm::switchover(const std::string& replica) const {
  return change_vm(*backend_, name_, [&](v1::VmSpec& spec) {
    if (spec.primary_election_policy().empty()) {
      throw Error(errc::invalid_spec,
                  "vm " + name_ + " has no primary (it has no primaryElectionPolicy)", "primary");
    }
    const std::string prefix = name_ + "-";
    const std::string ordinal = replica.starts_with(prefix) ? replica.substr(prefix.size()) : "";
    if (ordinal.empty() || ordinal.size() > 6 ||
        ordinal.find_first_not_of("0123456789") != std::string::npos || ordinal[0] == '0' ||
        std::stoul(ordinal) > spec.replicas()) {
      throw Error(errc::invalid_spec,
                  "\"" + replica + "\" is not a replica of vm " + name_ + " (" + prefix + "1.." +
                      prefix + std::to_string(spec.replicas()) + ")",
                  "primary");
    }
    spec.set_primary(replica);
  });
}

v1::Vm Vm::rollback(std::int64_t revision) const {
  const auto status = get().status();
  const v1::VmRevision* target = nullptr;
  for (const auto& r : status.revisions()) {
    if (revision != 0 ? r.revision() == revision : r.revision() < status.revision()) target = &r;
  }
  if (target == nullptr) {
    std::string kept;
    for (const auto& r : status.revisions()) {
      kept += (kept.empty() ? "" : ", ") + std::to_string(r.revision());
    }
    if (revision == 0) {
      throw Error(errc::invalid_spec,
                  "vm " + name_ + " has no revision before " + std::to_string(status.revision()) +
                      " to roll back to",
                  "revision");
    }
    throw Error(errc::not_found, "vm " + name_ + " keeps no revision " + std::to_string(revision) +
                                     " (kept: " + kept + ")");
  }
  return update(target->spec());
}

v1::Vm Vm::start() const {
  return change_vm(*backend_, name_, [](v1::VmSpec& spec) { spec.set_stopped(false); });
}

v1::Vm Vm::stop() const {
  return change_vm(*backend_, name_, [](v1::VmSpec& spec) { spec.set_stopped(true); });
}
void Vm::remove() const { remove_one(*backend_, name_, &v1::ObjectSet::add_vms); }

v1::Trigger Trigger::get() const { return backend_->get_trigger(name_); }

v1::Queue Queue::get() const { return backend_->get_queue(name_); }

std::string Queue::send(const std::string& body) const { return send(std::vector{body}).front(); }

std::vector<std::string> Queue::send(const std::vector<std::string>& bodies) const {
  v1::SendRequest request;
  for (const auto& b : bodies) request.add_bodies(b);
  auto out = backend_->send_messages(name_, request);
  return {out.ids().begin(), out.ids().end()};
}

std::vector<v1::QueueMessage> Queue::receive(std::uint32_t max, std::chrono::milliseconds wait,
                                             std::chrono::milliseconds visibility) const {
  v1::ReceiveRequest request;
  request.set_max(max);
  *request.mutable_wait() = google::protobuf::util::TimeUtil::MillisecondsToDuration(wait.count());
  if (visibility.count() > 0) {
    *request.mutable_visibility_timeout() =
        google::protobuf::util::TimeUtil::MillisecondsToDuration(visibility.count());
  }
  auto out = backend_->receive_messages(name_, request);
  return {out.items().begin(), out.items().end()};
}

std::vector<v1::QueueMessage> Queue::peek(std::uint32_t max) const {
  auto out = backend_->peek_messages(name_, max);
  return {out.items().begin(), out.items().end()};
}

std::uint64_t Queue::acknowledge(const std::vector<std::string>& receipts) const {
  v1::AckRequest request;
  for (const auto& r : receipts) request.add_receipts(r);
  return backend_->acknowledge_messages(name_, request).count();
}

std::uint64_t Queue::purge() const { return backend_->purge_queue(name_).count(); }

void Queue::remove() const { remove_one(*backend_, name_, &v1::ObjectSet::add_queues); }
void Trigger::remove() const { remove_one(*backend_, name_, &v1::ObjectSet::add_triggers); }

}  // namespace blixard
