// The libvirt driver: the domain XML it writes is accepted by libvirt's qemu driver, and replicas
// boot as real guests (qemu TCG here, KVM where a probe finds it) that serve their ports through
// host ports, report ready and exit, stop when asked and are killed when not. libvirtd runs as a
// ctest fixture (libvirtd.sh).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pwd.h>
#include <unistd.h>

#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "blixard/error.hpp"
#include "blixard/spec.hpp"
#include "common/health_check.hpp"
#include "net/links.hpp"
#include "runtime/domain_xml.hpp"
#include "runtime/libvirt_driver.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using blixard::errc;
using blixard::Error;
using blixard::test_support::eventually;
using ::testing::HasSubstr;
using ::testing::Not;
namespace rt = blixard::runtime;
namespace v1 = blixard::v1;
using namespace std::chrono_literals;

namespace {

constexpr const char* k_uri = "qemu:///system";

rt::DomainConfig sample_domain(const fs::path& dir) {
  rt::DomainConfig c;
  c.name = "blixard-test-" + std::to_string(::getpid());
  c.memory_mib = 128;
  c.balloon_mib = 64;
  c.kernel = "/boot/vmlinuz";
  c.initrd = "/boot/initrd.img";
  c.cmdline = "console=ttyS0 quiet";
  c.shares.push_back({"usr", "/usr", true});
  c.console_socket = dir / "console.sock";
  c.agent_socket = dir / "agent.sock";
  c.forwards = {{80, 18080}, {443, 18443}};
  return c;
}

TEST(DomainXml, LibvirtsQemuDriverAcceptsIt) {
  const auto xml = rt::domain_xml(sample_domain(fs::temp_directory_path()));
  EXPECT_THAT(xml, HasSubstr("machine='microvm'"));
  EXPECT_THAT(xml, HasSubstr("<domain type='qemu'"));  // TCG unless told kvm
  EXPECT_THAT(xml, HasSubstr("restrict=on,hostfwd=tcp::18080-:80,hostfwd=tcp::18443-:443"));
  EXPECT_THAT(xml, HasSubstr("<readonly/>"));
  EXPECT_THAT(xml, HasSubstr("<qemu:arg value='x-option-roms=off,pit=off,pic=off'/>"));
  virConnectPtr conn = virConnectOpen(k_uri);
  ASSERT_NE(conn, nullptr) << virGetLastErrorMessage();
  virDomainPtr dom = virDomainDefineXML(conn, xml.c_str());
  EXPECT_NE(dom, nullptr) << virGetLastErrorMessage() << "\n" << xml;
  if (dom != nullptr) {
    virDomainUndefine(dom);
    virDomainFree(dom);
  }
  virConnectClose(conn);
}

// libvirt's test driver (no daemon): the domain runs (in its model) and is destroyed by name, as
// the driver does; a driver on it connects and cleans what an earlier one left.
TEST(DomainXml, LibvirtsTestDriverRunsItAndADriverCleansUpLeftovers) {
  auto config = sample_domain(fs::temp_directory_path());
  virConnectPtr conn = virConnectOpen("test:///default");
  ASSERT_NE(conn, nullptr) << virGetLastErrorMessage();
  virDomainPtr dom = virDomainCreateXML(conn, rt::domain_xml(config).c_str(), 0);
  ASSERT_NE(dom, nullptr) << virGetLastErrorMessage();
  int state = 0;
  int reason = 0;
  EXPECT_EQ(virDomainGetState(dom, &state, &reason, 0), 0);
  EXPECT_EQ(state, VIR_DOMAIN_RUNNING);
  EXPECT_EQ(virDomainDestroy(dom), 0);
  virDomainFree(dom);
  EXPECT_EQ(virDomainLookupByName(conn, config.name.c_str()), nullptr) << "a transient domain";
  virConnectClose(conn);

  rt::LibvirtOptions options;
  options.uri = "test:///default";
  options.work_dir =
      fs::temp_directory_path() / ("blixard-libvirt-test-" + std::to_string(::getpid()));
  auto driver = rt::make_libvirt_driver(options);
  EXPECT_EQ(driver->name(), "libvirt");
  try {
    driver->start(rt::InstanceOptions{});
    FAIL() << "the libvirt driver ran a function";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
  }
  driver->shutdown();
  EXPECT_FALSE(fs::exists(options.work_dir / "replicas"));
  fs::remove_all(options.work_dir);
}

// A set's volume is shared by its primary's and its standbys' guests: <shareable/>, which libvirt's
// qemu driver accepts for a raw image (qemu then opens it with share-rw).
TEST(DomainXml, ASharedDiskIsShareable) {
  auto c = sample_domain(fs::temp_directory_path());
  c.disks.push_back(fs::temp_directory_path() / "shared.img");
  EXPECT_THAT(rt::domain_xml(c), Not(HasSubstr("<shareable/>")));
  c.shared_disks = true;
  c.uncached_disks = true;
  const auto xml = rt::domain_xml(c);
  EXPECT_THAT(xml, HasSubstr("<driver name='qemu' type='raw' cache='none'/>"));
  EXPECT_THAT(xml, HasSubstr("<target dev='vda' bus='virtio'/>\n      <shareable/>"));
  virConnectPtr conn = virConnectOpen(k_uri);
  ASSERT_NE(conn, nullptr) << virGetLastErrorMessage();
  virDomainPtr dom = virDomainDefineXML(conn, xml.c_str());
  EXPECT_NE(dom, nullptr) << virGetLastErrorMessage() << "\n" << xml;
  if (dom != nullptr) {
    char* back = virDomainGetXMLDesc(dom, 0);
    ASSERT_NE(back, nullptr);
    EXPECT_THAT(std::string(back), HasSubstr("<shareable/>"));
    ::free(back);  // NOLINT(cppcoreguidelines-no-malloc): libvirt's allocation
    virDomainUndefine(dom);
    virDomainFree(dom);
  }
  virConnectClose(conn);
}

TEST(DomainXml, EscapesWhatItQuotes) {
  auto c = sample_domain("/tmp/it's <here>");
  c.cmdline = "a & b";
  const auto xml = rt::domain_xml(c);
  EXPECT_THAT(xml, HasSubstr("/tmp/it&apos;s &lt;here&gt;/console.sock"));
  EXPECT_THAT(xml, HasSubstr("<cmdline>a &amp; b</cmdline>"));
}

// What a replica reported: its console lines and its exit.
struct Events {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::string> lines;
  std::map<std::string, std::vector<std::string>> by_replica;
  std::optional<rt::ReplicaExit> exit;

  bool saw(const std::string& text) {
    std::lock_guard lock(mutex);
    for (const auto& l : lines) {
      if (l.find(text) != std::string::npos) return true;
    }
    return false;
  }
  std::optional<rt::ReplicaExit> exited() {
    std::lock_guard lock(mutex);
    return exit;
  }
  // The driver's "blixard: ready in ..." line for a replica ("" when none).
  std::string timeline(const std::string& replica) {
    std::lock_guard lock(mutex);
    for (const auto& l : by_replica[replica]) {
      if (l.starts_with("blixard: ready in ")) return l;
    }
    return "";
  }
};

class LibvirtDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("blixard-libvirt-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    rt::LibvirtOptions options;
    options.uri = k_uri;
    options.work_dir = dir_;
    options.snapshots = snapshots();
    driver_ = rt::make_libvirt_driver(options);
  }
  // Save images per shape: none here, so that no template boots beside the guests under test.
  virtual std::size_t snapshots() const { return 0; }
  void TearDown() override {
    driver_->shutdown();
    driver_.reset();
    fs::remove_all(dir_);
  }

  rt::ReplicaOptions replica(const std::string& name, std::vector<std::string> command,
                             std::vector<std::uint32_t> ports = {}) {
    rt::ReplicaOptions o;
    o.vm = "web";
    o.name = name + ".1";
    o.slot = name;
    o.spec.set_memory_mib(128);
    o.spec.set_vcpu(1);
    for (auto& c : command) o.spec.add_command(std::move(c));
    for (auto p : ports) o.spec.add_ports(p);
    o.on_log = [this](const std::string& replica, const std::string&, std::string line) {
      std::lock_guard lock(events_.mutex);
      events_.by_replica[replica].push_back(line);
      events_.lines.push_back(std::move(line));
    };
    o.on_exit = [this](const rt::ReplicaExit& e) {
      std::lock_guard lock(events_.mutex);
      events_.exit = e;
      events_.changed.notify_all();
    };
    return o;
  }

  // A page server on guest port 8080 that says which replica it is and whether it can read the
  // host's secrets.
  std::vector<std::string> page_server() {
    return {"/usr/bin/python3", "-c",
            "import http.server as h, os, signal, sys\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
            "secret = os.path.exists('/etc/shadow') or os.path.exists('/root')\n"
            "body = f\"{os.environ['BLIXARD_REPLICA']} uid={os.getuid()} secrets={secret}\"\n"
            "class P(h.BaseHTTPRequestHandler):\n"
            "  def do_GET(self):\n"
            "    b = body.encode(); self.send_response(200)\n"
            "    self.send_header('Content-Length', str(len(b))); self.end_headers()\n"
            "    self.wfile.write(b)\n"
            "print('serving', os.environ['PORT'], flush=True)\n"
            "h.HTTPServer(('', int(os.environ['PORT'])), P).serve_forever()\n"};
  }

  fs::path dir_;
  std::unique_ptr<rt::Driver> driver_;
  Events events_;
};

rt::Promotion promotion(std::int64_t epoch) {
  rt::Promotion p;
  p.epoch = epoch;
  return p;
}

// The body of GET / on 127.0.0.1:port.
std::string get(std::uint32_t port) {
  const auto reply = blixard::test_support::http_head_only(static_cast<unsigned short>(port),
                                                           "GET / HTTP/1.0\r\n\r\n");
  const auto body = reply.find("\r\n\r\n");
  return body == std::string::npos ? reply : reply.substr(body + 4);
}

TEST_F(LibvirtDriverTest, AGuestServesItsPortThroughAHostPortAsNobodyWithoutTheHostsSecrets) {
  auto r = driver_->start_replica(replica("web-1", page_server(), {8080}));
  ASSERT_TRUE(r->alive());
  const auto ports = r->ports();
  ASSERT_EQ(ports.count(8080), 1U);
  EXPECT_EQ(get(ports.at(8080)), "web-1 uid=65534 secrets=False");
  EXPECT_TRUE(events_.saw("serving 8080")) << "the console reaches on_log";
  // Where the start's time went, in the replica's log.
  EXPECT_TRUE(events_.saw("blixard: ready in ")) << "no timeline";
  EXPECT_TRUE(events_.saw(", libvirt start ")) << "no timeline";
  std::cout << "guest ready in " << r->start_duration().count() / 1000 << " ms\n";
  for (const auto& line : events_.lines) {
    if (line.starts_with("blixard: ")) std::cout << line << "\n";
  }
  r->stop(10s);
  const auto exit = events_.exited();
  ASSERT_TRUE(exit.has_value()) << "the exit is reported before stop() returns";
  EXPECT_TRUE(exit->requested);
  EXPECT_FALSE(r->alive());
}

TEST_F(LibvirtDriverTest, AKilledGuestIsReportedAndAWorkloadThatExitsSaysItsStatus) {
  auto r = driver_->start_replica(replica("k-1", {"/usr/bin/sleep", "600"}));
  r->kill();
  ASSERT_TRUE(eventually([&] { return events_.exited().has_value(); }, 20s));
  EXPECT_TRUE(events_.exited()->requested);

  events_.exit.reset();
  auto ends =
      driver_->start_replica(replica("e-1", {"/usr/bin/sh", "-c", "sleep 1; echo bye; exit 3"}));
  ASSERT_TRUE(eventually([&] { return events_.exited().has_value(); }, 30s));
  EXPECT_EQ(events_.exited()->reason, "exited with status 3");
  EXPECT_FALSE(events_.exited()->requested);
  EXPECT_TRUE(events_.saw("bye"));
}

TEST_F(LibvirtDriverTest, AGuestWhoseWorkloadFailsBeforeReadyFailsItsStart) {
  try {
    driver_->start_replica(replica("f-1", {"/usr/bin/false"}, {8080}));
    FAIL() << "a workload that exits before ready started";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::handler_failed) << e.what();
    EXPECT_THAT(e.what(), HasSubstr("exited with status 1"));
  }
  try {
    driver_->start_replica(replica("n-1", {}));
    FAIL() << "a replica with no command started";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec) << e.what();
  }
  auto small = replica("s-1", {"/usr/bin/true"});
  small.spec.set_memory_mib(64);
  try {
    driver_->start_replica(small);
    FAIL() << "a guest too small to boot started";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec) << e.what();
    EXPECT_THAT(e.what(), HasSubstr("at least 128 MiB"));
  }
}

// A guest's volume: an ext4 image made through libvirt's storage API in the pool's directory,
// its /dev/vda mounted where the spec says and writable by the workload; a second start of the
// replica finds what the first wrote; the driver removes it on request.
TEST_F(LibvirtDriverTest, AGuestKeepsItsVolumeAcrossStartsAndItIsRemovedOnRequest) {
  v1::VolumeAttachment volume;
  volume.set_name("db-1");
  volume.set_pool_type("dir");
  volume.set_pool_path((dir_ / "pool").string());
  volume.set_size_mib(64);
  volume.set_mount_point("/var/lib/db");
  const std::vector<std::string> count = {
      "/usr/bin/sh", "-c",
      "f=$BLIXARD_VOLUME/count; n=$(( $(cat $f 2>/dev/null || echo 0) + 1 )); echo $n >$f; "
      "sync; echo \"count=$n at $BLIXARD_VOLUME\"; exit 0"};
  for (int start = 1; start <= 2; ++start) {
    events_.exit.reset();
    auto o = replica("db-1", count);
    // Each start its own name, as the controller gives them: the first's name is released only
    // after its exit is reported.
    o.name = "db-1." + std::to_string(start);
    o.volume = volume;
    if (start == 2) o.volume->set_format("ext4-image");  // as the server records it
    auto r = driver_->start_replica(o);
    ASSERT_TRUE(eventually([&] { return events_.exited().has_value(); }, 60s));
    EXPECT_EQ(events_.exited()->reason, "exited with status 0");
    EXPECT_TRUE(events_.saw("count=" + std::to_string(start) + " at /var/lib/db"))
        << "start " << start;
  }
  EXPECT_TRUE(fs::exists(dir_ / "pool" / "db-1.img"));
  // A volume made as a directory (for a sandbox replica) is not a disk: refused, naming it.
  auto o = replica("db-2", count);
  o.volume = volume;
  o.volume->set_name("db-2");
  o.volume->set_format("directory");
  try {
    driver_->start_replica(o);
    FAIL() << "a directory volume was attached to a guest";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_spec);
    EXPECT_THAT(e.what(), HasSubstr("volume db-2 was made as a directory"));
  }
  driver_->remove_volume(volume);
  EXPECT_FALSE(fs::exists(dir_ / "pool" / "db-1.img"));
}

// A guest on a VM network: a second interface on the network's bridge (made here, in libvirtd's
// network namespace) with its address; the host reaches the guest's port at that address.
// Debian's psql over TCP to 127.0.0.1:port as the seed's app_user, one command; its output
// (tuples only) or why it failed.
std::string psql(std::uint32_t port, const std::string& sql) {
  const std::string cmd =
      "PGPASSWORD=secure_password PGCONNECT_TIMEOUT=10 "
      "/usr/lib/postgresql/15/bin/psql -X -q -h 127.0.0.1 -p " +
      std::to_string(port) + " -U app_user -d app_db -tA -v ON_ERROR_STOP=1 -c \"" + sql +
      "\" 2>&1";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "popen failed";
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = ::pclose(p);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return status == 0 ? out : "psql failed: " + out;
}

// Scenario 2's postgres.nix in a guest: the translated services.postgresql (the same command a
// sandbox replica runs) as the set's primary on its ext4 volume; a second start keeps the data
// and does not run the initialScript again.
TEST_F(LibvirtDriverTest, TheSeedsPostgresqlRunsInAGuestOnItsVolume) {
  if (::access("/usr/lib/postgresql/15/bin/postgres", X_OK) != 0) {
    GTEST_SKIP() << "Debian's postgresql-15 is not installed (scripts/bootstrap installs it)";
  }
  if (::access("/usr/bin/nix-instantiate", X_OK) != 0) GTEST_SKIP() << "no nix-instantiate";
  v1::Vm vm;
  vm.mutable_metadata()->set_name("postgres");
  *vm.mutable_spec() =
      blixard::load_vm_config(fs::path(BLIXARD_TEST_DATA) / "specs/scenario2/postgres.nix");
  vm.mutable_spec()->set_memory_mib(1024);  // under TCG: less than the file's 2 GiB, room for
  vm.mutable_spec()->set_vcpu(1);           // its 256MB shared_buffers
  vm.mutable_spec()->mutable_storage()->set_pool("disk");
  vm.mutable_spec()->mutable_storage()->set_size_mib(256);
  blixard::validate_vm(vm);
  v1::VolumeAttachment volume;
  volume.set_name("postgres-1");
  volume.set_pool_type("dir");
  volume.set_pool_path((dir_ / "pool").string());
  volume.set_size_mib(256);
  volume.set_mount_point(vm.spec().storage().mount_point());
  for (int start = 1; start <= 2; ++start) {
    events_.exit.reset();
    auto o = replica("postgres-1", {});
    o.vm = "postgres";
    o.name = "postgres-1." + std::to_string(start);
    o.spec = vm.spec();
    (*o.spec.mutable_env())["BLIXARD_ROLE"] = "primary";
    o.volume = volume;
    if (start == 2) o.volume->set_format("ext4-image");  // as the server records it
    auto r = driver_->start_replica(o);
    ASSERT_EQ(r->ports().count(5432), 1U);
    const auto port = r->ports().at(5432);
    ASSERT_TRUE(eventually([&] { return psql(port, "SELECT 1") == "1"; }, 60s))
        << psql(port, "SELECT 1");
    EXPECT_EQ(psql(port, "SHOW max_connections"), "200");
    EXPECT_EQ(psql(port, "SHOW shared_buffers"), "256MB");
    if (start == 1) {
      EXPECT_EQ(psql(port,
                     "CREATE SCHEMA app; CREATE TABLE app.t (v text); "
                     "INSERT INTO app.t VALUES ('kept'); SELECT v FROM app.t"),
                "kept");
      EXPECT_TRUE(events_.saw("running services.postgresql.initialScript"));
    } else {
      EXPECT_EQ(psql(port, "SELECT v FROM app.t"), "kept");
      EXPECT_FALSE(events_.saw("initialScript"));
    }
    r->stop(30s);
    ASSERT_TRUE(events_.exited().has_value());
    EXPECT_TRUE(events_.exited()->requested);
    std::lock_guard lock(events_.mutex);
    events_.lines.clear();
  }
  driver_->remove_volume(volume);
}

// qemu opens a volume's image as libvirt-qemu: a pool under a directory it cannot pass is said
// before any guest starts, naming the directory, rather than as qemu's bare "Permission denied".
// A set with a primary on guests: its standbys hold the set's volume attached and unmounted, and
// one is promoted in place once the primary's qemu is killed: the node fences the volume under
// the new epoch, the guest mounts it (reading what the old primary wrote after the standby
// booted) and its workload starts again as the primary, serving on the ports it held. The
// dead primary's exit is reported once its qemu is gone; a promotion under an older epoch is
// refused, and a guest that holds no standby volume cannot be promoted.
TEST_F(LibvirtDriverTest, AStandbyHoldingTheVolumeIsPromotedInPlaceAfterThePrimaryIsKilled) {
  v1::VolumeAttachment volume;
  volume.set_name("db-data");
  volume.set_pool_type("shared-dir");
  volume.set_pool_path((dir_ / "pool").string());
  volume.set_size_mib(64);
  volume.set_mount_point("/var/lib/db");
  // Idle as a standby (saying whether it sees a volume); as the primary, appends its epoch to
  // a log on the volume and serves who it is and the whole log.
  const std::vector<std::string> db = {
      "/usr/bin/python3", "-c",
      "import http.server as h, os, signal, sys, time\n"
      "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
      "if os.environ['BLIXARD_ROLE'] != 'primary':\n"
      "  print('standby volume=' + os.environ.get('BLIXARD_VOLUME', 'none'), flush=True)\n"
      "  if not os.environ.get('BLIXARD_PROMOTE_SIGNAL'):\n"
      "    while True: time.sleep(60)\n"
      // Takes the role while it runs: told by SIGUSR1 (caught: a process in sigwait() shows
      // the signal neither blocked nor caught), its new environment in the role file.
      "  import threading\n"
      "  told = threading.Event()\n"
      "  signal.signal(signal.SIGUSR1, lambda *_: told.set())\n"
      "  while not told.wait(1): pass\n"
      "  os.environ.update(l.split('=', 1) for l in "
      "open('/run/blixard/role').read().splitlines())\n"
      "log = os.path.join(os.environ['BLIXARD_VOLUME'], 'log')\n"
      "with open(log, 'a') as f:\n"
      "  f.write(os.environ['BLIXARD_EPOCH'] + '\\n'); f.flush(); os.fsync(f.fileno())\n"
      "body = (os.environ['BLIXARD_REPLICA'] + ' epoch=' + os.environ['BLIXARD_EPOCH'] +\n"
      "        ' log=' + ','.join(open(log).read().split())).encode()\n"
      "class P(h.BaseHTTPRequestHandler):\n"
      "  def do_GET(self):\n"
      "    self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
      "    self.end_headers(); self.wfile.write(body)\n"
      "print('primary', os.environ['BLIXARD_EPOCH'], flush=True)\n"
      "h.HTTPServer(('', int(os.environ['PORT'])), P).serve_forever()\n"};
  auto standby = [&](const std::string& name) {
    auto o = replica(name, db, {8080});
    (*o.spec.mutable_env())["BLIXARD_ROLE"] = "replica";
    o.volume = volume;
    o.volume->set_standby(true);
    return driver_->start_replica(o);
  };
  // The standbys boot first: their kernels scan the disk before the primary writes to it.
  auto second = standby("db-2");
  auto o3 = replica("db-3", db, {8080});
  (*o3.spec.mutable_env())["BLIXARD_ROLE"] = "replica";
  (*o3.spec.mutable_env())["BLIXARD_PROMOTE_SIGNAL"] = "USR1";  // takes the role while it runs
  o3.volume = volume;
  o3.volume->set_standby(true);
  auto third = driver_->start_replica(o3);
  EXPECT_TRUE(events_.saw("standby volume=none")) << "a standby sees no volume";
  auto o = replica("db-1", db, {8080});
  (*o.spec.mutable_env())["BLIXARD_ROLE"] = "primary";
  (*o.spec.mutable_env())["BLIXARD_EPOCH"] = "1";
  o.volume = volume;
  o.volume->set_writer_epoch(1);
  o.volume->set_format("ext4-image");  // the standby made it
  auto first = driver_->start_replica(o);
  EXPECT_EQ(get(first->ports().at(8080)), "db-1 epoch=1 log=1");
  try {
    first->promote(promotion(2));
    FAIL() << "a guest without a standby volume was promoted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable) << e.what();
  }

  // The primary's qemu dies as on a crash: its exit comes once the process is gone.
  events_.exit.reset();
  const int qemu = first->fence_pid();
  ASSERT_GT(qemu, 1);
  const auto killed = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(qemu, SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return events_.exited().has_value(); }, 20s));
  EXPECT_FALSE(events_.exited()->requested);
  std::cout << "the killed primary's exit was reported after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - killed)
                   .count()
            << " ms\n";

  const auto asked = std::chrono::steady_clock::now();
  second->promote(promotion(2));
  std::cout << "promoted in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - asked)
                   .count()
            << " ms\n";
  EXPECT_TRUE(second->alive());
  EXPECT_EQ(get(second->ports().at(8080)), "db-2 epoch=2 log=1,2")
      << "the new primary reads what the old one wrote, and writes under its epoch";
  EXPECT_TRUE(events_.saw("blixard: promoted in place in ")) << "no promotion timeline";
  for (const auto& line : events_.lines) {
    if (line.starts_with("blixard: promoted")) std::cout << line << "\n";
  }
  // The fence: a promotion under an older epoch is refused by the node; the guest stays a
  // standby, its volume unmounted.
  try {
    third->promote(promotion(1));
    FAIL() << "a promotion under an older epoch went through";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::conflict) << e.what();
  }
  try {
    second->promote(promotion(3));
    FAIL() << "a replica was promoted twice";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::conflict) << e.what();
  }
  // A promoted guest stops as any: STOP reaches its new workload.
  events_.exit.reset();
  second->stop(10s);
  ASSERT_TRUE(events_.exited().has_value());
  EXPECT_TRUE(events_.exited()->requested);
  EXPECT_TRUE(events_.saw("BLIXARD-EXIT 0")) << "the primary workload ended on SIGTERM";

  // A workload that takes the role while it runs is signalled rather than started again.
  third->promote(promotion(3));
  EXPECT_EQ(get(third->ports().at(8080)), "db-3 epoch=3 log=1,2,3");
  EXPECT_TRUE(events_.saw("promoted under epoch 3 (the workload was sent SIGUSR1)"));
  EXPECT_TRUE(events_.saw("workload signalled to take the role")) << "no promotion timeline";
  for (const auto& line : events_.by_replica["db-3.1"]) {
    if (line.starts_with("blixard: promoted")) std::cout << line << "\n";
  }
  events_.exit.reset();
  third->stop(10s);
  ASSERT_TRUE(events_.exited().has_value());
  EXPECT_TRUE(events_.exited()->requested);
}

TEST_F(LibvirtDriverTest, APoolQemuCannotReachIsRefusedNamingTheDirectory) {
  if (::getpwnam("libvirt-qemu") == nullptr) GTEST_SKIP() << "qemu does not run as libvirt-qemu";
  const fs::path closed = dir_ / "closed";
  fs::create_directories(closed);
  fs::permissions(closed, fs::perms::owner_all);  // 0700, as mkdtemp makes
  v1::VolumeAttachment volume;
  volume.set_name("db-data");
  volume.set_pool_type("shared-dir");
  volume.set_pool_path((closed / "pool").string());
  volume.set_size_mib(16);
  volume.set_mount_point("/data");
  auto o = replica("db-1", {});
  o.volume = volume;
  try {
    driver_->start_replica(o);
    FAIL() << "a guest started on a pool qemu cannot reach";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_THAT(e.what(), HasSubstr(closed.string() + " is mode 0700"));
    EXPECT_THAT(e.what(), HasSubstr("chmod o+x"));
  }
  EXPECT_FALSE(events_.exited().has_value());
}

TEST_F(LibvirtDriverTest, AGuestOnANetworkIsReachedAtItsAddress) {
  v1::NetworkAttachment network;
  network.set_network("t" + std::to_string(::getpid()));
  network.set_subnet("10.79.0.0/24");
  network.set_address("10.79.0.5");
  auto o = replica("net-1", page_server(), {8080});
  o.network = network;
  auto r = driver_->start_replica(o);
  const auto bridge = blixard::net::bridge_name(network.network());
  struct RemoveBridge {
    std::string name;
    ~RemoveBridge() { blixard::net::remove_link(name); }
  } remove_bridge{bridge};
  EXPECT_TRUE(blixard::net::link_exists(bridge));
  // Straight to the guest over the bridge (the host holds the gateway, 10.79.0.1).
  EXPECT_TRUE(eventually([&] { return blixard::tcp_accepts("10.79.0.5", 8080, 1s); }, 20s));
  // Its forwarded host port still serves.
  EXPECT_EQ(get(r->ports().at(8080)), "net-1 uid=65534 secrets=False");
  r->stop(10s);
}

// Replicas restored from save images of a template guest (LibvirtOptions::snapshots).
class LibvirtSnapshotTest : public LibvirtDriverTest {
 protected:
  std::size_t snapshots() const override { return 2; }

  // The save images ready to restore from.
  std::set<std::string> saves() const {
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_ / "snapshots", ec)) {
      if (e.path().extension() == ".save") names.insert(e.path().filename().string());
    }
    return names;
  }

  // A page with what the guest drew from its kernel's random generator (a UUID and 16 bytes of
  // /dev/urandom) and its clock, served by busybox's httpd on the first declared port.
  static std::vector<std::string> random_page() {
    return {"/usr/bin/sh", "-c",
            "mkdir -p /tmp/w && { cat /proc/sys/kernel/random/uuid; "
            "od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'; echo; date +%s; } >/tmp/w/index.html "
            "&& echo \"random $(head -1 /tmp/w/index.html)\" && "
            "exec /usr/bin/busybox httpd -f -p $PORT -h /tmp/w"};
  }
};

// The page's lines: UUID, random hex, the guest's clock.
std::vector<std::string> lines_of(const std::string& page) {
  std::vector<std::string> out;
  std::istringstream in(page);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

TEST_F(LibvirtSnapshotTest, ReplicasRestoredFromSnapshotsServeAndDrawDifferentRandomness) {
  // The shape's first start boots; its save images are made behind it.
  auto first = driver_->start_replica(replica("s-0", {"/usr/bin/sleep", "600"}));
  EXPECT_THAT(events_.timeline("s-0.1"), HasSubstr(", fresh boot: ")) << "no image yet";
  ASSERT_TRUE(eventually([&] { return saves().size() == 2; }, 180s)) << "no save images made";
  // A guest's memory: root's alone.
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "snapshots").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700U);
  for (const auto& name : saves()) {
    ASSERT_EQ(::stat((dir_ / "snapshots" / name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0600U) << name;
    EXPECT_EQ(st.st_uid, 0U) << name;
    std::cout << name << ": " << st.st_size / 1'000'000 << " MB\n";
  }
  first->kill();

  auto a = driver_->start_replica(replica("s-a", random_page(), {8080}));
  auto b = driver_->start_replica(replica("s-b", random_page(), {8080}));
  for (const char* name : {"s-a.1", "s-b.1"}) {
    const auto line = events_.timeline(name);
    EXPECT_THAT(line, HasSubstr(", restored from snapshot: ")) << name;
    EXPECT_THAT(line, HasSubstr(", libvirt restore ")) << name;
    EXPECT_TRUE(events_.saw("blixard: restored from snapshot blixard-")) << "said at the restore";
    std::cout << name << ": " << line << "\n";
  }
  const auto page_a = lines_of(get(a->ports().at(8080)));
  const auto page_b = lines_of(get(b->ports().at(8080)));
  ASSERT_EQ(page_a.size(), 3U) << "no page from a restored guest's forwarded port";
  ASSERT_EQ(page_b.size(), 3U) << "no page from a restored guest's forwarded port";
  EXPECT_EQ(page_a[0].size(), 36U) << page_a[0];
  EXPECT_EQ(page_a[1].size(), 32U) << page_a[1];
  EXPECT_NE(page_a[0], page_b[0]) << "two restores of one snapshot drew the same UUID";
  EXPECT_NE(page_a[1], page_b[1]) << "two restores of one snapshot read the same /dev/urandom";
  // The guest's clock is the host's, not the template's from when it was saved.
  const long long now = std::time(nullptr);
  EXPECT_NEAR(std::stoll(page_a[2]), now, 10);
  EXPECT_NEAR(std::stoll(page_b[2]), now, 10);

  // Both images lent: the next boots afresh.
  auto c = driver_->start_replica(replica("s-c", {"/usr/bin/sleep", "600"}));
  EXPECT_THAT(events_.timeline("s-c.1"), HasSubstr(", fresh boot: "));
  c->kill();
  // Once a's guest is gone its image is free again, but a guest with a volume boots afresh.
  a->stop(10s);
  v1::VolumeAttachment volume;
  volume.set_name("sv-1");
  volume.set_pool_type("dir");
  volume.set_pool_path((dir_ / "pool").string());
  volume.set_size_mib(64);
  volume.set_mount_point("/var/lib/db");
  auto with_volume = replica("s-v", {"/usr/bin/sleep", "600"});
  with_volume.volume = volume;
  auto v = driver_->start_replica(with_volume);
  EXPECT_THAT(events_.timeline("s-v.1"), HasSubstr(", fresh boot: ")) << "a volume in a snapshot";
  v->kill();
  auto again = driver_->start_replica(replica("s-d", random_page(), {8080}));
  EXPECT_THAT(events_.timeline("s-d.1"), HasSubstr(", restored from snapshot: "))
      << "an image is not free again once its guest is gone";
  const auto page_d = lines_of(get(again->ports().at(8080)));
  ASSERT_EQ(page_d.size(), 3U);
  EXPECT_NE(page_d[0], page_a[0]) << "a second restore of one image drew the first's UUID";
  EXPECT_EQ(saves().size(), 2U);
}

TEST_F(LibvirtSnapshotTest, SaveImagesOfAnOldBaseGoAndNewOnesAreMade) {
  auto first = driver_->start_replica(replica("o-0", {"/usr/bin/sleep", "600"}));
  ASSERT_TRUE(eventually([&] { return saves().size() == 2; }, 180s)) << "no save images made";
  first->kill();
  const auto old = saves();
  // The base archive rebuilt (as a new init or busybox would have it): the templates booted
  // the old one.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_ / "images")) {
    if (e.path().filename().string().starts_with("initramfs-base-")) fs::remove(e.path());
  }
  auto next = driver_->start_replica(replica("o-1", {"/usr/bin/sleep", "600"}));
  EXPECT_THAT(events_.timeline("o-1.1"), HasSubstr(", fresh boot: "));
  for (const auto& name : old) {
    EXPECT_FALSE(fs::exists(dir_ / "snapshots" / name)) << name << " outlived its base";
  }
  ASSERT_TRUE(eventually(
      [&] {
        const auto now = saves();
        return now.size() == 2 && std::none_of(now.begin(), now.end(),
                                               [&](const auto& n) { return old.count(n) != 0; });
      },
      180s))
      << "no new save images";
  next->kill();
  auto restored = driver_->start_replica(replica("o-2", {"/usr/bin/sleep", "600"}));
  EXPECT_THAT(events_.timeline("o-2.1"), HasSubstr(", restored from snapshot: "));
}

TEST(LibvirtDriver, AnUnreachableLibvirtSaysHowToStartIt) {
  rt::LibvirtOptions options;
  options.uri = "qemu:///system?socket=/nonexistent/libvirt-sock";
  options.work_dir = fs::temp_directory_path() / "blixard-libvirt-unreachable";
  try {
    rt::make_libvirt_driver(options);
    FAIL() << "connected to nothing";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_THAT(e.what(), HasSubstr("libvirtd -d"));
  }
}

}  // namespace
