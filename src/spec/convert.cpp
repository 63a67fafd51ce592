// The reflective YAML -> protobuf reader: one path for manifests, config files, nix output and
// CLI flags, so every field is spelled, typed and reported the same way everywhere.
#include "spec/convert.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/duration.pb.h>

#include "blixard/v1/common.pb.h"
#include "spec/units.hpp"

namespace blixard::spec_detail {
namespace pb = google::protobuf;

namespace {

enum class ScalarKind { null, boolean, integer, floating, string };

bool is_plain(const YAML::Node& n) { return n.Tag() == "?"; }

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
}

bool looks_integer(std::string_view s) {
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) s.remove_prefix(1);
  return all_digits(s);
}

bool looks_float(std::string_view s) {
  if (!s.empty() && (s.front() == '-' || s.front() == '+')) s.remove_prefix(1);
  if (s == ".inf" || s == ".Inf" || s == ".INF" || s == ".nan" || s == ".NaN" || s == ".NAN") {
    return true;
  }
  char* end = nullptr;
  std::string copy(s);
  if (copy.empty() || !(std::isdigit(static_cast<unsigned char>(copy[0])) || copy[0] == '.')) {
    return false;
  }
  std::strtod(copy.c_str(), &end);
  return end != nullptr && *end == '\0';
}

bool is_null_text(std::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

bool is_bool_text(std::string_view s) {
  return s == "true" || s == "True" || s == "TRUE" || s == "false" || s == "False" || s == "FALSE";
}

// How YAML 1.2's core schema reads a scalar: quoted ones are always strings.
ScalarKind classify(const YAML::Node& n) {
  const std::string& text = n.Scalar();
  const std::string& tag = n.Tag();
  if (!is_plain(n)) {
    if (tag == "tag:yaml.org,2002:int") return ScalarKind::integer;
    if (tag == "tag:yaml.org,2002:float") return ScalarKind::floating;
    if (tag == "tag:yaml.org,2002:bool") return ScalarKind::boolean;
    if (tag == "tag:yaml.org,2002:null") return ScalarKind::null;
    return ScalarKind::string;
  }
  if (is_null_text(text)) return ScalarKind::null;
  if (is_bool_text(text)) return ScalarKind::boolean;
  if (looks_integer(text)) return ScalarKind::integer;
  if (looks_float(text)) return ScalarKind::floating;
  return ScalarKind::string;
}

bool is_null(const YAML::Node& n) {
  return !n.IsDefined() || n.IsNull() || (n.IsScalar() && classify(n) == ScalarKind::null);
}

std::string index_path(const std::string& path, std::size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

void record(const Source& source, const std::string& path, const YAML::Node& node) {
  if (source.marks != nullptr && source.has_marks)
    (*source.marks)[path] = position_of(node, source);
}

[[noreturn]] void type_error(const Source& source, const YAML::Node& node, const std::string& path,
                             const std::string& expected) {
  fail(source, node, path, "expected " + expected + ", got " + describe(node));
}

bool is_unit_mib(const pb::FieldDescriptor* f) {
  return f->options().GetExtension(v1::unit) == v1::FIELD_UNIT_MEBIBYTES;
}

// A signed integer from a scalar, with a clear word for what is wrong.
struct Integer {
  bool negative = false;
  std::uint64_t magnitude = 0;
};

Integer read_integer(const YAML::Node& node, const std::string& path, const Source& source) {
  if (!node.IsScalar() || classify(node) != ScalarKind::integer) {
    type_error(source, node, path, "an integer");
  }
  std::string_view s = node.Scalar();
  Integer out;
  if (s.front() == '-' || s.front() == '+') {
    out.negative = s.front() == '-';
    s.remove_prefix(1);
  }
  constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  for (char c : s) {
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (out.magnitude > (max - digit) / 10) {
      fail(source, node, path, "integer " + node.Scalar() + " is out of range");
    }
    out.magnitude = out.magnitude * 10 + digit;
  }
  if (out.magnitude == 0) out.negative = false;
  return out;
}

std::uint64_t read_unsigned(const YAML::Node& node, const std::string& path, const Source& source,
                            std::uint64_t max) {
  const Integer i = read_integer(node, path, source);
  if (i.negative) fail(source, node, path, "must not be negative, got " + node.Scalar());
  if (i.magnitude > max) {
    fail(source, node, path,
         node.Scalar() + " is out of range (at most " + std::to_string(max) + ")");
  }
  return static_cast<std::uint64_t>(i.magnitude);
}

std::int64_t read_signed(const YAML::Node& node, const std::string& path, const Source& source,
                         std::int64_t min, std::int64_t max) {
  const Integer i = read_integer(node, path, source);
  const auto too_big =
      i.negative ? static_cast<std::uint64_t>(-(min + 1)) + 1 : static_cast<std::uint64_t>(max);
  if (i.magnitude > too_big) {
    fail(source, node, path,
         node.Scalar() + " is out of range (" + std::to_string(min) + ".." + std::to_string(max) +
             ")");
  }
  // Two's complement: the magnitude of the most negative value does not fit an int64.
  return i.negative ? static_cast<std::int64_t>(0 - i.magnitude)
                    : static_cast<std::int64_t>(i.magnitude);
}

double read_double(const YAML::Node& node, const std::string& path, const Source& source) {
  if (!node.IsScalar()) type_error(source, node, path, "a number");
  const auto kind = classify(node);
  if (kind != ScalarKind::integer && kind != ScalarKind::floating) {
    type_error(source, node, path, "a number");
  }
  try {
    return node.as<double>();
  } catch (const YAML::Exception&) {
    type_error(source, node, path, "a number");
  }
}

bool read_bool(const YAML::Node& node, const std::string& path, const Source& source) {
  if (!node.IsScalar() || classify(node) != ScalarKind::boolean) {
    type_error(source, node, path, "a boolean (true or false)");
  }
  const std::string& s = node.Scalar();
  return s == "true" || s == "True" || s == "TRUE";
}

// A MiB-valued field: an integer is MiB, a string is a size ("128M", "4G").
std::uint64_t read_mebibytes(const YAML::Node& node, const pb::FieldDescriptor* f,
                             const std::string& path, const Source& source) {
  if (!node.IsScalar()) type_error(source, node, path, "a size (e.g. 512M, 4G) or a number of MiB");
  std::uint64_t mib = 0;
  const auto kind = classify(node);
  if (kind == ScalarKind::integer) {
    const Integer i = read_integer(node, path, source);
    if (i.negative) fail(source, node, path, "size must not be negative, got " + node.Scalar());
    mib = static_cast<std::uint64_t>(i.magnitude);
  } else if (kind == ScalarKind::string || kind == ScalarKind::floating) {
    auto parsed = size_mib(node.Scalar());
    if (!parsed.error.empty()) fail(source, node, path, parsed.error);
    mib = parsed.value;
  } else {
    type_error(source, node, path, "a size (e.g. 512M, 4G) or a number of MiB");
  }
  // microvm.nix's balloonMem is 0 by default; every other size of zero means nothing.
  if (mib == 0 && f->name() != "balloon_mem") {
    fail(source, node, path, "size must be greater than zero");
  }
  if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32 &&
      mib > std::numeric_limits<std::uint32_t>::max()) {
    fail(source, node, path, "size is out of range");
  }
  return mib;
}

void read_duration(const YAML::Node& node, pb::Duration& out, const std::string& path,
                   const Source& source) {
  if (!node.IsScalar()) type_error(source, node, path, "a duration (e.g. 30s, 2m, 250ms)");
  std::int64_t ms = 0;
  const auto kind = classify(node);
  if (kind == ScalarKind::integer || kind == ScalarKind::floating || kind == ScalarKind::string) {
    auto parsed = duration(node.Scalar());
    if (!parsed.error.empty()) fail(source, node, path, parsed.error);
    ms = parsed.value.count();
  } else {
    type_error(source, node, path, "a duration (e.g. 30s, 2m, 250ms)");
  }
  out.set_seconds(ms / 1000);
  out.set_nanos(static_cast<std::int32_t>((ms % 1000) * 1'000'000));
}

std::string read_scalar_text(const YAML::Node& node, const std::string& path, const Source& source,
                             const char* expected) {
  if (!node.IsScalar() || classify(node) == ScalarKind::null)
    type_error(source, node, path, expected);
  return node.Scalar();
}

// Sets (or, for repeated fields, adds) one non-map value.
void read_value(const YAML::Node& node, pb::Message& msg, const pb::FieldDescriptor* f,
                const std::string& path, const Source& source) {
  const pb::Reflection* r = msg.GetReflection();
  const bool rep = f->is_repeated();
  using F = pb::FieldDescriptor;
  switch (f->cpp_type()) {
    case F::CPPTYPE_INT32: {
      const auto v = static_cast<std::int32_t>(
          read_signed(node, path, source, std::numeric_limits<std::int32_t>::min(),
                      std::numeric_limits<std::int32_t>::max()));
      rep ? r->AddInt32(&msg, f, v) : r->SetInt32(&msg, f, v);
      return;
    }
    case F::CPPTYPE_INT64: {
      const auto v = read_signed(node, path, source, std::numeric_limits<std::int64_t>::min(),
                                 std::numeric_limits<std::int64_t>::max());
      rep ? r->AddInt64(&msg, f, v) : r->SetInt64(&msg, f, v);
      return;
    }
    case F::CPPTYPE_UINT32: {
      const auto v = static_cast<std::uint32_t>(
          is_unit_mib(f)
              ? read_mebibytes(node, f, path, source)
              : read_unsigned(node, path, source, std::numeric_limits<std::uint32_t>::max()));
      rep ? r->AddUInt32(&msg, f, v) : r->SetUInt32(&msg, f, v);
      return;
    }
    case F::CPPTYPE_UINT64: {
      const auto v = is_unit_mib(f) ? read_mebibytes(node, f, path, source)
                                    : read_unsigned(node, path, source,
                                                    std::numeric_limits<std::uint64_t>::max());
      rep ? r->AddUInt64(&msg, f, v) : r->SetUInt64(&msg, f, v);
      return;
    }
    case F::CPPTYPE_DOUBLE: {
      const double v = read_double(node, path, source);
      rep ? r->AddDouble(&msg, f, v) : r->SetDouble(&msg, f, v);
      return;
    }
    case F::CPPTYPE_FLOAT: {
      const auto v = static_cast<float>(read_double(node, path, source));
      rep ? r->AddFloat(&msg, f, v) : r->SetFloat(&msg, f, v);
      return;
    }
    case F::CPPTYPE_BOOL: {
      const bool v = read_bool(node, path, source);
      rep ? r->AddBool(&msg, f, v) : r->SetBool(&msg, f, v);
      return;
    }
    case F::CPPTYPE_STRING: {
      // Any scalar reads as a string ("zone: 1" is fine): people do not quote labels.
      std::string v = read_scalar_text(node, path, source, "a string");
      rep ? r->AddString(&msg, f, std::move(v)) : r->SetString(&msg, f, std::move(v));
      return;
    }
    case F::CPPTYPE_ENUM: {
      const std::string text = read_scalar_text(node, path, source, "a string");
      const pb::EnumValueDescriptor* v = f->enum_type()->FindValueByName(text);
      if (v == nullptr) fail(source, node, path, "unknown value \"" + text + "\"");
      rep ? r->AddEnum(&msg, f, v) : r->SetEnum(&msg, f, v);
      return;
    }
    case F::CPPTYPE_MESSAGE: {
      if (f->message_type()->full_name() == pb::Duration::descriptor()->full_name()) {
        pb::Message* d = rep ? r->AddMessage(&msg, f) : r->MutableMessage(&msg, f);
        pb::Duration parsed;
        read_duration(node, parsed, path, source);
        d->CopyFrom(parsed);
        return;
      }
      if (!node.IsMap()) type_error(source, node, path, "a mapping");
      pb::Message* sub = rep ? r->AddMessage(&msg, f) : r->MutableMessage(&msg, f);
      read_message(node, *sub, path, source);
      return;
    }
  }
}

// The key of a map entry as text, to merge entries key by key.
std::string map_key(const pb::Message& entry) {
  const pb::FieldDescriptor* k = entry.GetDescriptor()->map_key();
  const pb::Reflection* r = entry.GetReflection();
  using F = pb::FieldDescriptor;
  switch (k->cpp_type()) {
    case F::CPPTYPE_STRING:
      return r->GetString(entry, k);
    case F::CPPTYPE_INT32:
      return std::to_string(r->GetInt32(entry, k));
    case F::CPPTYPE_INT64:
      return std::to_string(r->GetInt64(entry, k));
    case F::CPPTYPE_UINT32:
      return std::to_string(r->GetUInt32(entry, k));
    case F::CPPTYPE_UINT64:
      return std::to_string(r->GetUInt64(entry, k));
    case F::CPPTYPE_BOOL:
      return r->GetBool(entry, k) ? "true" : "false";
    default:
      return {};
  }
}

void read_map(const YAML::Node& node, pb::Message& msg, const pb::FieldDescriptor* f,
              const std::string& path, const Source& source) {
  if (!node.IsMap()) type_error(source, node, path, "a mapping");
  const pb::Reflection* r = msg.GetReflection();
  const pb::Descriptor* entry_type = f->message_type();
  // Existing entries first (from a config file), then the new ones replacing equal keys.
  std::vector<std::unique_ptr<pb::Message>> entries;
  for (int i = 0; i < r->FieldSize(msg, f); ++i) {
    entries.emplace_back(r->GetRepeatedMessage(msg, f, i).New());
    entries.back()->CopyFrom(r->GetRepeatedMessage(msg, f, i));
  }
  std::set<std::string> seen;
  for (const auto& kv : node) {
    const std::string key_text = kv.first.IsScalar() ? kv.first.Scalar() : std::string{};
    const std::string entry_path = join_path(path, key_text);
    if (!kv.first.IsScalar()) type_error(source, kv.first, path, "a scalar key");
    if (!seen.insert(key_text).second) fail(source, kv.first, entry_path, "duplicate key");
    std::unique_ptr<pb::Message> entry(
        pb::MessageFactory::generated_factory()->GetPrototype(entry_type)->New());
    record(source, entry_path, kv.second);
    read_value(kv.first, *entry, entry_type->map_key(), entry_path, source);
    read_value(kv.second, *entry, entry_type->map_value(), entry_path, source);
    const std::string key = map_key(*entry);
    auto same = std::find_if(entries.begin(), entries.end(),
                             [&](const auto& e) { return map_key(*e) == key; });
    if (same != entries.end()) {
      *same = std::move(entry);
    } else {
      entries.push_back(std::move(entry));
    }
  }
  r->ClearField(&msg, f);
  for (auto& e : entries) r->AddAllocatedMessage(&msg, f, e.release());
}

const pb::FieldDescriptor* find_field(const pb::Descriptor* d, const std::string& key) {
  for (int i = 0; i < d->field_count(); ++i) {
    if (d->field(i)->json_name() == key) return d->field(i);
  }
  return nullptr;
}

// For "unknown field": the spelling the user probably meant.
std::string suggestion(const pb::Descriptor* d, const std::string& key) {
  auto fold = [](std::string s) {
    std::string out;
    for (char c : s) {
      if (c != '_' && c != '-')
        out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
  };
  for (int i = 0; i < d->field_count(); ++i) {
    const auto* f = d->field(i);
    if (fold(f->json_name()) == fold(key) || f->name() == key) {
      return " (did you mean \"" + f->json_name() + "\"?)";
    }
  }
  return {};
}

}  // namespace

Position position_of(const YAML::Mark& mark) {
  if (mark.line < 0 || mark.column < 0) return {};
  return {static_cast<std::uint32_t>(mark.line + 1), static_cast<std::uint32_t>(mark.column + 1)};
}

Position position_of(const YAML::Node& node, const Source& source) {
  if (!source.has_marks || !node.IsDefined()) return {};
  return position_of(node.Mark());
}

void fail(const std::string& file, Position at, const std::string& field,
          const std::string& message) {
  v1::Status status;
  status.set_code(std::string(to_string(errc::invalid_spec)));
  status.set_message(message);
  status.set_field(field);
  status.set_file(file);
  status.set_line(at.line);
  status.set_column(at.column);
  throw Error(std::move(status));
}

void fail(const Source& source, const YAML::Node& at, const std::string& field,
          const std::string& message) {
  fail(source.file, position_of(at, source), field, message);
}

void rethrow_located(const Error& e, const std::string& file, const MarkMap& marks) {
  v1::Status status = e.status();
  if (status.file().empty()) {
    status.set_file(file);
    // The longest recorded prefix: "spec.functions[1].scaling.minInstances", then
    // "spec.functions[1].scaling", then "spec.functions[1]".
    std::string field = status.field();
    while (!field.empty()) {
      auto it = marks.find(field);
      if (it != marks.end()) {
        status.set_line(it->second.line);
        status.set_column(it->second.column);
        break;
      }
      const auto cut = field.find_last_of(".[");
      if (cut == std::string::npos) break;
      field.resize(cut);
    }
  }
  throw Error(std::move(status));
}

std::string join_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string describe(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "null";
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a sequence";
  switch (classify(node)) {
    case ScalarKind::null:
      return "null";
    case ScalarKind::boolean:
      return "a boolean";
    case ScalarKind::integer:
      return "an integer";
    case ScalarKind::floating:
      return "a number";
    case ScalarKind::string:
      return "a string";
  }
  return "a value";
}

namespace {

// A line that starts a document ("---" alone or before content) or ends one ("...").
bool document_marker(std::string_view line, std::string_view marker) {
  return line.substr(0, 3) == marker &&
         (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
}

}  // namespace

std::vector<YAML::Node> parse_documents(const std::string& text, const std::string& file) {
  // Not YAML::LoadAll: yaml-cpp 0.7's loop over documents never ends on some malformed input (a
  // lone ",": found by tests/fuzz's manifest target). The documents are split at their markers
  // here, which YAML reserves at the start of a line, and each is loaded alone, after as many
  // newlines as lines before it, so positions in errors stay the file's.
  std::vector<YAML::Node> docs;
  std::size_t line_no = 0, part_line = 0;
  std::string part;
  auto load = [&] {
    try {
      docs.push_back(YAML::Load(std::string(part_line, '\n') + part));
    } catch (const YAML::ParserException& e) {
      fail(file, position_of(e.mark), {}, e.msg);
    } catch (const YAML::Exception& e) {
      fail(file, position_of(e.mark), {}, e.msg.empty() ? e.what() : e.msg);
    }
  };
  for (std::size_t at = 0; at <= text.size(); ++line_no) {
    const std::size_t end = std::min(text.find('\n', at), text.size());
    std::string_view line(text.data() + at, end - at);
    if (document_marker(line, "---")) {
      if (line_no != 0) load();
      part.clear();
      part_line = line_no;
      part.append("   ").append(line.substr(3));  // what follows the marker, in its columns
    } else if (document_marker(line, "...")) {
      // The end of a document: nothing of it continues.
    } else {
      part.append(line);
    }
    part.push_back('\n');
    at = end + 1;
  }
  load();
  return docs;
}

std::string read_text_file(const std::string& file, const std::string& what,
                           const std::string& field) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    const int err = errno;
    v1::Status status;
    status.set_code(std::string(to_string(errc::invalid_spec)));
    status.set_message("cannot read the " + what + ": " + std::strerror(err));
    status.set_field(field);
    status.set_file(file);
    throw Error(std::move(status));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string read_string(const YAML::Node& node, const std::string& path, const Source& source) {
  record(source, path, node);
  if (!node.IsScalar() || classify(node) == ScalarKind::null)
    type_error(source, node, path, "a string");
  return node.Scalar();
}

void check_keys(const YAML::Node& node, const std::set<std::string>& allowed,
                const std::string& path, const Source& source) {
  if (!node.IsMap()) type_error(source, node, path.empty() ? "document" : path, "a mapping");
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) type_error(source, kv.first, path, "a scalar key");
    const std::string& key = kv.first.Scalar();
    if (!seen.insert(key).second) fail(source, kv.first, join_path(path, key), "duplicate key");
    if (!allowed.count(key)) {
      std::string known;
      for (const auto& a : allowed) known += (known.empty() ? "" : ", ") + a;
      fail(source, kv.first, join_path(path, key),
           "unknown field (expected one of: " + known + ")");
    }
  }
}

void read_message(const YAML::Node& node, pb::Message& msg, const std::string& path,
                  const Source& source, const std::set<std::string>& skip) {
  if (!node.IsMap()) type_error(source, node, path.empty() ? "document" : path, "a mapping");
  record(source, path, node);
  const pb::Descriptor* d = msg.GetDescriptor();
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) type_error(source, kv.first, path, "a field name");
    const std::string& key = kv.first.Scalar();
    const std::string field_path = join_path(path, key);
    if (!seen.insert(key).second) fail(source, kv.first, field_path, "duplicate key");
    if (skip.count(key)) continue;
    const pb::FieldDescriptor* f = find_field(d, key);
    if (f == nullptr) fail(source, kv.first, field_path, "unknown field" + suggestion(d, key));
    const YAML::Node& value = kv.second;
    record(source, field_path, value);
    if (is_null(value)) continue;  // `memory:` with no value leaves the field as it was
    if (f->is_map()) {
      read_map(value, msg, f, field_path, source);
    } else if (f->is_repeated()) {
      if (!value.IsSequence()) type_error(source, value, field_path, "a sequence");
      msg.GetReflection()->ClearField(&msg, f);
      for (std::size_t i = 0; i < value.size(); ++i) {
        const std::string item_path = index_path(field_path, i);
        record(source, item_path, value[i]);
        read_value(value[i], msg, f, item_path, source);
      }
    } else {
      read_value(value, msg, f, field_path, source);
    }
  }
}

}  // namespace blixard::spec_detail
