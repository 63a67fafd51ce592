// What a replica that outlives its agent (Replica::outlives_agent) leaves for the next agent on
// its node: a record (proto KeptReplica), "<replica>.pb" in a directory that is the agent's
// alone, since the spec's environment is in it and the next agent, root, acts on it. Both VM
// drivers keep their replicas this way; what else a record holds (a guest's domain, a sandboxed
// process's pid and start time) is the driver's own.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "blixard/v1/agent.pb.h"
#include "runtime/replica.hpp"

namespace blixard::runtime {

// Where the record of `replica` is in the agent's directory `dir`.
std::filesystem::path kept_record_path(const std::filesystem::path& dir,
                                       const std::string& replica);

// A record of the replica started with `options` (its assignment, epoch included).
v1::KeptReplica kept_record_of(const ReplicaOptions& options);

// The options of the replica `record` keeps, with the next agent's callbacks.
ReplicaOptions kept_replica_options(const v1::KeptReplica& record,
                                    ReplicaOptions::LogCallback on_log,
                                    std::function<void(const ReplicaExit&)> on_exit);

// Writes `record` beside `path` and renames it there (a reader sees all of it or none): 0600,
// through no symbolic link. False, with errno set, when it could not.
bool write_kept_record(const std::filesystem::path& path, const v1::KeptReplica& record);

// The record at `path` if the agent wrote it: a regular file of the agent's own that no one else
// may read or write, named after the replica it keeps (a name that is no path). Otherwise none.
std::optional<v1::KeptReplica> read_kept_record(const std::filesystem::path& path);

}  // namespace blixard::runtime
