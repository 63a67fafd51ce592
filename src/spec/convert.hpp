// Internal to the spec layer: the reflective YAML -> protobuf reader and the error helpers that
// put file, line, column and field path on every invalid_spec error.
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <optional>
#include <set>
#include <string>

#include <google/protobuf/message.h>

#include "blixard/error.hpp"

namespace blixard::spec_detail {

// A 1-based position in a file; line 0 means unknown.
struct Position {
  std::uint32_t line = 0;
  std::uint32_t column = 0;
};

// Field path -> position of its value, filled while reading so that later validation errors can
// point at the line that holds the offending value.
using MarkMap = std::map<std::string, Position>;

// Where the values being read come from.
struct Source {
  std::string file;          // empty for flags
  bool has_marks = true;     // false for JSON produced by nix (its positions mean nothing)
  MarkMap* marks = nullptr;  // optional: records every field path read
};

Position position_of(const YAML::Node& node, const Source& source);
Position position_of(const YAML::Mark& mark);

[[noreturn]] void fail(const std::string& file, Position at, const std::string& field,
                       const std::string& message);
[[noreturn]] void fail(const Source& source, const YAML::Node& at, const std::string& field,
                       const std::string& message);

// Adds file and position to an Error that lacks them, looking up the longest recorded prefix of
// its field in `marks`.
[[noreturn]] void rethrow_located(const Error& e, const std::string& file, const MarkMap& marks);

// "spec" + "memory" -> "spec.memory"; "" + "memory" -> "memory".
std::string join_path(const std::string& path, const std::string& key);

// "a string", "an integer", "a mapping", ...: how a value reads, for "expected X, got Y".
std::string describe(const YAML::Node& node);

// Parses YAML or JSON text; parse errors become invalid_spec errors naming file, line and column.
std::vector<YAML::Node> parse_documents(const std::string& text, const std::string& file);
std::string read_text_file(const std::string& file, const std::string& what,
                           const std::string& field = {});

// Reads the scalar of a node that must be a string.
std::string read_string(const YAML::Node& node, const std::string& path, const Source& source);

// Sets the fields `node` (a mapping keyed by json_name) names on `msg`; fields it does not name
// keep their values, repeated fields it names are replaced, maps merged key by key. Keys in
// `skip` are left for the caller. Unknown keys, wrong types and bad values throw.
void read_message(const YAML::Node& node, google::protobuf::Message& msg, const std::string& path,
                  const Source& source, const std::set<std::string>& skip = {});

// Throws if the mapping `node` has keys other than `allowed` (or repeats a key).
void check_keys(const YAML::Node& node, const std::set<std::string>& allowed,
                const std::string& path, const Source& source);

}  // namespace blixard::spec_detail
