// A function's code as a content-addressed archive (DESIGN §5): the client packs the `code`
// directory, the server keeps the archive in its blob store under its digest, and agents fetch
// it by that digest and unpack it once. No agent ever reads the client's path.
//
// The archive is a tar (pax) compressed with zstd, made deterministic so the same tree always
// has the same digest, wherever it lies and whenever it was touched: entries sorted by path,
// times, owners and names zeroed, modes reduced to 0755/0644 (executable or not) for files and
// 0755 for directories. It holds directories, regular files and symlinks (kept as links, never
// followed); `.git` and `__pycache__` directories are left out. Anything else (a socket, a
// device) is an error naming it.
//
// Unpacking treats the archive as hostile: only those three kinds of entry, relative paths
// without `..`, nothing written through a symlink, setuid and group/other write bits dropped,
// and limits on entries and unpacked bytes checked as it goes (a small archive cannot fill the
// disk).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/defaults.hpp"

namespace blixard {

struct ArchiveLimits {
  std::uint64_t max_archive_bytes = k_max_code_archive_bytes;  // compressed, as stored and sent
  std::uint64_t max_unpacked_bytes = 256ULL << 20;             // file contents, unpacked
  std::uint64_t max_entries = 20'000;
};

struct CodeArchive {
  std::string digest;  // "sha256:<hex>" of `bytes`
  std::string bytes;
  std::uint64_t files = 0;           // regular files in it
  std::uint64_t unpacked_bytes = 0;  // their contents
};

// Packs `dir`. Throws Error(invalid_spec, field "code") when `dir` is not a directory, holds an
// entry of another kind, or passes a limit; Error(unavailable) when a file cannot be read.
CodeArchive pack_code(const std::filesystem::path& dir, const ArchiveLimits& limits = {});

// What pack_code would read, summed up without reading it: each entry's path, type, mode, size,
// inode and modification and change times (every write moves the change time, and nothing sets
// it back). The same fingerprint means the same archive, so a client may keep the digest it
// packed under it and skip packing the same tree again. Empty when an entry changed within the
// last `settle` (a write in the same clock tick could go unseen): such a tree is packed anew.
std::string code_fingerprint(const std::filesystem::path& dir, const ArchiveLimits& limits = {},
                             std::chrono::seconds settle = std::chrono::seconds(2));

// Unpacks `archive` into `into`, which must not exist yet (its parent must). Throws
// Error(invalid_spec) for an archive that is malformed, holds a refused entry or passes a limit
// (what was written is removed), Error(unavailable) when the disk refuses.
void unpack_code(std::string_view archive, const std::filesystem::path& into,
                 const ArchiveLimits& limits = {});

}  // namespace blixard
