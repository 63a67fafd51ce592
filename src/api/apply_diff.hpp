// What `apply --dry-run` shows for a change (kubectl diff): an object's declaration rendered as
// YAML and a unified diff between the stored ("live") and the new ("merged") rendering.
#pragma once

#include <string>

#include <google/protobuf/message.h>

namespace blixard::api {

// The declared part of a stored object (metadata name, labels and stack; spec) as YAML with its
// keys sorted, as the manifest's camelCase names spell them. Status, bookkeeping (revisions,
// created_at) and provenance (source, spec.config) are left out: they are not what apply
// compares.
std::string render_declaration(const google::protobuf::Message& object);

// A unified diff (`diff -u`, three lines of context) from `before` to `after`, headed
// `--- from_label` / `+++ to_label`; empty when the texts are equal. An empty text stands for an
// absent object (created or deleted).
std::string unified_diff(const std::string& before, const std::string& after,
                         const std::string& from_label, const std::string& to_label);

}  // namespace blixard::api
