// A Nix config's NixOS services as a VM replica's workload (issue: "guests that run the seed's
// configs"). Without nixpkgs no NixOS system can be built here, so the few services the seed's
// configs use are read as plain data and run from the host's Debian programs, which a guest sees
// in the /usr the node shares with it: `services.nginx` (virtual hosts with root, index, return,
// proxyPass), `services.redis.servers.<name>` and `services.postgresql` (Debian's PostgreSQL 15,
// its data on the set's volume, run by a `/bin/sh -c` script of the options that needs no files,
// so it runs in a sandbox replica too). Anything else a config enables is an error that
// names the option (kept in the spec's `untranslated`: the set is stored and its replicas fail
// saying so); an option of a supported service that cannot be honoured fails the load.
//
// The seam for a real NixOS build: a node with nixpkgs would build the config's system closure
// instead (microvm.nix's runner) and share /nix/store; the translation is then not used.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>

#include "blixard/v1/vm.pb.h"

namespace blixard::spec_detail {

// Fills `spec`'s command, files and ports from `services` (the config's `services` attribute set
// as JSON, functions and packages replaced by null and "<package>", pkgs.postgresql15 by
// "<package:postgresql15>", pkgs.writeText by { blixardWriteText, text }). A config that gives a
// `command` of its own as well is an error. `file` names the config in errors.
void translate_nixos_services(const YAML::Node& services, v1::VmSpec& spec,
                              const std::string& file);

}  // namespace blixard::spec_detail
