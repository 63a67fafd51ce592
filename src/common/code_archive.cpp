// Code archives through libarchive (see code_archive.hpp).
#include "common/code_archive.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include "blixard/error.hpp"
#include "common/digest.hpp"
#include "common/libarchive.hpp"

namespace blixard {
namespace {

namespace fs = std::filesystem;

using libarchive::DiskArchive;
using libarchive::Entry;
using libarchive::ReadArchive;
using libarchive::WriteArchive;

Error bad_code(const std::string& message) { return {errc::invalid_spec, message, "code"}; }

std::string kind_of(fs::file_type type) {
  switch (type) {
    case fs::file_type::block:
      return "block device";
    case fs::file_type::character:
      return "character device";
    case fs::file_type::fifo:
      return "named pipe";
    case fs::file_type::socket:
      return "socket";
    default:
      return "special file";
  }
}

bool left_out(const fs::path& name) { return name == ".git" || name == "__pycache__"; }

struct Found {
  std::string path;  // relative, generic ("a/b.py")
  fs::file_type type;
};

std::vector<Found> walk(const fs::path& dir, const ArchiveLimits& limits) {
  std::vector<Found> found;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec);  // symlinks are listed, not followed
  const fs::recursive_directory_iterator end;
  for (; !ec && it != end; it.increment(ec)) {
    const auto type = it->symlink_status(ec).type();
    if (ec) break;
    if (type == fs::file_type::directory && left_out(it->path().filename())) {
      it.disable_recursion_pending();
      continue;
    }
    if (type != fs::file_type::directory && type != fs::file_type::regular &&
        type != fs::file_type::symlink) {
      throw bad_code(it->path().string() + " is a " + kind_of(type) +
                     "; a code directory may hold directories, files and symlinks only");
    }
    found.push_back({it->path().lexically_relative(dir).generic_string(), type});
    if (found.size() > limits.max_entries) {
      throw bad_code(dir.string() + " holds more than " + std::to_string(limits.max_entries) +
                     " entries");
    }
  }
  if (ec)
    throw Error(errc::unavailable, "cannot read " + dir.string() + ": " + ec.message(), "code");
  std::sort(found.begin(), found.end(),
            [](const Found& a, const Found& b) { return a.path < b.path; });
  return found;
}

la_ssize_t append_to_string(archive*, void* out, const void* data, size_t size) {
  static_cast<std::string*>(out)->append(static_cast<const char*>(data), size);
  return static_cast<la_ssize_t>(size);
}

// What libarchive says went wrong; it does not always say (a null string).
std::string why(archive* a) {
  const char* text = archive_error_string(a);
  return text != nullptr ? text : "libarchive gave no reason";
}

void check(archive* a, int rc, const std::string& doing) {
  if (rc != ARCHIVE_OK) throw Error(errc::internal, doing + ": " + why(a));
}

// Writes the contents of the regular file `file` (already described by its header).
std::uint64_t copy_file(archive* a, const fs::path& file, std::uint64_t size) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    throw Error(errc::unavailable, "cannot read " + file.string() + ": " + std::strerror(errno),
                "code");
  }
  std::array<char, std::size_t{64} * 1024> buf{};
  std::uint64_t left = size;
  while (left > 0) {
    const ssize_t n = ::read(fd, buf.data(), std::min<std::uint64_t>(buf.size(), left));
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "it shrank while being packed";
      ::close(fd);
      throw Error(errc::unavailable, "cannot read " + file.string() + ": " + why, "code");
    }
    if (archive_write_data(a, buf.data(), static_cast<size_t>(n)) != n) {
      ::close(fd);
      check(a, ARCHIVE_FATAL, "packing " + file.string());
    }
    left -= static_cast<std::uint64_t>(n);
  }
  ::close(fd);
  return size;
}

// The archive's path as a path under the root: relative, normal, no "..". Empty for the root
// itself ("." or "./").
std::string checked_path(const char* raw) {
  if (raw == nullptr || *raw == '\0') throw bad_code("the archive holds an entry without a name");
  const fs::path p = fs::path(raw).lexically_normal();
  if (p.is_absolute()) throw bad_code(std::string("the archive holds an absolute path: ") + raw);
  for (const auto& part : p) {
    if (part == "..") throw bad_code(std::string("the archive holds a path with '..': ") + raw);
  }
  std::string out = p.generic_string();
  while (!out.empty() && out.back() == '/') out.pop_back();
  return out == "." ? std::string() : out;
}

}  // namespace

CodeArchive pack_code(const fs::path& dir, const ArchiveLimits& limits) {
  std::error_code ec;
  const auto status = fs::status(dir, ec);
  if (!fs::exists(status)) throw bad_code("code directory not found: " + dir.string());
  if (!fs::is_directory(status)) throw bad_code("code must be a directory: " + dir.string());

  CodeArchive out;
  WriteArchive w;
  check(w.a, archive_write_set_format_pax_restricted(w.a), "setting the archive format");
  check(w.a, archive_write_add_filter_zstd(w.a), "adding zstd");
  check(w.a, archive_write_set_bytes_in_last_block(w.a, 1), "setting the block size");
  check(w.a, archive_write_open(w.a, &out.bytes, nullptr, append_to_string, nullptr),
        "opening the archive");
  for (const auto& f : walk(dir, limits)) {
    const fs::path full = dir / f.path;
    Entry e(archive_entry_new());
    archive_entry_set_pathname(e.get(), f.path.c_str());
    archive_entry_set_mtime(e.get(), 0, 0);
    struct stat st {};
    if (::lstat(full.c_str(), &st) != 0) {
      throw Error(errc::unavailable, "cannot read " + full.string() + ": " + std::strerror(errno),
                  "code");
    }
    std::uint64_t size = 0;
    if (f.type == fs::file_type::directory) {
      archive_entry_set_filetype(e.get(), AE_IFDIR);
      archive_entry_set_perm(e.get(), 0755);
    } else if (f.type == fs::file_type::symlink) {
      archive_entry_set_filetype(e.get(), AE_IFLNK);
      archive_entry_set_perm(e.get(), 0777);
      archive_entry_set_symlink(e.get(), fs::read_symlink(full).c_str());
    } else {
      size = static_cast<std::uint64_t>(st.st_size);
      out.unpacked_bytes += size;
      if (out.unpacked_bytes > limits.max_unpacked_bytes) {
        throw bad_code(dir.string() + " holds more than " +
                       std::to_string(limits.max_unpacked_bytes >> 20) + " MiB of files");
      }
      archive_entry_set_filetype(e.get(), AE_IFREG);
      archive_entry_set_perm(e.get(), (st.st_mode & S_IXUSR) != 0 ? 0755 : 0644);
      archive_entry_set_size(e.get(), static_cast<la_int64_t>(size));
      ++out.files;
    }
    check(w.a, archive_write_header(w.a, e.get()), "packing " + full.string());
    if (f.type == fs::file_type::regular) copy_file(w.a, full, size);
    if (out.bytes.size() > limits.max_archive_bytes) break;  // checked below
  }
  check(w.a, archive_write_close(w.a), "finishing the archive");
  if (out.bytes.size() > limits.max_archive_bytes) {
    throw bad_code(dir.string() + " packs into more than " +
                   std::to_string(limits.max_archive_bytes >> 20) + " MiB");
  }
  out.digest = sha256_digest(out.bytes);
  return out;
}

std::string code_fingerprint(const fs::path& dir, const ArchiveLimits& limits,
                             std::chrono::seconds settle) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  std::string summary;
  for (const auto& f : walk(dir, limits)) {
    struct stat st {};
    if (::lstat((dir / f.path).c_str(), &st) != 0) return {};
    for (const auto& t : {st.st_mtim, st.st_ctim}) {
      if (settle.count() > 0 && t.tv_sec >= now.tv_sec - settle.count()) return {};  // too recent
    }
    summary += f.path;
    summary.push_back('\0');
    for (const auto value :
         {static_cast<std::int64_t>(st.st_mode), static_cast<std::int64_t>(st.st_size),
          static_cast<std::int64_t>(st.st_ino), static_cast<std::int64_t>(st.st_dev),
          static_cast<std::int64_t>(st.st_mtim.tv_sec),
          static_cast<std::int64_t>(st.st_mtim.tv_nsec),
          static_cast<std::int64_t>(st.st_ctim.tv_sec),
          static_cast<std::int64_t>(st.st_ctim.tv_nsec)}) {
      summary.append(reinterpret_cast<const char*>(&value), sizeof value);
    }
  }
  return sha256_hex(summary);
}

void unpack_code(std::string_view bytes, const fs::path& into, const ArchiveLimits& limits) {
  if (bytes.size() > limits.max_archive_bytes) {
    throw bad_code("the archive is over " + std::to_string(limits.max_archive_bytes >> 20) +
                   " MiB");
  }
  std::error_code ec;
  // libarchive refuses to write through any symlink on the way, so the parent is resolved first.
  const fs::path parent = fs::canonical(into.parent_path(), ec);
  if (ec) {
    throw Error(errc::unavailable, "cannot unpack into " + into.string() + ": " + ec.message());
  }
  const fs::path root = parent / into.filename();
  if (::mkdir(root.c_str(), 0755) != 0) {
    throw Error(errc::unavailable, "cannot create " + root.string() + ": " + std::strerror(errno));
  }
  try {
    ReadArchive r;
    archive_read_support_format_tar(r.a);
    archive_read_support_filter_zstd(r.a);
    if (archive_read_open_memory(r.a, bytes.data(), bytes.size()) != ARCHIVE_OK) {
      throw bad_code(std::string("not a code archive: ") + why(r.a));
    }
    DiskArchive w;
    archive_write_disk_set_options(w.a, ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                            ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                            ARCHIVE_EXTRACT_NO_OVERWRITE);
    std::uint64_t entries = 0, unpacked = 0;
    archive_entry* e = nullptr;
    for (;;) {
      const int rc = archive_read_next_header(r.a, &e);
      if (rc == ARCHIVE_EOF) break;
      if (rc != ARCHIVE_OK) {
        throw bad_code(std::string("a malformed code archive: ") + why(r.a));
      }
      if (++entries > limits.max_entries) {
        throw bad_code("the archive holds more than " + std::to_string(limits.max_entries) +
                       " entries");
      }
      const std::string path = checked_path(archive_entry_pathname(e));
      if (archive_entry_hardlink(e) != nullptr) {
        throw bad_code("the archive holds a hard link: " + path);
      }
      const auto type = archive_entry_filetype(e);
      if (path.empty()) {
        if (type != AE_IFDIR) throw bad_code("the archive's root is not a directory");
        continue;
      }
      if (type == AE_IFDIR) {
        archive_entry_set_perm(e, 0755);
      } else if (type == AE_IFREG) {
        archive_entry_set_perm(e, (archive_entry_perm(e) & 0100) != 0 ? 0755 : 0644);
        unpacked += static_cast<std::uint64_t>(std::max<la_int64_t>(0, archive_entry_size(e)));
        if (unpacked > limits.max_unpacked_bytes) {
          throw bad_code("the archive unpacks to more than " +
                         std::to_string(limits.max_unpacked_bytes >> 20) + " MiB");
        }
      } else if (type == AE_IFLNK) {
        archive_entry_set_perm(e, 0777);
      } else {
        throw bad_code("the archive holds " + path + ", which is not a directory, file or symlink");
      }
      archive_entry_set_pathname(e, (root / path).c_str());
      if (archive_write_header(w.a, e) != ARCHIVE_OK) {
        throw bad_code("cannot unpack " + path + ": " + why(w.a));
      }
      if (type == AE_IFREG) {
        const void* block = nullptr;
        size_t size = 0;
        la_int64_t offset = 0;
        int data_rc = ARCHIVE_OK;
        while ((data_rc = archive_read_data_block(r.a, &block, &size, &offset)) == ARCHIVE_OK) {
          if (archive_write_data_block(w.a, block, size, offset) != ARCHIVE_OK) {
            throw Error(errc::unavailable, "cannot write " + path + ": " + why(w.a));
          }
        }
        if (data_rc != ARCHIVE_EOF) {
          throw bad_code("a malformed code archive at " + path + ": " + why(r.a));
        }
      }
      if (archive_write_finish_entry(w.a) != ARCHIVE_OK) {
        throw Error(errc::unavailable, "cannot finish " + path + ": " + why(w.a));
      }
    }
    if (archive_write_close(w.a) != ARCHIVE_OK) {
      throw Error(errc::unavailable, std::string("cannot finish unpacking: ") + why(w.a));
    }
  } catch (...) {
    fs::remove_all(root, ec);
    throw;
  }
}

}  // namespace blixard
