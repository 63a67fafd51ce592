// NixOS services as guest workloads (see nixos_services.hpp).
#include "spec/nixos_services.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <regex>
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
    if (s.starts_with("<package") || s == "<unavailable>") {
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
  const YAML::Node& node() const { return node_; }
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

// The script a postgresql replica runs (sh -c SCRIPT postgresql DATA PORT INITIAL HBA ARGS...):
// the same under both drivers, with nothing but its arguments and environment (a sandbox replica
// gets no `files`). A standby (BLIXARD_ROLE=replica) idles until the controller restarts it as
// the primary with the volume; the primary initialises the data directory when it is empty
// (initdb, then initialScript exactly once: a marker in the data directory says it is still to
// run), then execs postgres with the settings as -c arguments, listening on PORT_<port> (the
// sandbox's host port) or the declared port.
constexpr const char* k_postgres_script = R"sh(set -eu
bin=/usr/lib/postgresql/15/bin
data=$1 port=$2 initial=$3 hba=$4
shift 4
if [ "${BLIXARD_ROLE:-primary}" = replica ]; then
  echo "blixard: PostgreSQL standby${BLIXARD_PRIMARY_ADDR:+ of the primary at $BLIXARD_PRIMARY_ADDR}: idle until it is made the primary"
  exec sleep infinity
fi
if [ ! -x "$bin/postgres" ]; then
  echo "blixard: $bin/postgres is missing: services.postgresql runs Debian's PostgreSQL 15 (install postgresql-15 on the node)" >&2
  exit 1
fi
case $port in *[!0-9]*|'') echo "blixard: bad port $port" >&2; exit 1 ;; esac
eval "port=\${PORT_$port:-$port}"
if [ -n "${BLIXARD_VOLUME:-}" ]; then
  case "$data/" in
    "${BLIXARD_VOLUME%/}"/*) ;;
    *) echo "blixard: dataDir $data is not on the volume (at $BLIXARD_VOLUME): the data goes to ${BLIXARD_VOLUME%/}/postgresql/15"
       data=${BLIXARD_VOLUME%/}/postgresql/15 ;;
  esac
fi
if ! mkdir -p "$data" 2>/dev/null; then
  echo "blixard: cannot make $data (no volume there): the data goes to /tmp/postgresql/15 and ends with the replica"
  data=/tmp/postgresql/15
  mkdir -p "$data"
fi
run=$(mktemp -d /tmp/postgresql.XXXXXX)
printf '%s\n' "$hba" > "$run/pg_hba.conf"
own="-c hba_file=$run/pg_hba.conf -c unix_socket_directories=$run -c dynamic_shared_memory_type=sysv"
if [ ! -s "$data/PG_VERSION" ]; then
  echo "blixard: initdb $data"
  "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C -A trust >/dev/null
  : > "$data/blixard-initial-script"
fi
if [ -e "$data/blixard-initial-script" ]; then
  if [ -n "$initial" ]; then
    echo "blixard: running services.postgresql.initialScript"
    "$bin/pg_ctl" -D "$data" -w -s -o "-p $port -c listen_addresses= $own" start
    printf '%s\n' "$initial" | "$bin/psql" -X -q -h "$run" -p "$port" -U postgres -d postgres -f -
    "$bin/pg_ctl" -D "$data" -w -s -m fast stop
  fi
  rm "$data/blixard-initial-script"
fi
echo "blixard: postgres -D $data -p $port"
# shellcheck disable=SC2086
exec "$bin/postgres" -D "$data" -p "$port" -c listen_addresses='*' $own "$@"
)sh";

// Settings Blixard gives postgres itself (where it listens, its sockets and its access file).
const std::set<std::string> k_postgres_own = {
    "listen_addresses", "unix_socket_directories",    "hba_file",
    "data_directory",   "dynamic_shared_memory_type", "config_file",
    "ident_file",       "external_pid_file"};

// A setting's value as postgres -c takes it: a list joined with commas (NixOS's rendering of
// shared_preload_libraries), no newline, quote or backslash (nothing that could reach a config
// file's syntax).
std::string postgres_value(const Options& settings, const std::string& key, const YAML::Node& v) {
  std::string out;
  auto one = [&](const YAML::Node& item) {
    if (!item.IsScalar()) {
      settings.refuse(
          key, "expected a string, number, boolean or list of strings, got " + describe(item));
    }
    std::string s = item.Scalar();
    if (s.starts_with("<package") || s == "<unavailable>") {
      settings.refuse(key, "cannot be read without nixpkgs");
    }
    for (const char c : s) {
      if (c == '\'' || c == '"' || c == '\\' || std::iscntrl(static_cast<unsigned char>(c))) {
        settings.refuse(key, "must not hold quotes, a backslash or control characters");
      }
    }
    return s;
  };
  if (v.IsSequence()) {
    for (const auto& item : v) {
      if (!out.empty()) out += ',';
      out += one(item);
    }
  } else {
    out = one(v);
  }
  return out;
}

// services.postgresql: Debian's PostgreSQL 15 run by k_postgres_script.
void postgresql(const Options& o, v1::VmSpec& spec) {
  o.only({"enable", "package", "dataDir", "settings", "authentication", "initialScript",
          "enableTCPIP"},
         "services.postgresql");
  if (o.has("package")) {
    const auto v = o.node()["package"];
    const std::string p = v.IsScalar() ? v.Scalar() : "";
    static const std::regex postgres_package("<package:postgresql_?(1[0-9]|[0-9])?>");
    std::smatch m;
    if (!std::regex_match(p, m, postgres_package)) {
      o.refuse("package",
               "Blixard runs Debian's PostgreSQL 15 from the host; use pkgs.postgresql15 (or "
               "pkgs.postgresql_15), not another package or an override of one");
    }
    if (m[1].matched && m[1].str() != "15") {
      o.refuse("package", "asks for PostgreSQL " + m[1].str() +
                              ", and Blixard runs Debian's PostgreSQL 15: use pkgs.postgresql15");
    }
  }
  if (!o.flag("enableTCPIP", true)) {
    o.refuse("enableTCPIP", "a replica serves its clients over TCP (through the load balancer)");
  }
  const std::string data = o.text("dataDir", "/var/lib/postgresql/15");
  if (!data.starts_with("/") || data.find_first_of("\"'\\ \t") != std::string::npos) {
    o.refuse("dataDir", "must be an absolute path without spaces or quotes");
  }

  std::uint32_t port = 5432;
  std::vector<std::string> args;
  const auto settings = o.child("settings");
  if (o.has("settings") && !settings.node().IsMap()) {
    o.refuse("settings", "expected an attribute set of PostgreSQL settings");
  }
  static const std::regex setting_name("[a-z_][a-z0-9_]*(\\.[a-z_][a-z0-9_]*)?");
  if (o.has("settings")) {
    for (const auto& kv : settings.node()) {
      const auto name = kv.first.as<std::string>();
      if (kv.second.IsNull()) continue;
      if (!std::regex_match(name, setting_name)) {
        settings.refuse("\"" + name + "\"", "is not a PostgreSQL setting name");
      }
      if (k_postgres_own.contains(name)) {
        settings.refuse(name,
                        "Blixard sets this itself (postgres listens on every address, its "
                        "socket and access file are the replica's own)");
      }
      if (name == "port") {
        port = settings.port("port", 5432);
        continue;
      }
      args.emplace_back("-c");
      args.push_back(name + "=" + postgres_value(settings, name, kv.second));
    }
  }

  // Access: the script's own over the private socket, then the config's lines, then NixOS's
  // defaults for TCP from the replica itself.
  std::string hba =
      "# Written by Blixard from " + o.path() + ".authentication.\nlocal all postgres trust\n";
  if (o.has("authentication")) {
    const auto v = o.node()["authentication"];
    if (!v.IsScalar() || v.Scalar().starts_with("<")) {
      o.refuse("authentication", "expected pg_hba.conf lines, got " + describe(v));
    }
    hba += v.Scalar();
    if (!hba.ends_with("\n")) hba += "\n";
  }
  hba += "host all all 127.0.0.1/32 md5\nhost all all ::1/128 md5\n";

  // initialScript: pkgs.writeText's text (the loader keeps it), or a file next to the config.
  std::string initial;
  if (o.has("initialScript")) {
    const auto v = o.node()["initialScript"];
    if (v.IsMap() && v["text"] && v["text"].IsScalar() && v["text"].Scalar() != "<unavailable>") {
      initial = v["text"].Scalar();
    } else if (v.IsScalar() && v.Scalar().starts_with("/")) {
      initial = read_text_file(v.Scalar(), "services.postgresql.initialScript");
    } else {
      o.refuse("initialScript",
               "expected pkgs.writeText \"init.sql\" ''...'' (with no Nix values in the text) or "
               "a path to an SQL file");
    }
  }

  // The service's port first: the replica is ready once it accepts connections there.
  std::vector<std::uint32_t> ports{port};
  for (const auto p : spec.ports()) {
    if (p != port) ports.push_back(p);
  }
  spec.clear_ports();
  for (const auto p : ports) spec.add_ports(p);

  for (const std::string& arg :
       {std::string("/bin/sh"), std::string("-c"), std::string(k_postgres_script),
        std::string("postgresql"), data, std::to_string(port), initial, hba}) {
    spec.add_command(arg);
  }
  for (auto& a : args) spec.add_command(std::move(a));
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
    postgresql(o, spec);
  } else {
    spec.set_untranslated(first +
                          " cannot run without a NixOS build; Blixard translates services.nginx, "
                          "services.redis and services.postgresql, or give the VM a `command`");
  }
}

}  // namespace blixard::spec_detail
