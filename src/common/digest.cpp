// SHA-256 through libcrypto (see digest.hpp).
#include "common/digest.hpp"

#include <openssl/evp.h>

#include <array>

#include "blixard/error.hpp"

namespace blixard {

std::string to_hex(const unsigned char* data, std::size_t n) {
  static constexpr std::string_view k_digits = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(k_digits[data[i] >> 4]);
    out.push_back(k_digits[data[i] & 15]);
  }
  return out;
}

std::string sha256_hex(std::string_view bytes) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned n = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md.data(), &n, EVP_sha256(), nullptr) != 1) {
    throw Error(errc::internal, "SHA-256 failed");
  }
  return to_hex(md.data(), n);
}

std::string sha256_digest(std::string_view bytes) {
  return std::string(k_sha256_prefix) + sha256_hex(bytes);
}

bool is_sha256_digest(std::string_view text) noexcept {
  if (!text.starts_with(k_sha256_prefix)) return false;
  text.remove_prefix(k_sha256_prefix.size());
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace blixard
