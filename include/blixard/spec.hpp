// Reading specs from files: manifests (YAML with several documents, JSON) and configs (YAML, JSON,
// Nix modules). Every error is a blixard::Error(errc::invalid_spec) that names the file, the line
// and column where known, and the field path.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>

#include "blixard/v1/api.pb.h"

namespace blixard {

struct SpecOptions {
  // The Nix evaluator used for .nix configs.
  std::string nix_instantiate = "nix-instantiate";
};

// Loads every object of a manifest: `kind: Platform` (vms, functions, triggers, queues), `Vm`,
// `Function`, `Trigger`, `Queue`, `StoragePool` and `Network` documents. Config files the objects
// name are read too, relative to the manifest.
v1::ObjectSet load_manifest(const std::filesystem::path& file, const SpecOptions& options = {});

// Reads a function's config file (YAML, JSON or Nix) into a spec; `code` becomes absolute.
v1::FunctionSpec load_function_config(const std::filesystem::path& file,
                                      const SpecOptions& options = {});
v1::VmSpec load_vm_config(const std::filesystem::path& file, const SpecOptions& options = {});

// Overrides from flags, given as a JSON object with the spec's field names ({"memory": "128M"}).
// Errors name the field as written ("memory").
void merge_function_overrides(v1::FunctionSpec& spec, const std::string& json_object);
void merge_vm_overrides(v1::VmSpec& spec, const std::string& json_object);

// "128M" -> 128, "4G" -> 4096, "512" -> 512 (a bare number is MiB). Throws invalid_spec naming
// `field`.
std::uint64_t parse_size_mib(std::string_view text, std::string_view field);
// "30s", "2m", "1h", "250ms"; a bare number is seconds.
std::chrono::milliseconds parse_duration(std::string_view text, std::string_view field);

// Validation and defaults; throw invalid_spec naming the field under `path` ("spec.functions[0]").
bool is_valid_name(std::string_view name) noexcept;
void validate_function(v1::Function& fn, const std::string& path = "");
void validate_vm(v1::Vm& vm, const std::string& path = "");
void validate_trigger(v1::Trigger& trigger, const std::string& path = "");
void validate_storage_pool(v1::StoragePool& pool, const std::string& path = "");
void validate_network(v1::Network& network, const std::string& path = "");
// visibilityTimeout defaults to 30s. A dead-letter queue's existence is apply's to check.
void validate_queue(v1::Queue& queue, const std::string& path = "");
// All of the above, plus duplicate names within the set.
void validate_object_set(v1::ObjectSet& set);

}  // namespace blixard
