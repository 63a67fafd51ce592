// VM replicas as libvirt guests (see libvirt_driver.hpp).
#include "runtime/libvirt_driver.hpp"

#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <poll.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>

#include <spdlog/spdlog.h>

#include "blixard/error.hpp"
#include "blixard/v1/agent.pb.h"
#include "common/digest.hpp"
#include "common/health_check.hpp"
#include "image/guest_image.hpp"
#include "runtime/accel.hpp"
#include "runtime/console.hpp"
#include "runtime/domain_xml.hpp"
#include "runtime/kept_record.hpp"
#include "runtime/process.hpp"
#include "runtime/replica_network.hpp"
#include "runtime/volume.hpp"

namespace blixard::runtime {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds k_check_timeout{1000};
constexpr milliseconds k_http_ready_poll{100};
constexpr std::string_view k_ready_line = "BLIXARD-READY";
constexpr std::string_view k_times_line = "BLIXARD-TIMES ";
constexpr std::string_view k_exit_line = "BLIXARD-EXIT ";
constexpr std::string_view k_waiting_line = "BLIXARD-WAITING";
// How long a guest's qemu may take to be gone once it closed its sockets, before libvirt is
// asked to end it.
constexpr milliseconds k_qemu_exit_wait{5000};
const fs::path k_socket_root = "/run/blixard";
// Ready guests' records (LibvirtReplica::keep_record), one `<replica>.pb` each, in a directory of
// the driver's work_dir that only root may enter: not in the replica's own directory, which is
// qemu's (libvirt-qemu's), so that a compromised qemu cannot write what the next agent acts on.
constexpr const char* k_kept_dir = "kept";

fs::path kept_record(const fs::path& work_dir, const std::string& replica) {
  return kept_record_path(work_dir / k_kept_dir, replica);
}
constexpr std::uint64_t k_min_guest_mib = 128;
// Shapes whose save images are kept at once (the least recently started goes first), and the
// failed template boots after which a shape stops trying.
constexpr std::size_t k_snapshot_shapes = 4;
constexpr std::size_t k_snapshot_attempts = 3;

// A short, stable name for a directory: its domains' and sockets' prefix.
std::string path_hash(const fs::path& path) {
  std::array<char, 9> hex{};
  std::snprintf(hex.data(), hex.size(), "%08x",
                static_cast<unsigned>(std::hash<std::string>{}(fs::absolute(path).string())));
  return hex.data();
}

std::string libvirt_error(const std::string& what) {
  const char* message = virGetLastErrorMessage();
  return what + ": " + (message != nullptr ? message : "unknown libvirt error");
}

struct ConnectionDeleter {
  void operator()(virConnectPtr c) const { virConnectClose(c); }
};
using Connection = std::unique_ptr<virConnect, ConnectionDeleter>;
struct DomainDeleter {
  void operator()(virDomainPtr d) const { virDomainFree(d); }
};
using Domain = std::unique_ptr<virDomain, DomainDeleter>;
struct PoolDeleter {
  void operator()(virStoragePoolPtr p) const { virStoragePoolFree(p); }
};
using Pool = std::unique_ptr<virStoragePool, PoolDeleter>;
struct VolumeDeleter {
  void operator()(virStorageVolPtr v) const { virStorageVolFree(v); }
};
using StorageVolume = std::unique_ptr<virStorageVol, VolumeDeleter>;

// Runs a program to its end (no shell), its output kept for an error; false if it failed.
bool run_program(const std::vector<std::string>& argv, std::string& output) {
  auto [read_end, write_end] = make_pipe();
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
  pid_t pid = -1;
  const int spawned = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  write_end.reset();
  if (spawned != 0) {
    output = argv[0] + ": " + std::strerror(spawned);
    return false;
  }
  std::array<char, 4096> buffer{};
  for (ssize_t n; (n = ::read(read_end.get(), buffer.data(), buffer.size())) > 0;) {
    output.append(buffer.data(), static_cast<std::size_t>(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Connects to a unix socket qemu listens on (it exists once the domain was created).
UniqueFd connect_unix(const fs::path& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string p = path.string();
  if (fd.get() < 0 || p.size() >= sizeof addr.sun_path) return {};
  std::copy(p.begin(), p.end(), addr.sun_path);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
  return fd;
}

// All of `bytes`, or false (the peer is gone, or took longer than the socket's send timeout).
bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Whether `path` can be opened with O_DIRECT (qemu's cache='none').
bool opens_direct(const fs::path& path) {
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  return fd.get() >= 0;
}

// "1.23" (seconds, as /proc/uptime says them) in milliseconds; -1 when it is not a number.
long long uptime_ms(std::string_view text) {
  const std::string s(text);
  char* end = nullptr;
  const double seconds = std::strtod(s.c_str(), &end);
  return end == s.c_str() ? -1 : std::llround(seconds * 1000);
}

std::string ms_since(Clock::time_point from, Clock::time_point to) {
  return std::to_string(std::chrono::duration_cast<milliseconds>(to - from).count()) + " ms";
}

// Changes whenever the file is replaced (a rebuilt base is a new inode under the same name).
std::string file_identity(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return path.string() + " missing\n";
  return path.string() + ' ' + std::to_string(st.st_size) + ' ' + std::to_string(st.st_ino) + ' ' +
         std::to_string(st.st_mtim.tv_sec) + '.' + std::to_string(st.st_mtim.tv_nsec) + '\n';
}

// What every guest of this driver boots: the kernel and the base initramfs, both in the image
// cache.
struct GuestImage {
  image::GuestKernel kernel;
  fs::path initramfs;
  std::string identity;  // of both files: a snapshot of a guest that booted others is stale
};

// The domain every guest of `spec`'s shape starts as, before its name, sockets, ports, disk and
// network: what a snapshot of a template guest has in common with the replicas restored from it.
DomainConfig guest_shape(const v1::VmSpec& spec, const GuestImage& image, bool kvm,
                         const fs::path& program_tree) {
  DomainConfig config;
  config.memory_mib = spec.memory_mib();
  config.balloon_mib = spec.microvm().balloon_mem();
  config.vcpus = spec.vcpu() != 0 ? spec.vcpu() : 1;
  config.kvm = kvm;
  config.kernel = image.kernel.vmlinux;
  config.initrd = image.initramfs;
  config.cmdline = image::guest_cmdline();
  config.shares.push_back({"usr", program_tree, true});
  return config;
}

// One save image of a template guest whose init waits for its workload, lent to one replica at
// a time: libvirt restores it only under the template's domain name and UUID.
struct SnapshotLease {
  std::string domain;   // the template's name, which the restored guest runs under
  fs::path file;        // root's only
  std::string xml;      // the domain as saved, with the template's sockets
  fs::path sockets;     // the template's sockets directory, as the XML names it
  bool failed = false;  // its restore failed: the image goes when it is given back
};

// The saved domain with a replica's own sockets and forwarded ports (all a restore may change
// here: libvirt checks the rest against the image's), or nullopt when the XML is not the
// driver's.
std::optional<std::string> restore_xml(const SnapshotLease& lease, const fs::path& sockets,
                                       const std::map<std::uint32_t, std::uint32_t>& forwards) {
  std::string xml = lease.xml;
  const std::string from = xml_escaped(lease.sockets.string()) + "/";
  const std::string to = xml_escaped(sockets.string()) + "/";
  std::size_t replaced = 0;
  for (auto at = xml.find(from); at != std::string::npos; at = xml.find(from, at + to.size())) {
    xml.replace(at, from.size(), to);
    ++replaced;
  }
  const std::string netdev = "'" + xml_escaped(user_netdev({})) + "'";
  const auto at = xml.find(netdev);
  if (replaced < 2 || at == std::string::npos) return std::nullopt;
  xml.replace(at, netdev.size(), "'" + xml_escaped(user_netdev(forwards)) + "'");
  return xml;
}

// "WORKLOAD <bytes> <seconds.nanoseconds> <hex>": the init sets the guest's clock from the host's
// and reseeds its kernel's random generator from the bytes before it unpacks the archive (guests
// restored from one snapshot would otherwise share both).
std::string workload_header(std::size_t size) {
  std::array<unsigned char, 32> random{};
  for (std::size_t got = 0; got < random.size();) {
    const ssize_t n = ::getrandom(random.data() + got, random.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(errc::unavailable, std::string("getrandom: ") + std::strerror(errno));
    got += static_cast<std::size_t>(n);
  }
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  std::array<char, 24> ns{};
  std::snprintf(ns.data(), ns.size(), "%09ld", static_cast<long>(now.tv_nsec));
  std::string line =
      "WORKLOAD " + std::to_string(size) + " " + std::to_string(now.tv_sec) + "." + ns.data() + " ";
  constexpr std::string_view hex = "0123456789abcdef";
  for (const unsigned char b : random) {
    line += hex[b >> 4];
    line += hex[b & 15];
  }
  random.fill(0);
  return line + "\n";
}

// The guest init's "BLIXARD-TIMES" words ("init=1.02 modules=1.31 ..."): each step's time on
// the guest's clock, in ms since its kernel started.
std::map<std::string, long long> guest_clock(const std::string& times) {
  std::map<std::string, long long> at;
  std::istringstream words(times);
  for (std::string word; words >> word;) {
    const auto eq = word.find('=');
    if (eq != std::string::npos) at[word.substr(0, eq)] = uptime_ms(word.substr(eq + 1));
  }
  return at;
}

// "<ms> ms" from step `from` to step `to` of guest_clock, or "?" when either is unknown.
std::string step_ms(const std::map<std::string, long long>& at, const char* from, const char* to) {
  const auto a = at.find(from), b = at.find(to);
  return a == at.end() || b == at.end() || a->second < 0 || b->second < 0
             ? std::string("?")
             : std::to_string(b->second - a->second) + " ms";
}

class LibvirtReplica final : public Replica, public std::enable_shared_from_this<LibvirtReplica> {
 public:
  // `dir` holds its files, `sockets` (a short path: a unix socket's is at most 107 bytes) its
  // console and agent sockets; both are removed when it is gone.
  // `snapshot`: the save image to restore it from (a fresh boot when unset, or when the restore
  // fails).
  LibvirtReplica(ReplicaOptions options, virConnectPtr conn, std::string domain, fs::path dir,
                 fs::path sockets, std::shared_ptr<SnapshotLease> snapshot,
                 std::function<void()> done)
      : options_(std::move(options)),
        conn_(conn),
        domain_(std::move(domain)),
        dir_(std::move(dir)),
        sockets_(std::move(sockets)),
        snapshot_(std::move(snapshot)),
        done_(std::move(done)) {}

  const std::string& name() const override { return options_.name; }
  bool alive() const override {
    std::lock_guard lock(mutex_);
    return state_ == State::ready && !requested_;
  }
  std::map<std::uint32_t, std::uint32_t> ports() const override { return ports_; }
  std::chrono::microseconds start_duration() const override { return started_in_; }

  void stop(milliseconds grace) override {
    {
      std::lock_guard lock(mutex_);
      if (state_ == State::exited) return;
      requested_ = true;
    }
    // The guest init stops the workload (SIGTERM, then its own grace) and powers off.
    const std::string stop = "STOP\n";
    if (agent_.get() >= 0) (void)!::send(agent_.get(), stop.data(), stop.size(), MSG_NOSIGNAL);
    std::unique_lock lock(mutex_);
    if (!changed_.wait_for(lock, grace, [&] { return state_ == State::exited; })) {
      lock.unlock();
      kill();
      lock.lock();
      changed_.wait(lock, [&] { return state_ == State::exited; });
    }
  }

  void kill() override {
    {
      std::lock_guard lock(mutex_);
      if (state_ == State::exited) return;
      requested_ = true;
    }
    destroy_domain();
  }

  // `volume_image`: the volume's disk image when it has one (attached as /dev/vda); `began`:
  // when the driver took the request, `prepared`: when it had the guest's image.
  void start(const LibvirtOptions& driver, const GuestImage& image, bool kvm,
             const fs::path& volume_image, Clock::time_point began, Clock::time_point prepared);
  // Takes back the running guest an earlier agent started from `kept` (its record, written once
  // it was ready): reconnects to its console and agent sockets and watches it as start() does.
  // Throws Error(unavailable) when its sockets cannot be reached.
  void take_back(const v1::KeptReplica& kept);
  void promote(const Promotion& promotion) override;
  // Whether its thread runs (and will call `done` once the guest is gone), after start().
  bool watching() const { return watching_; }
  // The guest's qemu: killing it ends the guest (0 when libvirt's pid file was not found).
  int fence_pid() const override {
    std::lock_guard lock(mutex_);
    return state_ == State::exited ? 0 : qemu_pid_;
  }
  bool outlives_agent() const override { return true; }  // libvirtd runs its qemu
  void adopted(std::int64_t epoch) override {
    {
      std::lock_guard lock(mutex_);
      if (state_ != State::ready) return;
      options_.epoch = epoch;
    }
    keep_record();
  }

 private:
  enum class State { starting, ready, exited };

  void destroy_domain() const {
    Domain dom(virDomainLookupByName(conn_, domain_.c_str()));
    if (dom) virDomainDestroy(dom.get());
  }
  // The driver's, or the spec's shorter one (readiness.timeout).
  milliseconds ready_timeout(const LibvirtOptions& driver) const {
    const auto& t = options_.spec.readiness().timeout();
    if (t.seconds() <= 0 && t.nanos() <= 0) return driver.ready_timeout;
    return std::min(driver.ready_timeout, milliseconds(t.seconds() * 1000 + t.nanos() / 1'000'000));
  }
  void run();
  // Its record (kept_record), for the next agent should this one end first.
  void keep_record() const;
  // The driver's work_dir (dir_ is its replicas/<name>).
  fs::path work_dir() const { return dir_.parent_path().parent_path(); }
  // Until the guest's qemu has exited (its pidfd, or libvirt's destroy when there is none or it
  // lingers): a guest sharing its disk has stopped writing to it.
  void await_qemu_exit() const;
  void console_line(std::string text);
  void agent_line(const std::string& text);
  // Where the start's time went, for the replica's log.
  std::string timeline(Clock::time_point began, Clock::time_point prepared,
                       Clock::time_point archived, Clock::time_point created,
                       Clock::time_point ready, bool restored) const;
  // The guest restored from snapshot_ under `xml`'s sockets and ports, or nullptr (the reason in
  // the replica's log) for a fresh boot.
  Domain restore(const DomainConfig& config);

  ReplicaOptions options_;
  virConnectPtr conn_;
  std::string domain_;   // the template's once restored from its snapshot (set before run())
  int qemu_pid_ = 0;     // (set before run())
  UniqueFd qemu_pidfd_;  // (set before run())
  // Its disk is the set's volume, shared with the set's other guests (DomainConfig::shared_disks),
  // and, on a standby, held unmounted for a promotion in place (set before run()).
  bool shared_disk_ = false, holds_standby_volume_ = false;
  fs::path dir_, sockets_;
  std::shared_ptr<SnapshotLease> snapshot_;
  std::function<void()> done_;
  std::map<std::uint32_t, std::uint32_t> ports_;
  std::unique_ptr<NetworkMembership> network_;  // while on a network
  UniqueFd console_, agent_;
  std::chrono::microseconds started_in_{0};
  bool watching_ = false;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  State state_ = State::starting;
  bool requested_ = false;
  bool guest_ready_ = false;  // the guest init said so (its first port accepts inside)
  Clock::time_point guest_ready_at_;
  std::string guest_times_;  // the init's "init=1.02 modules=1.31 ..." (uptime, seconds)
  bool promoting_ = false;   // once asked: a replica is promoted once
  bool marker_seen_ = false;
  bool gone_ = false;  // qemu closed both sockets
  std::optional<int> exit_status_;
  ConsoleTail tail_;
};

void LibvirtReplica::console_line(std::string text) {
  std::optional<int> status;
  if (text.rfind(k_exit_line, 0) == 0) {
    try {
      status = std::stoi(text.substr(k_exit_line.size()));
    } catch (const std::exception&) {
    }
  }
  const auto& marker = options_.spec.readiness().console_marker();
  const bool is_marker = !marker.empty() && text.find(marker) != std::string::npos;
  tail_.add("console", text);
  if (options_.on_log) options_.on_log(options_.name, "console", std::move(text));
  {
    std::lock_guard lock(mutex_);
    if (status) exit_status_ = status;
    if (is_marker) marker_seen_ = true;
    changed_.notify_all();
  }
  // The guest init's last word: whatever the guest does next (power off, halt), it is done.
  if (status) destroy_domain();
}

void LibvirtReplica::agent_line(const std::string& text) {
  std::lock_guard lock(mutex_);
  if (text.rfind(k_times_line, 0) == 0) {
    guest_times_ = text.substr(k_times_line.size());
    return;
  }
  if (std::string_view(text) != k_ready_line) return;
  guest_ready_ = true;
  guest_ready_at_ = Clock::now();
  changed_.notify_all();
}

std::string LibvirtReplica::timeline(Clock::time_point began, Clock::time_point prepared,
                                     Clock::time_point archived, Clock::time_point created,
                                     Clock::time_point ready, bool restored) const {
  std::string line =
      "blixard: ready in " + ms_since(began, ready) +
      (restored ? ", restored from snapshot" : ", fresh boot") + ": image " +
      ms_since(began, prepared) + ", workload archive " + ms_since(prepared, archived) +
      (restored ? ", libvirt restore " : ", libvirt start ") + ms_since(archived, created);
  // The guest's own clock (seconds since its kernel started) at each step of its init.
  const auto at = guest_clock(guest_times_);
  const auto step = [&](const char* from, const char* to) { return step_ms(at, from, to); };
  if (restored) {
    // The guest's clock ran on from the template's boot: only its steps since the workload came
    // are this start's, and the host's clock says how long the workload took to reach it.
    const auto got = at.find("got"), done = at.find("ready");
    if (got != at.end() && done != at.end() && got->second >= 0 && done->second >= 0) {
      const auto guest_said = guest_ready_ ? guest_ready_at_ : ready;
      const auto host_ms = std::chrono::duration_cast<milliseconds>(guest_said - created).count();
      line += ", workload sent and unpacked " +
              std::to_string(host_ms - (done->second - got->second)) + " ms";
    }
    line +=
        ", init " + step("got", "workload") + ", workload to ready " + step("workload", "ready");
    if (guest_ready_) line += ", readiness reported " + ms_since(guest_ready_at_, ready);
    return line;
  }
  if (const auto init = at.find("init"); init != at.end() && init->second >= 0) {
    // qemu's start and the kernel's, up to the init: the host's clock from libvirt's return to
    // the guest's word, less the guest's own time since its kernel started.
    const auto guest_said = guest_ready_ ? guest_ready_at_ : ready;
    const auto ready_uptime = at.count("ready") != 0 ? at.at("ready") : -1;
    if (ready_uptime >= 0) {
      const auto host_ms = std::chrono::duration_cast<milliseconds>(guest_said - created).count();
      line += ", to the kernel's start " + std::to_string(host_ms - ready_uptime) + " ms";
    }
    line += ", kernel " + std::to_string(init->second) + " ms";
  }
  line += ", modules " + step("init", "modules") + ", init " + step("modules", "workload") +
          ", workload to ready " + step("workload", "ready");
  if (guest_ready_) line += ", readiness reported " + ms_since(guest_ready_at_, ready);
  return line;
}

void LibvirtReplica::start(const LibvirtOptions& driver, const GuestImage& image, bool kvm,
                           const fs::path& volume_image, Clock::time_point began,
                           Clock::time_point prepared) {
  const auto& spec = options_.spec;
  if (!spec.untranslated().empty() && spec.command_size() == 0) {
    throw Error(errc::invalid_spec, spec.untranslated(), "config");
  }
  if (spec.command_size() == 0 || spec.command(0).empty()) {
    throw Error(errc::invalid_spec,
                "vm " + options_.vm + " gives no `command` (or service) for its guest to run",
                "command");
  }
  // Below this the guest kernel runs out of memory unpacking its initramfs, silently (`quiet`).
  if (spec.memory_mib() < k_min_guest_mib) {
    throw Error(errc::invalid_spec,
                "a guest needs at least " + std::to_string(k_min_guest_mib) +
                    " MiB of memory; vm " + options_.vm + " gives it " +
                    std::to_string(spec.memory_mib()) + " MiB",
                "memory");
  }
  const std::string replica = options_.slot.empty() ? options_.name : options_.slot;
  image::Workload workload;
  workload.command.assign(spec.command().begin(), spec.command().end());
  workload.env.insert(spec.env().begin(), spec.env().end());
  workload.env["BLIXARD_VM"] = options_.vm;
  workload.ports.assign(spec.ports().begin(), spec.ports().end());
  workload.replica = replica;
  workload.files.insert(spec.files().begin(), spec.files().end());
  if (!volume_image.empty()) {
    workload.volume_mount = options_.volume->mount_point();
    // A set's volume (with a primary) is shared by its primary and its standbys' guests; a
    // standby holds it unmounted until promoted.
    shared_disk_ = options_.volume->standby() || options_.volume->writer_epoch() > 0;
    holds_standby_volume_ = options_.volume->standby();
    workload.volume_standby = holds_standby_volume_;
  }
  std::string bridge, mac;
  if (options_.network) {
    const auto [address, subnet] = replica_address(*options_.network);
    network_ = std::make_unique<NetworkMembership>(*options_.network);
    bridge = network_->bridge();
    // Unique on the network as its address is (qemu's own default MACs are 52:54:00:...).
    std::array<char, 18> text{};
    std::snprintf(text.data(), text.size(), "52:54:01:%02x:%02x:%02x", (address.value >> 16) & 0xff,
                  (address.value >> 8) & 0xff, address.value & 0xff);
    mac = text.data();
    workload.network_mac = mac;
    workload.network_address = address.to_string() + "/" + std::to_string(subnet.prefix());
  }
  for (const auto port : spec.ports()) ports_[port] = free_port();
  // Sent to the guest's init over the agent's port once the guest runs: every replica boots the
  // same cached initramfs, and nothing per replica is written on the way to the boot.
  const std::string archive = image::replica_archive(workload);
  {
    // Kept beside the replica for whoever looks into it (the bench boots it by hand): root's only.
    // (Made 0600, never readable by others even for a moment: it holds the workload's env.)
    const UniqueFd keep(::open((dir_ / "workload.cpio").c_str(),
                               O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (keep.get() >= 0) (void)write_all(keep.get(), archive);
  }
  const auto archived = Clock::now();

  DomainConfig config = guest_shape(spec, image, kvm, driver.program_tree);
  config.name = domain_;
  config.console_socket = sockets_ / "console";
  config.agent_socket = sockets_ / "agent";
  config.forwards = ports_;
  if (!volume_image.empty()) config.disks.push_back(volume_image);
  config.shared_disks = shared_disk_;
  // A shared image bypasses the host's page cache where its filesystem allows (a tmpfs does
  // not, and is no host's but this one's): a standby on another host would otherwise read its
  // host's cached copy of what the old primary rewrote.
  config.uncached_disks = shared_disk_ && opens_direct(volume_image);
  config.bridge = bridge;
  config.bridge_mac = mac;
  Domain dom = restore(config);
  const bool restored = dom != nullptr;
  if (!restored) {
    dom.reset(virDomainCreateXML(conn_, domain_xml(config).c_str(), 0));
    if (!dom) {
      throw Error(errc::unavailable, libvirt_error("libvirt did not start " + options_.name));
    }
  }
  const auto created = Clock::now();
  {
    // qemu:///system keeps each running domain's qemu pid here (for fence_pid()).
    std::ifstream pid_file("/run/libvirt/qemu/" + domain_ + ".pid");
    int pid = 0;
    if (pid_file >> pid && pid > 1) {
      qemu_pid_ = pid;
      qemu_pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    }
  }
  // Said at once (the timeline comes only once it is ready, and a guest may never be).
  if (restored && options_.on_log) {
    options_.on_log(options_.name, "blixard",
                    "blixard: restored from snapshot " + snapshot_->file.filename().string() +
                        " in " + ms_since(archived, created));
  }
  console_ = connect_unix(config.console_socket);
  agent_ = connect_unix(config.agent_socket);
  if (console_.get() < 0 || agent_.get() < 0) {
    destroy_domain();
    throw Error(errc::unavailable, "cannot reach the console or agent socket of " + options_.name +
                                       " in " + sockets_.string());
  }
  std::thread([self = shared_from_this()] { self->run(); }).detach();
  watching_ = true;
  // qemu holds the bytes until the guest's init opens its port (a larger archive than the
  // socket's buffer waits here for that, within the ready timeout).
  const auto ready_timeout_s =
      std::chrono::duration_cast<std::chrono::seconds>(ready_timeout(driver));
  timeval send_timeout{static_cast<time_t>(std::max<long long>(1, ready_timeout_s.count())), 0};
  (void)::setsockopt(agent_.get(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
  if (!send_all(agent_.get(), workload_header(archive.size())) ||
      !send_all(agent_.get(), archive)) {
    const std::string why = std::strerror(errno);
    kill();
    throw Error(errc::unavailable, "cannot send replica " + options_.name +
                                       "'s workload to its guest: " + why + tail_.describe());
  }

  // Ready: the console marker, or the guest init's word (its first port accepts inside the
  // guest: the forwarded host port accepts before that, qemu's user network answers for it),
  // then the HTTP path through the forwarded port where the spec asks for one.
  const auto& r = spec.readiness();
  const auto deadline = began + ready_timeout(driver);
  std::unique_lock lock(mutex_);
  for (;;) {
    if (gone_ || state_ == State::exited) {
      const std::string why =
          exit_status_ ? "exited with status " + std::to_string(*exit_status_) : "stopped";
      lock.unlock();
      throw Error(errc::handler_failed, "replica " + options_.name + "'s guest " + why +
                                            " before it was ready" + tail_.describe());
    }
    bool ready = !r.console_marker().empty() ? marker_seen_ : guest_ready_;
    if (ready && !r.http_path().empty() && !ports_.empty()) {
      const auto port = ports_.at(r.http_port() != 0 ? r.http_port() : ports_.begin()->first);
      lock.unlock();
      ready = http_ok("", port, r.http_path(), k_check_timeout);
      lock.lock();
    }
    if (ready) break;
    if (Clock::now() >= deadline) {
      lock.unlock();
      kill();
      throw Error(errc::timeout, "replica " + options_.name + "'s guest was not ready within " +
                                     std::to_string(ready_timeout(driver).count()) + " ms" +
                                     tail_.describe());
    }
    changed_.wait_for(lock, k_http_ready_poll);
  }
  state_ = State::ready;
  const auto ready = Clock::now();
  started_in_ = std::chrono::duration_cast<std::chrono::microseconds>(ready - began);
  std::string line = timeline(began, prepared, archived, created, ready, restored);
  lock.unlock();
  keep_record();
  if (options_.on_log) options_.on_log(options_.name, "blixard", std::move(line));
}

void LibvirtReplica::keep_record() const {
  v1::KeptReplica kept = kept_record_of(options_);
  kept.set_domain(domain_);
  kept.set_sockets(sockets_.string());
  for (const auto& [port, host] : ports_) (*kept.mutable_ports())[port] = host;
  kept.set_start_us(started_in_.count());
  if (!write_kept_record(kept_record(work_dir(), options_.name), kept) && options_.on_log) {
    options_.on_log(options_.name, "blixard",
                    std::string("blixard: cannot keep this guest's record (") +
                        std::strerror(errno) + "): an agent restarted will not take it back");
  }
}

void LibvirtReplica::take_back(const v1::KeptReplica& kept) {
  for (const auto& [port, host] : kept.ports()) ports_[port] = host;
  started_in_ = std::chrono::microseconds(kept.start_us());
  {
    std::ifstream pid_file("/run/libvirt/qemu/" + domain_ + ".pid");
    int pid = 0;
    if (pid_file >> pid && pid > 1) {
      qemu_pid_ = pid;
      qemu_pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    }
  }
  if (options_.volume) {
    // As start() had it (a guest once promoted is never kept: see promote()).
    shared_disk_ = options_.volume->standby() || options_.volume->writer_epoch() > 0;
    holds_standby_volume_ = options_.volume->standby();
  }
  if (options_.network) network_ = std::make_unique<NetworkMembership>(*options_.network);
  console_ = connect_unix(sockets_ / "console");
  agent_ = connect_unix(sockets_ / "agent");
  if (console_.get() < 0 || agent_.get() < 0) {
    throw Error(errc::unavailable, "cannot reach the console or agent socket of " + options_.name +
                                       " in " + sockets_.string());
  }
  state_ = State::ready;  // it was when its record was written; the server checks its health
  std::thread([self = shared_from_this()] { self->run(); }).detach();
  watching_ = true;
}

Domain LibvirtReplica::restore(const DomainConfig& config) {
  if (!snapshot_) return nullptr;
  std::string why;
  if (const auto xml = restore_xml(*snapshot_, sockets_, config.forwards); !xml) {
    why = "its domain XML is not the driver's";
  } else if (virDomainRestoreFlags(conn_, snapshot_->file.c_str(), xml->c_str(),
                                   VIR_DOMAIN_SAVE_RUNNING) != 0) {
    why = libvirt_error("libvirt did not restore it");
  } else if (Domain dom(virDomainLookupByName(conn_, snapshot_->domain.c_str())); !dom) {
    why = libvirt_error("the restored domain is gone");
  } else {
    domain_ = snapshot_->domain;
    return dom;
  }
  snapshot_->failed = true;  // the driver removes the image when it is given back
  if (options_.on_log) {
    options_.on_log(options_.name, "blixard",
                    "blixard: cannot restore from snapshot " + snapshot_->file.filename().string() +
                        " (" + why + "): booting afresh");
  }
  return nullptr;
}

void LibvirtReplica::await_qemu_exit() const {
  if (qemu_pidfd_.get() >= 0) {
    pollfd p{qemu_pidfd_.get(), POLLIN, 0};
    const auto until = Clock::now() + k_qemu_exit_wait;
    for (;;) {
      const auto left = std::chrono::duration_cast<milliseconds>(until - Clock::now()).count();
      const int n = ::poll(&p, 1, static_cast<int>(std::max<long long>(0, left)));
      if (n > 0) return;  // exited (a zombie until libvirtd reaps it: it holds no file)
      if (n == 0 || errno != EINTR) break;
    }
  }
  destroy_domain();  // returns once libvirt has ended qemu
}

void LibvirtReplica::promote(const Promotion& promotion) {
  const auto asked = Clock::now();
  {
    std::lock_guard lock(mutex_);
    if (!holds_standby_volume_) {
      throw Error(errc::unavailable,
                  "replica " + options_.name + "'s guest holds no volume to be promoted with");
    }
    if (state_ != State::ready || requested_ || gone_) {
      throw Error(errc::unavailable, "replica " + options_.name + " is not running");
    }
    if (promoting_) {
      throw Error(errc::conflict, "replica " + options_.name + " was promoted already");
    }
    promoting_ = true;
    guest_ready_ = false;
  }
  // The node's fence first: refused when a newer epoch took the volume (another primary).
  v1::VolumeAttachment fenced = *options_.volume;
  fenced.set_standby(false);
  fenced.set_writer_epoch(promotion.epoch);
  try {
    fence_volume(fenced);
  } catch (...) {
    std::lock_guard lock(mutex_);
    promoting_ = false;  // the guest was told nothing: still a standby
    throw;
  }
  const auto fenced_at = Clock::now();
  // One line, as the init reads it: the address is a word ("-" for none).
  std::string address = promotion.primary_address;
  if (address.empty() || address.find_first_of(" \t\r\n") != std::string::npos) address = "-";
  const std::string line = "PROMOTE " + std::to_string(promotion.epoch) + " " + address + "\n";
  {
    // A primary from now on: no later agent takes it back (its watchdog kills it with this one).
    std::error_code ignored;
    fs::remove(kept_record(work_dir(), options_.name), ignored);
  }
  if (!send_all(agent_.get(), line)) {
    throw Error(errc::unavailable, "cannot reach replica " + options_.name +
                                       "'s guest to promote it: " + std::strerror(errno));
  }
  const auto deadline = asked + promotion.timeout;
  const auto& r = promotion.readiness;
  std::unique_lock lock(mutex_);
  for (;;) {
    if (gone_ || state_ == State::exited) {
      lock.unlock();
      throw Error(
          errc::handler_failed,
          "replica " + options_.name + "'s guest ended while it was promoted" + tail_.describe());
    }
    bool ready = guest_ready_;
    if (ready && !r.http_path().empty() && !ports_.empty()) {
      const auto port =
          ports_.at(r.http_port() != 0 && ports_.contains(r.http_port()) ? r.http_port()
                                                                         : ports_.begin()->first);
      lock.unlock();
      ready = http_ok("", port, r.http_path(), k_check_timeout);
      lock.lock();
    }
    if (ready) break;
    if (Clock::now() >= deadline) {
      lock.unlock();
      throw Error(errc::timeout,
                  "replica " + options_.name + " was not ready as the primary within " +
                      std::to_string(promotion.timeout.count()) + " ms" + tail_.describe());
    }
    changed_.wait_for(lock, k_http_ready_poll);
  }
  const auto ready_at = Clock::now();
  // Where the promotion's time went, by the guest's clock from the word's arrival.
  const auto at = guest_clock(guest_times_);
  const auto step = [&](const char* from, const char* to) { return step_ms(at, from, to); };
  // A workload that takes the role while it runs (BLIXARD_PROMOTE_SIGNAL) is signalled, not
  // stopped and started again.
  const bool signalled = at.contains("signalled");
  std::string text = "blixard: promoted in place in " + ms_since(asked, ready_at) +
                     " under epoch " + std::to_string(promotion.epoch) + ": volume fenced " +
                     ms_since(asked, fenced_at) +
                     (signalled ? "" : ", standby workload stopped " + step("promote", "stopped")) +
                     ", volume flushed and mounted " + step("stopped", "mounted") +
                     (signalled ? ", workload signalled to take the role, to ready "
                                : ", primary workload to ready ") +
                     step("mounted", "ready");
  lock.unlock();
  if (options_.on_log) options_.on_log(options_.name, "blixard", std::move(text));
}

void LibvirtReplica::run() {
  // Until qemu closes both (the guest powered off, crashed or was destroyed).
  read_console({console_.get(), agent_.get()}, [this](std::size_t which, std::string text) {
    if (which == 0) {
      console_line(std::move(text));
    } else {
      agent_line(text);
    }
  });
  // qemu closed both: the guest is gone. Its exit is reported before libvirt's clean-up of the
  // dead qemu (about a second and a half here, which the balancer would keep sending connections
  // to it), unless it has a volume of its own: then once libvirt has let go of the disk a
  // successor may attach (libvirt gives a dead guest's disk back to its old owner). A disk
  // shared with the set's other guests is never given back (libvirt's security drivers skip
  // shared disks): its exit is reported once its qemu is gone, and no longer writes.
  const bool has_volume = options_.volume.has_value() && !shared_disk_;
  if (has_volume) destroy_domain();
  if (shared_disk_) await_qemu_exit();
  ReplicaExit exit;
  exit.replica = options_.name;
  bool was_ready = false;
  {
    std::lock_guard lock(mutex_);
    exit.requested = requested_;
    exit.reason = exit_status_ ? "exited with status " + std::to_string(*exit_status_)
                  : requested_ ? "was stopped"
                               : "stopped (its guest powered off or crashed)";
    was_ready = state_ == State::ready;
    gone_ = true;
    changed_.notify_all();
  }
  if (was_ready && options_.on_exit) options_.on_exit(exit);
  if (!has_volume) destroy_domain();  // a guest that closed its sockets some other way, too
  network_.reset();                   // (set before this thread started)
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
  fs::remove(kept_record(work_dir(), options_.name), ignored);
  fs::remove_all(sockets_, ignored);
  {
    std::lock_guard lock(mutex_);
    state_ = State::exited;
  }
  changed_.notify_all();
  if (done_) done_();
}

// The user qemu runs as under libvirt's system instance (Debian: libvirt-qemu), which must be
// able to create the replica's sockets.
void hand_to_qemu(const fs::path& dir) {
  if (const passwd* pw = ::getpwnam("libvirt-qemu")) {
    (void)!::chown(dir.c_str(), pw->pw_uid, pw->pw_gid);
  }
}

// qemu runs as libvirt-qemu and opens a volume's image itself: every directory above the pool
// must let it through, or the guest fails with qemu's bare "Permission denied". Said first,
// naming the directory (a pool under a mkdtemp'd 0700 directory is the usual case).
void check_qemu_reaches(const fs::path& pool) {
  const passwd* pw = ::getpwnam("libvirt-qemu");
  if (pw == nullptr) return;  // another setup (qemu:///session, or root): libvirt says
  for (fs::path dir = pool; !dir.empty(); dir = dir.parent_path()) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      const bool through = (st.st_mode & S_IXOTH) != 0 ||
                           (st.st_uid == pw->pw_uid && (st.st_mode & S_IXUSR) != 0) ||
                           (st.st_gid == pw->pw_gid && (st.st_mode & S_IXGRP) != 0);
      if (!through) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        throw Error(errc::unavailable,
                    "qemu (user libvirt-qemu) cannot reach storage pool " + pool.string() + ": " +
                        dir.string() + " is mode " + mode +
                        " (let it through with `chmod o+x`, or make the pool elsewhere)",
                    "storage");
      }
    }
    if (dir == dir.root_path()) break;
  }
}

class LibvirtDriver final : public Driver {
 public:
  explicit LibvirtDriver(LibvirtOptions options) : options_(std::move(options)) {
    virSetErrorFunc(nullptr, [](void*, virErrorPtr) {});  // errors are ours to report
    conn_.reset(virConnectOpen(options_.uri.c_str()));
    if (!conn_) {
      throw Error(errc::unavailable,
                  libvirt_error("cannot connect to libvirt at " + options_.uri) +
                      " (is libvirtd running? start `virtlogd -d` and `libvirtd -d`)");
    }
    kvm_ = options_.kvm ? *options_.kvm : probe_accel().kvm;
    prefix_ = "blixard-" + path_hash(options_.work_dir) + "-";
    // This driver's own names (sockets, templates) never meet an earlier driver's guests, which
    // adopt() may take back.
    std::array<unsigned char, 3> nonce{};
    if (::getrandom(nonce.data(), nonce.size(), 0) != static_cast<ssize_t>(nonce.size())) {
      nonce = {static_cast<unsigned char>(::getpid()), static_cast<unsigned char>(::getpid() >> 8),
               static_cast<unsigned char>(std::time(nullptr))};
    }
    nonce_ = to_hex(nonce.data(), nonce.size()) + "-";
    if (!options_.adopt) destroy_leftovers();
    if (options_.image_cache.empty()) options_.image_cache = options_.work_dir / "images";
    // qemu (another user) reaches the replicas' files, sockets and images through these.
    std::error_code ec;
    for (const auto& d : {options_.work_dir / "replicas", k_socket_root, options_.image_cache}) {
      fs::create_directories(d, ec);
      for (const auto& traversed : {d, d.parent_path()}) {
        fs::permissions(traversed, fs::perms::others_exec, fs::perm_options::add, ec);
      }
    }
    fs::permissions(options_.image_cache, fs::perms::others_read, fs::perm_options::add, ec);
    fs::create_directories(options_.work_dir / k_kept_dir, ec);
    fs::permissions(options_.work_dir / k_kept_dir, fs::perms::owner_all, ec);
    // Save images hold a guest's memory: root's only (qemu never opens them, libvirtd reads them
    // for it). An earlier driver's are stale (their templates' names are reused).
    fs::remove_all(snapshot_dir(), ec);
    if (options_.snapshots > 0) {
      fs::create_directories(snapshot_dir(), ec);
      fs::permissions(snapshot_dir(), fs::perms::owner_all, ec);
      maker_ = std::thread([this] { make_snapshots(); });
    }
  }
  ~LibvirtDriver() override { shutdown(); }

  std::string name() const override { return "libvirt"; }

  std::shared_ptr<Instance> start(const InstanceOptions&) override {
    throw Error(errc::unavailable, "the libvirt driver runs VM replicas; functions run sandboxed");
  }
  InvocationResult invoke(const Invocation&) override {
    throw Error(errc::unavailable, "the libvirt driver runs VM replicas; functions run sandboxed");
  }

  std::shared_ptr<Replica> start_replica(const ReplicaOptions& options) override {
    {
      std::lock_guard lock(mutex_);
      if (closed_) throw Error(errc::unavailable, "the libvirt driver is shut down");
      if (!names_.insert(options.name).second) {
        throw Error(errc::already_exists, "replica " + options.name + " runs here already");
      }
    }
    const auto began = Clock::now();
    // The save image it is restored from, if any: free again once its guest is gone.
    auto snapshot = std::make_shared<std::shared_ptr<SnapshotLease>>();
    auto done = [this, name = options.name, snapshot] {
      if (*snapshot) give_back(*snapshot);
      std::lock_guard lock(mutex_);
      names_.erase(name);
      idle_.notify_all();
    };
    const fs::path dir = options_.work_dir / "replicas" / options.name;
    const fs::path sockets = k_socket_root / (prefix_ + nonce_ + std::to_string(++started_));
    std::shared_ptr<LibvirtReplica> replica;
    try {
      const GuestImage image = guest_image();
      // A guest that needs nothing a template lacks (a disk, a second interface) is restored
      // from a save image of its shape when one is free.
      if (options_.snapshots > 0 && !options.volume && !options.network &&
          options.spec.memory_mib() >= k_min_guest_mib) {
        *snapshot =
            take_snapshot(guest_shape(options.spec, image, kvm_, options_.program_tree), image);
      }
      std::error_code ec;
      for (const auto& d : {dir, sockets}) {
        fs::remove_all(d, ec);
        fs::create_directories(d);
        hand_to_qemu(d);
      }
      fs::path volume;
      if (options.volume) {
        fence_volume(*options.volume);  // a fenced start gets no disk
        try {
          volume = volume_image(*options.volume);
        } catch (const Error& e) {
          // A standby serves without it: its promotion is then a primary started afresh.
          if (!options.volume->standby()) throw;
          if (options.on_log) {
            options.on_log(options.name, "blixard",
                           std::string("blixard: the standby holds no volume: ") + e.what());
          }
        }
      }
      const auto prepared = Clock::now();
      replica = std::make_shared<LibvirtReplica>(options, conn_.get(), prefix_ + options.name, dir,
                                                 sockets, *snapshot, done);
      std::weak_ptr<LibvirtReplica> weak = replica;
      replica->start(options_, image, kvm_, volume, began, prepared);
      std::lock_guard lock(mutex_);
      std::erase_if(replicas_, [](const auto& r) { return r.expired(); });
      replicas_.push_back(weak);
      return replica;
    } catch (...) {
      // A replica whose thread runs calls `done` itself once its guest is gone.
      if (!replica || !replica->watching()) {
        std::error_code ec;
        fs::remove_all(dir, ec);
        fs::remove_all(sockets, ec);
        done();
      }
      throw;
    }
  }

  std::vector<AdoptedReplica> adopt(
      const ReplicaOptions::LogCallback& on_log,
      const std::function<void(const ReplicaExit&)>& on_exit) override {
    // The records of the guests an earlier driver had ready, by domain.
    std::map<std::string, std::pair<fs::path, v1::KeptReplica>> kept;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(options_.work_dir / k_kept_dir, ec)) {
      auto record = read_kept_record(entry.path());
      if (!record || record->domain().empty()) continue;
      const std::string domain = record->domain();
      const std::string replica = record->assignment().replica();
      kept[domain] = {options_.work_dir / "replicas" / replica, std::move(*record)};
    }
    std::vector<AdoptedReplica> adopted;
    std::set<fs::path> taken;  // their directories and sockets' directories
    virDomainPtr* domains = nullptr;
    const int n = virConnectListAllDomains(conn_.get(), &domains, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    for (int i = 0; i < n; ++i) {
      Domain dom(domains[i]);
      const char* got = virDomainGetName(dom.get());
      const std::string name = got != nullptr ? got : "";
      if (name.rfind(prefix_, 0) != 0) continue;  // not this node's
      auto it = kept.find(name);
      std::shared_ptr<LibvirtReplica> replica;
      if (it != kept.end() && !it->second.second.assignment().replica().empty()) {
        const auto& [dir, record] = it->second;
        try {
          replica = take_back(dir, record, on_log, on_exit);
          adopted.push_back({replica, record.assignment().epoch()});
          taken.insert(dir);
          taken.insert(record.sockets());
          taken.insert(kept_record(options_.work_dir, record.assignment().replica()));
        } catch (const std::exception& e) {
          replica.reset();  // destroyed below: an earlier agent's guest nothing can reach
          spdlog::warn("libvirt: cannot take back replica {} ({}): destroying its guest",
                       record.assignment().replica(), e.what());
        }
      }
      if (!replica) virDomainDestroy(dom.get());
    }
    ::free(domains);  // NOLINT(cppcoreguidelines-no-malloc): libvirt's allocation
    // What the guests not taken back left: their files and sockets.
    for (const auto& root :
         {options_.work_dir / "replicas", options_.work_dir / k_kept_dir, k_socket_root}) {
      for (const auto& entry : fs::directory_iterator(root, ec)) {
        const bool ours =
            root != k_socket_root || entry.path().filename().string().rfind(prefix_, 0) == 0;
        if (ours && taken.count(entry.path()) == 0) fs::remove_all(entry.path(), ec);
      }
    }
    return adopted;
  }

  void remove_volume(const v1::VolumeAttachment& volume) override {
    {
      std::lock_guard lock(storage_mutex_);
      Pool pool(virStoragePoolLookupByTargetPath(conn_.get(), volume.pool_path().c_str()));
      const std::string file = volume_path(volume, k_volume_image).filename().string();
      StorageVolume vol(pool ? virStorageVolLookupByName(pool.get(), file.c_str()) : nullptr);
      if (vol && virStorageVolDelete(vol.get(), 0) != 0) {
        throw Error(errc::unavailable, libvirt_error("cannot delete volume " + volume.name()));
      }
    }
    remove_volume_data(volume);  // what libvirt did not make (a sandbox replica's directory)
  }

  void detach() override {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;  // later starts fail; shutdown() does nothing more
    }
    {
      std::lock_guard snap_lock(snapshot_mutex_);
      stopping_ = true;
    }
    snapshot_changed_.notify_all();
    if (maker_.joinable()) maker_.join();  // its template destroyed
    // The guests, their files and sockets stay for the next agent; the save images go (the next
    // driver removes them anyway).
    std::error_code ec;
    fs::remove_all(snapshot_dir(), ec);
  }

  void shutdown() override {
    std::vector<std::shared_ptr<LibvirtReplica>> live;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      for (auto& w : replicas_) {
        if (auto r = w.lock()) live.push_back(std::move(r));
      }
    }
    for (auto& r : live) r->kill();
    {
      std::lock_guard snap_lock(snapshot_mutex_);
      stopping_ = true;
    }
    snapshot_changed_.notify_all();
    if (maker_.joinable()) maker_.join();  // its template destroyed
    destroy_leftovers();                   // starts that failed half-way
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return names_.empty(); });
    lock.unlock();
    // The replicas' files went with them, and the save images go (a guest's memory each); the
    // kernel and base stay for the next start.
    std::error_code ec;
    fs::remove_all(snapshot_dir(), ec);
    fs::remove_all(options_.work_dir / "replicas", ec);
    fs::remove_all(options_.work_dir / k_kept_dir, ec);
    fs::remove(options_.work_dir, ec);  // unless it holds the image cache
  }

 private:
  // The kernel and base archive, looked for again (/boot, modules.dep: about 10 ms) at most once
  // a minute (a kernel upgraded meanwhile is booted from then on) or when a file went.
  GuestImage guest_image() {
    std::lock_guard lock(image_mutex_);
    const auto now = Clock::now();
    std::error_code ec;
    if (!image_ || now - image_checked_ > std::chrono::minutes(1) ||
        !fs::exists(image_->kernel.vmlinux, ec) || !fs::exists(image_->initramfs, ec)) {
      GuestImage image;
      image.kernel = image::find_guest_kernel(options_.image_cache);
      image.initramfs = image::base_initramfs(image.kernel, options_.image_cache);
      image.identity = file_identity(image.kernel.vmlinux) + file_identity(image.initramfs);
      image_ = std::move(image);
      image_checked_ = now;
    }
    return *image_;
  }

  // The volume's disk image, made through libvirt's storage API on first use: a raw file in a
  // (transient) dir pool on the pool's directory, formatted ext4 here with its root the
  // workload's (nobody's), sparse until written.
  fs::path volume_image(const v1::VolumeAttachment& volume) {
    if (volume.format() == k_volume_directory) {
      throw Error(errc::invalid_spec,
                  "volume " + volume.name() +
                      " was made as a directory for a sandbox replica: a guest cannot mount it; "
                      "run the set with driver sandbox, or delete the volume",
                  "storage");
    }
    check_qemu_reaches(volume.pool_path());
    std::lock_guard lock(storage_mutex_);
    Pool pool = storage_pool(volume.pool_path());
    const std::string file = volume_path(volume, k_volume_image).filename().string();
    virStoragePoolRefresh(pool.get(), 0);  // made by another agent sharing the directory
    StorageVolume vol(virStorageVolLookupByName(pool.get(), file.c_str()));
    if (!vol) {
      const std::string xml = "<volume><name>" + xml_escaped(file) +
                              "</name><capacity unit='MiB'>" + std::to_string(volume.size_mib()) +
                              "</capacity><allocation>0</allocation><target><format type='raw'/>"
                              "<permissions><mode>0600</mode></permissions></target></volume>";
      vol.reset(virStorageVolCreateXML(pool.get(), xml.c_str(), 0));
      if (!vol) {
        throw Error(errc::unavailable, libvirt_error("cannot make volume " + volume.name() +
                                                     " in " + volume.pool_path()));
      }
      const fs::path path = volume_path(volume, k_volume_image);
      std::string output;
      if (!run_program(
              {"mkfs.ext4", "-q", "-F", "-m", "0", "-E",
               "lazy_itable_init=1,lazy_journal_init=1,root_owner=65534:65534", path.string()},
              output)) {
        virStorageVolDelete(vol.get(), 0);
        throw Error(errc::unavailable, "cannot format volume " + volume.name() +
                                           " (mkfs.ext4, from e2fsprogs): " + output);
      }
    }
    return volume_path(volume, k_volume_image);
  }

  // The running storage pool on `dir`: libvirt's if it has one, else a transient one of ours.
  Pool storage_pool(const std::string& dir) {
    Pool pool(virStoragePoolLookupByTargetPath(conn_.get(), dir.c_str()));
    if (pool && (virStoragePoolIsActive(pool.get()) == 1 ||
                 virStoragePoolCreate(pool.get(), VIR_STORAGE_POOL_CREATE_WITH_BUILD) == 0)) {
      return pool;
    }
    const std::string xml = "<pool type='dir'><name>blixard-" + path_hash(dir) +
                            "</name><target><path>" + xml_escaped(dir) + "</path></target></pool>";
    pool.reset(
        virStoragePoolCreateXML(conn_.get(), xml.c_str(), VIR_STORAGE_POOL_CREATE_WITH_BUILD));
    if (!pool) {
      throw Error(errc::unavailable, libvirt_error("cannot open the storage pool on " + dir));
    }
    return pool;
  }

  fs::path snapshot_dir() const { return options_.work_dir / "snapshots"; }

  // Save images of one shape of guest.
  struct SnapshotPool {
    DomainConfig shape;
    std::string identity;  // of the kernel and base the templates booted
    std::vector<std::shared_ptr<SnapshotLease>> free, lent;
    std::size_t making = 0;  // queued or booting
    std::size_t failures = 0;
    Clock::time_point used;
  };

  // A free save image of `shape` lent to a replica, or nullptr (it boots afresh). Images of
  // another kernel or base go, and a shape short of images gets more made in the background.
  std::shared_ptr<SnapshotLease> take_snapshot(const DomainConfig& shape, const GuestImage& image) {
    DomainConfig key_config = shape;  // no name, no sockets: the shape alone
    const std::string key = sha256_hex(domain_xml(key_config) + image.identity).substr(0, 12);
    std::lock_guard lock(snapshot_mutex_);
    if (stopping_) return nullptr;
    for (auto it = pools_.begin(); it != pools_.end();) {
      it = it->second.identity != image.identity ? retire(it) : std::next(it);
    }
    auto [it, added] = pools_.try_emplace(key);
    SnapshotPool& pool = it->second;
    if (added) {
      pool.shape = shape;
      pool.identity = image.identity;
      while (pools_.size() > k_snapshot_shapes) {  // the least recently started shape goes
        auto oldest = pools_.begin();
        for (auto p = pools_.begin(); p != pools_.end(); ++p) {
          if (p->first != key && (oldest->first == key || p->second.used < oldest->second.used))
            oldest = p;
        }
        retire(oldest);
      }
    }
    pool.used = Clock::now();
    std::shared_ptr<SnapshotLease> lease;
    if (!pool.free.empty()) {
      lease = pool.free.back();
      pool.free.pop_back();
      pool.lent.push_back(lease);
    }
    while (pool.free.size() + pool.lent.size() + pool.making < options_.snapshots &&
           pool.failures < k_snapshot_attempts) {
      ++pool.making;
      to_make_.push_back(key);
    }
    snapshot_changed_.notify_all();
    return lease;
  }

  // A lent image back from its replica (whose guest is gone): free for the next, unless its
  // restore failed or its shape went meanwhile.
  void give_back(const std::shared_ptr<SnapshotLease>& lease) {
    std::lock_guard lock(snapshot_mutex_);
    for (auto& [key, pool] : pools_) {
      if (std::erase(pool.lent, lease) == 0) continue;
      if (!lease->failed && !stopping_) {
        pool.free.push_back(lease);
        return;
      }
      break;
    }
    std::error_code ec;
    fs::remove(lease->file, ec);
  }

  // Removes a pool and its free images (a lent one goes when it is given back).
  std::map<std::string, SnapshotPool>::iterator retire(
      std::map<std::string, SnapshotPool>::iterator it) {
    std::error_code ec;
    for (const auto& lease : it->second.free) fs::remove(lease->file, ec);
    return pools_.erase(it);
  }

  // The background maker: one template at a time (each is a guest's boot).
  void make_snapshots() {
    std::unique_lock lock(snapshot_mutex_);
    for (;;) {
      snapshot_changed_.wait(lock, [&] { return stopping_ || !to_make_.empty(); });
      if (stopping_) return;
      const std::string key = to_make_.front();
      to_make_.pop_front();
      auto it = pools_.find(key);
      if (it == pools_.end()) continue;  // retired meanwhile
      const DomainConfig shape = it->second.shape;
      const std::string identity = it->second.identity;
      const std::string name =
          prefix_ + "snap-" + key.substr(0, 8) + "-" + nonce_ + std::to_string(++snapshots_made_);
      lock.unlock();
      std::shared_ptr<SnapshotLease> lease;
      try {
        lease = make_snapshot(shape, name);
      } catch (const std::exception&) {
        // The shape boots afresh; a few failures and it stops trying.
      }
      lock.lock();
      it = pools_.find(key);
      if (it != pools_.end() && it->second.identity == identity) {
        --it->second.making;
        if (lease && !stopping_) {
          it->second.free.push_back(std::move(lease));
          continue;
        }
        if (!lease) ++it->second.failures;
      }
      std::error_code ec;
      if (lease) fs::remove(lease->file, ec);
    }
  }

  // Boots a template guest of `shape` named `name` until its init waits for its workload, and
  // saves it. Throws when it does not get there within the ready timeout, or the save fails.
  std::shared_ptr<SnapshotLease> make_snapshot(const DomainConfig& shape, const std::string& name) {
    auto lease = std::make_shared<SnapshotLease>();
    lease->domain = name;
    lease->sockets = k_socket_root / name;
    lease->file = snapshot_dir() / (name + ".save");
    const fs::path partial = snapshot_dir() / ("." + name + ".partial");
    std::error_code ec;
    fs::remove_all(lease->sockets, ec);
    fs::create_directories(lease->sockets);
    hand_to_qemu(lease->sockets);
    struct Cleanup {
      LibvirtDriver& driver;
      const SnapshotLease& lease;
      const fs::path& partial;
      ~Cleanup() {
        std::error_code ignored;
        fs::remove_all(lease.sockets, ignored);
        fs::remove(partial, ignored);
        Domain dom(virDomainLookupByName(driver.conn_.get(), lease.domain.c_str()));
        if (dom) virDomainDestroy(dom.get());
      }
    } cleanup{*this, *lease, partial};

    DomainConfig config = shape;
    config.name = name;
    config.console_socket = lease->sockets / "console";
    config.agent_socket = lease->sockets / "agent";
    Domain dom(virDomainCreateXML(conn_.get(), domain_xml(config).c_str(), 0));
    if (!dom) throw Error(errc::unavailable, libvirt_error("cannot boot template " + name));
    {
      // Our init says it waits before it blocks; nothing but it has run in the guest.
      UniqueFd agent = connect_unix(config.agent_socket);
      if (agent.get() < 0) throw Error(errc::unavailable, "no agent socket for " + name);
      const auto deadline = Clock::now() + options_.ready_timeout;
      std::string said;
      while (said.find(k_waiting_line) == std::string::npos) {
        if (Clock::now() >= deadline || said.size() > 4096) {
          throw Error(errc::timeout, "template " + name + " did not wait for its workload");
        }
        {
          std::lock_guard lock(snapshot_mutex_);
          if (stopping_) throw Error(errc::unavailable, "the driver stops");
        }
        pollfd p{agent.get(), POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        std::array<char, 512> buf{};
        const ssize_t n = ::read(agent.get(), buf.data(), buf.size());
        if (n <= 0) throw Error(errc::unavailable, "template " + name + " ended before it waited");
        said.append(buf.data(), static_cast<std::size_t>(n));
      }
    }
    if (virDomainSaveFlags(dom.get(), partial.c_str(), nullptr, 0) != 0) {
      throw Error(errc::unavailable, libvirt_error("cannot save template " + name));
    }
    // Whatever libvirt made it, root's alone before it is used.
    if (::chown(partial.c_str(), 0, 0) != 0 || ::chmod(partial.c_str(), 0600) != 0 ||
        ::rename(partial.c_str(), lease->file.c_str()) != 0) {
      throw Error(errc::unavailable,
                  "cannot keep " + lease->file.string() + ": " + std::strerror(errno));
    }
    char* xml = virDomainSaveImageGetXMLDesc(conn_.get(), lease->file.c_str(),
                                             VIR_DOMAIN_SAVE_IMAGE_XML_SECURE);
    if (xml == nullptr) {
      fs::remove(lease->file, ec);
      throw Error(errc::unavailable, libvirt_error("cannot read back " + lease->file.string()));
    }
    lease->xml = xml;
    ::free(xml);  // NOLINT(cppcoreguidelines-no-malloc): libvirt's allocation
    return lease;
  }

  // One guest of an earlier driver's back under this one (LibvirtReplica::take_back).
  std::shared_ptr<LibvirtReplica> take_back(
      const fs::path& dir, const v1::KeptReplica& record, const ReplicaOptions::LogCallback& on_log,
      const std::function<void(const ReplicaExit&)>& on_exit) {
    ReplicaOptions options = kept_replica_options(record, on_log, on_exit);
    {
      std::lock_guard lock(mutex_);
      if (closed_) throw Error(errc::unavailable, "the libvirt driver is shut down");
      if (!names_.insert(options.name).second) {
        throw Error(errc::already_exists, "replica " + options.name + " runs here already");
      }
    }
    auto done = [this, name = options.name] {
      std::lock_guard lock(mutex_);
      names_.erase(name);
      idle_.notify_all();
    };
    auto replica = std::make_shared<LibvirtReplica>(options, conn_.get(), record.domain(), dir,
                                                    fs::path(record.sockets()), nullptr, done);
    try {
      replica->take_back(record);
    } catch (...) {
      done();
      throw;
    }
    std::lock_guard lock(mutex_);
    replicas_.push_back(replica);
    return replica;
  }

  void destroy_leftovers() {
    virDomainPtr* domains = nullptr;
    const int n = virConnectListAllDomains(conn_.get(), &domains, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    for (int i = 0; i < n; ++i) {
      const char* name = virDomainGetName(domains[i]);
      if (name != nullptr && std::string(name).rfind(prefix_, 0) == 0) {
        virDomainDestroy(domains[i]);
      }
      virDomainFree(domains[i]);
    }
    ::free(domains);  // NOLINT(cppcoreguidelines-no-malloc): libvirt's allocation
  }

  LibvirtOptions options_;
  Connection conn_;
  bool kvm_ = false;
  std::string prefix_;
  std::mutex mutex_;
  std::mutex storage_mutex_;  // one pool or volume made at a time
  std::mutex image_mutex_;
  std::optional<GuestImage> image_;
  Clock::time_point image_checked_;
  std::condition_variable idle_;
  std::set<std::string> names_;  // starting or running: a name leaves once its guest is gone
  std::vector<std::weak_ptr<LibvirtReplica>> replicas_;
  std::atomic<std::uint64_t> started_{0};
  bool closed_ = false;
  // Save images (take_snapshot), made on maker_.
  std::mutex snapshot_mutex_;
  std::condition_variable snapshot_changed_;
  std::map<std::string, SnapshotPool> pools_;  // by shape
  std::deque<std::string> to_make_;            // shapes short of an image each
  std::uint64_t snapshots_made_ = 0;
  std::string nonce_;  // this driver's, in its socket directories' and templates' names
  bool stopping_ = false;
  std::thread maker_;
};

}  // namespace

LibvirtOptions libvirt_options(const fs::path& data_dir, std::string uri, std::size_t snapshots) {
  // Not under /var/lib/blixard: that is a data dir in docs/nodes.md, and data dirs are 0700.
  const fs::path root = "/var/lib/blixard-guests";
  LibvirtOptions options;
  options.uri = std::move(uri);
  options.work_dir = root / path_hash(data_dir);
  options.image_cache = root / "images";
  options.snapshots = snapshots;
  return options;
}

std::unique_ptr<Driver> make_libvirt_driver(LibvirtOptions options) {
  return std::make_unique<LibvirtDriver>(std::move(options));
}

}  // namespace blixard::runtime
