// The server assembly (DESIGN §1, §2): the store, the node registry, this machine's node and the
// API's Service, built in one place. `Cluster::local` and `blixard-agent --server` are two ways
// to build it; the agent adds the HTTP server and the agent channel on top.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "api/service.hpp"
#include "control/node_registry.hpp"

namespace spdlog {
class logger;
}

namespace blixard::server {

struct LocalServiceOptions {
  std::string node_name = "local";
  std::string python = "python3";
  std::shared_ptr<spdlog::logger> logger;
  // Run instances on this machine too (the embedded default); off, only joined agents do.
  bool local_node = true;
  // This machine's node: labels beside the detected ones, and the data paths it holds.
  std::map<std::string, std::string> labels;
  std::vector<std::string> data_paths;
  control::NodeRegistryOptions nodes;
  // Set: this machine's node runs VM replicas as libvirt guests there (runtime/libvirt_driver.hpp).
  std::string libvirt_uri;
  // With libvirt_uri: save images per guest shape to restore replicas from (0: every guest boots).
  std::size_t vm_snapshots = 2;
};

// An exclusive lock on a data dir (created if missing), held while the object lives. Throws
// Error(unavailable) naming the dir when it is not writable or another process holds it.
class DataDirLock {
 public:
  explicit DataDirLock(const std::filesystem::path& dir);
  ~DataDirLock();
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

 private:
  int fd_ = -1;
};

// The server, and this machine as its node: the SQLite store under `dir`, the sandbox driver.
// Holds an exclusive lock on `dir`; throws Error(unavailable) naming the dir when it is not
// writable or already in use by another process.
std::shared_ptr<api::Service> open_local_service(const std::filesystem::path& dir,
                                                 const LocalServiceOptions& options);

}  // namespace blixard::server
