// Reads the data of a Nix config (the `microvm` set, firewall ports, a function's plain attributes)
// by running `nix-instantiate --eval --strict --json`: no nixpkgs, no build, works offline.
#include "spec/nix.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <regex>
#include <vector>

#include "spec/convert.hpp"

extern char** environ;

namespace blixard::spec_detail {
namespace {

constexpr auto k_timeout = std::chrono::seconds(60);

std::string nix_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\\' || c == '"' || c == '$') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string nix_list(std::initializer_list<const char*> names) {
  std::string out = "[";
  for (const char* n : names) out += std::string(" \"") + n + "\"";
  return out + " ]";
}

// The expression: call the module with arguments that throw if used (no nixpkgs here), then pick
// the attributes Blixard understands. Paths become strings so nothing is copied into the store.
// `pkgs` is the exception: the names the file uses as `pkgs.NAME` (found in its text) exist, so
// pkgs.writeText keeps its text ({ blixardWriteText = name; text = ...; }: an initialScript) and
// pkgs.postgresql15 reads as "<package:postgresql15>"; any other NAME throws when used. A file
// that uses pkgs otherwise (`with pkgs;`, `inherit (pkgs)`) gets the throwing pkgs as before.
std::string expression(const std::string& file, NixKind kind) {
  const std::string names = kind == NixKind::function
                                ? nix_list({"runtime", "handler", "command", "code", "memory",
                                            "vcpu", "timeout", "concurrentExecutions", "scaling",
                                            "env", "placement", "triggers", "maxPayloadBytes"})
                                : nix_list({"command", "env"});
  const std::string ports =
      kind == NixKind::vm ? "{ ports = m.networking.firewall.allowedTCPPorts or null; }" : "{ }";
  // A VM's services as plain data (spec/nixos_services.hpp): what cannot be had without nixpkgs
  // (pkgs.*) reads as "<unavailable>", a package as "<package>", a function as null.
  const std::string services = kind == NixKind::vm
                                   ? "  services = data (m.services or { });\n"
                                     "  fileSystems = builtins.attrNames (m.fileSystems or { });\n"
                                   : "";
  return "let\n"
         "  f = import " +
         nix_string(file) +
         ";\n"
         "  src = builtins.readFile " +
         nix_string(file) +
         ";\n"
         "  used = map builtins.head (builtins.filter builtins.isList (builtins.split "
         "\"pkgs\\\\.([A-Za-z_][A-Za-z0-9_'-]*)\" src));\n"
         "  opaque = builtins.length (builtins.split \"with[[:space:]]+pkgs[[:space:]]*;|\\\\([[:"
         "space:]]*pkgs[[:space:]]*\\\\)\" src) > 1;\n"
         "  text = name: text: { blixardWriteText = name; inherit text; };\n"
         "  stub = n: if n == \"writeText\" then text else if n == \"writeTextFile\" then (a: text "
         "(a.name or \"\") a.text) else if builtins.match \"postgresql(_?[0-9]+)?\" n != null then "
         "{ type = \"derivation\"; name = n; blixardPackage = n; } else throw \"pkgs is not "
         "available when Blixard reads a config (it uses pkgs.${n})\";\n"
         "  pkgs = builtins.listToAttrs (map (n: { name = n; value = stub n; }) used);\n"
         "  m = if builtins.isFunction f then f (builtins.mapAttrs (n: _: if n == \"pkgs\" && "
         "!opaque then pkgs else throw \"${n} is not available when Blixard reads a config\") "
         "(builtins.functionArgs f)) else f;\n"
         "  str = x: if builtins.typeOf x == \"path\" then toString x else x;\n"
         "  pick = names: s: builtins.intersectAttrs (builtins.listToAttrs (map (n: { name = n; "
         "value = null; }) names)) s;\n"
         "  mv = m.microvm or null;\n"
         "  share = s: if builtins.isAttrs s then builtins.mapAttrs (_: str) (pick [ \"source\" "
         "\"mountPoint\" \"tag\" \"proto\" ] s) else s;\n"
         "  microvm = if builtins.isAttrs mv then pick [ \"mem\" \"vcpu\" \"balloonMem\" "
         "\"bootTime\" \"hypervisor\" ] mv // (if mv ? shares then { shares = if builtins.isList "
         "mv.shares then map share mv.shares else mv.shares; } else { }) else mv;\n"
         "  data = v: let r = builtins.tryEval v; in if !r.success then \"<unavailable>\" "
         "else if builtins.isFunction r.value then null else if builtins.isAttrs r.value then "
         "(if (r.value.type or null) == \"derivation\" then \"<package${if r.value ? "
         "blixardPackage then \":\" + r.value.blixardPackage else \"\"}>\" else "
         "builtins.mapAttrs (_: data) r.value) else if builtins.isList r.value then map data "
         "r.value else str r.value;\n"
         "  h = m.handler or null;\n"
         "  plain = builtins.mapAttrs (n: v: if n == \"handler\" then (if builtins.isFunction v "
         "then null else v) else if builtins.isList v then map str v else str v) (pick " +
         names +
         " m);\n"
         "in if !(builtins.isAttrs m) then throw \"the config must evaluate to an attribute set "
         "(or a function returning one)\" else {\n"
         "  handlerIsFunction = builtins.isFunction h;\n" +
         services + "  spec = plain // (if m ? microvm then { inherit microvm; } else { }) // " +
         ports +
         ";\n"
         "}\n";
}

struct Output {
  int status = -1;  // exit code, or -1 if killed
  bool timed_out = false;
  std::string out;
  std::string err;
};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Runs argv with stdout and stderr captured; no shell. Throws std::system_error if it cannot
// start (ENOENT when the program is not installed).
Output run(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  std::array<int, 2> out_pipe{};
  std::array<int, 2> err_pipe{};
  if (::pipe2(out_pipe.data(), O_CLOEXEC) != 0)
    throw std::system_error(errno, std::generic_category());
  Fd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(err_pipe.data(), O_CLOEXEC) != 0)
    throw std::system_error(errno, std::generic_category());
  Fd err_r(err_pipe[0]), err_w(err_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_w.get(), 2);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::system_error(rc, std::generic_category());
  out_w.reset();
  err_w.reset();

  Output result;
  const auto deadline = std::chrono::steady_clock::now() + k_timeout;
  std::array<pollfd, 2> fds{{{out_r.get(), POLLIN, 0}, {err_r.get(), POLLIN, 0}}};
  std::array<std::string*, 2> sinks{&result.out, &result.err};
  int open = 2;
  while (open > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[8192];
      const ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        fds[i].fd = -1;  // EOF (or a broken pipe): stop watching it
        --open;
      }
    }
  }
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(wstatus)) result.status = WEXITSTATUS(wstatus);
  return result;
}

std::vector<std::string> environment() {
  std::vector<std::string> env;
  std::string nix_config;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    if (entry.rfind("NIX_CONFIG=", 0) == 0) {
      nix_config = entry.substr(11) + "\n";
    } else {
      env.push_back(std::move(entry));
    }
  }
  // Without this, a root user outside a nix daemon setup gets a "build-users-group" warning.
  env.push_back("NIX_CONFIG=" + nix_config + "build-users-group =");
  return env;
}

std::string clean_message(std::string text) {
  static const std::regex ansi("\x1b\\[[0-9;]*[A-Za-z]");
  text = std::regex_replace(text, ansi, "");
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  if (text.rfind("error: ", 0) == 0) text.erase(0, 7);
  return text;
}

// Nix's "at /abs/file.nix:3:5:" for the file being read.
Position nix_position(const std::string& message, const std::string& file) {
  const std::string needle = "at " + file + ":";
  const auto at = message.find(needle);
  if (at == std::string::npos) return {};
  unsigned line = 0, column = 0;
  if (std::sscanf(message.c_str() + at + needle.size(), "%u:%u", &line, &column) != 2) return {};
  return {line, column};
}

}  // namespace

std::string evaluate_nix_config(const std::string& file, NixKind kind, const SpecOptions& options) {
  const std::vector<std::string> argv{options.nix_instantiate, "--eval", "--strict", "--json", "-E",
                                      expression(file, kind)};
  Output output;
  try {
    output = run(argv, environment());
  } catch (const std::system_error& e) {
    if (e.code().value() == ENOENT) {
      fail(file, {}, "config",
           "cannot read a Nix config: " + options.nix_instantiate +
               " was not found (install Nix; on Debian the nix-bin package provides it)");
    }
    fail(file, {}, "config",
         "cannot run " + options.nix_instantiate + " to read a Nix config: " + e.what());
  }
  if (output.timed_out) {
    fail(file, {}, "config",
         "nix-instantiate did not finish within " + std::to_string(k_timeout.count()) + "s");
  }
  if (output.status != 0) {
    const std::string message = clean_message(output.err);
    fail(file, nix_position(message, file), {},
         message.empty() ? "nix-instantiate failed with status " + std::to_string(output.status)
                         : message);
  }
  return output.out;
}

}  // namespace blixard::spec_detail
