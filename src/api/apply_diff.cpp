// Rendering and diffing of declarations for `apply --dry-run` (see apply_diff.hpp).
#include "api/apply_diff.hpp"

#include <algorithm>
#include <memory>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include "blixard/v1/common.pb.h"

namespace blixard::api {
namespace {

// Block style throughout and sorted keys, so that two renderings differ only where the objects do.
void emit(YAML::Emitter& out, const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      std::vector<std::string> keys;
      for (const auto& entry : node) keys.push_back(entry.first.Scalar());
      std::sort(keys.begin(), keys.end());
      out << YAML::BeginMap;
      for (const auto& key : keys) {
        out << YAML::Key << key << YAML::Value;
        emit(out, node[key]);
      }
      out << YAML::EndMap;
      break;
    }
    case YAML::NodeType::Sequence:
      out << YAML::BeginSeq;
      for (const auto& item : node) emit(out, item);
      out << YAML::EndSeq;
      break;
    case YAML::NodeType::Scalar:
      // A script (a VM's command) reads, and diffs, line by line.
      if (node.Scalar().find('\n') != std::string::npos) out << YAML::Literal;
      out << node.Scalar();
      break;
    default:
      out << YAML::Null;
  }
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    const auto end = text.find('\n', start);
    if (end == std::string::npos) {
      lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// "-3,2": where a hunk starts in one file and how many lines it spans (diff's conventions: one
// line needs no count; none starts at the line before).
std::string range(std::size_t start, std::size_t count) {
  if (count == 1) return std::to_string(start + 1);
  return std::to_string(count == 0 ? start : start + 1) + "," + std::to_string(count);
}

}  // namespace

std::string render_declaration(const google::protobuf::Message& object) {
  std::unique_ptr<google::protobuf::Message> copy(object.New());
  copy->CopyFrom(object);
  const auto* descriptor = copy->GetDescriptor();
  const auto* reflection = copy->GetReflection();
  if (const auto* status = descriptor->FindFieldByName("status")) {
    reflection->ClearField(copy.get(), status);
  }
  if (const auto* field = descriptor->FindFieldByName("metadata")) {
    auto* meta = dynamic_cast<v1::ObjectMeta*>(reflection->MutableMessage(copy.get(), field));
    if (meta != nullptr) {
      meta->clear_resource_version();
      meta->clear_create_revision();
      meta->clear_created_at();
      meta->clear_source();
    }
  }
  // The config file's path is where the spec was read from, no more part of it than source.
  if (const auto* field = descriptor->FindFieldByName("spec")) {
    auto* spec = reflection->MutableMessage(copy.get(), field);
    if (const auto* config = spec->GetDescriptor()->FindFieldByName("config")) {
      spec->GetReflection()->ClearField(spec, config);
    }
  }
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(*copy, &json);
  YAML::Emitter out;
  emit(out, YAML::Load(json));
  return std::string(out.c_str()) + "\n";
}

std::string unified_diff(const std::string& before, const std::string& after,
                         const std::string& from_label, const std::string& to_label) {
  if (before == after) return {};
  const auto a = split_lines(before);
  const auto b = split_lines(after);
  // Longest common subsequence by dynamic programming: declarations are tens of lines.
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<std::uint32_t>> lcs(n + 1, std::vector<std::uint32_t>(m + 1, 0));
  for (std::size_t i = n; i-- > 0;) {
    for (std::size_t j = m; j-- > 0;) {
      lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  struct Op {
    char tag;          // ' ', '-', '+'
    std::size_t i, j;  // positions in a and b before this line
  };
  std::vector<Op> ops;
  std::size_t i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] == b[j]) {
      ops.push_back({' ', i++, j++});
    } else if (i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1])) {
      ops.push_back({'-', i++, j});  // removals before additions, as diff prints them
    } else {
      ops.push_back({'+', i, j++});
    }
  }

  constexpr std::size_t k_context = 3;
  std::string out = "--- " + from_label + "\n+++ " + to_label + "\n";
  std::size_t k = 0;
  while (k < ops.size()) {
    while (k < ops.size() && ops[k].tag == ' ') ++k;
    if (k == ops.size()) break;
    // A hunk: context before the first change, then changes with at most 2*context of equal
    // lines between them, then context after.
    const std::size_t first = k >= k_context ? k - k_context : 0;
    std::size_t last = k;  // one past the last change
    std::size_t scan = k;
    while (scan < ops.size()) {
      if (ops[scan].tag != ' ') {
        last = ++scan;
        continue;
      }
      std::size_t run = scan;
      while (run < ops.size() && ops[run].tag == ' ') ++run;
      if (run == ops.size() || run - scan > 2 * k_context) break;
      scan = run;
    }
    const std::size_t end = std::min(ops.size(), last + k_context);
    std::size_t count_a = 0, count_b = 0;
    for (std::size_t x = first; x < end; ++x) {
      count_a += ops[x].tag != '+';
      count_b += ops[x].tag != '-';
    }
    out += "@@ -" + range(ops[first].i, count_a) + " +" + range(ops[first].j, count_b) + " @@\n";
    for (std::size_t x = first; x < end; ++x) {
      out += ops[x].tag;
      out += ops[x].tag == '+' ? b[ops[x].j] : a[ops[x].i];
      out += '\n';
    }
    k = end;
  }
  return out;
}

}  // namespace blixard::api
