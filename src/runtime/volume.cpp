// A replica's volume on the node (see volume.hpp).
#include "runtime/volume.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "blixard/error.hpp"

namespace blixard::runtime {
namespace fs = std::filesystem;

fs::path volume_path(const v1::VolumeAttachment& volume, const std::string& format) {
  const fs::path pool(volume.pool_path());
  return format == k_volume_image ? pool / (volume.name() + ".img") : pool / volume.name();
}

void fence_volume(const v1::VolumeAttachment& volume) {
  if (volume.writer_epoch() == 0) return;
  std::error_code ec;
  fs::create_directories(volume.pool_path(), ec);
  const fs::path path = fs::path(volume.pool_path()) / ("." + volume.name() + ".epoch");
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    throw Error(errc::unavailable, "cannot open " + path.string() + " (volume " + volume.name() +
                                       "'s fencing record): " + std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // One node at a time reads and writes it (flock holds across NFS and CephFS mounts).
  if (::flock(fd, LOCK_EX) != 0) {
    throw Error(errc::unavailable, "cannot lock " + path.string() + ": " + std::strerror(errno));
  }
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  const long long recorded = n > 0 ? std::atoll(buf) : 0;
  if (recorded > volume.writer_epoch()) {
    throw Error(errc::conflict, "volume " + volume.name() + " was taken under fencing epoch " +
                                    std::to_string(recorded) + "; this start's epoch " +
                                    std::to_string(volume.writer_epoch()) +
                                    " is older: it was fenced off");
  }
  if (recorded == volume.writer_epoch()) return;
  const std::string text = std::to_string(volume.writer_epoch()) + "\n";
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()) ||
      ::fsync(fd) != 0) {
    throw Error(errc::unavailable,
                "cannot record epoch in " + path.string() + ": " + std::strerror(errno));
  }
}

fs::path prepare_volume_directory(const v1::VolumeAttachment& volume, long uid, long gid) {
  fence_volume(volume);
  if (volume.format() == k_volume_image) {
    throw Error(errc::invalid_spec,
                "volume " + volume.name() +
                    " was made as a disk image for a guest (libvirt driver): the sandbox driver "
                    "cannot mount it; run the set with driver libvirt, or delete the volume",
                "storage");
  }
  fs::path dir = volume_path(volume, k_volume_directory);
  std::error_code ec;
  fs::create_directories(volume.pool_path(), ec);
  if (ec || (!fs::create_directory(dir, ec) && ec)) {
    throw Error(errc::unavailable, "cannot make volume " + volume.name() + " in " +
                                       volume.pool_path() + ": " + ec.message());
  }
  if (fs::is_symlink(dir) || !fs::is_directory(dir)) {
    throw Error(errc::unavailable, dir.string() + " is not a directory");
  }
  fs::permissions(dir, fs::perms::owner_all, ec);
  if (uid < 0) return dir;
  // Owned by the uid this start runs as. lchown and no symlink followed: the files are the last
  // run's, and a hostile one may have left links to the host's files among them.
  auto own = [&](const fs::path& p) {
    if (::lchown(p.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(gid)) != 0) {
      throw Error(errc::unavailable, "cannot hand " + p.string() + " to the replica's uid");
    }
  };
  own(dir);
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    own(it->path());
  }
  if (ec) {
    throw Error(errc::unavailable, "cannot read volume " + dir.string() + ": " + ec.message());
  }
  return dir;
}

void remove_volume_data(const v1::VolumeAttachment& volume) {
  std::error_code ec;
  fs::remove_all(volume_path(volume, k_volume_directory), ec);
  if (!ec) fs::remove(volume_path(volume, k_volume_image), ec);
  // (Its fencing record stays: a volume made again under the name is fenced on from it.)
  if (ec) {
    throw Error(errc::unavailable, "cannot remove volume " + volume.name() + ": " + ec.message());
  }
}

}  // namespace blixard::runtime
