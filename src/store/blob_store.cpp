// Blobs as files named by their digest (see blob_store.hpp).
#include "store/blob_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "blixard/error.hpp"
#include "common/digest.hpp"

namespace blixard::store {
namespace {

namespace fs = std::filesystem;

Error disk_error(const fs::path& path, int err) {
  if (err == ENOSPC || err == EDQUOT) {
    return {errc::unavailable, "disk full: cannot write the blob " + path.string()};
  }
  return {errc::unavailable, "cannot write the blob " + path.string() + ": " + std::strerror(err)};
}

bool write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

void sync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

class BlobDir final : public BlobStore {
 public:
  explicit BlobDir(const fs::path& dir) : blobs_(dir / "sha256"), tmp_(blobs_ / ".tmp") {
    std::error_code ec;
    fs::create_directories(tmp_, ec);
    if (ec) {
      throw Error(errc::unavailable,
                  "cannot use the blob store " + blobs_.string() + ": " + ec.message(), "dir");
    }
    // What a crash left half-written.
    for (const auto& e : fs::directory_iterator(tmp_, ec)) fs::remove(e.path(), ec);
  }

  bool has(std::string_view digest) override {
    if (!is_sha256_digest(digest)) return false;
    const fs::path path = path_of(digest);
    // Its modification time is its last use: now.
    if (::utimensat(AT_FDCWD, path.c_str(), nullptr, 0) == 0) return true;
    return errno != ENOENT && ::access(path.c_str(), F_OK) == 0;
  }

  void put(std::string_view digest, std::string_view bytes) override {
    if (!is_sha256_digest(digest)) {
      throw Error(errc::invalid_spec,
                  "\"" + std::string(digest.substr(0, 80)) + "\" is not a sha256:<hex> digest",
                  "digest");
    }
    const std::string actual = sha256_digest(bytes);
    if (actual != digest) {
      throw Error(errc::invalid_spec,
                  "the bytes hash to " + actual + ", not " + std::string(digest), "digest");
    }
    const fs::path path = path_of(digest);
    if (::access(path.c_str(), F_OK) == 0) return;
    const fs::path tmp = tmp_ / (path.filename().string() + "." + std::to_string(::getpid()) + "." +
                                 std::to_string(++sequence_));
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw disk_error(tmp, errno);
    if (!write_all(fd, bytes) || ::fsync(fd) != 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw disk_error(path, err);
    }
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      throw disk_error(path, err);
    }
    sync_dir(blobs_);
  }

  std::optional<std::string> get(std::string_view digest) override {
    if (!is_sha256_digest(digest)) return std::nullopt;
    std::ifstream in(path_of(digest), std::ios::binary);
    if (!in) return std::nullopt;
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  std::vector<BlobInfo> list() override {
    std::vector<BlobInfo> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(blobs_, ec)) {
      const std::string digest = std::string(k_sha256_prefix) + e.path().filename().string();
      struct stat st {};
      if (!is_sha256_digest(digest) || ::stat(e.path().c_str(), &st) != 0) continue;
      out.push_back({digest, static_cast<std::uint64_t>(st.st_size),
                     std::chrono::system_clock::from_time_t(st.st_mtime)});
    }
    return out;
  }

  bool remove(std::string_view digest) override {
    if (!is_sha256_digest(digest)) return false;
    return ::unlink(path_of(digest).c_str()) == 0;
  }

 private:
  fs::path path_of(std::string_view digest) const {
    return blobs_ / std::string(digest.substr(k_sha256_prefix.size()));
  }

  fs::path blobs_;
  fs::path tmp_;
  std::atomic<std::uint64_t> sequence_{0};
};

}  // namespace

std::shared_ptr<BlobStore> open_blob_dir(const std::filesystem::path& dir) {
  return std::make_shared<BlobDir>(dir);
}

}  // namespace blixard::store
