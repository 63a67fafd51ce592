// The Store interface (DESIGN §3): an ordered key-value store with a cluster-wide revision,
// compare-and-swap transactions, watches from a revision and leases. Backends: sqlite (embedded
// default), etcd (HA). Both pass tests/cpp/store_conformance.hpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace blixard::store {

struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;  // revision that created the key
  std::int64_t mod_revision = 0;     // revision that last modified it
  std::int64_t version = 0;          // number of writes since creation (1 after create)
  std::int64_t lease = 0;            // 0: none
};

struct Range {
  std::vector<KeyValue> kvs;  // sorted by key
  std::int64_t revision = 0;  // the store's revision when read
};

// A condition of a transaction, as etcd's Compare: `target(key) op value`.
// A missing key has mod_revision == create_revision == version == 0.
struct Compare {
  enum class Target { mod_revision, create_revision, version };
  enum class Op { equal, not_equal, less, greater };
  std::string key;
  Target target = Target::mod_revision;
  Op op = Op::equal;
  std::int64_t value = 0;
};

struct Operation {
  enum class Type { put, erase, erase_prefix };
  Type type = Type::put;
  std::string key;
  std::string value;
  std::int64_t lease = 0;
};

struct Txn {
  std::vector<Compare> compares;
  std::vector<Operation> success;  // run when every compare holds
  std::vector<Operation> failure;  // run otherwise
};

struct TxnResult {
  bool succeeded = false;
  std::int64_t revision = 0;  // the store's revision after the txn
};

struct WatchEvent {
  enum class Type { put, erase };
  Type type = Type::put;
  KeyValue kv;  // for erase: key and mod_revision (the deleting revision) only
};

// Delivered in revision order, on a thread of the store's; must not block for long.
// A batch holds every event of one or more consecutive revisions.
using WatchCallback = std::function<void(const std::vector<WatchEvent>&)>;

// Cancels on destruction; no callback runs after the destructor returns.
class Watch {
 public:
  virtual ~Watch() = default;
};

class Store {
 public:
  virtual ~Store() = default;

  virtual std::optional<KeyValue> get(const std::string& key) = 0;
  virtual Range list(const std::string& prefix) = 0;
  // Atomic and durable once it returns.
  virtual TxnResult txn(const Txn& txn) = 0;
  virtual std::int64_t revision() = 0;

  // Events for keys under `prefix` with revision >= from_revision (0: from now on).
  // Throws blixard::Error(errc::conflict) if from_revision was compacted away.
  virtual std::unique_ptr<Watch> watch(const std::string& prefix, std::int64_t from_revision,
                                       WatchCallback callback) = 0;

  // Leases: keys put with a lease are erased (with watch events) when it expires.
  virtual std::int64_t grant_lease(std::chrono::milliseconds ttl) = 0;
  // Throws blixard::Error(errc::not_found) for an expired or unknown lease.
  virtual void keep_alive(std::int64_t lease) = 0;
  virtual void revoke_lease(std::int64_t lease) = 0;

  // Conveniences over txn().
  TxnResult put(const std::string& key, const std::string& value, std::int64_t lease = 0);
  TxnResult erase(const std::string& key);
};

struct SqliteOptions {
  // How often expired leases are collected.
  std::chrono::milliseconds lease_sweep_interval{std::chrono::milliseconds(200)};
  // Watch events are kept for at least this many recent revisions; older ones are compacted.
  std::int64_t history = 10000;
};

// Opens (creating if needed) the SQLite store at `path`. Throws blixard::Error(errc::unavailable)
// naming the path when it cannot be opened or written.
std::unique_ptr<Store> open_sqlite(const std::string& path, SqliteOptions options = {});

}  // namespace blixard::store
