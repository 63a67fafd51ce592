// The server assembly (see local.hpp).
#include "server/local.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "agent/local_node.hpp"
#include "blixard/error.hpp"
#include "runtime/driver.hpp"
#include "runtime/libvirt_driver.hpp"
#include "store/blob_store.hpp"
#include "store/queue_log.hpp"
#include "store/store.hpp"

namespace blixard::server {

DataDirLock::DataDirLock(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    throw Error(errc::unavailable, "cannot use data dir " + dir.string() + ": " + ec.message(),
                "dir");
  }
  const auto lock_path = dir / "lock";
  fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw Error(errc::unavailable,
                "data dir " + dir.string() + " is not writable: " + std::strerror(errno), "dir");
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    std::array<char, 32> pid{};
    auto n = ::pread(fd_, pid.data(), pid.size() - 1, 0);
    ::close(fd_);
    throw Error(errc::unavailable,
                "data dir " + dir.string() + " is in use by another blixard process" +
                    (n > 0 ? " (pid " + std::string(pid.data()) + ")" : ""),
                "dir");
  }
  auto pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The pid is only a hint for the message above; the lock itself is what matters.
  }
}

DataDirLock::~DataDirLock() {
  if (fd_ >= 0) ::close(fd_);
}

std::shared_ptr<api::Service> open_local_service(const std::filesystem::path& dir,
                                                 const LocalServiceOptions& options) {
  // Released with the service, after it (and so the store) closed.
  auto lock = std::make_shared<DataDirLock>(dir);
  std::shared_ptr<store::Store> store = store::open_sqlite((dir / "store.db").string());
  auto blobs = store::open_blob_dir(dir / "blobs");
  auto nodes = std::make_shared<control::NodeRegistry>(store, options.nodes);
  if (options.local_node) {
    runtime::SandboxOptions sandbox;
    sandbox.work_dir = dir / "instances";
    sandbox.python = options.python;
    // This node reads the server's blob store directly; a joined agent fetches over HTTP.
    auto code =
        std::make_shared<agent::CodeCache>(dir / "code", [blobs](const std::string& digest) {
          auto bytes = blobs->get(digest);
          if (!bytes) throw Error(errc::not_found, "the server holds no code archive " + digest);
          return std::move(*bytes);
        });
    // The registry owns the node (and so its driver) from here; Service::shutdown ends it.
    auto spec = agent::describe_this_machine();
    for (const auto& [key, value] : options.labels) (*spec.mutable_labels())[key] = value;
    for (const auto& path : options.data_paths) spec.add_data_paths(path);
    std::unique_ptr<runtime::Driver> vm_driver;
    if (!options.libvirt_uri.empty()) {
      vm_driver = runtime::make_libvirt_driver(
          runtime::libvirt_options(dir, options.libvirt_uri, options.vm_snapshots));
    }
    nodes->join(std::make_shared<agent::LocalNode>(options.node_name, std::move(spec),
                                                   runtime::make_sandbox_driver(sandbox), code,
                                                   std::move(vm_driver)),
                /*in_process=*/true);
  }
  auto queue_log = store::open_sqlite_queue_log((dir / "queues.db").string());
  return {new api::Service(store, blobs, std::move(queue_log), nodes, options.node_name,
                           options.logger),
          [lock](api::Service* service) { delete service; }};
}

}  // namespace blixard::server
