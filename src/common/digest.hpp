// SHA-256 (libcrypto) as lowercase hex: token secrets are stored as it, and blobs (code
// archives) are named by it, as "sha256:<hex>".
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace blixard {

std::string to_hex(const unsigned char* data, std::size_t n);
// Error(internal) when libcrypto fails.
std::string sha256_hex(std::string_view bytes);

// "sha256:<64 lowercase hex digits>": the one digest a blob is named by.
inline constexpr std::string_view k_sha256_prefix = "sha256:";
std::string sha256_digest(std::string_view bytes);
bool is_sha256_digest(std::string_view text) noexcept;

}  // namespace blixard
