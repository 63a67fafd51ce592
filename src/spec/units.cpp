// Sizes ("128M", "4G") and durations ("30s", "1m30s") as people write them in manifests and flags.
#include "spec/units.hpp"

#include <cctype>

#include "blixard/error.hpp"
#include "blixard/spec.hpp"

namespace blixard::spec_detail {
namespace {

// Wide enough that no product of a parsed number and a unit factor overflows.
__extension__ typedef unsigned __int128 u128;

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }

// A decimal number "12" or "1.5" split into its integer part and its fraction as
// numerator / 10^digits, so that scaling stays exact.
struct Decimal {
  u128 whole = 0;
  u128 frac = 0;
  u128 frac_scale = 1;
};

// Consumes a decimal number at the front of `s`; false if there is none or it is absurdly long.
bool take_decimal(std::string_view& s, Decimal& out) {
  std::size_t i = 0;
  bool any = false;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
    if (out.whole > (static_cast<u128>(1) << 80)) return false;
    out.whole = out.whole * 10 + static_cast<unsigned>(s[i] - '0');
    ++i;
    any = true;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    int digits = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      if (++digits > 18) return false;
      out.frac = out.frac * 10 + static_cast<unsigned>(s[i] - '0');
      out.frac_scale *= 10;
      ++i;
      any = true;
    }
  }
  if (!any) return false;
  s.remove_prefix(i);
  return true;
}

// whole * factor + frac * factor / scale, if that is a whole number.
bool scale(const Decimal& d, u128 factor, u128& out) {
  const u128 f = d.frac * factor;
  if (f % d.frac_scale != 0) return false;
  out = d.whole * factor + f / d.frac_scale;
  return true;
}

}  // namespace

Parsed<std::uint64_t> size_mib(std::string_view text) {
  const std::string_view original = text;
  text = trim(text);
  if (text.empty()) return {0, "empty size (write a number of MiB or e.g. 512M, 4G)"};
  if (text.front() == '-') return {0, "size must not be negative: " + in_quotes(original)};
  if (text.front() == '+') text.remove_prefix(1);
  Decimal number;
  if (!take_decimal(text, number)) {
    return {0, in_quotes(original) + " is not a size (write a number of MiB or e.g. 512M, 4G, 1T)"};
  }
  const std::string suffix = lower(trim(text));
  // Factors in KiB; every suffix is binary, as Docker and Nomad read "128M".
  u128 kib = 0;
  if (suffix.empty() || suffix == "m" || suffix == "mi" || suffix == "mb" || suffix == "mib") {
    kib = 1024;
  } else if (suffix == "k" || suffix == "ki" || suffix == "kb" || suffix == "kib") {
    kib = 1;
  } else if (suffix == "g" || suffix == "gi" || suffix == "gb" || suffix == "gib") {
    kib = 1024 * 1024;
  } else if (suffix == "t" || suffix == "ti" || suffix == "tb" || suffix == "tib") {
    kib = static_cast<u128>(1024) * 1024 * 1024;
  } else {
    return {0, in_quotes(original) + " is not a size: unknown unit \"" + std::string(trim(text)) +
                   "\" (use K, M, G or T)"};
  }
  u128 total_kib = 0;
  if (!scale(number, kib, total_kib) || total_kib % 1024 != 0) {
    return {0, in_quotes(original) + " is not a whole number of MiB"};
  }
  const u128 mib = total_kib / 1024;
  // Far beyond any machine, and keeps every later sum in range.
  if (mib > (static_cast<u128>(1) << 50)) return {0, in_quotes(original) + " is too large"};
  return {static_cast<std::uint64_t>(mib), {}};
}

Parsed<std::chrono::milliseconds> duration(std::string_view text) {
  const std::string_view original = text;
  text = trim(text);
  const std::string bad =
      in_quotes(original) + " is not a duration (write e.g. 250ms, 30s, 2m, 1h, 1m30s)";
  if (text.empty()) return {{}, "empty duration (write e.g. 30s, 2m, 1h)"};
  if (text.front() == '-') return {{}, "duration must not be negative: " + in_quotes(original)};
  if (text.front() == '+') text.remove_prefix(1);
  u128 total_ms = 0;
  bool first = true;
  while (!text.empty()) {
    Decimal number;
    if (!take_decimal(text, number)) return {{}, bad};
    std::size_t n = 0;
    while (n < text.size() && std::isalpha(static_cast<unsigned char>(text[n]))) ++n;
    const std::string unit = lower(text.substr(0, n));
    text.remove_prefix(n);
    if (unit.empty() && !(first && text.empty())) return {{}, bad};
    u128 factor = 0;
    if (unit.empty() || unit == "s" || unit == "sec" || unit == "secs") {
      factor = 1000;  // a bare number is seconds
    } else if (unit == "ms") {
      factor = 1;
    } else if (unit == "m" || unit == "min" || unit == "mins") {
      factor = 60'000;
    } else if (unit == "h") {
      factor = 3'600'000;
    } else if (unit == "d") {
      factor = 86'400'000;
    } else {
      return {{},
              in_quotes(original) + " is not a duration: unknown unit \"" + unit +
                  "\" (use ms, s, m, h or d)"};
    }
    u128 ms = 0;
    if (!scale(number, factor, ms)) {
      return {{}, in_quotes(original) + " is finer than a millisecond"};
    }
    total_ms += ms;
    if (total_ms > (static_cast<u128>(1) << 52)) {
      return {{}, in_quotes(original) + " is too long"};
    }
    first = false;
  }
  return {std::chrono::milliseconds(static_cast<std::int64_t>(total_ms)), {}};
}

}  // namespace blixard::spec_detail

namespace blixard {

std::uint64_t parse_size_mib(std::string_view text, std::string_view field) {
  auto parsed = spec_detail::size_mib(text);
  if (!parsed.error.empty()) throw Error(errc::invalid_spec, parsed.error, std::string(field));
  return parsed.value;
}

std::chrono::milliseconds parse_duration(std::string_view text, std::string_view field) {
  auto parsed = spec_detail::duration(text);
  if (!parsed.error.empty()) throw Error(errc::invalid_spec, parsed.error, std::string(field));
  return parsed.value;
}

}  // namespace blixard
