// Internal to the spec layer: reading the plain data of a Nix config with nix-instantiate.
#pragma once

#include <string>

#include "blixard/spec.hpp"

namespace blixard::spec_detail {

enum class NixKind { function, vm };

// Evaluates `file` (absolute) and returns its data as JSON text:
// {"handlerIsFunction": bool, "spec": {spec fields as in YAML}}. Throws invalid_spec carrying
// nix's own message when evaluation fails, or saying nix-instantiate is missing.
std::string evaluate_nix_config(const std::string& file, NixKind kind, const SpecOptions& options);

}  // namespace blixard::spec_detail
