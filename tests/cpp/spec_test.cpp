// The spec layer through its public interface: manifests, config files (YAML, JSON, Nix), flag
// overrides, units, validation, and the exact field path and position of every error.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "blixard/error.hpp"
#include "blixard/spec.hpp"

namespace {

namespace fs = std::filesystem;
using blixard::errc;
using blixard::Error;
namespace v1 = blixard::v1;

const fs::path k_specs = fs::path(BLIXARD_TEST_DATA) / "specs";

bool nix_available() {
  // The scenario files need the real evaluator; Debian's nix-bin provides it.
  return std::system("nix-instantiate --version > /dev/null 2>&1") == 0;
}

#define REQUIRE_NIX() \
  if (!nix_available()) GTEST_SKIP() << "nix-instantiate not installed (apt install nix-bin)"

// A directory of scratch files, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "blixard-spec-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p;
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs `f`, which must throw invalid_spec, and returns the Status it carried.
v1::Status invalid(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec) << e.what();
    return e.status();
  }
  ADD_FAILURE() << "expected an invalid_spec error";
  return {};
}

std::int64_t ms(const google::protobuf::Duration& d) {
  return d.seconds() * 1000 + d.nanos() / 1'000'000;
}

template <class T>
const T& named(const google::protobuf::RepeatedPtrField<T>& list, const std::string& name) {
  for (const auto& item : list) {
    if (item.metadata().name() == name) return item;
  }
  throw std::runtime_error("no object named " + name);
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- units ----

TEST(Units, SizesInMebibytes) {
  const std::pair<const char*, std::uint64_t> cases[] = {
      {"128M", 128},    {"4G", 4096},     {"512Mi", 512}, {"1T", 1048576}, {"512", 512},
      {"100G", 102400}, {"1.5G", 1536},   {"2048K", 2},   {"64MiB", 64},   {"2gb", 2048},
      {" 256M ", 256},  {"1Ti", 1048576}, {"0", 0},
  };
  for (const auto& [text, mib] : cases) {
    EXPECT_EQ(blixard::parse_size_mib(text, "memory"), mib) << text;
  }
}

TEST(Units, BadSizesNameTheField) {
  for (const char* text : {"-5G", "lots", "", "12X", "G", "1.0000001G", "1000K", "-1"}) {
    const auto st = invalid([&] { blixard::parse_size_mib(text, "memory"); });
    EXPECT_EQ(st.field(), "memory") << text;
  }
  EXPECT_TRUE(
      contains(invalid([] { blixard::parse_size_mib("-5G", "size"); }).message(), "negative"));
  EXPECT_TRUE(contains(invalid([] { blixard::parse_size_mib("lots", "size"); }).message(),
                       "is not a size"));
}

TEST(Units, Durations) {
  using std::chrono::milliseconds;
  const std::pair<const char*, std::int64_t> cases[] = {
      {"30s", 30000},   {"2m", 120000},   {"1h", 3600000},    {"250ms", 250},
      {"1m30s", 90000}, {"45", 45000},    {"1.5s", 1500},     {"1h30m", 5400000},
      {"0s", 0},        {"1d", 86400000}, {"2m0.5s", 120500},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(blixard::parse_duration(text, "timeout"), milliseconds(expected)) << text;
  }
  for (const char* text : {"-1s", "soon", "", "30x", "1m30", "s", "0.1ms"}) {
    EXPECT_EQ(invalid([&] { blixard::parse_duration(text, "timeout"); }).field(), "timeout")
        << text;
  }
}

TEST(Names, Dns1123Labels) {
  for (const char* good : {"a", "echo", "image-processor", "x1", "0abc"}) {
    EXPECT_TRUE(blixard::is_valid_name(good)) << good;
  }
  EXPECT_TRUE(blixard::is_valid_name(std::string(63, 'a')));
  for (const char* bad : {"", "my function", "Echo", "-a", "a-", "a_b", "a.b"}) {
    EXPECT_FALSE(blixard::is_valid_name(bad)) << bad;
  }
  EXPECT_FALSE(blixard::is_valid_name(std::string(64, 'a')));
}

// ---- the usage scenarios' Nix files, verbatim ----

TEST(Scenario0, ImageProcessorNixLoadsAndNeedsAHandler) {
  REQUIRE_NIX();
  const fs::path file = k_specs / "scenario0/image-processor.nix";
  v1::FunctionSpec spec = blixard::load_function_config(file);
  EXPECT_EQ(spec.microvm().mem(), 128u);
  EXPECT_EQ(spec.microvm().vcpu(), 1u);
  EXPECT_EQ(spec.microvm().boot_time(), "50ms");
  EXPECT_EQ(spec.handler(), "");  // a Nix function cannot run as a handler
  EXPECT_EQ(spec.config(), fs::absolute(file).lexically_normal().string());

  blixard::merge_function_overrides(
      spec, R"({"memory":"128M","timeout":"30s","concurrentExecutions":100})");
  EXPECT_EQ(spec.memory_mib(), 128u);
  EXPECT_EQ(ms(spec.timeout()), 30000);
  EXPECT_EQ(spec.concurrent_executions(), 100u);

  v1::Function fn;
  fn.mutable_metadata()->set_name("image-processor");
  *fn.mutable_spec() = spec;
  const auto st = invalid([&] { blixard::validate_function(fn); });
  EXPECT_EQ(st.field(), "spec.handler");
  EXPECT_TRUE(contains(st.message(), "--handler")) << st.message();
  EXPECT_TRUE(contains(st.message(), "handler = \"module:function\"")) << st.message();

  blixard::merge_function_overrides(*fn.mutable_spec(), R"({"handler":"image:process"})");
  blixard::validate_function(fn);
  EXPECT_EQ(fn.spec().runtime(), "python");
  EXPECT_EQ(fn.spec().scaling().max_instances(), 100u);
  EXPECT_EQ(fn.spec().scaling().target_concurrency(), 1u);
  EXPECT_EQ(ms(fn.spec().scaling().keep_warm()), 60000);
}

TEST(Scenario1, WebappNixLoads) {
  REQUIRE_NIX();
  v1::VmSpec spec = blixard::load_vm_config(k_specs / "scenario1/webapp.nix");
  EXPECT_EQ(spec.microvm().mem(), 512u);
  EXPECT_EQ(spec.microvm().vcpu(), 2u);
  EXPECT_EQ(spec.microvm().balloon_mem(), 256u);
  ASSERT_EQ(spec.microvm().shares_size(), 1);
  EXPECT_EQ(spec.microvm().shares(0).source(), "/nix/store");
  EXPECT_EQ(spec.microvm().shares(0).mount_point(), "/nix/.ro-store");
  EXPECT_EQ(spec.microvm().shares(0).tag(), "ro-store");
  EXPECT_EQ(spec.microvm().shares(0).proto(), "virtiofs");
  ASSERT_EQ(spec.ports_size(), 1);
  EXPECT_EQ(spec.ports(0), 80u);
  // services.nginx, translated to the host's nginx with a config of its own and a first page.
  EXPECT_EQ(
      std::vector<std::string>(spec.command().begin(), spec.command().end()),
      (std::vector<std::string>{"/usr/sbin/nginx", "-e", "stderr", "-c", "/etc/nginx/nginx.conf"}));
  ASSERT_EQ(spec.files().count("/etc/nginx/nginx.conf"), 1u);
  const auto& conf = spec.files().at("/etc/nginx/nginx.conf");
  EXPECT_TRUE(contains(conf, "listen 80;")) << conf;
  EXPECT_TRUE(contains(conf, "root /var/www;")) << conf;
  EXPECT_TRUE(contains(conf, "index index.html;")) << conf;
  EXPECT_TRUE(contains(conf, "daemon off;")) << conf;
  EXPECT_EQ(spec.files().count("/var/www/index.html"), 1u);
  EXPECT_TRUE(spec.untranslated().empty()) << spec.untranslated();

  blixard::merge_vm_overrides(
      spec, R"({"replicas":3,"storage":{"pool":"ssd-pool"},"network":"web-vlan"})");
  v1::Vm vm;
  vm.mutable_metadata()->set_name("webapp");
  *vm.mutable_spec() = spec;
  blixard::validate_vm(vm);  // a pool without a size: 1 GiB volumes at /data
  EXPECT_EQ(vm.spec().storage().size_mib(), 1024u);
  EXPECT_EQ(vm.spec().storage().mount_point(), "/data");
  blixard::merge_vm_overrides(*vm.mutable_spec(), R"({"storage":{"size":"10G"}})");
  blixard::validate_vm(vm);
  EXPECT_EQ(vm.spec().storage().pool(), "ssd-pool");
  EXPECT_EQ(vm.spec().storage().size_mib(), 10240u);
  EXPECT_EQ(vm.spec().memory_mib(), 512u);  // from microvm.mem
  EXPECT_EQ(vm.spec().vcpu(), 2u);
  EXPECT_EQ(vm.spec().replicas(), 3u);
  EXPECT_EQ(vm.spec().type(), "long-lived");
  EXPECT_EQ(vm.spec().network(), "web-vlan");
  // No primary unless asked for: every replica of the webapp serves, each with its own volume.
  EXPECT_EQ(vm.spec().primary_election_policy(), "");
}

TEST(Scenario2, PostgresNixLoads) {
  REQUIRE_NIX();
  v1::VmSpec spec = blixard::load_vm_config(k_specs / "scenario2/postgres.nix");
  EXPECT_EQ(spec.microvm().mem(), 2048u);
  EXPECT_EQ(spec.microvm().vcpu(), 4u);
  ASSERT_EQ(spec.ports_size(), 1);
  EXPECT_EQ(spec.ports(0), 5432u);
  // services.postgresql, run by a shell script of its options (no files: a sandbox runs it too):
  // sh -c SCRIPT postgresql DATA PORT INITIAL HBA, then the settings as postgres -c arguments.
  EXPECT_TRUE(spec.untranslated().empty()) << spec.untranslated();
  EXPECT_TRUE(spec.files().empty());
  ASSERT_EQ(spec.command_size(), 14) << spec.DebugString();
  EXPECT_EQ(spec.command(0), "/bin/sh");
  EXPECT_EQ(spec.command(1), "-c");
  EXPECT_TRUE(contains(spec.command(2), "/usr/lib/postgresql/15/bin")) << spec.command(2);
  EXPECT_TRUE(contains(spec.command(2), "BLIXARD_ROLE")) << spec.command(2);
  EXPECT_EQ(spec.command(3), "postgresql");
  EXPECT_EQ(spec.command(4), "/var/lib/postgresql/15");
  EXPECT_EQ(spec.command(5), "5432");
  // pkgs.writeText kept its text.
  EXPECT_EQ(spec.command(6),
            "CREATE DATABASE app_db;\n"
            "CREATE USER app_user WITH PASSWORD 'secure_password';\n"
            "GRANT ALL PRIVILEGES ON DATABASE app_db TO app_user;\n");
  EXPECT_TRUE(contains(spec.command(7), "local all postgres trust\n")) << spec.command(7);
  EXPECT_TRUE(contains(spec.command(7), "local all all trust\nhost all all 0.0.0.0/0 md5\n"))
      << spec.command(7);
  const std::vector<std::string> settings(spec.command().begin() + 8, spec.command().end());
  EXPECT_EQ(settings,
            (std::vector<std::string>{"-c", "max_connections=200", "-c", "shared_buffers=256MB",
                                      "-c", "shared_preload_libraries=pg_stat_statements"}));
  blixard::merge_vm_overrides(spec, R"({"replicas":3,"storage":{"class":"replicated",)"
                                    R"("size":"100G"},"primaryElectionPolicy":"oldest-first"})");
  v1::Vm vm;
  vm.mutable_metadata()->set_name("postgres");
  *vm.mutable_spec() = spec;
  blixard::validate_vm(vm);
  EXPECT_EQ(vm.spec().storage().size_mib(), 102400u);
  EXPECT_EQ(vm.spec().storage().class_(), "replicated");
  // Its fileSystems."/var/lib/postgresql" is where the volume goes.
  EXPECT_EQ(vm.spec().storage().mount_point(), "/var/lib/postgresql");
  EXPECT_EQ(vm.spec().memory_mib(), 2048u);
  EXPECT_EQ(vm.spec().vcpu(), 4u);
}

// ---- scenario 3: the Platform manifest, verbatim ----

TEST(Scenario3, PlatformManifestLoads) {
  REQUIRE_NIX();
  const fs::path manifest = k_specs / "platform/platform.yaml";
  const fs::path dir = fs::absolute(manifest).lexically_normal().parent_path();
  const v1::ObjectSet set = blixard::load_manifest(manifest);
  EXPECT_EQ(set.stack(), "ecommerce-platform");
  ASSERT_EQ(set.vms_size(), 2);
  ASSERT_EQ(set.functions_size(), 3);
  EXPECT_EQ(set.triggers_size(), 0);

  const v1::Vm& pg = named(set.vms(), "postgres-db");
  EXPECT_EQ(pg.metadata().stack(), "ecommerce-platform");
  EXPECT_EQ(pg.metadata().source(), (dir / "platform.yaml").string());
  EXPECT_EQ(pg.spec().type(), "long-lived");
  EXPECT_EQ(pg.spec().config(), (dir / "configs/postgres.nix").string());
  EXPECT_EQ(pg.spec().replicas(), 3u);
  EXPECT_EQ(pg.spec().storage().class_(), "ssd");
  EXPECT_EQ(pg.spec().storage().size_mib(), 102400u);
  EXPECT_EQ(pg.spec().placement().node_selector().at("storage"), "fast");
  EXPECT_EQ(pg.spec().memory_mib(), 2048u);  // from the config's microvm.mem
  EXPECT_EQ(pg.spec().microvm().shares_size(), 1);
  ASSERT_EQ(pg.spec().ports_size(), 1);
  EXPECT_EQ(pg.spec().ports(0), 5432u);

  const v1::Vm& redis = named(set.vms(), "redis-cache");
  EXPECT_EQ(redis.spec().replicas(), 2u);
  EXPECT_EQ(redis.spec().memory_mib(), 4096u);  // the manifest overrides the config
  EXPECT_EQ(redis.spec().microvm().mem(), 1024u);
  EXPECT_EQ(redis.spec().placement().spread_across(), "zone");

  const v1::Function& orders = named(set.functions(), "order-processor");
  EXPECT_EQ(orders.metadata().stack(), "ecommerce-platform");
  EXPECT_EQ(orders.spec().runtime(), "python");
  EXPECT_EQ(orders.spec().handler(), "orders:handle");
  EXPECT_EQ(orders.spec().code(), (dir / "functions/src").string());
  EXPECT_EQ(orders.spec().config(), (dir / "functions/order-processor.nix").string());
  EXPECT_EQ(orders.spec().env().at("ORDERS_TABLE"), "orders");
  EXPECT_EQ(orders.spec().memory_mib(), 256u);
  EXPECT_EQ(ms(orders.spec().timeout()), 60000);
  ASSERT_EQ(orders.spec().triggers_size(), 1);
  EXPECT_EQ(orders.spec().triggers(0).type(), "queue");
  EXPECT_EQ(orders.spec().triggers(0).source(), "orders-queue");
  EXPECT_EQ(orders.spec().triggers(0).function(), "order-processor");
  EXPECT_EQ(orders.spec().scaling().min_instances(), 0u);
  EXPECT_EQ(orders.spec().scaling().max_instances(), 100u);
  EXPECT_EQ(orders.spec().scaling().target_concurrency(), 1u);

  const v1::Function& resizer = named(set.functions(), "image-resizer");
  EXPECT_EQ(resizer.spec().memory_mib(), 512u);
  EXPECT_EQ(ms(resizer.spec().timeout()), 30000);
  EXPECT_EQ(resizer.spec().triggers(0).type(), "http");
  EXPECT_EQ(resizer.spec().triggers(0).path(), "/api/resize");
  EXPECT_EQ(resizer.spec().placement().node_affinity().preferred().at("gpu"), "available");
  EXPECT_EQ(resizer.spec().scaling().max_instances(), 20u);  // from the config
  EXPECT_EQ(ms(resizer.spec().scaling().keep_warm()), 120000);

  const v1::Function& pdf = named(set.functions(), "pdf-generator");
  EXPECT_EQ(pdf.spec().runtime(), "exec");
  ASSERT_EQ(pdf.spec().command_size(), 2);
  EXPECT_EQ(pdf.spec().command(0), "./pdf-generator");
  EXPECT_EQ(pdf.spec().memory_mib(), 1024u);
  EXPECT_EQ(ms(pdf.spec().timeout()), 120000);
  EXPECT_EQ(pdf.spec().triggers(0).type(), "event");
  EXPECT_EQ(pdf.spec().triggers(0).source(), "invoice-created");

  // The server validates again what it is sent: nothing changes the second time.
  v1::ObjectSet again = set;
  blixard::validate_object_set(again);
  EXPECT_EQ(again.SerializeAsString(), set.SerializeAsString());
}

// ---- single-document kinds, several documents, JSON ----

TEST(Manifest, StandaloneDocumentsInOneFile) {
  const fs::path manifest = k_specs / "docs/objects.yaml";
  const fs::path dir = fs::absolute(manifest).lexically_normal().parent_path();
  const v1::ObjectSet set = blixard::load_manifest(manifest);
  EXPECT_EQ(set.stack(), "");
  ASSERT_EQ(set.functions_size(), 1);
  ASSERT_EQ(set.vms_size(), 1);
  ASSERT_EQ(set.triggers_size(), 1);

  const v1::Function& echo = set.functions(0);
  EXPECT_EQ(echo.metadata().name(), "echo");
  EXPECT_EQ(echo.metadata().labels().at("team"), "core");
  EXPECT_EQ(echo.metadata().source(), (dir / "objects.yaml").string());
  EXPECT_EQ(echo.spec().config(), (dir / "echo.yaml").string());
  EXPECT_EQ(echo.spec().handler(), "echo:handler");
  EXPECT_EQ(echo.spec().code(), (dir / "echo").string());
  EXPECT_EQ(echo.spec().memory_mib(), 96u);              // the manifest over the config's 64M
  EXPECT_EQ(ms(echo.spec().timeout()), 10000);           // from the config
  EXPECT_EQ(echo.spec().env().at("GREETING"), "hello");  // maps merge key by key
  EXPECT_EQ(echo.spec().env().at("LEVEL"), "4");

  const v1::Vm& cache = set.vms(0);
  EXPECT_EQ(cache.spec().microvm().mem(), 1024u);
  EXPECT_EQ(cache.spec().memory_mib(), 1024u);
  EXPECT_EQ(cache.spec().vcpu(), 2u);
  EXPECT_EQ(cache.spec().replicas(), 2u);
  EXPECT_EQ(cache.spec().placement().spread_across(), "zone");
  EXPECT_EQ(cache.spec().command_size(), 3);

  const v1::Trigger& http = set.triggers(0);
  EXPECT_EQ(http.spec().function(), "echo");
  EXPECT_EQ(http.spec().path(), "/echo");
  EXPECT_EQ(http.spec().methods(0), "GET");
}

TEST(Manifest, JsonListOfObjects) {
  const fs::path manifest = k_specs / "docs/objects.json";
  const fs::path dir = fs::absolute(manifest).lexically_normal().parent_path();
  const v1::ObjectSet set = blixard::load_manifest(manifest);
  ASSERT_EQ(set.functions_size(), 1);
  ASSERT_EQ(set.triggers_size(), 1);
  const auto& spec = set.functions(0).spec();
  EXPECT_EQ(spec.runtime(), "exec");
  EXPECT_EQ(spec.command(1), "--json");
  EXPECT_EQ(spec.code(), (dir / "echo").string());
  EXPECT_EQ(spec.memory_mib(), 1024u);
  EXPECT_EQ(ms(spec.timeout()), 20000);
  EXPECT_EQ(spec.concurrent_executions(), 8u);
  EXPECT_EQ(spec.scaling().min_instances(), 1u);
  EXPECT_EQ(spec.scaling().max_instances(), 8u);  // defaults to concurrentExecutions
  EXPECT_EQ(ms(spec.scaling().keep_warm()), 90000);
  EXPECT_EQ(set.triggers(0).spec().source(), "echo-requested");
}

TEST(Manifest, JsonSingleObject) {
  TempDir tmp;
  const auto file = tmp.write("vm.json", R"({"apiVersion": "blixard.dev/v1", "kind": "Vm",
  "metadata": {"name": "db"}, "spec": {"memory": "2G", "ports": [5432], "replicas": 0}})");
  const auto set = blixard::load_manifest(file);
  ASSERT_EQ(set.vms_size(), 1);
  EXPECT_EQ(set.vms(0).spec().memory_mib(), 2048u);
  EXPECT_EQ(set.vms(0).spec().vcpu(), 1u);
}

TEST(Config, YamlAndJsonFunctionConfigs) {
  const fs::path dir = fs::absolute(k_specs / "docs").lexically_normal();
  const auto yaml = blixard::load_function_config(k_specs / "docs/echo.yaml");
  EXPECT_EQ(yaml.runtime(), "python");
  EXPECT_EQ(yaml.memory_mib(), 64u);
  EXPECT_EQ(yaml.code(), (dir / "echo").string());
  EXPECT_EQ(yaml.env().at("LEVEL"), "3");  // scalar map values read as strings
  const auto json = blixard::load_function_config(k_specs / "docs/echo.json");
  EXPECT_EQ(json.command_size(), 2);
  EXPECT_EQ(ms(json.timeout()), 5000);  // a bare number is seconds
}

TEST(Config, VmConfigInYaml) {
  TempDir tmp;
  const auto file = tmp.write("vm.yml", "microvm:\n  mem: 256\n  vcpu: 2\nports: [80, 443]\n");
  auto spec = blixard::load_vm_config(file);
  EXPECT_EQ(spec.microvm().mem(), 256u);
  EXPECT_EQ(spec.ports_size(), 2);
  blixard::merge_vm_overrides(spec, R"({"memory": "1G", "ports": [8080]})");
  EXPECT_EQ(spec.memory_mib(), 1024u);
  ASSERT_EQ(spec.ports_size(), 1);  // sequences are replaced, not appended
  EXPECT_EQ(spec.ports(0), 8080u);
}

TEST(Config, UnsupportedExtensionAndMissingFile) {
  TempDir tmp;
  const auto toml = tmp.write("fn.toml", "x = 1\n");
  EXPECT_TRUE(contains(invalid([&] { blixard::load_function_config(toml); }).message(),
                       "unsupported config file type"));
  const auto st = invalid([&] { blixard::load_function_config(tmp.path() / "nope.yaml"); });
  EXPECT_TRUE(contains(st.message(), "not found")) << st.message();
}

// ---- bad input: the field path and the line of every error ----

TEST(Errors, WrongType) {
  TempDir tmp;
  const auto file = tmp.write("p.yaml", R"(apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  vms:
    - name: db
      replicas: three
)");
  const auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.vms[0].replicas");
  EXPECT_EQ(st.message(), "expected an integer, got a string");
  EXPECT_EQ(st.file(), file.string());
  EXPECT_EQ(st.line(), 8u);
  EXPECT_EQ(st.column(), 17u);
}

// Found by tests/fuzz's manifest target: yaml-cpp's LoadAll never returned on a lone ",".
TEST(Errors, MalformedYamlFailsAndPositionsStayTheFilesAcrossDocuments) {
  TempDir tmp;
  const auto comma = tmp.write("comma.yaml", ",");
  EXPECT_EQ(invalid([&] { blixard::load_manifest(comma); }).file(), comma.string());
  const auto file = tmp.write("docs.yaml", R"(apiVersion: blixard.dev/v1
kind: Vm
metadata: {name: db}
spec: {replicas: 1}
--- # the second document
apiVersion: blixard.dev/v1
kind: Vm
metadata: {name: cache}
spec:
  replicas: three
...
)");
  const auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.replicas");
  EXPECT_EQ(st.line(), 10u);
  EXPECT_EQ(st.column(), 13u);
}

TEST(Errors, WrongTypeOfASequenceAndAMapping) {
  TempDir tmp;
  const auto file = tmp.write("f.yaml", R"(apiVersion: blixard.dev/v1
kind: Function
metadata: { name: f }
spec:
  command: ./run.sh
)");
  auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.command");
  EXPECT_EQ(st.message(), "expected a sequence, got a string");
  EXPECT_EQ(st.line(), 5u);

  const auto quoted = tmp.write("g.yaml", R"(apiVersion: blixard.dev/v1
kind: Function
metadata: { name: f }
spec:
  handler: m:f
  concurrentExecutions: "100"
)");
  st = invalid([&] { blixard::load_manifest(quoted); });
  EXPECT_EQ(st.field(), "spec.concurrentExecutions");
  EXPECT_EQ(st.message(), "expected an integer, got a string");
  EXPECT_EQ(st.line(), 6u);
}

const char* k_functions_manifest = R"(apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  functions:
    - name: a
      handler: a:main
    - name: b
      handler: b:main
      memory: %s
)";

std::string functions_manifest(const std::string& memory) {
  std::string text = k_functions_manifest;
  text.replace(text.find("%s"), 2, memory);
  return text;
}

TEST(Errors, NegativeSize) {
  TempDir tmp;
  for (const char* memory : {"-5", "-5G"}) {
    const auto file = tmp.write("p.yaml", functions_manifest(memory));
    const auto st = invalid([&] { blixard::load_manifest(file); });
    EXPECT_EQ(st.field(), "spec.functions[1].memory") << memory;
    EXPECT_TRUE(contains(st.message(), "negative")) << st.message();
    EXPECT_EQ(st.line(), 11u);
    EXPECT_EQ(st.column(), 15u);
  }
}

TEST(Errors, UnparseableAndZeroSize) {
  TempDir tmp;
  auto file = tmp.write("p.yaml", functions_manifest("lots"));
  auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[1].memory");
  EXPECT_TRUE(contains(st.message(), "\"lots\" is not a size")) << st.message();
  EXPECT_EQ(st.line(), 11u);

  file = tmp.write("p.yaml", functions_manifest("0"));
  st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[1].memory");
  EXPECT_EQ(st.message(), "size must be greater than zero");

  file = tmp.write("p.yaml", functions_manifest("100G"));  // parses, but over the limit
  st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[1].memory");
  EXPECT_TRUE(contains(st.message(), "between 1 and 65536")) << st.message();
  EXPECT_EQ(st.line(), 11u);
}

TEST(Errors, UnknownField) {
  TempDir tmp;
  auto file = tmp.write("p.yaml", R"(apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  functions:
    - name: a
      handler: a:main
    - name: b
      handler: b:main
      scaling:
        min_instances: 1
)");
  auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[1].scaling.min_instances");
  EXPECT_EQ(st.message(), "unknown field (did you mean \"minInstances\"?)");
  EXPECT_EQ(st.line(), 12u);
  EXPECT_EQ(st.column(), 9u);

  file = tmp.write("vm.yaml", R"(apiVersion: blixard.dev/v1
kind: Vm
metadata:
  name: db
spec:
  replica: 3
)");
  st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.replica");
  EXPECT_EQ(st.line(), 6u);

  file = tmp.write("top.yaml",
                   "apiVersion: blixard.dev/v1\nkind: Vm\nmetadata: {name: x}\nstatus: {}\n");
  st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "status");
  EXPECT_EQ(st.line(), 4u);
}

TEST(Errors, DuplicateName) {
  TempDir tmp;
  const auto file = tmp.write("p.yaml", R"(apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  functions:
    - name: x
      handler: a:main
    - name: y
      handler: b:main
    - name: x
      handler: c:main
)");
  const auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[2].name");
  EXPECT_EQ(st.message(), "duplicate name \"x\"");
  EXPECT_EQ(st.line(), 11u);
  EXPECT_EQ(st.column(), 13u);
}

TEST(Errors, DuplicateNameInAnObjectSet) {
  v1::ObjectSet set;
  for (int i = 0; i < 3; ++i) {
    auto* fn = set.add_functions();
    fn->mutable_metadata()->set_name(i == 1 ? "y" : "x");
    fn->mutable_spec()->set_handler("m:f");
  }
  set.set_stack("shop");
  EXPECT_EQ(invalid([&] { blixard::validate_object_set(set); }).field(), "spec.functions[2].name");
  set.set_stack("");
  EXPECT_EQ(invalid([&] { blixard::validate_object_set(set); }).field(),
            "functions[2].metadata.name");
}

TEST(Errors, NameWithSpaces) {
  TempDir tmp;
  auto file = tmp.write("p.yaml", R"(apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  functions:
    - name: my function
      handler: a:main
)");
  auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[0].name");
  EXPECT_TRUE(contains(st.message(), "invalid name \"my function\"")) << st.message();
  EXPECT_EQ(st.line(), 7u);
  EXPECT_EQ(st.column(), 13u);

  file = tmp.write("f.yaml", R"(apiVersion: blixard.dev/v1
kind: Function
metadata:
  name: my function
spec:
  handler: a:main
)");
  st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "metadata.name");
  EXPECT_EQ(st.line(), 4u);
}

TEST(Errors, YamlThatDoesNotParse) {
  TempDir tmp;
  const auto file = tmp.write("bad.yaml", R"(apiVersion: blixard.dev/v1
kind: Function
metadata:
  name: [unclosed
spec: {}
)");
  const auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.file(), file.string());
  EXPECT_EQ(st.field(), "");
  EXPECT_GE(st.line(), 4u);
  EXPECT_GT(st.column(), 0u);
  EXPECT_FALSE(st.message().empty());
}

TEST(Errors, NixFileThatDoesNotEvaluate) {
  REQUIRE_NIX();
  TempDir tmp;
  const auto file = tmp.write("bad.nix", "{ pkgs, ... }: {\n  microvm = { mem = foo; };\n}\n");
  const auto st = invalid([&] { blixard::load_vm_config(file); });
  EXPECT_EQ(st.file(), file.string());
  EXPECT_EQ(st.line(), 2u);
  EXPECT_EQ(st.column(), 21u);
  EXPECT_TRUE(contains(st.message(), "undefined variable 'foo'")) << st.message();
  EXPECT_TRUE(contains(st.message(), file.string() + ":2:21")) << st.message();

  // Using pkgs is an error that says why.
  const auto uses_pkgs = tmp.write("pkgs.nix", "{ pkgs, ... }: { memory = pkgs.foo; }\n");
  EXPECT_TRUE(contains(invalid([&] { blixard::load_function_config(uses_pkgs); }).message(),
                       "pkgs is not available when Blixard reads a config"));
}

TEST(NixServices, RedisAndNginxTranslateAndWhatCannotBeHonouredIsNamed) {
  REQUIRE_NIX();
  TempDir tmp;
  const auto redis = blixard::load_vm_config(
      tmp.write("redis.nix",
                "{ pkgs, ... }: { services.redis.servers.cache = { enable = true; port = 6380; "
                "}; }\n"));
  EXPECT_EQ(redis.command(0), "/usr/bin/redis-server");
  ASSERT_EQ(redis.ports_size(), 1);
  EXPECT_EQ(redis.ports(0), 6380u);
  EXPECT_TRUE(contains(redis.files().at("/etc/redis/cache.conf"), "port 6380")) << "";

  const auto page = blixard::load_vm_config(
      tmp.write("page.nix",
                "{ services.nginx = { enable = true; virtualHosts.site = { listen = [ { addr = "
                "\"0.0.0.0\"; port = 8080; } ]; locations.\"/\".return = \"200 'v1'\"; }; "
                "}; }\n"));
  EXPECT_EQ(page.ports(0), 8080u);
  EXPECT_TRUE(contains(page.files().at("/etc/nginx/nginx.conf"), "return 200 'v1';"));
  EXPECT_EQ(page.files().size(), 1u);  // a page of its own: no welcome page

  const auto tls = tmp.write("tls.nix",
                             "{ services.nginx = { enable = true; virtualHosts.x.forceSSL = true; "
                             "}; }\n");
  const auto st = invalid([&] { blixard::load_vm_config(tls); });
  EXPECT_EQ(st.field(), "services.nginx.virtualHosts.\"x\".forceSSL") << st.message();

  const auto package = tmp.write(
      "pkg.nix", "{ pkgs, ... }: { services.nginx = { enable = true; package = pkgs.nginx; }; }\n");
  EXPECT_EQ(invalid([&] { blixard::load_vm_config(package); }).field(), "services.nginx.package");

  const auto two = tmp.write("two.nix",
                             "{ services.nginx.enable = true; services.redis.servers.a.enable = "
                             "true; }\n");
  EXPECT_TRUE(contains(invalid([&] { blixard::load_vm_config(two); }).message(), "one service"));

  const auto other =
      blixard::load_vm_config(tmp.write("other.nix", "{ services.openssh.enable = true; }\n"));
  EXPECT_TRUE(contains(other.untranslated(), "services.openssh")) << other.untranslated();

  const auto both =
      tmp.write("both.nix", "{ command = [ \"/usr/bin/true\" ]; services.nginx.enable = true; }\n");
  EXPECT_TRUE(contains(invalid([&] { blixard::load_vm_config(both); }).message(), "not both"));
}

TEST(NixServices, PostgresqlOptionsAreCheckedAndWhatCannotBeHonouredIsNamed) {
  REQUIRE_NIX();
  TempDir tmp;
  auto pg = [&](const std::string& name, const std::string& options) {
    return tmp.write(
        name, "{ pkgs, ... }: { services.postgresql = { enable = true; " + options + " }; }\n");
  };
  // settings.port is the declared port, and the first (readiness checks the first); the
  // firewall's 5432 stays declared. pkgs.postgresql_15 and writeTextFile work as well.
  const auto moved = blixard::load_vm_config(
      tmp.write("port.nix",
                "{ pkgs, ... }: { services.postgresql = { enable = true; package = "
                "pkgs.postgresql_15; settings = { port = 6543; log_min_duration_statement = 250; "
                "\"pg_stat_statements.max\" = 1000; ssl = false; }; initialScript = "
                "pkgs.writeTextFile { name = \"i.sql\"; text = \"SELECT 1;\"; }; }; "
                "networking.firewall.allowedTCPPorts = [ 5432 ]; }\n"));
  ASSERT_EQ(moved.ports_size(), 2);
  EXPECT_EQ(moved.ports(0), 6543u);
  EXPECT_EQ(moved.ports(1), 5432u);
  EXPECT_EQ(moved.command(5), "6543");
  EXPECT_EQ(moved.command(6), "SELECT 1;");
  EXPECT_EQ(std::vector<std::string>(moved.command().begin() + 8, moved.command().end()),
            (std::vector<std::string>{"-c", "log_min_duration_statement=250", "-c",
                                      "pg_stat_statements.max=1000", "-c", "ssl=false"}));
  // Defaults: the data under /var/lib/postgresql/15, no initialScript, port 5432.
  const auto plain = blixard::load_vm_config(pg("plain.nix", ""));
  EXPECT_EQ(plain.command(4), "/var/lib/postgresql/15");
  EXPECT_EQ(plain.command(6), "");
  ASSERT_EQ(plain.ports_size(), 1);
  EXPECT_EQ(plain.ports(0), 5432u);

  const auto field = [&](const std::string& name, const std::string& options) {
    const auto file = pg(name, options);
    return invalid([&] { blixard::load_vm_config(file); });
  };
  auto st = field("unknown.nix", "ensureDatabases = [ \"a\" ];");
  EXPECT_EQ(st.field(), "services.postgresql.ensureDatabases") << st.message();
  st = field("v16.nix", "package = pkgs.postgresql_16;");
  EXPECT_EQ(st.field(), "services.postgresql.package");
  EXPECT_TRUE(contains(st.message(), "PostgreSQL 16")) << st.message();
  st = field("other.nix", "package = pkgs.mysql80;");
  EXPECT_EQ(st.field(), "services.postgresql.package");
  st = field("inject.nix", "settings.shared_buffers = \"1MB'\\nlisten_addresses = 'x\";");
  EXPECT_EQ(st.field(), "services.postgresql.settings.shared_buffers") << st.message();
  EXPECT_TRUE(contains(st.message(), "quotes")) << st.message();
  st = field("name.nix", "settings.\"a b\" = 1;");
  EXPECT_EQ(st.field(), "services.postgresql.settings.\"a b\"") << st.message();
  st = field("own.nix", "settings.listen_addresses = \"localhost\";");
  EXPECT_EQ(st.field(), "services.postgresql.settings.listen_addresses") << st.message();
  st = field("script.nix", "initialScript = pkgs.writeText \"i.sql\" \"${pkgs.hello}\";");
  EXPECT_EQ(st.field(), "services.postgresql.initialScript") << st.message();
  st = field("tcp.nix", "enableTCPIP = false;");
  EXPECT_EQ(st.field(), "services.postgresql.enableTCPIP") << st.message();
  // Another package of pkgs used anywhere still says pkgs is not there.
  st = field("nginx.nix", "package = pkgs.nginx;");
  EXPECT_EQ(st.field(), "services.postgresql.package") << st.message();
}

TEST(Errors, NixValueOfTheWrongType) {
  REQUIRE_NIX();
  TempDir tmp;
  const auto file = tmp.write("vm.nix", "{ microvm = { mem = \"lots\"; }; }\n");
  const auto st = invalid([&] { blixard::load_vm_config(file); });
  EXPECT_EQ(st.file(), file.string());
  EXPECT_EQ(st.field(), "microvm.mem");
}

TEST(Errors, NixNotInstalled) {
  TempDir tmp;
  const auto file = tmp.write("vm.nix", "{ microvm.mem = 256; }\n");
  blixard::SpecOptions options;
  options.nix_instantiate = (tmp.path() / "no-such-nix-instantiate").string();
  const auto st = invalid([&] { blixard::load_vm_config(file, options); });
  EXPECT_TRUE(contains(st.message(), "was not found")) << st.message();
  EXPECT_TRUE(contains(st.message(), "nix-bin")) << st.message();
}

TEST(Errors, MissingConfigFile) {
  TempDir tmp;
  const auto file = tmp.write("p.yaml", R"(apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  functions:
    - name: a
      config: ./functions/missing.nix
)");
  const auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[0].config");
  EXPECT_EQ(st.line(), 8u);
  EXPECT_EQ(st.column(), 15u);
  EXPECT_TRUE(contains(st.message(), (tmp.path() / "functions/missing.nix").string()))
      << st.message();
}

TEST(Errors, ErrorsInsideAConfigNameTheConfigFile) {
  TempDir tmp;
  const auto config = tmp.write("fn.yaml", "handler: m:f\ntimeout: soon\n");
  const auto file = tmp.write("p.yaml", R"(apiVersion: blixard.dev/v1
kind: Function
metadata: { name: f }
spec:
  config: fn.yaml
)");
  const auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.file(), config.string());
  EXPECT_EQ(st.field(), "timeout");
  EXPECT_EQ(st.line(), 2u);
}

TEST(Errors, UnknownKindAndApiVersion) {
  TempDir tmp;
  auto file =
      tmp.write("k.yaml", "apiVersion: blixard.dev/v1\nkind: Deployment\nmetadata: {name: x}\n");
  auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "kind");
  EXPECT_EQ(st.line(), 2u);
  file = tmp.write("a.yaml", "apiVersion: apps/v1\nkind: Vm\nmetadata: {name: x}\n");
  st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "apiVersion");
  EXPECT_EQ(st.line(), 1u);
}

TEST(Errors, UnsignedRange) {
  TempDir tmp;
  const char* tmpl =
      "apiVersion: blixard.dev/v1\nkind: Vm\nmetadata: {name: x}\nspec:\n  vcpu: %s\n";
  for (const char* value : {"-1", "4294967296", "1.5", "true"}) {
    std::string text = tmpl;
    text.replace(text.find("%s"), 2, value);
    const auto st = invalid([&] { blixard::load_manifest(tmp.write("v.yaml", text)); });
    EXPECT_EQ(st.field(), "spec.vcpu") << value;
    EXPECT_EQ(st.line(), 5u) << value;
  }
}

TEST(Errors, ValidationErrorsPointAtTheirLine) {
  TempDir tmp;
  const auto file = tmp.write("p.yaml", R"(apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  functions:
    - name: a
      handler: a:main
      triggers:
        - type: http
          path: api/x
)");
  auto st = invalid([&] { blixard::load_manifest(file); });
  EXPECT_EQ(st.field(), "spec.functions[0].triggers[0].path");
  EXPECT_EQ(st.line(), 11u);

  const auto timeout = tmp.write("t.yaml", R"(apiVersion: blixard.dev/v1
kind: Function
metadata: { name: slow }
spec:
  handler: a:main
  timeout: 20m
  scaling: { minInstances: 5, maxInstances: 2 }
)");
  st = invalid([&] { blixard::load_manifest(timeout); });
  EXPECT_EQ(st.field(), "spec.timeout");
  EXPECT_TRUE(contains(st.message(), "at most 15m")) << st.message();
  EXPECT_EQ(st.line(), 6u);

  const auto scaling = tmp.write("s.yaml", R"(apiVersion: blixard.dev/v1
kind: Function
metadata: { name: slow }
spec:
  handler: a:main
  scaling: { minInstances: 5, maxInstances: 2 }
)");
  st = invalid([&] { blixard::load_manifest(scaling); });
  EXPECT_EQ(st.field(), "spec.scaling.minInstances");
  EXPECT_EQ(st.line(), 6u);
  EXPECT_EQ(st.column(), 28u);

  const auto queue = tmp.write("q.yaml", R"(apiVersion: blixard.dev/v1
kind: Trigger
metadata: { name: q }
spec:
  type: queue
  function: worker
)");
  st = invalid([&] { blixard::load_manifest(queue); });
  EXPECT_EQ(st.field(), "spec.source");
  EXPECT_EQ(st.line(), 5u);  // nothing names a source: the closest position is the spec mapping
}

TEST(Overrides, ErrorsNameTheFieldAsWritten) {
  v1::FunctionSpec spec;
  auto st = invalid([&] { blixard::merge_function_overrides(spec, R"({"memory":"lots"})"); });
  EXPECT_EQ(st.field(), "memory");
  EXPECT_EQ(st.line(), 0u);
  st = invalid([&] { blixard::merge_function_overrides(spec, R"({"memroy":"1G"})"); });
  EXPECT_EQ(st.field(), "memroy");
  v1::VmSpec vm;
  st = invalid([&] { blixard::merge_vm_overrides(vm, R"({"replicas":-1})"); });
  EXPECT_EQ(st.field(), "replicas");
  st = invalid([&] { blixard::merge_function_overrides(spec, R"({"timeout": )"); });
  EXPECT_FALSE(st.message().empty());
  blixard::merge_function_overrides(spec, "");  // nothing to merge
  blixard::merge_function_overrides(spec, R"({"scaling": {"keepWarm": "5m"}, "code": "/srv/fn"})");
  EXPECT_EQ(ms(spec.scaling().keep_warm()), 300000);
  EXPECT_EQ(spec.code(), "/srv/fn");
}

TEST(Validation, FunctionDefaultsAndRules) {
  v1::Function fn;
  fn.mutable_metadata()->set_name("echo");
  fn.mutable_spec()->add_command("/bin/cat");
  blixard::validate_function(fn);
  EXPECT_EQ(fn.spec().runtime(), "exec");
  EXPECT_EQ(fn.spec().memory_mib(), 128u);
  EXPECT_EQ(ms(fn.spec().timeout()), 30000);
  EXPECT_EQ(fn.spec().concurrent_executions(), 100u);

  v1::Function bad = fn;
  bad.mutable_spec()->set_runtime("python");
  bad.mutable_spec()->set_handler("not-a-handler");
  EXPECT_EQ(invalid([&] { blixard::validate_function(bad, "spec.functions[3]"); }).field(),
            "spec.functions[3].handler");

  bad = fn;
  bad.mutable_spec()->mutable_timeout()->set_seconds(0);
  EXPECT_EQ(invalid([&] { blixard::validate_function(bad); }).field(), "spec.timeout");

  bad = fn;
  auto* t = bad.mutable_spec()->add_triggers();
  t->set_type("cron");
  EXPECT_EQ(invalid([&] { blixard::validate_function(bad); }).field(), "spec.triggers[0].type");
}

TEST(Validation, HttpTriggerPathsMustBeReachable) {
  v1::Trigger trigger;
  trigger.mutable_metadata()->set_name("t");
  trigger.mutable_spec()->set_type("http");
  trigger.mutable_spec()->set_function("echo");
  for (const char* path :
       {"/v1/functions", "/metrics", "/healthz", "/v1", "/ui", "/ui/x", "/a?b=1", "api"}) {
    v1::Trigger bad = trigger;
    bad.mutable_spec()->set_path(path);
    EXPECT_EQ(invalid([&] { blixard::validate_trigger(bad); }).field(), "spec.path") << path;
  }
  for (const char* path : {"/api/process-image", "/v1x", "/metrics-ui", "/uix"}) {
    v1::Trigger good = trigger;
    good.mutable_spec()->set_path(path);
    EXPECT_NO_THROW(blixard::validate_trigger(good)) << path;
  }
}

TEST(Validation, VmRules) {
  v1::Vm vm;
  vm.mutable_metadata()->set_name("db");
  vm.mutable_spec()->set_primary_election_policy("random");
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.primaryElectionPolicy");
  vm.mutable_spec()->set_primary_election_policy("lowest-ordinal");
  // A switchover names a replica, and only a set with a primary has one.
  vm.mutable_spec()->set_primary("db 2");
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.primary");
  vm.mutable_spec()->clear_primary_election_policy();
  vm.mutable_spec()->set_primary("db-2");
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.primary");
  vm.mutable_spec()->clear_primary();
  vm.mutable_spec()->set_primary_election_policy("newest-first");
  vm.mutable_spec()->set_replicas(1001);
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.replicas");
  vm.mutable_spec()->set_replicas(5);
  vm.mutable_spec()->set_type("serverless");
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm, "spec.vms[1]"); }).field(), "spec.vms[1].type");
  vm.mutable_spec()->clear_type();
  blixard::validate_vm(vm);
  EXPECT_EQ(vm.spec().memory_mib(), 512u);
  EXPECT_EQ(vm.spec().vcpu(), 1u);

  v1::Trigger trigger;
  trigger.mutable_metadata()->set_name("t");
  trigger.mutable_spec()->set_type("http");
  trigger.mutable_spec()->set_path("/x");
  EXPECT_EQ(invalid([&] { blixard::validate_trigger(trigger); }).field(), "spec.function");
}

// Issue 11: a zero or out-of-range value is an error naming its field, or means what Lambda
// means; "unset" and "0" are told apart.
TEST(Validation, ZeroMeansWhatItSays) {
  v1::Function fn;
  fn.mutable_metadata()->set_name("echo");
  fn.mutable_spec()->add_command("/bin/cat");

  // Reserved concurrency 0: kept (every call is throttled), never replaced by 100.
  v1::Function closed = fn;
  closed.mutable_spec()->set_concurrent_executions(0);
  blixard::validate_function(closed);
  EXPECT_TRUE(closed.spec().has_concurrent_executions());
  EXPECT_EQ(closed.spec().concurrent_executions(), 0u);
  blixard::validate_function(closed);  // idempotent
  EXPECT_EQ(closed.spec().concurrent_executions(), 0u);

  v1::Function bad = fn;
  bad.mutable_spec()->mutable_scaling()->set_max_instances(0);
  EXPECT_EQ(invalid([&] { blixard::validate_function(bad); }).field(), "spec.scaling.maxInstances");
  bad = fn;
  bad.mutable_spec()->set_memory_mib(0);
  EXPECT_EQ(invalid([&] { blixard::validate_function(bad); }).field(), "spec.memory");

  // The same through flags and manifests.
  v1::FunctionSpec spec;
  blixard::merge_function_overrides(spec,
                                    R"({"concurrentExecutions": 0, "command": ["/bin/cat"]})");
  v1::Function from_flags;
  from_flags.mutable_metadata()->set_name("f");
  *from_flags.mutable_spec() = spec;
  blixard::validate_function(from_flags);
  EXPECT_EQ(from_flags.spec().concurrent_executions(), 0u);
  spec.Clear();
  blixard::merge_function_overrides(spec,
                                    R"({"scaling": {"maxInstances": 0}, "command": ["/bin/cat"]})");
  *from_flags.mutable_spec() = spec;
  EXPECT_EQ(invalid([&] { blixard::validate_function(from_flags); }).field(),
            "spec.scaling.maxInstances");
  spec.Clear();
  EXPECT_EQ(invalid([&] { blixard::merge_function_overrides(spec, R"({"memory": 0})"); }).field(),
            "memory");
}

TEST(Validation, CodeMustBeAnExistingDirectory) {
  TempDir dir;
  v1::Function fn;
  fn.mutable_metadata()->set_name("echo");
  fn.mutable_spec()->set_handler("echo:handler");
  fn.mutable_spec()->set_code((dir.path() / "missing").string());
  auto st = invalid([&] { blixard::validate_function(fn); });
  EXPECT_EQ(st.field(), "spec.code");
  EXPECT_TRUE(contains(st.message(), (dir.path() / "missing").string())) << st.message();
  fn.mutable_spec()->set_code(dir.write("file.py", "x = 1\n").string());
  st = invalid([&] { blixard::validate_function(fn); });
  EXPECT_EQ(st.field(), "spec.code");
  EXPECT_TRUE(contains(st.message(), "directory")) << st.message();
  fn.mutable_spec()->set_code(dir.path().string());
  EXPECT_NO_THROW(blixard::validate_function(fn));
}

TEST(Validation, VolumesMountWhereAWorkloadMayWrite) {
  v1::Vm vm;
  vm.mutable_metadata()->set_name("db");
  auto& storage = *vm.mutable_spec()->mutable_storage();
  storage.set_pool("ssd-pool");
  blixard::validate_vm(vm);
  EXPECT_EQ(vm.spec().storage().mount_point(), "/data");
  for (const char* bad :
       {"data", "/", "/usr/lib/x", "/etc", "/proc/x", "/data/../etc", "/data/", "/a b", "/tmp/x"}) {
    vm.mutable_spec()->mutable_storage()->set_mount_point(bad);
    const auto st = invalid([&] { blixard::validate_vm(vm); });
    EXPECT_EQ(st.field(), "spec.storage.mountPoint") << bad;
  }
  vm.mutable_spec()->mutable_storage()->set_mount_point("/var/lib/postgresql");
  blixard::validate_vm(vm);
  vm.mutable_spec()->mutable_storage()->set_pool("Bad_Pool");
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.storage.pool");
}

TEST(Validation, StoragePools) {
  v1::StoragePool pool;
  pool.mutable_metadata()->set_name("ssd-pool");
  pool.mutable_spec()->set_path("/srv/ssd");
  blixard::validate_storage_pool(pool);
  EXPECT_EQ(pool.spec().type(), "dir");
  EXPECT_EQ(pool.spec().class_(), "local");
  pool.mutable_spec()->set_type("shared-dir");
  pool.mutable_spec()->clear_class_();
  blixard::validate_storage_pool(pool);
  EXPECT_EQ(pool.spec().class_(), "replicated");
  pool.mutable_spec()->set_type("ceph");
  EXPECT_EQ(invalid([&] { blixard::validate_storage_pool(pool); }).field(), "spec.type");
  pool.mutable_spec()->set_type("dir");
  for (const char* bad : {"", "srv", "/", "/etc", "/usr/local/x", "/srv/../etc", "/proc"}) {
    pool.mutable_spec()->set_path(bad);
    EXPECT_EQ(invalid([&] { blixard::validate_storage_pool(pool); }).field(), "spec.path") << bad;
  }
  pool.mutable_spec()->set_path("/srv/ssd");
  pool.mutable_spec()->set_class_("Fast!");
  EXPECT_EQ(invalid([&] { blixard::validate_storage_pool(pool); }).field(), "spec.class");
}

TEST(Validation, VmSizesHaveBounds) {
  v1::Vm vm;
  vm.mutable_metadata()->set_name("db");
  v1::VmSpec spec;
  blixard::merge_vm_overrides(spec, R"({"memory": "99999999G"})");
  *vm.mutable_spec() = spec;
  auto st = invalid([&] { blixard::validate_vm(vm); });
  EXPECT_EQ(st.field(), "spec.memory");
  EXPECT_TRUE(contains(st.message(), "1T")) << st.message();
  vm.mutable_spec()->set_memory_mib(0);
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.memory");
  vm.mutable_spec()->set_memory_mib(1 << 20);  // 1 TiB is the largest
  EXPECT_NO_THROW(blixard::validate_vm(vm));
  vm.mutable_spec()->mutable_storage()->set_size_mib(std::uint64_t{1} << 40);
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.storage.pool");
  vm.mutable_spec()->mutable_storage()->set_pool("ssd-pool");
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.storage.size");
  vm.mutable_spec()->mutable_storage()->set_size_mib(100 << 10);
  vm.mutable_spec()->mutable_microvm()->set_mem(std::uint64_t{1} << 30);
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.microvm.mem");
  vm.mutable_spec()->mutable_microvm()->set_mem(512);
  vm.mutable_spec()->mutable_microvm()->set_balloon_mem(std::uint64_t{1} << 30);
  EXPECT_EQ(invalid([&] { blixard::validate_vm(vm); }).field(), "spec.microvm.balloonMem");
}

// Nomad's update block: read from a config as written, each timing bounded, and nested as the
// controller uses them (a new replica has healthyDeadline to be healthy for minHealthyTime;
// progressDeadline, 0 for none, leaves room for one healthyDeadline).
TEST(Validation, RolloutTimingsAreReadBoundedAndNested) {
  TempDir tmp;
  const auto file = tmp.write("vm.yaml",
                              "command: [/bin/true]\n"
                              "updateStrategy:\n"
                              "  minHealthyTime: 2s\n"
                              "  healthyDeadline: 30s\n"
                              "  progressDeadline: 5m\n"
                              "  autoRevert: true\n");
  v1::Vm vm;
  vm.mutable_metadata()->set_name("web");
  *vm.mutable_spec() = blixard::load_vm_config(file);
  blixard::validate_vm(vm);
  const auto& u = vm.spec().update_strategy();
  EXPECT_EQ(ms(u.min_healthy_time()), 2000);
  EXPECT_EQ(ms(u.healthy_deadline()), 30'000);
  EXPECT_EQ(ms(u.progress_deadline()), 300'000);
  EXPECT_TRUE(u.auto_revert());
  // Unset: the defaults (1s, 5m, 10m), written nowhere; 0 turns the progress deadline off.
  v1::Vm plain;
  plain.mutable_metadata()->set_name("web");
  blixard::validate_vm(plain);
  EXPECT_FALSE(plain.spec().update_strategy().has_healthy_deadline());
  blixard::merge_vm_overrides(*plain.mutable_spec(),
                              R"({"updateStrategy": {"progressDeadline": 0}})");
  EXPECT_NO_THROW(blixard::validate_vm(plain));

  auto with = [&](const std::function<void(v1::UpdateStrategy&)>& change) {
    v1::Vm bad = vm;
    change(*bad.mutable_spec()->mutable_update_strategy());
    return invalid([&] { blixard::validate_vm(bad); });
  };
  auto st = with([](auto& u) { u.mutable_healthy_deadline()->set_seconds(-5); });
  EXPECT_EQ(st.field(), "spec.updateStrategy.healthyDeadline");
  EXPECT_TRUE(contains(st.message(), "must not be negative")) << st.message();
  st = with([](auto& u) { u.mutable_min_healthy_time()->set_nanos(-1); });
  EXPECT_EQ(st.field(), "spec.updateStrategy.minHealthyTime");
  st = with([](auto& u) { u.mutable_progress_deadline()->set_seconds(2 * 24 * 3600); });
  EXPECT_EQ(st.field(), "spec.updateStrategy.progressDeadline");
  EXPECT_TRUE(contains(st.message(), "at most 24h")) << st.message();
  st = with([](auto& u) { u.mutable_healthy_deadline()->set_seconds(2); });
  EXPECT_EQ(st.field(), "spec.updateStrategy.healthyDeadline");
  EXPECT_TRUE(contains(st.message(), "healthyDeadline (2s) must exceed minHealthyTime (2s)"))
      << st.message();
  st = with([](auto& u) { u.mutable_progress_deadline()->set_seconds(20); });
  EXPECT_EQ(st.field(), "spec.updateStrategy.progressDeadline");
  EXPECT_TRUE(contains(st.message(), "must exceed healthyDeadline (30s)")) << st.message();
  // Against the defaults when the spec gives none, saying so.
  st = with([](auto& u) {
    u.clear_min_healthy_time();
    u.mutable_healthy_deadline()->set_seconds(0);
    u.mutable_healthy_deadline()->set_nanos(500'000'000);
  });
  EXPECT_TRUE(contains(st.message(),
                       "healthyDeadline (500ms) must exceed minHealthyTime (1s, "
                       "the default)"))
      << st.message();
  st = with([](auto& u) {
    u.clear_healthy_deadline();
    u.mutable_progress_deadline()->set_seconds(60);
  });
  EXPECT_TRUE(contains(st.message(), "(1m) must exceed healthyDeadline (5m, the default)"))
      << st.message();
  // A Platform entry's path.
  v1::Vm entry = vm;
  entry.mutable_spec()->mutable_update_strategy()->mutable_healthy_deadline()->set_seconds(7200);
  EXPECT_EQ(invalid([&] { blixard::validate_vm(entry, "spec.vms[0]"); }).field(),
            "spec.vms[0].updateStrategy.healthyDeadline");
}

}  // namespace
