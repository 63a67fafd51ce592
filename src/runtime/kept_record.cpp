#include "runtime/kept_record.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/process.hpp"

namespace blixard::runtime {

namespace fs = std::filesystem;

namespace {

constexpr off_t k_max_record = 16 << 20;  // a spec is far smaller; more is no record of ours

}  // namespace

fs::path kept_record_path(const fs::path& dir, const std::string& replica) {
  return dir / (replica + ".pb");
}

v1::KeptReplica kept_record_of(const ReplicaOptions& options) {
  v1::KeptReplica kept;
  auto& a = *kept.mutable_assignment();
  a.set_epoch(options.epoch);
  a.set_vm(options.vm);
  a.set_replica(options.name);
  a.set_slot(options.slot);
  *a.mutable_spec() = options.spec;
  if (options.volume) *a.mutable_volume() = *options.volume;
  if (options.network) *a.mutable_network() = *options.network;
  return kept;
}

ReplicaOptions kept_replica_options(const v1::KeptReplica& record,
                                    ReplicaOptions::LogCallback on_log,
                                    std::function<void(const ReplicaExit&)> on_exit) {
  const auto& a = record.assignment();
  ReplicaOptions options;
  options.vm = a.vm();
  options.name = a.replica();
  options.slot = a.slot();
  options.spec = a.spec();
  if (a.has_volume()) options.volume = a.volume();
  if (a.has_network()) options.network = a.network();
  options.epoch = a.epoch();
  options.on_log = std::move(on_log);
  options.on_exit = std::move(on_exit);
  return options;
}

bool write_kept_record(const fs::path& path, const v1::KeptReplica& record) {
  const fs::path partial = path.string() + ".partial";
  ::unlink(partial.c_str());
  const UniqueFd out(
      ::open(partial.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  return out.get() >= 0 && write_all(out.get(), record.SerializeAsString()) &&
         ::rename(partial.c_str(), path.c_str()) == 0;
}

std::optional<v1::KeptReplica> read_kept_record(const fs::path& path) {
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  struct stat st {};
  if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      st.st_uid != ::geteuid() || (st.st_mode & 077) != 0 || st.st_size > k_max_record) {
    return std::nullopt;
  }
  std::string data(static_cast<std::size_t>(st.st_size), '\0');
  if (::read(fd.get(), data.data(), data.size()) != st.st_size) return std::nullopt;
  v1::KeptReplica record;
  if (!record.ParseFromString(data)) return std::nullopt;
  const std::string& name = record.assignment().replica();
  if (name.empty() || name.find('/') != std::string::npos || name.front() == '.' ||
      path.filename() != kept_record_path({}, name)) {
    return std::nullopt;
  }
  return record;
}

}  // namespace blixard::runtime
