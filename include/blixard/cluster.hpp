// blixard::Cluster: a cheap, copyable handle on a cluster, embedded in this process
// (Cluster::local) or remote (Cluster::connect). Every call throws blixard::Error on failure.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "blixard/detail/backend.hpp"
#include "blixard/error.hpp"
#include "blixard/function.hpp"
#include "blixard/queue.hpp"
#include "blixard/spec.hpp"
#include "blixard/trigger.hpp"
#include "blixard/vm.hpp"

namespace spdlog {
class logger;
}

namespace blixard {

struct LocalOptions {
  // Name of the in-process node.
  std::string node_name = "local";
  // Interpreter for Python handlers.
  std::string python = "python3";
  // Where logs go; none means quiet.
  std::shared_ptr<spdlog::logger> logger;
  SpecOptions spec;
};

struct ConnectOptions {
  std::string token;
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  SpecOptions spec;
};

class Cluster {
 public:
  // Server + agent in this process on the SQLite store under `dir` (created if missing).
  static Cluster local(const std::filesystem::path& dir, const LocalOptions& options = {});
  // A cluster served at `url` ("http://127.0.0.1:7070").
  static Cluster connect(const std::string& url, const ConnectOptions& options = {});

  // Functions. `config` files are read here, then `overrides_json` (flags) win over them.
  Function create_function(const std::string& name, const v1::FunctionSpec& spec);
  Function create_function(const std::string& name, const std::filesystem::path& config,
                           const std::string& overrides_json = "{}");
  Function function(const std::string& name);
  std::vector<v1::Function> functions();
  void delete_function(const std::string& name);

  Vm create_vm(const std::string& name, const v1::VmSpec& spec);
  Vm create_vm(const std::string& name, const std::filesystem::path& config,
               const std::string& overrides_json = "{}");
  // A new config for an existing set, with the same overrides as create (see Vm::update).
  Vm update_vm(const std::string& name, const std::filesystem::path& config,
               const std::string& overrides_json = "{}");
  Vm vm(const std::string& name);
  std::vector<v1::Vm> vms();
  void delete_vm(const std::string& name);

  Trigger create_trigger(const std::string& name, const v1::TriggerSpec& spec);
  Trigger trigger(const std::string& name);
  std::vector<v1::Trigger> triggers();
  void delete_trigger(const std::string& name);

  // Durable queues (docs/queues.md): created with the spec's visibility timeout, maxReceives and
  // dead-letter queue; deleting one drops its messages.
  Queue create_queue(const std::string& name, const v1::QueueSpec& spec = {});
  Queue queue(const std::string& name);
  // Stored queues and the server's own (`event:<trigger>`, `async:<function>`, their `:dead`).
  std::vector<v1::Queue> queues();
  void delete_queue(const std::string& name);
  // An event (`data_json`: JSON text) to every event trigger on `source`; the triggers reached.
  v1::PublishResult publish(const std::string& source, const std::string& data_json = "null");
  // Where an async invocation (Function::submit) is, or what it came to.
  v1::Invocation invocation(const std::string& id);

  // Storage pools, where VM sets with storage get a volume per replica (docs/vms.md, "Volumes"),
  // and those volumes: kept until deleted here (not with their set).
  v1::StoragePool create_storage_pool(const std::string& name, const v1::StoragePoolSpec& spec);
  v1::StoragePool storage_pool(const std::string& name);
  std::vector<v1::StoragePool> storage_pools();
  void delete_storage_pool(const std::string& name);
  std::vector<v1::Volume> volumes();
  void delete_volume(const std::string& name);

  // Private networks VM sets' replicas join (`spec.network`): a subnet, an address per replica.
  v1::Network create_network(const std::string& name, const v1::NetworkSpec& spec);
  v1::Network network(const std::string& name);
  std::vector<v1::Network> networks();
  void delete_network(const std::string& name);

  std::vector<v1::Node> nodes();
  v1::Node node(const std::string& name);
  // Cordon (new work avoids it), uncordon, or drain (cordon and move its instances off).
  v1::Node cordon_node(const std::string& name);
  v1::Node uncordon_node(const std::string& name);
  v1::Node drain_node(const std::string& name);
  v1::ServerInfo info();

  // Bearer tokens (admin): the secret is in the answer to create and nowhere else; list shows no
  // hashes; revoke takes a name or an id.
  v1::TokenCreated create_token(const v1::TokenRequest& request);
  std::vector<v1::Token> tokens();
  v1::Token revoke_token(const std::string& name_or_id);

  // kubectl-style: create or update every object of the manifest in one transaction. Options:
  // dry_run (report each change with its diff, change nothing; code is packed, not uploaded),
  // prune (delete the stack's objects the manifest no longer holds), stack (for a manifest
  // without a Platform).
  v1::ApplyResult apply(const std::filesystem::path& manifest,
                        const detail::ApplyOptions& options = {});
  v1::ApplyResult apply(const v1::ObjectSet& set, const detail::ApplyOptions& options = {});
  // Deletes every object the manifest names, in one transaction (options.mode is ignored).
  v1::ApplyResult remove(const std::filesystem::path& manifest,
                         const detail::ApplyOptions& options = {});
  // Deletes every object of a stack (what apply of its manifests made), in one transaction.
  v1::ApplyResult remove_stack(const std::string& stack, bool dry_run = false);

  // Stops an embedded cluster (no-op for a remote one); handles made from it then fail.
  void close();

  const SpecOptions& spec_options() const;
  std::shared_ptr<detail::Backend> backend() const { return backend_; }

 private:
  struct State;
  Cluster(std::shared_ptr<detail::Backend> backend, std::shared_ptr<State> state);

  std::shared_ptr<detail::Backend> backend_;
  std::shared_ptr<State> state_;
};

}  // namespace blixard
