// Tokens in the store, hashed (see token_registry.hpp).
#include "api/token_registry.hpp"

#include <google/protobuf/util/time_util.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>

#include "blixard/error.hpp"
#include "blixard/spec.hpp"
#include "common/digest.hpp"

namespace blixard::api {
namespace {

using google::protobuf::util::TimeUtil;

constexpr std::string_view k_prefix = "/registry/tokens/";
constexpr std::string_view k_secret_prefix = "blx_";
constexpr std::size_t k_id_hex = 16;
constexpr auto k_reload_every = std::chrono::seconds(1);

std::string random_hex(std::size_t bytes) {
  std::array<unsigned char, 64> buf{};
  if (bytes > buf.size() || RAND_bytes(buf.data(), static_cast<int>(bytes)) != 1) {
    throw Error(errc::internal, "the system's random source failed");
  }
  return to_hex(buf.data(), bytes);
}

// "blx_<id>_<secret>" -> id; empty for anything else.
std::string_view id_of(std::string_view secret) {
  if (!secret.starts_with(k_secret_prefix)) return {};
  secret.remove_prefix(k_secret_prefix.size());
  if (secret.size() <= k_id_hex || secret[k_id_hex] != '_') return {};
  return secret.substr(0, k_id_hex);
}

v1::Token without_hash(v1::Token t) {
  t.mutable_spec()->clear_secret_sha256();
  return t;
}

}  // namespace

TokenRegistry::TokenRegistry(std::shared_ptr<store::Store> store) : store_(std::move(store)) {
  std::lock_guard lock(mu_);
  reload();
}

void TokenRegistry::reload() {
  by_id_.clear();
  for (const auto& kv : store_->list(std::string(k_prefix)).kvs) {
    v1::Token t;
    if (!t.ParseFromString(kv.value)) continue;
    t.mutable_metadata()->set_resource_version(kv.mod_revision);
    by_id_[t.spec().id()] = std::move(t);
  }
  loaded_ = std::chrono::steady_clock::now();
}

v1::TokenCreated TokenRegistry::create(const v1::TokenRequest& request) {
  const std::string& role = request.role();
  if (role != "admin" && role != "read" && role != "invoke" && role != "node") {
    throw Error(errc::invalid_spec,
                "role must be admin, read, invoke or node, not \"" + role + "\"", "role");
  }
  if (!request.function().empty()) {
    if (role != "invoke") {
      throw Error(errc::invalid_spec, "only an invoke token is limited to a function", "function");
    }
    if (!is_valid_name(request.function())) {
      throw Error(errc::invalid_spec, "\"" + request.function() + "\" is not a function name",
                  "function");
    }
  }
  if (request.has_ttl() && (request.ttl().seconds() < 0 || request.ttl().nanos() < 0 ||
                            (request.ttl().seconds() == 0 && request.ttl().nanos() == 0))) {
    throw Error(errc::invalid_spec, "ttl must be a positive duration (e.g. 30d, 12h)", "ttl");
  }
  const std::string id = random_hex(k_id_hex / 2);
  const std::string name = request.name().empty() ? "token-" + id.substr(0, 8) : request.name();
  if (!is_valid_name(name)) {
    throw Error(errc::invalid_spec, "\"" + name + "\" is not a valid name", "name");
  }
  const std::string secret = std::string(k_secret_prefix) + id + "_" + random_hex(32);

  v1::Token token;
  token.mutable_metadata()->set_name(name);
  *token.mutable_metadata()->mutable_created_at() = TimeUtil::GetCurrentTime();
  token.mutable_spec()->add_scopes(role);
  token.mutable_spec()->set_secret_sha256(sha256_hex(secret));
  token.mutable_spec()->set_function(request.function());
  token.mutable_spec()->set_id(id);
  if (request.has_ttl()) {
    *token.mutable_spec()->mutable_expires_at() = TimeUtil::GetCurrentTime() + request.ttl();
  }
  const std::string key = std::string(k_prefix) + name;
  store::Txn txn;
  txn.compares.push_back(
      {key, store::Compare::Target::create_revision, store::Compare::Op::equal, 0});
  txn.success.push_back({store::Operation::Type::put, key, token.SerializeAsString(), 0});
  const auto result = store_->txn(txn);
  if (!result.succeeded) {
    throw Error(errc::already_exists, "a token named " + name + " exists", "name");
  }
  token.mutable_metadata()->set_resource_version(result.revision);
  {
    std::lock_guard lock(mu_);
    by_id_[id] = token;
  }
  v1::TokenCreated out;
  *out.mutable_token() = without_hash(std::move(token));
  out.set_secret(secret);
  return out;
}

v1::TokenList TokenRegistry::list() {
  v1::TokenList out;
  auto range = store_->list(std::string(k_prefix));
  for (const auto& kv : range.kvs) {
    v1::Token t;
    if (!t.ParseFromString(kv.value)) continue;
    t.mutable_metadata()->set_resource_version(kv.mod_revision);
    *out.add_items() = without_hash(std::move(t));
  }
  out.set_revision(range.revision);
  return out;
}

v1::Token TokenRegistry::revoke(const std::string& name_or_id) {
  // A name wins over an id that happens to spell the same.
  const v1::TokenList tokens = list();
  std::optional<v1::Token> found;
  for (const auto& t : tokens.items()) {
    if (t.metadata().name() == name_or_id) found = t;
  }
  if (!found) {
    for (const auto& t : tokens.items()) {
      if (t.spec().id() == name_or_id) found = t;
    }
  }
  if (!found) {
    throw Error(errc::not_found, "no token named or with id " + name_or_id, "token");
  }
  store_->erase(std::string(k_prefix) + found->metadata().name());
  std::lock_guard lock(mu_);
  by_id_.erase(found->spec().id());
  return *found;
}

void TokenRegistry::refresh() {
  std::lock_guard lock(mu_);
  reload();
}

std::optional<v1::Token> TokenRegistry::verify(std::string_view secret) {
  const std::string id(id_of(secret));
  if (id.empty()) return std::nullopt;
  const std::string digest = sha256_hex(secret);
  std::lock_guard lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end() && std::chrono::steady_clock::now() - loaded_ > k_reload_every) {
    reload();  // a token another server wrote
    it = by_id_.find(id);
  }
  if (it == by_id_.end()) return std::nullopt;
  const std::string& stored = it->second.spec().secret_sha256();
  if (stored.size() != digest.size() ||
      CRYPTO_memcmp(stored.data(), digest.data(), digest.size()) != 0) {
    return std::nullopt;
  }
  return it->second;
}

}  // namespace blixard::api
