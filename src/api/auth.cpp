// From a bearer token to a principal (auth.hpp).
#include "api/auth.hpp"

#include <google/protobuf/util/time_util.h>

#include <cctype>

#include "api/http_head.hpp"
#include "blixard/detail/backend.hpp"

namespace blixard::api {

Authenticator::Authenticator(std::string admin_token, std::shared_ptr<detail::Backend> backend)
    : admin_token_(std::move(admin_token)), backend_(std::move(backend)) {}

Authenticator::Result Authenticator::authenticate(std::string_view authorization) const {
  if (!required()) return {Principal::admin(), {}};
  constexpr std::string_view scheme = "bearer ";
  bool bearer = authorization.size() > scheme.size();
  for (std::size_t i = 0; bearer && i < scheme.size(); ++i) {
    bearer = std::tolower(static_cast<unsigned char>(authorization[i])) == scheme[i];
  }
  if (!bearer) {
    return {std::nullopt, "this server needs a token: send \"Authorization: Bearer <token>\""};
  }
  const std::string_view secret = authorization.substr(scheme.size());
  if (constant_time_equal(secret, admin_token_)) return {Principal::admin(), {}};
  std::optional<v1::Token> token;
  try {
    token = backend_->verify_token(secret);
  } catch (const std::exception& e) {
    return {std::nullopt, std::string("the token could not be checked: ") + e.what()};
  }
  if (!token) return {std::nullopt, "the token is not valid (unknown or revoked)"};
  using google::protobuf::util::TimeUtil;
  const auto& spec = token->spec();
  if (spec.has_expires_at() && spec.expires_at() <= TimeUtil::GetCurrentTime()) {
    return {std::nullopt, "the token \"" + token->metadata().name() + "\" expired at " +
                              TimeUtil::ToString(spec.expires_at())};
  }
  Principal p;
  p.name = token->metadata().name();
  p.function = spec.function();
  for (const auto& s : spec.scopes()) {
    if (s == "admin") p.scopes |= Principal::bit(Scope::admin);
    if (s == "read") p.scopes |= Principal::bit(Scope::read);
    if (s == "invoke") p.scopes |= Principal::bit(Scope::invoke);
    if (s == "node") p.scopes |= Principal::bit(Scope::node);
  }
  return {std::move(p), {}};
}

}  // namespace blixard::api
