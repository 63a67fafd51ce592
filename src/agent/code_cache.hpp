// Functions' code on this node (DESIGN §5): archives fetched by digest from the server's blob
// store and unpacked once each under a directory of the node's, kept across restarts. An
// instance runs its handler in the unpacked directory (read-only to it); the node never reads
// the path the client packed.
#pragma once

#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <string>

#include "common/code_archive.hpp"

namespace blixard::agent {

class CodeCache {
 public:
  // The archive's bytes; throws (Error(not_found), Error(unavailable), ...) when it cannot.
  using Fetch = std::function<std::string(const std::string& digest)>;

  // Throws Error(unavailable) naming `dir` when it cannot be created.
  CodeCache(std::filesystem::path dir, Fetch fetch, ArchiveLimits limits = {});

  // The directory holding the code of `digest`: unpacked earlier (by this process or one before
  // it on the same dir), or fetched, checked against the digest and unpacked now. Concurrent
  // callers for one digest share one fetch. Throws Error(invalid_spec, field "codeDigest") for a
  // malformed digest or a refused archive, Error(unavailable) when it cannot be had.
  std::filesystem::path directory(const std::string& digest);

 private:
  std::filesystem::path dir_;
  Fetch fetch_;
  ArchiveLimits limits_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::set<std::string, std::less<>> ready_;
  std::set<std::string, std::less<>> fetching_;
  std::uint64_t sequence_ = 0;
};

}  // namespace blixard::agent
