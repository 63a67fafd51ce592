// Who a request comes from and what it may do (DESIGN §4, auth): every route declares the scope
// it needs; a bearer token carries scopes. Kept free of Beast so the server's header can name it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace blixard::api {

enum class Scope : std::uint8_t {
  none,    // public: no token needed (/healthz)
  read,    // GET of objects, metrics, logs, events
  invoke,  // invoking functions, and HTTP triggers that ask for a token
  admin,   // writes, tokens; implies every other scope
  node,    // the agent channel
};

// "read", "invoke", ...; "public" for none.
std::string_view to_string(Scope scope) noexcept;

// The holder of a token.
struct Principal {
  std::uint32_t scopes = 0;  // a bit per Scope
  std::string function;      // an invoke token limited to this function; empty: any function
  std::string name;          // the token's name, for messages ("admin" for the server's own)

  static constexpr std::uint32_t bit(Scope s) noexcept { return 1U << static_cast<unsigned>(s); }
  // Everything: the server's own token, or anyone on a server without one.
  static Principal admin() { return {~0U, {}, "admin"}; }

  bool has(Scope s) const noexcept {
    return s == Scope::none || (scopes & (bit(s) | bit(Scope::admin))) != 0;
  }
  // May call `fn` (an invoke token for one function may call only that one).
  bool may_invoke(std::string_view fn) const noexcept {
    return has(Scope::invoke) && (function.empty() || function == fn || has(Scope::admin));
  }
};

}  // namespace blixard::api

#include <memory>
#include <optional>

namespace blixard::detail {
class Backend;
}

namespace blixard::api {

// Turns an Authorization header into a principal: the server's own token (compared in constant
// time) is admin; any other bearer secret is looked up through Backend::verify_token (hashed
// there) and must not have expired.
class Authenticator {
 public:
  Authenticator(std::string admin_token, std::shared_ptr<detail::Backend> backend);

  // A server without a token of its own is open: everyone is admin.
  bool required() const noexcept { return !admin_token_.empty(); }

  struct Result {
    std::optional<Principal> principal;
    std::string why;  // when there is none: missing, unknown or revoked, expired
  };
  Result authenticate(std::string_view authorization) const;

 private:
  std::string admin_token_;
  std::shared_ptr<detail::Backend> backend_;
};

}  // namespace blixard::api
