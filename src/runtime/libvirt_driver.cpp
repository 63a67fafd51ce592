// VM replicas as libvirt guests (see libvirt_driver.hpp).
#include "runtime/libvirt_driver.hpp"

#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <string_view>
#include <thread>

#include "blixard/error.hpp"
#include "common/health_check.hpp"
#include "image/guest_image.hpp"
#include "runtime/accel.hpp"
#include "runtime/console.hpp"
#include "runtime/domain_xml.hpp"
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
constexpr std::string_view k_exit_line = "BLIXARD-EXIT ";
const fs::path k_socket_root = "/run/blixard";
constexpr std::uint64_t k_min_guest_mib = 128;

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

class LibvirtReplica final : public Replica, public std::enable_shared_from_this<LibvirtReplica> {
 public:
  // `dir` holds its files, `sockets` (a short path: a unix socket's is at most 107 bytes) its
  // console and agent sockets; both are removed when it is gone.
  LibvirtReplica(ReplicaOptions options, virConnectPtr conn, std::string domain, fs::path dir,
                 fs::path sockets, std::function<void()> done)
      : options_(std::move(options)),
        conn_(conn),
        domain_(std::move(domain)),
        dir_(std::move(dir)),
        sockets_(std::move(sockets)),
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

  // `volume_image`: the volume's disk image when it has one (attached as /dev/vda).
  void start(const LibvirtOptions& driver, const image::GuestKernel& kernel, bool kvm,
             const fs::path& volume_image);
  // Whether its thread runs (and will call `done` once the guest is gone), after start().
  bool watching() const { return watching_; }

 private:
  enum class State { starting, ready, exited };

  void destroy_domain() const {
    Domain dom(virDomainLookupByName(conn_, domain_.c_str()));
    if (dom) virDomainDestroy(dom.get());
  }
  void run();
  void console_line(std::string text);
  void agent_line(const std::string& text);

  ReplicaOptions options_;
  virConnectPtr conn_;
  std::string domain_;
  fs::path dir_, sockets_;
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
  if (std::string_view(text) != k_ready_line) return;
  std::lock_guard lock(mutex_);
  guest_ready_ = true;
  changed_.notify_all();
}

void LibvirtReplica::start(const LibvirtOptions& driver, const image::GuestKernel& kernel, bool kvm,
                           const fs::path& volume_image) {
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
  const auto began = Clock::now();
  const std::string replica = options_.slot.empty() ? options_.name : options_.slot;
  image::Workload workload;
  workload.command.assign(spec.command().begin(), spec.command().end());
  workload.env.insert(spec.env().begin(), spec.env().end());
  workload.env["BLIXARD_VM"] = options_.vm;
  workload.ports.assign(spec.ports().begin(), spec.ports().end());
  workload.replica = replica;
  workload.files.insert(spec.files().begin(), spec.files().end());
  if (!volume_image.empty()) workload.volume_mount = options_.volume->mount_point();
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

  DomainConfig config;
  config.name = domain_;
  config.memory_mib = spec.memory_mib();
  config.balloon_mib = spec.microvm().balloon_mem();
  config.vcpus = spec.vcpu() != 0 ? spec.vcpu() : 1;
  config.kvm = kvm;
  config.kernel = kernel.vmlinux;
  config.initrd =
      image::build_initramfs(kernel, workload, driver.image_cache, dir_ / "initramfs.img");
  config.cmdline = image::guest_cmdline();
  config.shares.push_back({"usr", driver.program_tree, true});
  config.console_socket = sockets_ / "console";
  config.agent_socket = sockets_ / "agent";
  config.forwards = ports_;
  if (!volume_image.empty()) config.disks.push_back(volume_image);
  config.bridge = bridge;
  config.bridge_mac = mac;
  const std::string xml = domain_xml(config);

  Domain dom(virDomainCreateXML(conn_, xml.c_str(), 0));
  if (!dom) {
    throw Error(errc::unavailable, libvirt_error("libvirt did not start " + options_.name));
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

  // Ready: the console marker, or the guest init's word (its first port accepts inside the
  // guest: the forwarded host port accepts before that, qemu's user network answers for it),
  // then the HTTP path through the forwarded port where the spec asks for one.
  const auto& r = spec.readiness();
  auto ready_timeout = driver.ready_timeout;  // or the spec's shorter one (readiness.timeout)
  if (const auto& t = r.timeout(); t.seconds() > 0 || t.nanos() > 0) {
    ready_timeout =
        std::min(ready_timeout, milliseconds(t.seconds() * 1000 + t.nanos() / 1'000'000));
  }
  const auto deadline = began + ready_timeout;
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
                                     std::to_string(ready_timeout.count()) + " ms" +
                                     tail_.describe());
    }
    changed_.wait_for(lock, k_http_ready_poll);
  }
  state_ = State::ready;
  started_in_ = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - began);
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
  destroy_domain();  // a guest that closed its sockets some other way is gone all the same
  network_.reset();  // (set before this thread started)
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
  std::error_code ignored;
  fs::remove_all(dir_, ignored);
  fs::remove_all(sockets_, ignored);
  if (was_ready && options_.on_exit) options_.on_exit(exit);
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
    destroy_leftovers();
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
    auto done = [this, name = options.name] {
      std::lock_guard lock(mutex_);
      names_.erase(name);
      idle_.notify_all();
    };
    const fs::path dir = options_.work_dir / "replicas" / options.name;
    const fs::path sockets = k_socket_root / (prefix_ + std::to_string(++started_));
    std::shared_ptr<LibvirtReplica> replica;
    try {
      std::error_code ec;
      for (const auto& d : {dir, sockets}) {
        fs::remove_all(d, ec);
        fs::create_directories(d);
        hand_to_qemu(d);
      }
      const auto kernel = image::find_guest_kernel(options_.image_cache);
      const fs::path volume = options.volume ? volume_image(*options.volume) : fs::path();
      replica = std::make_shared<LibvirtReplica>(options, conn_.get(), prefix_ + options.name, dir,
                                                 sockets, done);
      std::weak_ptr<LibvirtReplica> weak = replica;
      replica->start(options_, kernel, kvm_, volume);
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
    destroy_leftovers();  // starts that failed half-way
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return names_.empty(); });
    // The replicas' files went with them; the images stay for the next start.
    std::error_code ec;
    fs::remove_all(options_.work_dir / "replicas", ec);
    fs::remove(options_.work_dir, ec);  // unless it holds the image cache
  }

 private:
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
  std::condition_variable idle_;
  std::set<std::string> names_;  // starting or running: a name leaves once its guest is gone
  std::vector<std::weak_ptr<LibvirtReplica>> replicas_;
  std::atomic<std::uint64_t> started_{0};
  bool closed_ = false;
};

}  // namespace

LibvirtOptions libvirt_options(const fs::path& data_dir, std::string uri) {
  // Not under /var/lib/blixard: that is a data dir in docs/nodes.md, and data dirs are 0700.
  const fs::path root = "/var/lib/blixard-guests";
  LibvirtOptions options;
  options.uri = std::move(uri);
  options.work_dir = root / path_hash(data_dir);
  options.image_cache = root / "images";
  return options;
}

std::unique_ptr<Driver> make_libvirt_driver(LibvirtOptions options) {
  return std::make_unique<LibvirtDriver>(std::move(options));
}

}  // namespace blixard::runtime
