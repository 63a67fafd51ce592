// The API contract that a Cluster handle talks to: implemented in-process by the control plane
// (embedded default) and over HTTP by the remote client. Each call maps to one /v1 endpoint.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <boost/asio/any_io_executor.hpp>

#include "blixard/detail/caller.hpp"
#include "blixard/error.hpp"
#include "blixard/v1/api.pb.h"
#include "blixard/v1/function.pb.h"
#include "blixard/v1/token.pb.h"

namespace blixard::detail {

enum class ApplyMode {
  create,  // every object must be new (already_exists otherwise)
  apply,   // create or update (kubectl apply)
  remove,  // delete the named objects (not_found for a missing one)
};

// How apply() treats its set: one struct rather than a growing list of flags.
struct ApplyOptions {
  ApplyMode mode = ApplyMode::apply;
  // Plan and report (each change with its diff) but commit nothing.
  bool dry_run = false;
  // Also delete the stack's stored objects that the set does not hold: reported `pruned` on
  // apply, `deleted` on remove (so remove with an empty set deletes the whole stack). Needs a
  // stack (invalid_spec naming "stack" otherwise).
  bool prune = false;
  // The stack every object of the set belongs to; empty: the set's own (a Platform's name).
  // invalid_spec naming "stack" when the set names another. (Its `{}` lets a designated
  // initializer leave it out without g++'s -Wmissing-field-initializers.)
  std::string stack{};  // NOLINT(readability-redundant-member-init)
};

class Backend {
 public:
  virtual ~Backend() = default;

  // One transaction: all objects change or none does.
  virtual v1::ApplyResult apply(const v1::ObjectSet& set, const ApplyOptions& options) = 0;

  virtual v1::Function get_function(const std::string& name) = 0;
  virtual v1::Vm get_vm(const std::string& name) = 0;
  virtual v1::Trigger get_trigger(const std::string& name) = 0;
  virtual v1::FunctionList list_functions() = 0;
  virtual v1::VmList list_vms() = 0;
  virtual v1::TriggerList list_triggers() = 0;
  virtual v1::NodeList list_nodes() = 0;
  virtual v1::Node get_node(const std::string& name) = 0;
  // cordon: new work avoids the node; uncordon: it takes work again; drain: cordon and move
  // its instances off (idle ones stop now, busy ones after their calls). Returns the node.
  enum class NodeAction { cordon, uncordon, drain };
  virtual v1::Node change_node(const std::string& name, NodeAction action) = 0;

  // Runs the function once. Handler failures come back as an Error (timeout, handler_failed, ...).
  virtual v1::InvokeResponse invoke(const v1::InvokeRequest& request) = 0;

  // How try_invoke_async() ends: the Error invoke() would have thrown, or the response.
  using InvokeCompletion = std::function<void(std::exception_ptr error, v1::InvokeResponse)>;
  // invoke() without a thread waiting for the handler, where the backend can (a warm instance of
  // this node has room): true once the call is on its way, and `complete` then runs once, on any
  // thread, never inside this call. False, having done nothing, when it cannot: the caller calls
  // invoke(). Throws what invoke() throws before the call starts (bad payload, throttled, ...).
  // `executor`'s context reads the answer, so it must keep running until `complete` has run.
  // `caller`, when given, is watched while the call waits for its instance: a call whose caller
  // hung up is then not started, and completes with `unavailable`.
  virtual bool try_invoke_async(
      const v1::InvokeRequest& /*request*/, const boost::asio::any_io_executor& /*executor*/,
      InvokeCompletion /*complete*/,         // NOLINT(performance-*): moved by overrides
      std::shared_ptr<Caller> /*caller*/) {  // NOLINT(performance-*): moved by overrides
    return false;
  }

  virtual v1::ServerInfo info() = 0;

  // Counters and latency summaries of one function (not_found for an unknown one).
  virtual v1::FunctionMetrics function_metrics(const std::string& name) = 0;
  // Every function's metrics in the Prometheus text exposition format (GET /metrics).
  virtual std::string prometheus_metrics() = 0;

  // Long polls: return what came after `after` at once, or wait up to `wait` for something new
  // (an empty answer when nothing came). Callers continue from the returned `next`.
  virtual v1::LogChunk function_logs(const std::string& name, std::int64_t after,
                                     std::chrono::milliseconds wait) = 0;
  // A VM set's console lines (each replica's, `instance` naming it).
  virtual v1::LogChunk vm_logs(const std::string& name, std::int64_t after,
                               std::chrono::milliseconds wait) = 0;
  // Object changes and records (scaling, placement, invocations); `kind`/`name` empty: all.
  // A negative `after` means "from now": only events newer than the call.
  virtual v1::WatchEventList events(const std::string& kind, const std::string& name,
                                    std::int64_t after, std::chrono::milliseconds wait) = 0;

  // The store's object changes from store revision `from_revision` (1 or more) on, DESIGN §4's
  // watch: what the store kept since then at once, or up to `wait` for the next. `next` is the
  // revision to go on from. conflict when that revision was compacted away (list again and watch
  // from the list's revision). `kind`/`name` filter as in events(); a name also matches the
  // objects under it (kind "instances", name "echo": every instance of echo).
  virtual v1::WatchEventList changes(const std::string& /*kind*/, const std::string& /*name*/,
                                     std::int64_t /*from_revision*/,
                                     std::chrono::milliseconds /*wait*/) {
    throw Error(errc::unavailable, "this backend keeps no store to watch");
  }

  // Tokens (DESIGN §4): create answers with the secret, the only time it is shown (the store
  // keeps its SHA-256); list answers without hashes; revoke takes a name or an id (not_found).
  // A backend that keeps no tokens answers unavailable.
  virtual v1::TokenCreated create_token(const v1::TokenRequest& /*request*/) { throw_no_tokens(); }
  virtual v1::TokenList list_tokens() { throw_no_tokens(); }
  virtual v1::Token revoke_token(const std::string& /*name_or_id*/) { throw_no_tokens(); }
  // Code archives by digest (DESIGN §5): a client uploads the archive it packed before the apply
  // that names it (put_blob checks the bytes against the digest and is idempotent); agents fetch
  // it by digest. A backend that keeps no blobs answers unavailable.
  virtual bool has_blob(const std::string& /*digest*/) { throw_no_blobs(); }
  virtual v1::Blob put_blob(const std::string& /*digest*/, const std::string& /*bytes*/) {
    throw_no_blobs();
  }
  // nullopt when there is none.
  virtual std::optional<std::string> get_blob(const std::string& /*digest*/) { throw_no_blobs(); }

  // Storage pools (created and deleted through apply) and the volumes VM sets made in them
  // (docs/vms.md, "Volumes"): delete_volume removes the data from its node and the record, and
  // refuses (conflict) while a replica writes to it. A backend that keeps none answers
  // unavailable.
  virtual v1::StoragePool get_storage_pool(const std::string& /*name*/) { throw_no_storage(); }
  virtual v1::StoragePoolList list_storage_pools() { throw_no_storage(); }
  virtual v1::VolumeList list_volumes() { throw_no_storage(); }
  virtual v1::Volume delete_volume(const std::string& /*name*/) { throw_no_storage(); }
  // VM networks (created and deleted through apply), with how many addresses each hands out.
  virtual v1::Network get_network(const std::string& /*name*/) { throw_no_storage(); }
  virtual v1::NetworkList list_networks() { throw_no_storage(); }

  // Durable queues (docs/queues.md), created and deleted through apply. A backend that keeps
  // none answers unavailable.
  virtual v1::Queue get_queue(const std::string& /*name*/) { throw_no_queues(); }
  virtual v1::QueueList list_queues() { throw_no_queues(); }
  // Durable when it returns.
  virtual v1::SendResult send_messages(const std::string& /*queue*/,
                                       const v1::SendRequest& /*request*/) {
    throw_no_queues();
  }
  virtual v1::QueueMessageList receive_messages(const std::string& /*queue*/,
                                                const v1::ReceiveRequest& /*request*/) {
    throw_no_queues();
  }
  // What a receive could take now, without taking it.
  virtual v1::QueueMessageList peek_messages(const std::string& /*queue*/, std::uint32_t /*max*/) {
    throw_no_queues();
  }
  virtual v1::QueueCount acknowledge_messages(const std::string& /*queue*/,
                                              const v1::AckRequest& /*request*/) {
    throw_no_queues();
  }
  virtual v1::QueueCount purge_queue(const std::string& /*queue*/) { throw_no_queues(); }
  // An event for every event trigger on its source, durable when it returns.
  virtual v1::PublishResult publish_event(const v1::PublishRequest& /*request*/) {
    throw_no_queues();
  }
  // An async invocation: queued durably, run (and retried) by the server; its id at once.
  virtual v1::Invocation submit_invocation(const v1::InvokeRequest& /*request*/) {
    throw_no_queues();
  }
  virtual v1::Invocation get_invocation(const std::string& /*id*/) { throw_no_queues(); }

  // Server side, no endpoint: the stored token whose secret this is (hash compared in constant
  // time), expired or not; nullopt for an unknown or revoked secret.
  virtual std::optional<v1::Token> verify_token(std::string_view /*secret*/) {
    return std::nullopt;
  }

 private:
  [[noreturn]] static void throw_no_queues() {
    throw Error(errc::unavailable, "this backend keeps no queues");
  }
  [[noreturn]] static void throw_no_tokens() {
    throw Error(errc::unavailable, "this backend keeps no tokens");
  }
  [[noreturn]] static void throw_no_storage() {
    throw Error(errc::unavailable, "this backend keeps no storage pools or networks");
  }
  [[noreturn]] static void throw_no_blobs() {
    throw Error(errc::unavailable, "this backend keeps no blobs");
  }
};

}  // namespace blixard::detail
