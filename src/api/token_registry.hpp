// Bearer tokens kept in the store under /registry/tokens/<name> (DESIGN §4): a secret
// "blx_<id>_<64 hex>" from OpenSSL's CSPRNG is shown once; the store keeps its SHA-256
// (libcrypto) and the id, which finds the token without touching the hash; hashes are compared
// with CRYPTO_memcmp (constant time). Verified tokens come from a cache by id that this
// registry's writes keep and a miss re-reads (at most once a second), so a warm call with a
// token reads no store row.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "blixard/v1/token.pb.h"
#include "store/store.hpp"

namespace blixard::api {

class TokenRegistry {
 public:
  explicit TokenRegistry(std::shared_ptr<store::Store> store);

  // invalid_spec naming role, function, ttl or name; already_exists for a name in use.
  v1::TokenCreated create(const v1::TokenRequest& request);
  v1::TokenList list();
  // By name, else by id; not_found otherwise.
  v1::Token revoke(const std::string& name_or_id);
  std::optional<v1::Token> verify(std::string_view secret);
  // Re-reads the cache from the store: a token another server created or revoked.
  void refresh();

 private:
  void reload();  // mu_ held

  std::shared_ptr<store::Store> store_;
  std::mutex mu_;
  std::unordered_map<std::string, v1::Token> by_id_;
  std::chrono::steady_clock::time_point loaded_;
};

}  // namespace blixard::api
