// Validation and defaults for functions, VMs and triggers. Idempotent: the client validates what
// it loads and the server validates what it is sent, so running twice must change nothing.
#include <google/protobuf/duration.pb.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <map>
#include <set>

#include "blixard/error.hpp"
#include "blixard/spec.hpp"
#include "common/defaults.hpp"
#include "common/digest.hpp"
#include "common/subnet.hpp"

namespace blixard {
namespace {

constexpr std::uint64_t k_default_function_memory_mib = 128;
constexpr std::uint64_t k_max_function_memory_mib = 65536;
constexpr std::uint64_t k_default_scratch_mib = 64;
constexpr std::int64_t k_default_timeout_s = 30;
constexpr std::int64_t k_max_timeout_s = 15 * 60;
constexpr std::uint32_t k_default_concurrency = 100;
constexpr std::int64_t k_default_keep_warm_s = 60;
constexpr std::uint64_t k_default_vm_memory_mib = 512;
// Upper bounds for VM sizes: past any host we run on, low enough to catch a typo ("99999999G").
constexpr std::uint64_t k_max_vm_memory_mib = 1 << 20;               // 1 TiB
constexpr std::uint64_t k_max_storage_mib = std::uint64_t{1} << 30;  // 1 PiB
constexpr std::uint64_t k_default_volume_mib = 1024;
constexpr const char* k_default_mount_point = "/data";
constexpr std::uint32_t k_max_replicas = 1000;
constexpr std::uint32_t k_max_vcpu = 1024;

[[noreturn]] void invalid(const std::string& field, const std::string& message) {
  throw Error(errc::invalid_spec, message, field);
}

std::string in_quotes(const std::string& s) { return "\"" + s + "\""; }

// Where a field lives: a standalone object ("metadata.name", "spec.memory") or an entry of a
// Platform whose name and spec fields sit side by side ("spec.functions[1].memory").
struct Paths {
  std::string name;
  std::string spec;
  std::string field(const std::string& f) const { return spec + "." + f; }
};

Paths paths_for(const std::string& path) {
  if (path.empty()) return {"metadata.name", "spec"};
  return {path + ".name", path};
}

void check_name(const std::string& name, const std::string& field) {
  if (name.empty()) invalid(field, "missing name");
  if (!is_valid_name(name)) {
    invalid(field, "invalid name " + in_quotes(name) +
                       ": use at most 63 lowercase letters, digits and '-', starting and ending "
                       "with a letter or digit");
  }
}

bool is_identifier(std::string_view s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s.front()))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

// "module:function", module possibly dotted ("pkg.mod:handler").
bool is_python_handler(const std::string& handler) {
  const auto colon = handler.find(':');
  if (colon == std::string::npos) return false;
  const std::string_view module(handler.data(), colon);
  const std::string_view function(handler.data() + colon + 1, handler.size() - colon - 1);
  if (!is_identifier(function)) return false;
  std::size_t start = 0;
  while (true) {
    const auto dot = module.find('.', start);
    if (!is_identifier(module.substr(start, dot == std::string_view::npos ? dot : dot - start))) {
      return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

bool is_env_name(const std::string& s) { return is_identifier(s); }

std::int64_t millis(const google::protobuf::Duration& d) {
  return d.seconds() * 1000 + d.nanos() / 1'000'000;
}

void set_seconds(google::protobuf::Duration* d, std::int64_t s) {
  d->set_seconds(s);
  d->set_nanos(0);
}

void check_duration(const google::protobuf::Duration& d, const std::string& field) {
  if (d.seconds() < 0 || d.nanos() < 0) invalid(field, "duration must not be negative");
}

void validate_env(const google::protobuf::Map<std::string, std::string>& env,
                  const std::string& field) {
  for (const auto& [key, value] : env) {
    if (!is_env_name(key)) {
      invalid(field + "." + key, "invalid environment variable name " + in_quotes(key));
    }
  }
}

void validate_placement(v1::Placement& p, const std::string& field) {
  // "availability-zones" is the well-known alias of the `zone` label (DESIGN §7).
  if (p.spread_across() == "availability-zones") p.set_spread_across("zone");
  if (!p.strategy().empty() && p.strategy() != "binpack" && p.strategy() != "spread") {
    invalid(field + ".strategy",
            "unknown strategy " + in_quotes(p.strategy()) + " (expected binpack or spread)");
  }
  for (const auto& [key, value] : p.node_selector()) {
    if (key.empty()) invalid(field + ".nodeSelector", "empty label key");
  }
  // A field of the event, through objects: "imagePath", "body.input.path".
  const std::string& from = p.data_path_from();
  if (!from.empty()) {
    const bool well_formed =
        from.size() <= 256 && from.front() != '.' && from.back() != '.' &&
        from.find("..") == std::string::npos && std::all_of(from.begin(), from.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
        });
    if (!well_formed) {
      invalid(field + ".dataPathFrom",
              "dataPathFrom " + in_quotes(from.substr(0, 64)) +
                  " is not an event field (letters, digits, '_', '-', dotted through objects)");
    }
  }
}

void validate_microvm(v1::MicroVm& m, const std::string& field) {
  for (int i = 0; i < m.shares_size(); ++i) {
    const auto& share = m.shares(i);
    const std::string at = field + ".shares[" + std::to_string(i) + "]";
    if (share.source().empty()) invalid(at + ".source", "a share needs a source directory");
    if (share.mount_point().empty()) invalid(at + ".mountPoint", "a share needs a mountPoint");
  }
  if (m.vcpu() > k_max_vcpu) {
    invalid(field + ".vcpu", "vcpu must be at most " + std::to_string(k_max_vcpu));
  }
  if (m.mem() > k_max_vm_memory_mib) {
    invalid(field + ".mem", "mem must be at most " + std::to_string(k_max_vm_memory_mib) +
                                " MiB (1T), got " + std::to_string(m.mem()));
  }
  if (m.balloon_mem() > k_max_vm_memory_mib) {
    invalid(field + ".balloonMem", "balloonMem must be at most " +
                                       std::to_string(k_max_vm_memory_mib) + " MiB (1T), got " +
                                       std::to_string(m.balloon_mem()));
  }
}

// A trigger's spec, inline in a function (`function` implied) or standalone.
void validate_trigger_spec(v1::TriggerSpec& t, const std::string& at,
                           const std::string* owner_function) {
  if (owner_function != nullptr) {
    if (t.function().empty()) t.set_function(*owner_function);
    if (t.function() != *owner_function) {
      invalid(at + ".function", "an inline trigger belongs to its function " +
                                    in_quotes(*owner_function) + ", not " +
                                    in_quotes(t.function()));
    }
  } else {
    if (t.function().empty()) invalid(at + ".function", "missing function (the one to trigger)");
    check_name(t.function(), at + ".function");
  }
  if (t.type().empty()) invalid(at + ".type", "missing type (http, queue or event)");
  if (t.type() == "http") {
    if (t.path().empty()) invalid(at + ".path", "an http trigger needs a path (e.g. /api/x)");
    if (t.path().front() != '/') {
      invalid(at + ".path", "path " + in_quotes(t.path()) + " must start with '/'");
    }
    // The server's own endpoints share the gateway's port; a trigger there could never be reached.
    const std::string& p = t.path();
    auto reserved = [&p](const std::string& prefix) {
      return p == prefix || p.rfind(prefix + "/", 0) == 0;
    };
    if (reserved("/v1") || reserved("/healthz") || reserved("/metrics") || reserved("/ui")) {
      invalid(at + ".path",
              "path " + in_quotes(p) + " is reserved for the API (/v1, /healthz, /metrics, /ui)");
    }
    if (p.find_first_of("?# ") != std::string::npos) {
      invalid(at + ".path", "path " + in_quotes(p) + " must not contain '?', '#' or spaces");
    }
    static const std::set<std::string> k_methods{"GET",    "POST", "PUT",    "PATCH",
                                                 "DELETE", "HEAD", "OPTIONS"};
    for (int i = 0; i < t.methods_size(); ++i) {
      std::string m = t.methods(i);
      for (auto& c : m) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (!k_methods.count(m)) {
        invalid(at + ".methods[" + std::to_string(i) + "]", "unknown HTTP method " + in_quotes(m));
      }
      t.set_methods(i, m);
    }
  } else if (t.type() == "queue" || t.type() == "event") {
    if (t.source().empty()) {
      invalid(at + ".source",
              "a " + t.type() + " trigger needs a source (the " + t.type() + " name)");
    }
    // Queues are objects with names of their own; events are free-form but single words.
    if (t.type() == "queue" && !is_valid_name(t.source())) {
      invalid(at + ".source", "invalid queue name " + in_quotes(t.source()) +
                                  ": use lowercase letters, digits and '-'");
    }
    if (std::any_of(t.source().begin(), t.source().end(),
                    [](char c) { return std::isspace(static_cast<unsigned char>(c)); })) {
      invalid(at + ".source", "event name " + in_quotes(t.source()) + " must not contain spaces");
    }
    // Lambda's bounds for a standard queue's mapping: up to 10,000 messages, up to 5 minutes.
    if (t.batch_size() > 10000) invalid(at + ".batchSize", "batchSize must be at most 10000");
    if (t.has_batch_window()) {
      check_duration(t.batch_window(), at + ".batchWindow");
      if (t.batch_window().seconds() < 0 || t.batch_window().seconds() > 300)
        invalid(at + ".batchWindow", "batchWindow must be between 0s and 5m");
    }
    if (t.type() == "event" && (t.batch_size() > 1 || t.has_batch_window()))
      invalid(at + ".batchSize", "an event trigger delivers one event per call: no batches");
  } else {
    invalid(at + ".type",
            "unknown trigger type " + in_quotes(t.type()) + " (expected http, queue or event)");
  }
}

}  // namespace

bool is_valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 63) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(name.front()) || !alnum(name.back())) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) { return alnum(c) || c == '-'; });
}

void validate_function(v1::Function& fn, const std::string& path) {
  const Paths at = paths_for(path);
  check_name(fn.metadata().name(), at.name);
  auto& s = *fn.mutable_spec();

  if (s.runtime().empty()) {
    if (s.command_size() > 0) {
      s.set_runtime("exec");
    } else if (!s.handler().empty()) {
      s.set_runtime("python");
    } else {
      std::string hint;
      if (s.config().size() > 4 && s.config().ends_with(".nix")) {
        hint = " (a handler written as a Nix function cannot run here)";
      }
      invalid(at.field("handler"),
              "the function has no handler" + hint +
                  ": pass --handler or set `handler = \"module:function\"` in its config (or "
                  "`command` for the exec runtime)");
    }
  }
  if (s.runtime() == "python") {
    if (s.handler().empty()) {
      invalid(at.field("handler"),
              "the python runtime needs a handler: pass --handler or set `handler = "
              "\"module:function\"`");
    }
    if (!is_python_handler(s.handler())) {
      invalid(at.field("handler"),
              "handler " + in_quotes(s.handler()) + " is not of the form module:function");
    }
  } else if (s.runtime() == "exec") {
    if (s.command_size() == 0) {
      invalid(at.field("command"), "the exec runtime needs a command (the program and its args)");
    }
    if (s.command(0).empty()) invalid(at.field("command[0]"), "the program must not be empty");
  } else {
    invalid(at.field("runtime"),
            "unknown runtime " + in_quotes(s.runtime()) + " (expected python or exec)");
  }

  // A missing code directory would only show at the first invoke, as a start failure.
  if (!s.code().empty()) {
    std::error_code ec;
    const auto status = std::filesystem::status(s.code(), ec);
    if (!std::filesystem::exists(status)) {
      invalid(at.field("code"), "code directory not found: " + s.code());
    }
    if (!std::filesystem::is_directory(status)) {
      invalid(at.field("code"), "code must be a directory: " + s.code());
    }
  }

  if (!s.code_digest().empty() && !is_sha256_digest(s.code_digest())) {
    invalid(at.field("codeDigest"), "codeDigest " + in_quotes(s.code_digest().substr(0, 80)) +
                                        " is not of the form sha256:<64 hex digits>");
  }

  // Unset takes the default; an explicit 0 is a mistake, not "the default".
  if (!s.has_memory_mib()) {
    s.set_memory_mib(s.microvm().mem() != 0 ? s.microvm().mem() : k_default_function_memory_mib);
  }
  if (s.memory_mib() == 0 || s.memory_mib() > k_max_function_memory_mib) {
    invalid(at.field("memory"), "memory must be between 1 and " +
                                    std::to_string(k_max_function_memory_mib) + " MiB, got " +
                                    std::to_string(s.memory_mib()));
  }
  if (s.vcpu() > k_max_vcpu) {
    invalid(at.field("vcpu"), "vcpu must be at most " + std::to_string(k_max_vcpu));
  }
  // The scratch /tmp is a tmpfs charged to the instance's memory: it cannot be larger.
  if (!s.has_ephemeral_storage_mib()) {
    s.set_ephemeral_storage_mib(std::min(k_default_scratch_mib, s.memory_mib()));
  }
  if (s.ephemeral_storage_mib() == 0 || s.ephemeral_storage_mib() > s.memory_mib()) {
    invalid(at.field("ephemeralStorage"),
            "ephemeralStorage must be between 1 MiB and the function's memory (" +
                std::to_string(s.memory_mib()) + " MiB): it lives in memory; got " +
                std::to_string(s.ephemeral_storage_mib()) + " MiB");
  }
  if (s.network().empty()) s.set_network("none");
  if (s.network() != "none" && s.network() != "host") {
    invalid(at.field("network"),
            "network must be \"none\" (the default: a loopback of the "
            "instance's own) or \"host\", got \"" +
                s.network() + "\"");
  }

  if (!s.has_timeout()) set_seconds(s.mutable_timeout(), k_default_timeout_s);
  check_duration(s.timeout(), at.field("timeout"));
  if (millis(s.timeout()) <= 0) invalid(at.field("timeout"), "timeout must be greater than zero");
  if (millis(s.timeout()) > k_max_timeout_s * 1000) {
    invalid(at.field("timeout"), "timeout must be at most 15m");
  }

  // 0 is kept: it throttles every call (Lambda's reserved concurrency 0).
  if (!s.has_concurrent_executions()) s.set_concurrent_executions(k_default_concurrency);
  auto& sc = *s.mutable_scaling();
  if (!sc.has_max_instances()) {
    sc.set_max_instances(std::max<std::uint32_t>(1, s.concurrent_executions()));
  }
  if (sc.max_instances() == 0) {
    invalid(at.field("scaling.maxInstances"),
            "maxInstances must be at least 1 (to refuse every call, set concurrentExecutions: 0)");
  }
  if (sc.target_concurrency() == 0) sc.set_target_concurrency(1);
  if (!sc.has_keep_warm()) set_seconds(sc.mutable_keep_warm(), k_default_keep_warm_s);
  check_duration(sc.keep_warm(), at.field("scaling.keepWarm"));
  if (sc.min_instances() > sc.max_instances()) {
    invalid(at.field("scaling.minInstances"),
            "minInstances (" + std::to_string(sc.min_instances()) +
                ") must not exceed maxInstances (" + std::to_string(sc.max_instances()) + ")");
  }

  if (s.has_placement()) validate_placement(*s.mutable_placement(), at.field("placement"));
  if (s.has_microvm()) validate_microvm(*s.mutable_microvm(), at.field("microvm"));
  validate_env(s.env(), at.field("env"));
  for (int i = 0; i < s.triggers_size(); ++i) {
    validate_trigger_spec(*s.mutable_triggers(i), at.field("triggers[" + std::to_string(i) + "]"),
                          &fn.metadata().name());
  }
}

// A duration as people write one: "24h", "5m", "2s", "1500ms".
std::string duration_text(std::int64_t ms) {
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// A rollout's timings (Nomad's update block), each within bounds and nested as they are used: a
// new replica has healthyDeadline to be ready and then healthy for minHealthyTime, and
// progressDeadline (0: none) leaves room for at least one healthyDeadline.
void validate_update_strategy(const v1::UpdateStrategy& u, const std::string& at) {
  struct Timing {
    const char* name;
    bool given;
    const google::protobuf::Duration& value;
    std::int64_t fallback, max;  // ms
    std::int64_t ms = 0;
  };
  std::array<Timing, 3> timings{{
      {"minHealthyTime", u.has_min_healthy_time(), u.min_healthy_time(),
       k_default_min_healthy_time.count(), 3600 * 1000},
      {"healthyDeadline", u.has_healthy_deadline(), u.healthy_deadline(),
       k_default_healthy_deadline.count(), 3600 * 1000},
      {"progressDeadline", u.has_progress_deadline(), u.progress_deadline(),
       k_default_progress_deadline.count(), 24 * 3600 * 1000},
  }};
  for (auto& t : timings) {
    const std::string field = at + "." + t.name;
    if (!t.given) {
      t.ms = t.fallback;
      continue;
    }
    if (t.value.seconds() < 0 || t.value.nanos() < 0) {
      invalid(field, std::string(t.name) + " must not be negative");
    }
    if (t.value.nanos() > 999'999'999 || t.value.seconds() > t.max / 1000 ||
        millis(t.value) > t.max) {
      invalid(field, std::string(t.name) + " must be at most " + duration_text(t.max));
    }
    t.ms = millis(t.value);
  }
  const auto& [min_healthy, healthy, progress] = timings;
  auto shown = [](const Timing& t) {
    return duration_text(t.ms) + (t.given ? "" : ", the default");
  };
  if (healthy.ms <= min_healthy.ms) {
    invalid(at + ".healthyDeadline",
            "healthyDeadline (" + shown(healthy) + ") must exceed minHealthyTime (" +
                shown(min_healthy) +
                "): a new replica has healthyDeadline to be ready and then healthy for "
                "minHealthyTime");
  }
  if (progress.ms != 0 && progress.ms <= healthy.ms) {
    invalid(at + ".progressDeadline", "progressDeadline (" + shown(progress) +
                                          ") must exceed healthyDeadline (" + shown(healthy) +
                                          "), or be 0 for no deadline");
  }
}

void validate_readiness(const v1::Readiness& r, const std::set<std::uint32_t>& ports,
                        const std::string& field) {
  const int kinds = (r.tcp_port() != 0 ? 1 : 0) + (!r.http_path().empty() ? 1 : 0) +
                    (!r.console_marker().empty() ? 1 : 0);
  if (kinds > 1) {
    invalid(field, "give one of tcpPort, httpPath and consoleMarker, not " + std::to_string(kinds));
  }
  for (const auto& [name, port] :
       {std::pair{"tcpPort", r.tcp_port()}, {"httpPort", r.http_port()}}) {
    if (port != 0 && !ports.contains(port)) {
      invalid(field + "." + name, "port " + std::to_string(port) + " is not one of the VM's ports");
    }
  }
  if (!r.http_path().empty() && r.http_path().front() != '/') {
    invalid(field + ".httpPath", "a path starts with /, got " + in_quotes(r.http_path()));
  }
  if ((r.tcp_port() != 0 || !r.http_path().empty() || r.console_marker().empty()) &&
      ports.empty()) {
    invalid(field, "a TCP or HTTP check needs a declared port (ports), or give consoleMarker");
  }
  if (r.console_marker().size() > 256) invalid(field + ".consoleMarker", "at most 256 bytes");
  if (r.http_path().size() > 1024) invalid(field + ".httpPath", "at most 1024 bytes");
  if (r.failure_threshold() > 100) invalid(field + ".failureThreshold", "at most 100");
  if (const auto& t = r.timeout(); t.seconds() < 0 || t.nanos() < 0) {
    invalid(field + ".timeout", "timeout must not be negative");
  } else if (t.seconds() > 3600 || millis(t) > 3600 * 1000) {
    invalid(field + ".timeout", "timeout must be at most 1h");
  }
}

// A set's volumes: from a pool or a class, sized (1 GiB unless told), mounted somewhere a
// workload may write (not over the system's directories).
void validate_storage(v1::StorageSpec& s, const std::string& at) {
  const std::string field = at + ".";
  if (s.pool().empty() && s.class_().empty()) {
    // (A mount point alone is kept: a Nix config's fileSystems say where data would live.)
    if (s.size_mib() != 0) {
      invalid(field + "pool", "storage needs a pool (--storage-pool) or a class (--storage-class)");
    }
    return;
  }
  if (!s.pool().empty()) check_name(s.pool(), field + "pool");
  if (s.size_mib() == 0) s.set_size_mib(k_default_volume_mib);
  if (s.size_mib() > k_max_storage_mib) {
    invalid(field + "size", "size must be at most " + std::to_string(k_max_storage_mib) +
                                " MiB (1P), got " + std::to_string(s.size_mib()) + " MiB");
  }
  if (s.mount_point().empty()) s.set_mount_point(k_default_mount_point);
  const auto& mount = s.mount_point();
  const std::string normal = std::filesystem::path(mount).lexically_normal().string();
  if (mount.front() != '/' || normal != mount || mount.back() == '/' ||
      mount.find_first_of(" \t\n'\"\\") != std::string::npos) {
    invalid(field + "mountPoint",
            "mountPoint must be a plain absolute path such as /data, not " + in_quotes(mount));
  }
  for (const char* system : {"/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/sys",
                             "/dev", "/run", "/tmp", "/blixard", "/init"}) {
    const std::string dir = system;
    if (mount == dir || mount.starts_with(dir + "/")) {
      invalid(field + "mountPoint", "a volume cannot be mounted over " + dir + " (" +
                                        in_quotes(mount) +
                                        "): use a path such as /data or "
                                        "/var/lib/<service>");
    }
  }
}

void validate_storage_pool(v1::StoragePool& pool, const std::string& path) {
  const Paths at = paths_for(path);
  check_name(pool.metadata().name(), at.name);
  auto& s = *pool.mutable_spec();
  if (s.type().empty()) s.set_type("dir");
  if (s.type() != "dir" && s.type() != "shared-dir") {
    invalid(at.field("type"), "unknown pool type " + in_quotes(s.type()) +
                                  " (expected dir: a directory on each node, or shared-dir: one "
                                  "every node mounts)");
  }
  const std::string normal = std::filesystem::path(s.path()).lexically_normal().string();
  if (s.path().empty() || s.path().front() != '/' || normal != s.path() || s.path() == "/") {
    invalid(at.field("path"),
            "path must be an absolute directory such as /var/lib/blixard-volumes" +
                (s.path().empty() ? std::string() : ", not " + in_quotes(s.path())));
  }
  for (const char* system : {"/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/sys",
                             "/dev", "/boot", "/root"}) {
    const std::string dir = system;
    if (s.path() == dir || s.path().starts_with(dir + "/")) {
      invalid(at.field("path"), "a pool cannot live in " + dir + " (" + in_quotes(s.path()) + ")");
    }
  }
  if (s.class_().empty()) s.set_class_(s.type() == "dir" ? "local" : "replicated");
  if (!is_valid_name(s.class_())) {
    invalid(at.field("class"),
            "invalid class " + in_quotes(s.class_()) + ": use lowercase letters, digits and '-'");
  }
}

void validate_network(v1::Network& network, const std::string& path) {
  const Paths at = paths_for(path);
  check_name(network.metadata().name(), at.name);
  // The canonical form: "10.88.0.0/24" however it was written.
  network.mutable_spec()->set_subnet(
      net::parse_subnet(network.spec().subnet(), at.field("subnet")).to_string());
}

void validate_vm(v1::Vm& vm, const std::string& path) {
  const Paths at = paths_for(path);
  check_name(vm.metadata().name(), at.name);
  auto& s = *vm.mutable_spec();

  if (s.type().empty()) s.set_type("long-lived");
  if (s.type() != "long-lived") {
    invalid(at.field("type"), "unknown VM type " + in_quotes(s.type()) +
                                  " (long-lived is the only one; functions are serverless)");
  }
  if (s.replicas() == 0) s.set_replicas(1);
  if (s.replicas() > k_max_replicas) {
    invalid(at.field("replicas"), "replicas must be between 0 and " +
                                      std::to_string(k_max_replicas) + ", got " +
                                      std::to_string(s.replicas()));
  }
  if (!s.has_memory_mib()) {
    s.set_memory_mib(s.microvm().mem() != 0 ? s.microvm().mem() : k_default_vm_memory_mib);
  }
  if (s.memory_mib() == 0 || s.memory_mib() > k_max_vm_memory_mib) {
    invalid(at.field("memory"), "memory must be between 1 and " +
                                    std::to_string(k_max_vm_memory_mib) + " MiB (1T), got " +
                                    std::to_string(s.memory_mib()) + " MiB");
  }
  if (s.vcpu() == 0) s.set_vcpu(s.microvm().vcpu() != 0 ? s.microvm().vcpu() : 1);
  if (s.vcpu() > k_max_vcpu) {
    invalid(at.field("vcpu"), "vcpu must be at most " + std::to_string(k_max_vcpu));
  }
  if (!s.driver().empty() && s.driver() != "libvirt" && s.driver() != "sandbox") {
    invalid(at.field("driver"), "unknown driver " + in_quotes(s.driver()) +
                                    " (expected libvirt or sandbox, or none: the node's)");
  }
  const auto& policy = s.primary_election_policy();
  if (!policy.empty() && policy != "oldest-first" && policy != "newest-first" &&
      policy != "lowest-ordinal") {
    invalid(at.field("primaryElectionPolicy"),
            "unknown policy " + in_quotes(policy) +
                " (expected oldest-first, newest-first or lowest-ordinal; none: no primary)");
  }
  if (!s.primary().empty()) {
    if (policy.empty()) {
      invalid(at.field("primary"), "only a set with a primaryElectionPolicy has a primary");
    }
    check_name(s.primary(), at.field("primary"));
  }
  if (s.has_storage()) validate_storage(*s.mutable_storage(), at.field("storage"));
  if (!s.network().empty()) check_name(s.network(), at.field("network"));
  std::set<std::uint32_t> ports;
  for (int i = 0; i < s.ports_size(); ++i) {
    const std::string f = at.field("ports[" + std::to_string(i) + "]");
    if (s.ports(i) == 0 || s.ports(i) > 65535) {
      invalid(f, "port " + std::to_string(s.ports(i)) + " is not between 1 and 65535");
    }
    if (!ports.insert(s.ports(i)).second) {
      invalid(f, "port " + std::to_string(s.ports(i)) + " is listed twice");
    }
  }
  auto& update = *s.mutable_update_strategy();
  if (update.type().empty()) update.set_type("rolling");
  if (update.type() != "rolling" && update.type() != "recreate") {
    invalid(at.field("updateStrategy.type"), "unknown update strategy " + in_quotes(update.type()) +
                                                 " (expected rolling or recreate)");
  }
  validate_update_strategy(update, at.field("updateStrategy"));
  if (s.has_placement()) validate_placement(*s.mutable_placement(), at.field("placement"));
  if (s.has_microvm()) validate_microvm(*s.mutable_microvm(), at.field("microvm"));
  validate_env(s.env(), at.field("env"));
  if (s.has_readiness()) validate_readiness(s.readiness(), ports, at.field("readiness"));
}

void validate_queue(v1::Queue& queue, const std::string& path) {
  const Paths at = paths_for(path);
  check_name(queue.metadata().name(), at.name);
  auto& s = *queue.mutable_spec();
  // How long a received message stays hidden before another receive may take it (SQS's range).
  // Unset is kept unset: a trigger then hides what it takes for six times its function's
  // timeout, a receive by hand for 30 s (docs/queues.md).
  constexpr std::int64_t k_max_visibility_s = 12 * 60 * 60;
  constexpr std::uint32_t k_max_receives = 1000;
  check_duration(s.visibility_timeout(), at.field("visibilityTimeout"));
  const std::int64_t ms = millis(s.visibility_timeout());
  if (s.has_visibility_timeout() && (ms < 1000 || ms > k_max_visibility_s * 1000)) {
    invalid(at.field("visibilityTimeout"),
            "visibilityTimeout must be between 1s and 12h, got " + std::to_string(ms) + "ms");
  }
  if (s.max_receives() > k_max_receives) {
    invalid(at.field("maxReceives"), "maxReceives must be between 0 (retry without end) and " +
                                         std::to_string(k_max_receives) + ", got " +
                                         std::to_string(s.max_receives()));
  }
  if (!s.dead_letter_queue().empty()) {
    check_name(s.dead_letter_queue(), at.field("deadLetterQueue"));
    if (s.dead_letter_queue() == queue.metadata().name()) {
      invalid(at.field("deadLetterQueue"), "a queue cannot be its own dead-letter queue");
    }
    if (s.max_receives() == 0) {
      invalid(at.field("deadLetterQueue"),
              "a dead-letter queue needs maxReceives (the receives after which a message moves "
              "there)");
    }
  }
}

void validate_trigger(v1::Trigger& trigger, const std::string& path) {
  const Paths at = paths_for(path);
  check_name(trigger.metadata().name(), at.name);
  validate_trigger_spec(*trigger.mutable_spec(), at.spec, nullptr);
}

void validate_object_set(v1::ObjectSet& set) {
  // A Platform's objects are its entries; anything else is a set of standalone objects.
  const bool platform = !set.stack().empty();
  auto entry = [&](const char* kind, int i) {
    return platform ? std::string("spec.") + kind + "[" + std::to_string(i) + "]" : std::string();
  };
  auto name_field = [&](const char* kind, int i) {
    return platform ? entry(kind, i) + ".name"
                    : std::string(kind) + "[" + std::to_string(i) + "].metadata.name";
  };
  auto check_duplicates = [&](const char* kind, auto& objects) {
    std::set<std::string> seen;
    for (int i = 0; i < objects.size(); ++i) {
      const std::string& name = objects.Get(i).metadata().name();
      if (!seen.insert(name).second)
        invalid(name_field(kind, i), "duplicate name " + in_quotes(name));
    }
  };
  for (int i = 0; i < set.functions_size(); ++i) {
    validate_function(*set.mutable_functions(i), entry("functions", i));
  }
  for (int i = 0; i < set.vms_size(); ++i) validate_vm(*set.mutable_vms(i), entry("vms", i));
  for (int i = 0; i < set.triggers_size(); ++i) {
    validate_trigger(*set.mutable_triggers(i), entry("triggers", i));
  }
  for (int i = 0; i < set.storage_pools_size(); ++i) {
    validate_storage_pool(*set.mutable_storage_pools(i), entry("storagePools", i));
  }
  for (int i = 0; i < set.networks_size(); ++i) {
    validate_network(*set.mutable_networks(i), entry("networks", i));
  }
  for (int i = 0; i < set.queues_size(); ++i) {
    validate_queue(*set.mutable_queues(i), entry("queues", i));
  }
  check_duplicates("networks", set.networks());
  check_duplicates("queues", set.queues());
  check_duplicates("functions", set.functions());
  check_duplicates("storagePools", set.storage_pools());
  check_duplicates("vms", set.vms());
  check_duplicates("triggers", set.triggers());
}

}  // namespace blixard
