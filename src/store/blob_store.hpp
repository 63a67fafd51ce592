// Blobs named by their content (DESIGN §5): code archives are kept here under their SHA-256
// ("sha256:<hex>"), beside the key-value Store that holds the objects naming them. A small seam
// like Store: the directory implementation serves one server; an HA control plane plugs in one
// its servers share. Both pass tests/cpp/blob_store_test.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace blixard::store {

struct BlobInfo {
  std::string digest;
  std::uint64_t size = 0;
  std::chrono::system_clock::time_point used_at;  // stored, or last asked after by has()
};

class BlobStore {
 public:
  virtual ~BlobStore() = default;

  // Whether the blob is here; asking counts as a use (the server collects a blob no object names
  // only once it went unused for a while, so one a client was just told about stays).
  virtual bool has(std::string_view digest) = 0;
  // Keeps `bytes` under `digest`, durably once it returns; a blob already there is left as it
  // is. Throws Error(invalid_spec, field "digest") for a malformed digest or bytes that do not
  // hash to it, Error(unavailable) when the disk refuses (naming it: "disk full: ...").
  virtual void put(std::string_view digest, std::string_view bytes) = 0;
  // The blob, or nullopt when there is none (or `digest` is malformed).
  virtual std::optional<std::string> get(std::string_view digest) = 0;
  virtual std::vector<BlobInfo> list() = 0;
  // False when there was none.
  virtual bool remove(std::string_view digest) = 0;
};

// Blobs as files under `dir` (created if missing): dir/sha256/<hex>, written to a temporary file,
// synced and renamed into place. Throws Error(unavailable) naming `dir` when it cannot be used.
std::shared_ptr<BlobStore> open_blob_dir(const std::filesystem::path& dir);

}  // namespace blixard::store
