// Manifests (Platform, Vm, Function, Trigger, Queue, StoragePool, Network documents), config files
// (YAML, JSON, Nix) and flag overrides, all read through the one reflective reader in convert.cpp.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <memory>
#include <set>

#include "blixard/error.hpp"
#include "blixard/spec.hpp"
#include "spec/convert.hpp"
#include "spec/nix.hpp"
#include "spec/nixos_services.hpp"

namespace blixard {
namespace {

namespace fs = std::filesystem;
using spec_detail::fail;
using spec_detail::join_path;
using spec_detail::MarkMap;
using spec_detail::Source;

constexpr const char* k_api_version = "blixard.dev/v1";

fs::path absolute_normal(const fs::path& p) { return fs::absolute(p).lexically_normal(); }

std::string lower_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

// `code` (functions only) names a directory relative to the file that names it.
template <class Spec>
void resolve_code(Spec& spec, const fs::path& base_dir) {
  if constexpr (requires { spec.mutable_code(); }) {
    std::string* code = spec.mutable_code();
    if (!code->empty() && fs::path(*code).is_relative()) {
      *code = absolute_normal(base_dir / *code).string();
    }
  }
}

template <class Spec>
Spec load_config(const fs::path& file, spec_detail::NixKind kind, const SpecOptions& options) {
  const std::string name = file.string();
  const fs::path abs = absolute_normal(file);
  std::error_code ec;
  if (!fs::is_regular_file(abs, ec)) fail(name, {}, {}, "config file not found: " + abs.string());
  Spec spec;
  const std::string ext = lower_extension(file);
  if (ext == ".nix") {
    const std::string json = spec_detail::evaluate_nix_config(abs.string(), kind, options);
    // Nix's output is JSON; its positions mean nothing to the user, so errors name only fields.
    const Source source{name, false, nullptr};
    YAML::Node data;
    try {
      data = YAML::Load(json);
    } catch (const YAML::Exception& e) {
      fail(name, {}, {}, "cannot read nix-instantiate's output: " + e.msg);
    }
    spec_detail::read_message(data["spec"], spec, "", source);
    if constexpr (std::is_same_v<Spec, v1::VmSpec>) {
      spec_detail::translate_nixos_services(data["services"], spec, name);
      // A file system the config mounts for its data (fileSystems."/var/lib/postgresql") is
      // where the set's volume goes; the root and the store are the guest's own.
      if (spec.storage().mount_point().empty() && data["fileSystems"].IsSequence()) {
        for (const auto& mount : data["fileSystems"]) {
          const auto path = mount.as<std::string>();
          if (path != "/" && !path.starts_with("/nix") && !path.starts_with("/boot")) {
            spec.mutable_storage()->set_mount_point(path);
            break;
          }
        }
      }
    }
  } else if (ext == ".yaml" || ext == ".yml" || ext == ".json") {
    const std::string text = spec_detail::read_text_file(name, "config file");
    const auto docs = spec_detail::parse_documents(text, name);
    const Source source{name, true, nullptr};
    if (docs.size() > 1) {
      fail(source, docs[1], {},
           "a config file holds one document (found " + std::to_string(docs.size()) + ")");
    }
    if (!docs.empty() && !docs[0].IsNull()) {
      if (docs[0].IsMap() && docs[0]["config"]) {
        fail(source, docs[0]["config"], "config", "a config file cannot name another config");
      }
      spec_detail::read_message(docs[0], spec, "", source);
    }
  } else {
    fail(name, {}, {},
         "unsupported config file type \"" + file.extension().string() +
             "\" (use .nix, .yaml, .yml or .json)");
  }
  resolve_code(spec, abs.parent_path());
  spec.set_config(abs.string());
  return spec;
}

template <class Spec>
void merge_overrides(Spec& spec, const std::string& json_object) {
  if (std::all_of(json_object.begin(), json_object.end(),
                  [](char c) { return std::isspace(static_cast<unsigned char>(c)); })) {
    return;
  }
  const auto docs = spec_detail::parse_documents(json_object, {});
  const Source source{{}, false, nullptr};
  if (docs.size() != 1 || !docs[0].IsMap()) {
    fail(std::string{}, spec_detail::Position{}, std::string{},
         "overrides must be one JSON object of spec fields");
  }
  spec_detail::read_message(docs[0], spec, "", source);
  // Flags are relative to where the command runs.
  resolve_code(spec, fs::current_path());
  if (!spec.config().empty()) spec.set_config(absolute_normal(spec.config()).string());
}

// One object read from a manifest, with what its errors need: the path validation uses and the
// positions of its fields.
struct Located {
  std::string path;
  std::shared_ptr<MarkMap> marks;
};

class ManifestReader {
 public:
  ManifestReader(const fs::path& file, const SpecOptions& options)
      : file_(file.string()),
        dir_(absolute_normal(file).parent_path()),
        source_path_(absolute_normal(file).string()),
        options_(options) {}

  v1::ObjectSet read() {
    const std::string text = spec_detail::read_text_file(file_, "manifest");
    for (const YAML::Node& doc : spec_detail::parse_documents(text, file_)) {
      if (doc.IsNull()) continue;  // a trailing `---`
      if (doc.IsSequence()) {
        // JSON: a list of objects.
        for (const YAML::Node& item : doc) read_document(item);
      } else {
        read_document(doc);
      }
    }
    if (set_.functions_size() + set_.vms_size() + set_.triggers_size() + set_.queues_size() +
                set_.storage_pools_size() + set_.networks_size() ==
            0 &&
        !platform_seen_) {
      fail(file_, {}, {}, "the manifest holds no objects");
    }
    stamp();
    validate();
    return std::move(set_);
  }

 private:
  void read_document(const YAML::Node& doc) {
    auto marks = std::make_shared<MarkMap>();
    const Source source{file_, true, marks.get()};
    if (!doc.IsMap()) {
      fail(source, doc, {},
           "a manifest document must be a mapping (apiVersion, kind, metadata, spec)");
    }
    spec_detail::check_keys(doc, {"apiVersion", "kind", "metadata", "spec"}, "", source);
    const YAML::Node api = doc["apiVersion"];
    if (!api) {
      fail(source, doc, "apiVersion",
           std::string("missing apiVersion (expected ") + k_api_version + ")");
    }
    const std::string api_version = spec_detail::read_string(api, "apiVersion", source);
    if (api_version != k_api_version) {
      fail(source, api, "apiVersion",
           "unknown apiVersion \"" + api_version + "\" (expected " + k_api_version + ")");
    }
    const YAML::Node kind_node = doc["kind"];
    if (!kind_node)
      fail(source, doc, "kind",
           "missing kind (Platform, Vm, Function, Trigger, Queue, StoragePool or Network)");
    const std::string kind = spec_detail::read_string(kind_node, "kind", source);
    const YAML::Node metadata_node = doc["metadata"];
    if (!metadata_node) fail(source, doc, "metadata", "missing metadata (with a name)");
    v1::ObjectMeta metadata = read_metadata(metadata_node, source);
    const YAML::Node spec = doc["spec"];
    if (spec && !spec.IsNull() && !spec.IsMap()) {
      fail(source, spec, "spec", "expected a mapping, got " + spec_detail::describe(spec));
    }

    if (kind == "Platform") {
      if (platform_seen_) fail(source, kind_node, "kind", "a manifest holds at most one Platform");
      platform_seen_ = true;
      if (!is_valid_name(metadata.name())) {
        fail(source, metadata_node["name"], "metadata.name",
             "invalid name \"" + metadata.name() +
                 "\": use at most 63 lowercase letters, digits and '-', starting and ending with "
                 "a letter or digit");
      }
      set_.set_stack(metadata.name());
      platform_labels_ = metadata.labels();
      read_platform(spec, source, marks);
    } else if (kind == "Function") {
      auto* fn = set_.add_functions();
      *fn->mutable_metadata() = metadata;
      read_function_spec(spec, "spec", {}, source, *fn->mutable_spec());
      functions_.push_back({"", marks});
    } else if (kind == "Vm") {
      auto* vm = set_.add_vms();
      *vm->mutable_metadata() = metadata;
      read_vm_spec(spec, "spec", {}, source, *vm->mutable_spec());
      vms_.push_back({"", marks});
    } else if (kind == "Trigger") {
      auto* trigger = set_.add_triggers();
      *trigger->mutable_metadata() = metadata;
      if (spec && !spec.IsNull()) {
        spec_detail::read_message(spec, *trigger->mutable_spec(), "spec", source);
      }
      triggers_.push_back({"", marks});
    } else if (kind == "Queue") {
      auto* queue = set_.add_queues();
      *queue->mutable_metadata() = metadata;
      if (spec && !spec.IsNull()) {
        spec_detail::read_message(spec, *queue->mutable_spec(), "spec", source);
      }
      queues_.push_back({"", marks});
    } else if (kind == "Network") {
      auto* network = set_.add_networks();
      *network->mutable_metadata() = metadata;
      if (spec && !spec.IsNull()) {
        spec_detail::read_message(spec, *network->mutable_spec(), "spec", source);
      }
    } else if (kind == "StoragePool") {
      auto* pool = set_.add_storage_pools();
      *pool->mutable_metadata() = metadata;
      if (spec && !spec.IsNull()) {
        spec_detail::read_message(spec, *pool->mutable_spec(), "spec", source);
      }
    } else {
      fail(source, kind_node, "kind",
           "unknown kind \"" + kind +
               "\" (expected Platform, Vm, Function, Trigger, Queue, StoragePool or Network)");
    }
  }

  v1::ObjectMeta read_metadata(const YAML::Node& node, const Source& source) {
    spec_detail::check_keys(node, {"name", "labels"}, "metadata", source);
    if (!node["name"]) fail(source, node, "metadata.name", "missing name");
    v1::ObjectMeta meta;
    spec_detail::read_message(node, meta, "metadata", source);
    return meta;
  }

  void read_platform(const YAML::Node& spec, const Source& source,
                     const std::shared_ptr<MarkMap>& marks) {
    if (!spec || spec.IsNull()) return;
    spec_detail::check_keys(spec, {"vms", "functions", "triggers", "queues"}, "spec", source);
    for_each_entry(spec["functions"], "spec.functions", source,
                   [&](const YAML::Node& e, const std::string& path) {
                     auto* fn = set_.add_functions();
                     fn->mutable_metadata()->set_name(entry_name(e, path, source));
                     read_function_spec(e, path, {"name"}, source, *fn->mutable_spec());
                     functions_.push_back({path, marks});
                   });
    for_each_entry(spec["vms"], "spec.vms", source,
                   [&](const YAML::Node& e, const std::string& path) {
                     auto* vm = set_.add_vms();
                     vm->mutable_metadata()->set_name(entry_name(e, path, source));
                     read_vm_spec(e, path, {"name"}, source, *vm->mutable_spec());
                     vms_.push_back({path, marks});
                   });
    for_each_entry(spec["triggers"], "spec.triggers", source,
                   [&](const YAML::Node& e, const std::string& path) {
                     auto* trigger = set_.add_triggers();
                     trigger->mutable_metadata()->set_name(entry_name(e, path, source));
                     spec_detail::read_message(e, *trigger->mutable_spec(), path, source, {"name"});
                     triggers_.push_back({path, marks});
                   });
    for_each_entry(spec["queues"], "spec.queues", source,
                   [&](const YAML::Node& e, const std::string& path) {
                     auto* queue = set_.add_queues();
                     queue->mutable_metadata()->set_name(entry_name(e, path, source));
                     spec_detail::read_message(e, *queue->mutable_spec(), path, source, {"name"});
                     queues_.push_back({path, marks});
                   });
  }

  template <class Fn>
  void for_each_entry(const YAML::Node& list, const std::string& path, const Source& source,
                      Fn&& fn) {
    if (!list || list.IsNull()) return;
    if (!list.IsSequence()) {
      fail(source, list, path, "expected a sequence, got " + spec_detail::describe(list));
    }
    for (std::size_t i = 0; i < list.size(); ++i) {
      const std::string at = path + "[" + std::to_string(i) + "]";
      const YAML::Node entry = list[i];
      if (!entry.IsMap()) {
        fail(source, entry, at, "expected a mapping, got " + spec_detail::describe(entry));
      }
      fn(entry, at);
    }
  }

  std::string entry_name(const YAML::Node& entry, const std::string& path, const Source& source) {
    const YAML::Node name = entry["name"];
    if (!name) fail(source, entry, path + ".name", "missing name");
    return spec_detail::read_string(name, path + ".name", source);
  }

  // The entry's `config` first (the base), then the entry's own fields over it.
  template <class Spec>
  void read_spec(const YAML::Node& node, const std::string& path, std::set<std::string> skip,
                 const Source& source, Spec& spec, spec_detail::NixKind kind) {
    if (!node || node.IsNull()) return;
    std::string config;
    if (node.IsMap() && node["config"]) {
      const std::string field = join_path(path, "config");
      const YAML::Node value = node["config"];
      const std::string written = spec_detail::read_string(value, field, source);
      fs::path p(written);
      if (p.is_relative()) p = dir_ / p;
      p = absolute_normal(p);
      std::error_code ec;
      if (!fs::is_regular_file(p, ec)) {
        fail(source, value, field, "config file not found: " + p.string());
      }
      spec = load_config<Spec>(p, kind, options_);
      config = p.string();
      skip.insert("config");
    }
    spec_detail::read_message(node, spec, path, source, skip);
    if (!config.empty()) spec.set_config(config);
    resolve_code(spec, dir_);
  }

  void read_function_spec(const YAML::Node& node, const std::string& path,
                          std::set<std::string> skip, const Source& source,
                          v1::FunctionSpec& spec) {
    read_spec(node, path, std::move(skip), source, spec, spec_detail::NixKind::function);
  }

  void read_vm_spec(const YAML::Node& node, const std::string& path, std::set<std::string> skip,
                    const Source& source, v1::VmSpec& spec) {
    read_spec(node, path, std::move(skip), source, spec, spec_detail::NixKind::vm);
  }

  // Every object names its file; with a Platform, every object of the file belongs to its stack
  // (so that apply --prune and delete --stack find it) and carries its labels.
  void stamp() {
    auto one = [&](v1::ObjectMeta* meta) {
      meta->set_source(source_path_);
      if (set_.stack().empty()) return;
      meta->set_stack(set_.stack());
      for (const auto& [k, v] : platform_labels_) meta->mutable_labels()->insert({k, v});
    };
    for (auto& fn : *set_.mutable_functions()) one(fn.mutable_metadata());
    for (auto& vm : *set_.mutable_vms()) one(vm.mutable_metadata());
    for (auto& t : *set_.mutable_triggers()) one(t.mutable_metadata());
    for (auto& q : *set_.mutable_queues()) one(q.mutable_metadata());
    for (auto& p : *set_.mutable_storage_pools()) one(p.mutable_metadata());
    for (auto& n : *set_.mutable_networks()) one(n.mutable_metadata());
  }

  template <class Objects, class Validate>
  void validate_all(Objects& objects, const std::vector<Located>& located, Validate&& validate) {
    std::map<std::string, std::size_t> seen;
    for (int i = 0; i < objects.size(); ++i) {
      const Located& at = located[static_cast<std::size_t>(i)];
      try {
        validate(*objects.Mutable(i), at.path);
      } catch (const Error& e) {
        spec_detail::rethrow_located(e, file_, *at.marks);
      }
      const std::string& name = objects.Get(i).metadata().name();
      if (!seen.emplace(name, static_cast<std::size_t>(i)).second) {
        const std::string field = at.path.empty() ? "metadata.name" : at.path + ".name";
        spec_detail::rethrow_located(
            Error(errc::invalid_spec, "duplicate name \"" + name + "\"", field), file_, *at.marks);
      }
    }
  }

  void validate() {
    validate_all(*set_.mutable_functions(), functions_,
                 [](v1::Function& o, const std::string& p) { validate_function(o, p); });
    validate_all(*set_.mutable_vms(), vms_,
                 [](v1::Vm& o, const std::string& p) { validate_vm(o, p); });
    validate_all(*set_.mutable_triggers(), triggers_,
                 [](v1::Trigger& o, const std::string& p) { validate_trigger(o, p); });
    validate_all(*set_.mutable_queues(), queues_,
                 [](v1::Queue& o, const std::string& p) { validate_queue(o, p); });
  }

  std::string file_;
  fs::path dir_;
  std::string source_path_;
  const SpecOptions& options_;
  v1::ObjectSet set_;
  bool platform_seen_ = false;
  google::protobuf::Map<std::string, std::string> platform_labels_;
  std::vector<Located> functions_, vms_, triggers_, queues_;
};

}  // namespace

v1::ObjectSet load_manifest(const std::filesystem::path& file, const SpecOptions& options) {
  return ManifestReader(file, options).read();
}

v1::FunctionSpec load_function_config(const std::filesystem::path& file,
                                      const SpecOptions& options) {
  return load_config<v1::FunctionSpec>(file, spec_detail::NixKind::function, options);
}

v1::VmSpec load_vm_config(const std::filesystem::path& file, const SpecOptions& options) {
  return load_config<v1::VmSpec>(file, spec_detail::NixKind::vm, options);
}

void merge_function_overrides(v1::FunctionSpec& spec, const std::string& json_object) {
  merge_overrides(spec, json_object);
}

void merge_vm_overrides(v1::VmSpec& spec, const std::string& json_object) {
  merge_overrides(spec, json_object);
}

}  // namespace blixard
