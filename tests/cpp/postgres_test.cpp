// Scenario 2's postgres.nix for real: its services.postgresql translated (spec/nixos_services.cpp)
// and run by the sandbox driver as a VM set's primary on a volume (a directory), with Debian's
// PostgreSQL 15; clients connect over TCP as the initialScript's user; a restart on the same
// volume keeps the data and does not run the initialScript again; a standby stays up idle.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "blixard/cluster.hpp"
#include "blixard/spec.hpp"
#include "runtime/driver.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
namespace v1 = blixard::v1;
using blixard::test_support::eventually;
using blixard::test_support::instances_with;
using blixard::test_support::read_proc_file;
using namespace blixard::runtime;
using namespace std::chrono_literals;

namespace {

const fs::path k_specs = fs::path(BLIXARD_TEST_DATA) / "specs";
const fs::path k_postgres_bin = "/usr/lib/postgresql/15/bin";

// One start of a replica: its console lines and its exit.
struct Events {
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::string> lines;
  std::optional<ReplicaExit> exit;

  ReplicaOptions options(const std::string& name, v1::VmSpec spec,
                         std::optional<v1::VolumeAttachment> volume) {
    ReplicaOptions o;
    o.vm = "postgres";
    o.name = name;
    o.slot = name.substr(0, name.find('.'));
    o.spec = std::move(spec);
    o.volume = std::move(volume);
    o.on_log = [this](const std::string&, const std::string& stream, std::string line) {
      std::lock_guard lock(m);
      lines.push_back(stream + ": " + line);
      cv.notify_all();
    };
    o.on_exit = [this](const ReplicaExit& e) {
      std::lock_guard lock(m);
      exit = e;
      cv.notify_all();
    };
    return o;
  }
  bool wait_exit() {
    std::unique_lock lock(m);
    return cv.wait_for(lock, 30s, [&] { return exit.has_value(); });
  }
  bool logged(const std::string& text) {
    std::unique_lock lock(m);
    return cv.wait_for(lock, 15s, [&] { return count_locked(text) > 0; });
  }
  int count(const std::string& text) {
    std::lock_guard lock(m);
    return count_locked(text);
  }
  std::string all() {
    std::lock_guard lock(m);
    std::string out;
    for (const auto& l : lines) out += l + "\n";
    return out;
  }

 private:
  int count_locked(const std::string& text) const {
    return static_cast<int>(std::count_if(lines.begin(), lines.end(), [&](const auto& l) {
      return l.find(text) != std::string::npos;
    }));
  }
};

// Debian's psql over TCP to 127.0.0.1:port as app_user (its password from the initialScript),
// one command; its output (unaligned, tuples only) with stderr.
std::string psql(std::uint32_t port, const std::string& sql,
                 const std::string& host = "127.0.0.1") {
  const std::string cmd = "PGPASSWORD=secure_password PGCONNECT_TIMEOUT=10 " +
                          (k_postgres_bin / "psql").string() + " -X -q -h " + host + " -p " +
                          std::to_string(port) +
                          " -U app_user -d app_db -tA -v ON_ERROR_STOP=1 -c \"" + sql + "\" 2>&1";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "popen failed";
  std::array<char, 4096> buf{};
  for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;)
    out.append(buf.data(), n);
  const int status = ::pclose(p);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return status == 0 ? out : "psql failed (" + std::to_string(status) + "): " + out;
}

class PostgresReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/usr/bin/nix-instantiate", X_OK) != 0 &&
        ::access("/nix/var/nix/profiles/default/bin/nix-instantiate", X_OK) != 0) {
      GTEST_SKIP() << "nix-instantiate not installed (apt install nix-bin)";
    }
    if (::access((k_postgres_bin / "postgres").c_str(), X_OK) != 0) {
      GTEST_SKIP() << "Debian's postgresql-15 is not installed (scripts/bootstrap installs it)";
    }
    token_ = "blixard-pg-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name();
    work_ = fs::temp_directory_path() / token_;
    fs::remove_all(work_);
    fs::create_directories(work_);
    SandboxOptions o;
    o.work_dir = work_;
    o.cgroup_parent = token_;
    driver_ = make_sandbox_driver(o);

    // The seed's file as the controller gets it: loaded, validated (defaults applied).
    v1::Vm vm;
    vm.mutable_metadata()->set_name("postgres");
    *vm.mutable_spec() = blixard::load_vm_config(k_specs / "scenario2/postgres.nix");
    vm.mutable_spec()->mutable_storage()->set_pool("disk");
    vm.mutable_spec()->mutable_storage()->set_size_mib(1024);
    blixard::validate_vm(vm);
    spec_ = vm.spec();
    (*spec_.mutable_env())["TEST_TOKEN"] = token_;

    volume_.set_name("postgres-1");
    volume_.set_pool_type("dir");
    volume_.set_pool_path((work_ / "pool").string());
    volume_.set_size_mib(1024);
    volume_.set_mount_point(spec_.storage().mount_point());
  }

  void TearDown() override {
    if (!driver_) return;
    driver_.reset();
    EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }, 10s)) << "leaked";
    for (const char* ctrl : {"memory", "pids", ""}) {
      const fs::path p = fs::path("/sys/fs/cgroup") / ctrl / token_;
      if (fs::exists(p)) ::rmdir(p.c_str());
    }
    fs::remove_all(work_);
  }

  // The primary: BLIXARD_ROLE=primary, the set's volume.
  std::shared_ptr<Replica> start_primary(Events& events, const std::string& name) {
    auto spec = spec_;
    (*spec.mutable_env())["BLIXARD_ROLE"] = "primary";
    return driver_->start_replica(events.options(name, spec, volume_));
  }

  // The processes of this test's replicas, by their command name.
  std::vector<std::string> process_names() {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const std::string pid = entry.path().filename();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      if (read_proc_file(entry.path() / "environ").find("TEST_TOKEN=" + token_) ==
          std::string::npos) {
        continue;
      }
      auto comm = read_proc_file(entry.path() / "comm");
      while (!comm.empty() && comm.back() == '\n') comm.pop_back();
      out.push_back(comm);
    }
    return out;
  }

  std::string token_;
  fs::path work_;
  std::unique_ptr<Driver> driver_;
  v1::VmSpec spec_;
  v1::VolumeAttachment volume_;
};

TEST_F(PostgresReplicaTest, ThePrimaryServesTheConfigsDatabaseAndKeepsItsDataOnTheVolume) {
  ASSERT_EQ(volume_.mount_point(), "/var/lib/postgresql");
  std::uint32_t port = 0;
  {
    Events events;
    auto replica = start_primary(events, "postgres-1.1");  // returns once 5432 accepts
    ASSERT_TRUE(replica->alive()) << events.all();
    ASSERT_EQ(replica->ports().count(5432), 1U);
    port = replica->ports().at(5432);
    EXPECT_NE(port, 5432U);  // the host port the driver chose, passed as PORT_5432

    // As the initialScript's user, with its password (md5 in the config's pg_hba lines).
    // Ready (it accepts TCP) a moment before it takes queries ("the database system is starting
    // up"): the first query may need a second try.
    EXPECT_TRUE(eventually([&] { return psql(port, "SELECT 1") == "1"; }, 20s)) << events.all();
    EXPECT_EQ(psql(port, "SHOW max_connections"), "200") << events.all();
    EXPECT_EQ(psql(port, "SHOW shared_buffers"), "256MB");
    // shared_preload_libraries itself is for superusers to read; the library's own setting
    // exists once it is loaded.
    EXPECT_EQ(psql(port, "SHOW pg_stat_statements.max"), "5000");
    EXPECT_EQ(psql(port, "SELECT current_user || ' ' || current_database()"), "app_user app_db");
    // PostgreSQL 15 lets only the owner create in schema public; GRANT ALL ON DATABASE gives
    // CREATE on the database: a schema of app_user's own.
    EXPECT_EQ(psql(port,
                   "CREATE SCHEMA app; CREATE TABLE app.t (v text); "
                   "INSERT INTO app.t VALUES ('kept'); SELECT v FROM app.t"),
              "kept");
    EXPECT_EQ(events.count("running services.postgresql.initialScript"), 1) << events.all();
    EXPECT_EQ(events.count("initdb /var/lib/postgresql/15"), 1) << events.all();
    // The data is on the volume (the pool's directory), written by the replica, not root.
    const fs::path version = work_ / "pool" / "postgres-1" / "15" / "PG_VERSION";
    struct stat st {};
    ASSERT_EQ(::stat(version.c_str(), &st), 0);
    if (::geteuid() == 0) {
      EXPECT_NE(st.st_uid, 0U);
    }

    replica->stop(30s);
    ASSERT_TRUE(events.wait_exit());
    EXPECT_TRUE(events.exit->requested);
    EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }, 10s));
  }
  {
    // Started again on the same volume (another host uid: the driver hands the files over).
    Events events;
    auto replica = start_primary(events, "postgres-1.2");
    port = replica->ports().at(5432);
    EXPECT_TRUE(eventually([&] { return psql(port, "SELECT 1") == "1"; }, 20s)) << events.all();
    EXPECT_EQ(psql(port, "SELECT v FROM app.t"), "kept") << events.all();
    EXPECT_EQ(psql(port, "SHOW max_connections"), "200");
    EXPECT_EQ(events.count("initdb"), 0) << events.all();
    EXPECT_EQ(events.count("initialScript"), 0) << events.all();
    EXPECT_EQ(events.count("ERROR"), 0) << events.all();
    replica->stop(30s);
    ASSERT_TRUE(events.wait_exit());
  }
}

TEST_F(PostgresReplicaTest, AStandbyRunsNoPostgresAndStaysUpUntilStopped) {
  // As the controller starts a standby: role replica, the primary's address, no volume, ready
  // once running (no port to check).
  auto spec = spec_;
  (*spec.mutable_env())["BLIXARD_ROLE"] = "replica";
  (*spec.mutable_env())["BLIXARD_PRIMARY_ADDR"] = "10.0.0.5:5432";
  spec.clear_ports();
  Events events;
  auto replica = driver_->start_replica(events.options("postgres-2.1", spec, std::nullopt));
  ASSERT_TRUE(events.logged("standby of the primary at 10.0.0.5:5432")) << events.all();
  // The script exec'd a sleep: that is all the replica runs.
  EXPECT_TRUE(eventually([&] { return process_names() == std::vector<std::string>{"sleep"}; }))
      << events.all();
  EXPECT_TRUE(replica->alive());
  {
    std::lock_guard lock(events.m);
    EXPECT_FALSE(events.exit.has_value());
  }
  EXPECT_FALSE(fs::exists(work_ / "pool"));  // no volume made
  replica->stop(10s);
  ASSERT_TRUE(events.wait_exit());
  EXPECT_TRUE(events.exit->requested);
}

// The scenario as a user runs it: `blixard-agent --server` (the server, its local node on the
// sandbox driver and its load balancer), a storage pool, `vm create postgres --config
// postgres.nix` through the SDK; clients reach PostgreSQL through the balancer's listener for the
// set's port 5432 (VmStatus.endpoints).
TEST_F(PostgresReplicaTest, ClientsReachTheSetThroughTheLoadBalancer) {
  const fs::path agent = fs::path(BLIXARD_BINARY_DIR) / "blixard-agent";
  if (!fs::exists(agent)) GTEST_SKIP() << "no " << agent;
  const fs::path data = work_ / "server";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string d = data.string(), a = agent.string();
    ::execl(a.c_str(), a.c_str(), "--server", "--data-dir", d.c_str(), "--listen", "127.0.0.1:0",
            "--log-level", "warn", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      ::kill(pid, SIGTERM);
      if (!eventually([&] { return ::waitpid(pid, nullptr, WNOHANG) == pid; }, 30s)) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
  } reaper{pid};
  blixard::test_support::ServerState state;
  ASSERT_TRUE(eventually(
      [&] {
        state = blixard::test_support::read_server_state(data);
        return !state.token.empty() && !state.address.empty();
      },
      30s))
      << "the server did not start";
  blixard::ConnectOptions options;
  options.token = state.token;
  auto cluster = blixard::Cluster::connect(state.address, options);
  v1::StoragePoolSpec pool;
  pool.set_type("dir");
  pool.set_path((work_ / "pool").string());
  cluster.create_storage_pool("disk", pool);
  // The seed's file with the CLI's flags (a smaller memory: the node's capacity is the test's).
  cluster.create_vm("postgres", k_specs / "scenario2/postgres.nix",
                    R"({"replicas":1,"memory":"1G","storage":{"pool":"disk","size":"1G"},)"
                    R"("env":{"TEST_TOKEN":")" +
                        token_ + R"("}})");
  std::string address;
  ASSERT_TRUE(eventually(
      [&] {
        const auto st = cluster.vm("postgres").status();
        for (const auto& e : st.endpoints()) {
          if (e.port() == 5432 && st.phase() == "Running") address = e.address();
        }
        return !address.empty();
      },
      60s))
      << cluster.vm("postgres").status().DebugString();
  const auto colon = address.rfind(':');
  const std::string host = address.substr(0, colon);
  const auto port = static_cast<std::uint32_t>(std::stoul(address.substr(colon + 1)));
  EXPECT_TRUE(eventually([&] { return psql(port, "SELECT 1", host) == "1"; }, 20s))
      << psql(port, "SELECT 1", host);
  EXPECT_EQ(psql(port, "SHOW max_connections", host), "200");
  EXPECT_EQ(psql(port, "SHOW shared_buffers", host), "256MB");
  EXPECT_EQ(psql(port,
                 "CREATE SCHEMA app; CREATE TABLE app.t (v text); "
                 "INSERT INTO app.t VALUES ('through the balancer'); SELECT v FROM app.t",
                 host),
            "through the balancer");
  // Its data is on the set's volume, in the pool's directory.
  EXPECT_TRUE(fs::exists(work_ / "pool" / "postgres-1" / "15" / "PG_VERSION"));
  cluster.vm("postgres").remove();
  // (By environment: the server's own command line names this test's directory.)
  EXPECT_TRUE(eventually([&] { return process_names().empty(); }, 30s));
}

}  // namespace
