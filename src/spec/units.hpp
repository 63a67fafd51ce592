// Internal to the spec layer: size and duration parsing that reports why a text is not a value,
// so callers can attach the field and the position themselves.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace blixard::spec_detail {

template <class T>
struct Parsed {
  T value{};
  std::string error;  // empty when `value` is good
};

// "128M" -> 128, "4G" -> 4096, "512Mi" -> 512, "1T" -> 1048576, "512" -> 512 (MiB).
// Suffixes are binary whatever their spelling (K, Ki, KB, KiB, ...), case-insensitive.
Parsed<std::uint64_t> size_mib(std::string_view text);

// "30s", "2m", "1h", "250ms", "1m30s", "1.5s", "2d"; a bare number is seconds.
Parsed<std::chrono::milliseconds> duration(std::string_view text);

}  // namespace blixard::spec_detail
