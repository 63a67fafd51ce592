// Unpacked code archives (see code_cache.hpp).
#include "agent/code_cache.hpp"

#include <unistd.h>

#include "blixard/error.hpp"
#include "common/digest.hpp"

namespace blixard::agent {

namespace fs = std::filesystem;

namespace {
constexpr std::string_view k_partial = ".partial-";
}

CodeCache::CodeCache(fs::path dir, Fetch fetch, ArchiveLimits limits)
    : dir_(std::move(dir)), fetch_(std::move(fetch)), limits_(limits) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) {
    throw Error(errc::unavailable,
                "cannot use the code cache " + dir_.string() + ": " + ec.message());
  }
  // Directories are renamed into place only once whole: what a crash left half-unpacked goes.
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().filename().string().starts_with(k_partial)) fs::remove_all(e.path(), ec);
  }
}

fs::path CodeCache::directory(const std::string& digest) {
  if (!is_sha256_digest(digest)) {
    throw Error(errc::invalid_spec, "\"" + digest.substr(0, 80) + "\" is not a sha256:<hex> digest",
                "codeDigest");
  }
  fs::path target = dir_ / digest.substr(k_sha256_prefix.size());
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return !fetching_.contains(digest); });
  if (ready_.contains(digest)) return target;
  if (fs::is_directory(target)) {
    ready_.insert(digest);
    return target;
  }
  fetching_.insert(digest);
  const std::uint64_t sequence = ++sequence_;
  lock.unlock();
  auto done = [&](bool ok) {
    std::lock_guard relock(mutex_);
    fetching_.erase(digest);
    if (ok) ready_.insert(digest);
    changed_.notify_all();
  };
  try {
    const std::string bytes = fetch_(digest);
    if (sha256_digest(bytes) != digest) {
      throw Error(errc::unavailable, "the code fetched for " + digest + " does not match it");
    }
    const fs::path partial = dir_ / (std::string(k_partial) + std::to_string(::getpid()) + "-" +
                                     std::to_string(sequence));
    unpack_code(bytes, partial, limits_);
    std::error_code ec;
    fs::rename(partial, target, ec);
    if (ec) {
      fs::remove_all(partial);
      if (!fs::is_directory(target)) {
        throw Error(errc::unavailable, "cannot keep the code of " + digest + " in " +
                                           target.string() + ": " + ec.message());
      }
    }
  } catch (const Error& e) {
    done(false);
    if (e.code() == errc::invalid_spec) {
      throw Error(errc::invalid_spec, "the code archive " + digest + " is refused: " + e.message(),
                  "codeDigest");
    }
    throw Error(e.code(), "cannot get the code " + digest + ": " + e.message());
  } catch (...) {
    done(false);
    throw;
  }
  done(true);
  return target;
}

}  // namespace blixard::agent
