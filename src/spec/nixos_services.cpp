// NixOS services as guest workloads (see nixos_services.hpp).
#include "spec/nixos_services.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "spec/convert.hpp"

namespace blixard::spec_detail {
namespace {

// A service's settings, read with the option path for errors.
class Options {
 public:
  Options(const YAML::Node& node, std::string path, std::string file)
      : node_(node), path_(std::move(path)), file_(std::move(file)) {
    if (node_ && !node_.IsNull() && !node_.IsMap() && !node_.IsSequence()) {
      fail(file_, {}, path_, path_ + " must be an attribute set or a list");
    }
  }
  const std::string& path() const { return path_; }
  [[noreturn]] void refuse(const std::string& key, const std::string& why) const {
    fail(file_, {}, join_path(path_, key), join_path(path_, key) + ": " + why);
  }
  // Every set option is one of `known` (others are refused, naming them).
  void only(const std::set<std::string>& known, const std::string& what) const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const auto key = kv.first.as<std::string>();
      if (!known.contains(key) && !kv.second.IsNull()) {
        refuse(key, std::string("Blixard cannot honour this option of ")
                        .append(what)
                        .append(" yet (it runs ")
                        .append(what)
                        .append(" from the host's Debian package without a NixOS build)"));
      }
    }
  }
  bool has(const std::string& key) const {
    return node_ && node_.IsMap() && node_[key] && !node_[key].IsNull();
  }
  std::string text(const std::string& key, const std::string& fallback = {}) const {
    if (!has(key)) return fallback;
    const auto v = node_[key];
    if (!v.IsScalar()) refuse(key, "expected a string, got " + describe(v));
    auto s = v.as<std::string>();
    if (s == "<package>" || s == "<unavailable>") {
      refuse(key, "packages come from the host here (Debian's), not from nixpkgs");
    }
    if (s.find_first_of("\n;{}") != std::string::npos) {
      refuse(key, "must not hold a newline, ';' or braces");
    }
    return s;
  }
  bool flag(const std::string& key, bool fallback = false) const {
    if (!has(key)) return fallback;
    const auto v = node_[key];
    if (!v.IsScalar() || (v.Scalar() != "true" && v.Scalar() != "false")) {
      refuse(key, "expected true or false, got " + describe(v));
    }
    return v.Scalar() == "true";
  }
  std::uint32_t port(const std::string& key, std::uint32_t fallback) const {
    if (!has(key)) return fallback;
    const auto v = node_[key];
    try {
      const auto p = v.as<long long>();
      if (p > 0 && p < 65536) return static_cast<std::uint32_t>(p);
    } catch (const YAML::Exception&) {
    }
    refuse(key, "expected a TCP port (1-65535), got " + describe(v));
  }
  Options child(const std::string& key) const {
    return {has(key) ? node_[key] : YAML::Node(), join_path(path_, key), file_};
  }
  std::vector<std::pair<std::string, Options>> children() const {
    std::vector<std::pair<std::string, Options>> out;
    if (!node_ || node_.IsNull()) return out;
    if (node_.IsSequence()) {
      for (std::size_t i = 0; i < node_.size(); ++i) {
        out.emplace_back(std::to_string(i),
                         Options(node_[i], path_ + "[" + std::to_string(i) + "]", file_));
      }
      return out;
    }
    for (const auto& kv : node_) {
      const auto key = kv.first.as<std::string>();
      out.emplace_back(key, Options(kv.second, join_path(path_, "\"" + key + "\""), file_));
    }
    return out;
  }

 private:
  YAML::Node node_;
  std::string path_;
  std::string file_;
};

bool enabled(const YAML::Node& service) {
  return service.IsMap() && service["enable"] && service["enable"].IsScalar() &&
         service["enable"].Scalar() == "true";
}

void add_port(v1::VmSpec& spec, std::uint32_t port) {
  if (std::find(spec.ports().begin(), spec.ports().end(), port) == spec.ports().end()) {
    spec.add_ports(port);
  }
}

// nginx: one server block per virtual host; runs as the guest's unprivileged user, so every path
// it writes is under /tmp and it logs to the console.
void nginx(const Options& o, v1::VmSpec& spec) {
  o.only({"enable", "virtualHosts", "user", "group"}, "services.nginx");
  std::string servers;
  std::map<std::string, std::string> pages;
  for (const auto& [name, host] : o.child("virtualHosts").children()) {
    host.only({"root", "listen", "serverName", "serverAliases", "default", "locations"},
              "an nginx virtual host");
    std::vector<std::uint32_t> ports;
    if (host.has("listen")) {
      // [{ addr = "0.0.0.0"; port = 80; }]: the port is what matters in a guest of its own.
      const auto listen = host.child("listen");
      for (const auto& [i, entry] : listen.children()) ports.push_back(entry.port("port", 80));
    }
    if (ports.empty()) ports.push_back(80);
    std::string server = "  server {\n";
    for (const auto p : ports) {
      server += "    listen " + std::to_string(p) +
                (host.flag("default") ? " default_server" : "") + ";\n";
      add_port(spec, p);
    }
    server += "    server_name " + host.text("serverName", "_") + ";\n";
    const std::string root = host.text("root");
    if (!root.empty()) server += "    root " + root + ";\n";
    auto locations = host.child("locations").children();
    if (locations.empty()) locations.emplace_back("/", host.child("locations"));
    for (const auto& [path, loc] : locations) {
      if (path.empty() || path.find_first_of("\n;{}") != std::string::npos) {
        host.refuse("locations", "a location must not hold a newline, ';' or braces: " + path);
      }
      loc.only({"index", "root", "alias", "return", "proxyPass", "tryFiles"}, "an nginx location");
      server += "    location " + path + " {\n";
      if (loc.has("root")) server += "      root " + loc.text("root") + ";\n";
      if (loc.has("alias")) server += "      alias " + loc.text("alias") + ";\n";
      const std::string index = loc.text("index", "index.html");
      server += "      index " + index + ";\n";
      if (loc.has("tryFiles")) server += "      try_files " + loc.text("tryFiles") + ";\n";
      if (loc.has("return")) server += "      return " + loc.text("return") + ";\n";
      if (loc.has("proxyPass")) server += "      proxy_pass " + loc.text("proxyPass") + ";\n";
      server += "    }\n";
      // A root the guest owns (under /var or /srv) starts empty: like Debian's package, nginx
      // then serves a welcome page rather than 403.
      const std::string served = loc.has("root") ? loc.text("root") : root;
      if (path == "/" && !loc.has("return") && !loc.has("proxyPass") &&
          (served.starts_with("/var/") || served.starts_with("/srv/"))) {
        std::string page =
            "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n"
            "<body><h1>Welcome to nginx!</h1>\n<p>Served by nginx in a Blixard microVM (virtual "
            "host ";
        page.append(name).append("). Put your site in ").append(served);
        page += ".</p></body></html>\n";
        pages[served + "/" + index.substr(0, index.find(' '))] = std::move(page);
      }
    }
    servers += server + "  }\n";
  }
  if (servers.empty()) {
    add_port(spec, 80);
    servers = "  server {\n    listen 80 default_server;\n    root /usr/share/nginx/html;\n  }\n";
  }
  (*spec.mutable_files())["/etc/nginx/nginx.conf"] =
      "# Written by Blixard from services.nginx (" + o.path() +
      ").\n"
      "daemon off;\nworker_processes 1;\npid /tmp/nginx.pid;\nerror_log stderr;\n"
      "events { worker_connections 512; }\n"
      "http {\n  access_log off;\n  default_type application/octet-stream;\n"
      "  types { text/html html htm; text/css css; application/javascript js; "
      "application/json json; image/png png; image/jpeg jpg jpeg; image/svg+xml svg; "
      "text/plain txt; }\n"
      "  client_body_temp_path /tmp/nginx-body;\n  proxy_temp_path /tmp/nginx-proxy;\n"
      "  fastcgi_temp_path /tmp/nginx-fastcgi;\n  uwsgi_temp_path /tmp/nginx-uwsgi;\n"
      "  scgi_temp_path /tmp/nginx-scgi;\n" +
      servers + "}\n";
  for (auto& [path, page] : pages) (*spec.mutable_files())[path] = page;
  for (const char* arg : {"/usr/sbin/nginx", "-e", "stderr", "-c", "/etc/nginx/nginx.conf"}) {
    spec.add_command(arg);
  }
}

// redis: NixOS's services.redis.servers.<name>; one server per guest.
void redis(const Options& o, v1::VmSpec& spec) {
  o.only({"servers", "package", "vmOverCommit"}, "services.redis");
  if (o.has("package")) o.text("package");  // refused: packages come from the host
  std::vector<std::pair<std::string, Options>> on;
  for (auto& [name, server] : o.child("servers").children()) {
    if (server.flag("enable")) on.emplace_back(name, server);
  }
  if (on.size() != 1) {
    o.refuse("servers", on.empty() ? "no server is enabled"
                                   : "a guest runs one redis server; give each its own VM set");
  }
  const auto& [name, server] = on.front();
  server.only({"enable", "port", "bind", "requirePass", "databases", "maxclients", "save"},
              "a redis server");
  const auto port = server.port("port", 6379);
  add_port(spec, port);
  std::string conf = "# Written by Blixard from " + server.path() + ".\nport " +
                     std::to_string(port) + "\nbind " + server.text("bind", "0.0.0.0 ::") +
                     "\nprotected-mode no\ndaemonize no\ndir /tmp\nlogfile \"\"\n";
  if (server.has("requirePass")) conf += "requirepass " + server.text("requirePass") + "\n";
  if (server.has("databases")) conf += "databases " + server.text("databases") + "\n";
  if (server.has("maxclients")) conf += "maxclients " + server.text("maxclients") + "\n";
  conf += "save \"\"\n";  // its data dies with the guest until volumes land
  (*spec.mutable_files())["/etc/redis/" + name + ".conf"] = conf;
  spec.add_command("/usr/bin/redis-server");
  spec.add_command("/etc/redis/" + name + ".conf");
}

}  // namespace

void translate_nixos_services(const YAML::Node& services, v1::VmSpec& spec,
                              const std::string& file) {
  if (!services || !services.IsMap()) return;
  std::vector<std::string> on;
  for (const auto& kv : services) {
    if (enabled(kv.second) ||
        (kv.first.as<std::string>() == "redis" && kv.second.IsMap() && kv.second["servers"])) {
      on.push_back(kv.first.as<std::string>());
    }
  }
  if (on.empty()) return;
  const std::string first = "services." + on.front();
  if (on.size() > 1) {
    fail(file, {}, "services." + on[1],
         "a guest runs one service: " + first + " and services." + on[1] +
             " are both enabled (give each its own VM set)");
  }
  if (spec.command_size() > 0) {
    fail(file, {}, first, "a config gives either a `command` or a service, not both");
  }
  const Options o(services[on.front()], first, file);
  if (on.front() == "nginx") {
    nginx(o, spec);
  } else if (on.front() == "redis") {
    redis(o, spec);
  } else if (on.front() == "postgresql") {
    spec.set_untranslated(first +
                          " is not run in guests yet (stateful VM sets, with volumes and "
                          "failover, will)");
  } else {
    spec.set_untranslated(first +
                          " cannot run without a NixOS build; Blixard translates services.nginx "
                          "and services.redis, or give the VM a `command`");
  }
}

}  // namespace blixard::spec_detail
