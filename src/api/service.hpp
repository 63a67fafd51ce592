// The control plane's API semantics, independent of transport: validation, one-transaction apply,
// reads with resource versions, and invocation through the node's driver. The embedded Cluster
// calls it directly; the HTTP server exposes it as /v1.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include <boost/asio/io_context.hpp>

#include "api/token_registry.hpp"
#include "blixard/detail/backend.hpp"
#include "control/deliveries.hpp"
#include "control/function_pool.hpp"
#include "control/instance_records.hpp"
#include "control/node_registry.hpp"
#include "control/telemetry.hpp"
#include "control/vm_sets.hpp"
#include "store/blob_store.hpp"
#include "store/queue_log.hpp"
#include "store/store.hpp"

namespace spdlog {
class logger;
}

namespace blixard::api {

class Service final : public detail::Backend {
 public:
  // `nodes` run the functions' instances; `node_name` is the server's own node (its info());
  // `blobs` keeps the functions' code archives; `queue_log` the queues' messages.
  Service(std::shared_ptr<store::Store> store, std::shared_ptr<store::BlobStore> blobs,
          std::unique_ptr<store::QueueLog> queue_log, std::shared_ptr<control::NodeRegistry> nodes,
          std::string node_name, std::shared_ptr<spdlog::logger> logger);
  ~Service() override;

  v1::ApplyResult apply(const v1::ObjectSet& set, const detail::ApplyOptions& options) override;
  v1::Function get_function(const std::string& name) override;
  v1::Vm get_vm(const std::string& name) override;
  v1::Trigger get_trigger(const std::string& name) override;
  v1::FunctionList list_functions() override;
  v1::VmList list_vms() override;
  v1::TriggerList list_triggers() override;
  v1::StoragePool get_storage_pool(const std::string& name) override;
  v1::StoragePoolList list_storage_pools() override;
  v1::VolumeList list_volumes() override;
  v1::Volume delete_volume(const std::string& name) override;
  v1::Network get_network(const std::string& name) override;
  v1::NetworkList list_networks() override;
  v1::NodeList list_nodes() override;
  v1::Node get_node(const std::string& name) override;
  v1::Node change_node(const std::string& name, NodeAction action) override;
  v1::InvokeResponse invoke(const v1::InvokeRequest& request) override;
  bool try_invoke_async(const v1::InvokeRequest& request,
                        const boost::asio::any_io_executor& executor, InvokeCompletion complete,
                        std::shared_ptr<detail::Caller> caller) override;
  v1::ServerInfo info() override;
  v1::FunctionMetrics function_metrics(const std::string& name) override;
  std::string prometheus_metrics() override;
  v1::LogChunk function_logs(const std::string& name, std::int64_t after,
                             std::chrono::milliseconds wait) override;
  v1::LogChunk vm_logs(const std::string& name, std::int64_t after,
                       std::chrono::milliseconds wait) override;
  v1::TokenCreated create_token(const v1::TokenRequest& request) override;
  v1::TokenList list_tokens() override;
  v1::Token revoke_token(const std::string& name_or_id) override;
  std::optional<v1::Token> verify_token(std::string_view secret) override;
  bool has_blob(const std::string& digest) override;
  v1::Blob put_blob(const std::string& digest, const std::string& bytes) override;
  std::optional<std::string> get_blob(const std::string& digest) override;
  v1::Queue get_queue(const std::string& name) override;
  v1::QueueList list_queues() override;
  v1::SendResult send_messages(const std::string& queue, const v1::SendRequest& request) override;
  v1::QueueMessageList receive_messages(const std::string& queue,
                                        const v1::ReceiveRequest& request) override;
  v1::QueueMessageList peek_messages(const std::string& queue, std::uint32_t max) override;
  v1::QueueCount acknowledge_messages(const std::string& queue,
                                      const v1::AckRequest& request) override;
  v1::QueueCount purge_queue(const std::string& queue) override;
  v1::PublishResult publish_event(const v1::PublishRequest& request) override;
  v1::Invocation submit_invocation(const v1::InvokeRequest& request) override;
  v1::Invocation get_invocation(const std::string& id) override;
  v1::WatchEventList events(const std::string& kind, const std::string& name, std::int64_t after,
                            std::chrono::milliseconds wait) override;
  v1::WatchEventList changes(const std::string& kind, const std::string& name,
                             std::int64_t from_revision, std::chrono::milliseconds wait) override;

  // Stops running handlers and gives up the nodes; later calls fail with `unavailable`.
  void shutdown();

  // Where the HTTP gateway serves triggers ("http://127.0.0.1:7070"), for trigger status URLs.
  void set_public_url(std::string url);

  // The cluster's nodes (to join agents to it, cordon them).
  const std::shared_ptr<control::NodeRegistry>& nodes() const noexcept { return nodes_; }

  // The VM sets' replicas (the server's load balancer asks where a set's ports are served).
  const std::unique_ptr<control::VmSets>& vm_sets() const noexcept { return vm_sets_; }

  // Metrics, logs and events of this server; the function pools record into it.
  const std::shared_ptr<control::Telemetry>& telemetry() const noexcept { return telemetry_; }

 private:
  // The pools' view of a function: its status filled in.
  void fill_status(v1::Function& fn);
  void fill_status(v1::Vm& vm);
  void fill_status(v1::StoragePool& pool, const v1::VolumeList& volumes);
  void fill_status(v1::Network& network);
  void fill_status(v1::Trigger& trigger);
  void fill_status(v1::Node& node);

  // A function's stored spec as invoke needs it: resource version and spec (validated at apply).
  struct StoredSpec {
    std::int64_t version = 0;
    v1::FunctionSpec spec;
  };
  // The spec from the cache the functions watch keeps, or from the store when the cache may miss
  // a write (the watch is behind an apply that returned) or does not know the name.
  std::shared_ptr<const StoredSpec> stored_spec(const std::string& function);
  // The checked invocation of `request` (payload size and JSON), and its stored spec's version.
  std::shared_ptr<runtime::Invocation> invocation_of(const v1::InvokeRequest& request,
                                                     std::int64_t& version);
  static v1::InvokeResponse response_of(const runtime::Invocation& invocation,
                                        runtime::InvocationResult outcome);
  void cache_spec(const std::string& function, std::int64_t version, v1::FunctionSpec spec);
  // Every function of `set` names its code by a digest the blob store holds, never by a path.
  void check_code(const v1::ObjectSet& set);
  // Removes blobs no stored function names that are older than a grace period (an upload
  // waiting for its apply is younger).
  void collect_blobs();

  std::shared_ptr<store::Store> store_;
  std::shared_ptr<store::BlobStore> blobs_;
  std::shared_ptr<control::NodeRegistry> nodes_;
  std::string node_name_;
  std::shared_ptr<spdlog::logger> logger_;
  // Made first so every later member (the pools) can record into it.
  std::shared_ptr<control::Telemetry> telemetry_ = std::make_shared<control::Telemetry>();
  // Every function's stored spec, kept by the functions watch below so invoke reads no SQLite row
  // and parses no protobuf per call. Complete through `functions_seen_` (the revision the watch has
  // applied); an apply that changed functions sets `functions_written_` before it returns, so an
  // invoke after it uses the cache only once the watch caught up with it.
  std::shared_mutex specs_mutex_;
  std::unordered_map<std::string, std::shared_ptr<const StoredSpec>> specs_;
  std::atomic<std::int64_t> functions_seen_{0};
  std::atomic<std::int64_t> functions_written_{0};
  // Function instances as stored objects; the pools tell it, so it outlives them.
  std::unique_ptr<control::InstanceRecords> records_;
  // Publishes object changes under /registry/ to telemetry_'s event stream.
  std::unique_ptr<store::Watch> registry_watch_;
  // Warm instances, throttling and scaling of functions on this node.
  std::unique_ptr<control::FunctionPools> pools_;
  // Tells the pools about created, changed and deleted functions (minInstances, draining).
  std::unique_ptr<store::Watch> functions_watch_;
  // Keeps the VM sets' replicas running; told of the sets' changes by vms_watch_.
  std::shared_ptr<control::Volumes> volumes_;
  std::shared_ptr<control::Networks> networks_;
  std::unique_ptr<control::VmSets> vm_sets_;
  std::unique_ptr<store::Watch> vms_watch_;
  // Durable queues and what delivers them to functions (queue and event triggers, async
  // invocations); told of queues, triggers and functions by the watches below. The io thread
  // reads the answers of their calls to warm instances.
  std::shared_ptr<control::Queues> queues_;
  boost::asio::io_context delivery_io_;
  std::thread delivery_thread_;
  std::unique_ptr<control::Deliveries> deliveries_;
  std::unique_ptr<store::Watch> queues_watch_;
  std::unique_ptr<store::Watch> triggers_watch_;
  void start_deliveries();
  // The cluster's own events as event sources (docs/queues.md, "Cluster events"): while an
  // event trigger listens on a `blixard.` source, follows the event stream and publishes each
  // record (`blixard.<kind>.<Reason>`) and node phase change (`blixard.nodes.<Phase>`).
  void bridge_cluster_events();
  std::thread cluster_events_;
  std::mutex cluster_events_mutex_;
  std::condition_variable cluster_events_cv_;
  // not_found unless `name` is a stored queue (declared now if the watch is behind) or one of
  // the server's own.
  void ensure_queue(const std::string& name);
  std::atomic<bool> closed_{false};
  std::unique_ptr<TokenRegistry> tokens_;
  std::mutex public_url_mutex_;
  std::string public_url_;
};

}  // namespace blixard::api
