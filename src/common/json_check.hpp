// Checking JSON text without building anything: one linear pass with a depth limit, for JSON off
// the wire before anything that costs more per level (a DOM, protobuf's JSON parser) reads it.
// Depends on Boost.JSON only, so a fuzz target links it alone.
#pragma once

#include <boost/json/parse_options.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <string>
#include <string_view>

namespace blixard {

// How deep arrays and objects may nest in JSON the server reads (API bodies, invoke payloads,
// handler results the gateway inspects). protobuf's JSON parser takes time quadratic in the depth
// and a Boost.JSON DOM recurses to free itself: this bound keeps both cheap.
inline constexpr std::size_t k_max_json_depth = 128;

enum class JsonVerdict { ok, invalid, too_deep };

struct JsonCheck {
  JsonVerdict verdict = JsonVerdict::ok;
  std::string detail;  // what is wrong (the parser's words) when not ok
  bool ok() const { return verdict == JsonVerdict::ok; }
};

// Strict JSON (no comments, valid UTF-8), at most k_max_json_depth deep: for every parser of
// JSON off the wire, so they all agree on what is acceptable.
boost::json::parse_options json_parse_options();

// The verdict for an error of a parser run with json_parse_options().
JsonCheck json_verdict(const boost::system::error_code& ec);

// Whether `text` is exactly one JSON value (whitespace around it allowed), in time linear in its
// size whatever its nesting.
JsonCheck check_json_text(std::string_view text);

// "<what> is nested deeper than 128 levels" or "<what> is not valid JSON: <detail>".
std::string json_problem(const JsonCheck& check, std::string_view what);

}  // namespace blixard
