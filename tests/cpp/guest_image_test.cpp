// The guest image builder (src/image): the kernel it unpacks, the initramfs it writes, and real
// boots of both under qemu (TCG on these machines), checked from outside the guest: readiness on
// the agent's serial port, HTTP through a forwarded port, what the workload could see, and the
// guest ending itself when its workload exits.
#include "image/guest_image.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <elf.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace blixard::image {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test_support::eventually;

extern "C" char** environ;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = "/tmp/blixard-guest-XXXXXX";
    path = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// The unpacked kernel is 50-70 MB: the boot tests of one build tree share one.
fs::path shared_cache() { return fs::path(BLIXARD_BINARY_DIR) / "guest-image-cache"; }

// Read independently of the library: a PT_NOTE holding the Xen note XEN_ELFNOTE_PHYS32_ENTRY (18),
// which qemu needs to boot an ELF kernel.
bool has_pvh_note(const std::string& elf) {
  Elf64_Ehdr eh{};
  if (elf.size() < sizeof eh) return false;
  std::memcpy(&eh, elf.data(), sizeof eh);
  for (std::size_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph{};
    std::memcpy(&ph, elf.data() + eh.e_phoff + i * eh.e_phentsize, sizeof ph);
    if (ph.p_type != PT_NOTE) continue;
    for (std::size_t at = ph.p_offset; at + sizeof(Elf64_Nhdr) <= ph.p_offset + ph.p_filesz;) {
      Elf64_Nhdr nh{};
      std::memcpy(&nh, elf.data() + at, sizeof nh);
      const std::string name(elf.data() + at + sizeof nh, nh.n_namesz);
      if (nh.n_type == 18 && name == std::string("Xen\0", 4)) return true;
      at += sizeof nh + ((nh.n_namesz + 3) & ~3u) + ((nh.n_descsz + 3) & ~3u);
    }
  }
  return false;
}

struct CpioEntry {
  std::string name;
  unsigned mode = 0;
  std::string data;
};
struct CpioArchive {
  std::string bytes;  // this archive alone, for libarchive
  std::vector<CpioEntry> entries;
};

// Walks concatenated "newc" archives the way the kernel's initramfs unpacker does: each ends with
// a TRAILER!!! entry, and NUL padding between archives is skipped.
std::vector<CpioArchive> split_newc(const std::string& bytes) {
  const auto field = [&](std::size_t header, std::size_t index) {
    return static_cast<unsigned>(std::stoul(bytes.substr(header + 6 + index * 8, 8), nullptr, 16));
  };
  const auto aligned = [](std::size_t n) { return (n + 3) & ~std::size_t{3}; };
  std::vector<CpioArchive> archives;
  std::size_t at = 0;
  while (at < bytes.size()) {
    if (bytes[at] == '\0') {
      ++at;
      continue;
    }
    const std::size_t start = at;
    CpioArchive archive;
    for (;;) {
      if (bytes.compare(at, 6, "070701") != 0) {
        ADD_FAILURE() << "no newc header at byte " << at;
        return archives;
      }
      const unsigned mode = field(at, 1), size = field(at, 6), name_size = field(at, 11);
      const std::string name = bytes.substr(at + 110, name_size - 1);
      const std::size_t data_at = aligned(at + 110 + name_size);
      at = aligned(data_at + size);
      if (name == "TRAILER!!!") break;
      archive.entries.push_back({name, mode, bytes.substr(data_at, size)});
    }
    archive.bytes = bytes.substr(start, at - start);
    archives.push_back(std::move(archive));
  }
  return archives;
}

// The entries libarchive reads from one archive, or a test failure.
std::vector<std::string> libarchive_names(const std::string& archive_bytes) {
  archive* a = archive_read_new();
  archive_read_support_format_cpio(a);
  std::vector<std::string> names;
  EXPECT_EQ(archive_read_open_memory(a, archive_bytes.data(), archive_bytes.size()), ARCHIVE_OK);
  archive_entry* e = nullptr;
  int rc = ARCHIVE_OK;
  while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
    EXPECT_EQ(archive_format(a), ARCHIVE_FORMAT_CPIO_SVR4_NOCRC) << archive_format_name(a);
    names.emplace_back(archive_entry_pathname(e));
  }
  EXPECT_EQ(rc, ARCHIVE_EOF) << archive_error_string(a);
  archive_read_free(a);
  return names;
}

const CpioEntry* find_entry(const CpioArchive& archive, const std::string& name) {
  for (const auto& e : archive.entries)
    if (e.name == name) return &e;
  return nullptr;
}

unsigned short free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

constexpr const char* k_qemu = "/usr/bin/qemu-system-x86_64";
constexpr unsigned k_guest_http_port = 8080;

// One qemu running a guest, killed when the test ends however it ends.
class Guest {
 public:
  Guest(const GuestKernel& kernel, const fs::path& initramfs) : http_port_(free_loopback_port()) {
    const std::string hostfwd = "hostfwd=tcp:127.0.0.1:" + std::to_string(http_port_) +
                                "-:" + std::to_string(k_guest_http_port);
    // clang-format off
    argv_ = {k_qemu,
             "-accel", "tcg",
             "-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=on",
             "-cpu", "max", "-m", "128", "-smp", "1",
             "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
             "-kernel", kernel.vmlinux.string(),
             "-initrd", initramfs.string(),
             "-append", guest_cmdline(),
             "-serial", "file:" + console_path().string(),
             "-fsdev", "local,id=usr,path=/usr,security_model=none,readonly=on",
             "-device", "virtio-9p-device,fsdev=usr,mount_tag=usr",
             "-netdev", "user,id=n0,restrict=on," + hostfwd,
             "-device", "virtio-net-device,netdev=n0",
             "-device", "virtio-serial-device",
             "-chardev", "socket,id=agent,path=" + agent_path().string() + ",server=on,wait=off",
             "-device", "virtserialport,chardev=agent,name=org.blixard.agent"};
    // clang-format on
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&files, 1, (dir_.path / "qemu.log").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&files, 1, 2);
    std::vector<char*> argv;
    for (auto& arg : argv_) argv.push_back(arg.data());
    argv.push_back(nullptr);
    started_ = std::chrono::steady_clock::now();
    const int rc = ::posix_spawn(&pid_, k_qemu, &files, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&files);
    if (rc != 0) {
      pid_ = -1;
      ADD_FAILURE() << "cannot start qemu: " << std::strerror(rc);
    }
  }
  ~Guest() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (agent_fd_ >= 0) ::close(agent_fd_);
  }
  Guest(const Guest&) = delete;
  Guest& operator=(const Guest&) = delete;

  fs::path console_path() const { return dir_.path / "console.log"; }
  fs::path agent_path() const { return dir_.path / "agent.sock"; }
  std::string console() const { return read_file(console_path()); }
  std::string diagnostics() const {
    return "qemu: " + read_file(dir_.path / "qemu.log") + "\nconsole:\n" + console();
  }
  unsigned short http_port() const { return http_port_; }
  std::string command_line() const {
    std::string line;
    for (const auto& arg : argv_) {
      const bool plain = arg.find(' ') == std::string::npos;
      line += (line.empty() ? "" : " ") + (plain ? arg : "'" + arg + "'");
    }
    return line;
  }

  // Reads the agent's port until `marker` arrives; the time from qemu's start, or nothing.
  std::optional<std::chrono::milliseconds> wait_on_agent_port(const std::string& marker,
                                                              std::chrono::seconds limit) {
    const auto deadline = started_ + limit;
    if (agent_fd_ < 0) {
      eventually([&] { return connect_agent(); }, limit);
      if (agent_fd_ < 0) return std::nullopt;
    }
    while (agent_text_.find(marker) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) return std::nullopt;
      pollfd p{agent_fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      std::array<char, 512> buf{};
      const ssize_t n = ::read(agent_fd_, buf.data(), buf.size());
      if (n <= 0) return std::nullopt;
      agent_text_.append(buf.data(), static_cast<std::size_t>(n));
    }
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 started_);
  }

  // Writes to the agent's port (the host's side of it), connecting first.
  bool send_on_agent_port(const std::string& bytes) {
    if (agent_fd_ < 0 && !eventually([&] { return connect_agent(); }, 30s)) return false;
    return ::send(agent_fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }

  // Closes the host's side of the agent's port (an agent that stopped); the next send connects
  // again.
  void disconnect_agent() {
    if (agent_fd_ >= 0) ::close(agent_fd_);
    agent_fd_ = -1;
  }

  // All the agent's port said, once qemu has exited (and closed it).
  std::string drain_agent_port() {
    std::array<char, 512> buf{};
    for (ssize_t n; agent_fd_ >= 0 && (n = ::read(agent_fd_, buf.data(), buf.size())) > 0;)
      agent_text_.append(buf.data(), static_cast<std::size_t>(n));
    return agent_text_;
  }

  // qemu's exit status once it has exited by itself within `limit`.
  std::optional<int> wait_exit(std::chrono::seconds limit) {
    int status = 0;
    const bool exited = eventually([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; },
                                   std::chrono::duration_cast<std::chrono::milliseconds>(limit));
    if (!exited) return std::nullopt;
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  bool connect_agent() {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, agent_path().c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return false;
    }
    agent_fd_ = fd;
    return true;
  }

  TempDir dir_;
  unsigned short http_port_;
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  std::chrono::steady_clock::time_point started_;
  int agent_fd_ = -1;
  std::string agent_text_;
};

bool have_qemu() { return ::access(k_qemu, X_OK) == 0; }

// What the boot test's guest serves: its replica on GET, and on GET /exit it exits with 3. It also
// reports on the console what it can see of the host.
constexpr const char* k_http_workload = R"PY(
import http.server, os
print("uid=%d gid=%d" % (os.getuid(), os.getgid()), flush=True)
for path in ("/etc/shadow", "/root", "/home", "/work"):
    print("%s %s" % (path, "visible" if os.path.exists(path) else "absent"), flush=True)
print("passwd-entries=%d" % len(open("/etc/passwd").read().splitlines()), flush=True)
try:
    open("/usr/blixard-write-test", "w")
    print("usr-writable", flush=True)
except OSError as e:
    print("usr-write-refused errno=%d" % e.errno, flush=True)

class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        env = os.environ
        body = ("replica=%s port=%s\n" % (env["BLIXARD_REPLICA"], env["PORT"])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if self.path == "/exit":
            os._exit(3)

http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Page).serve_forever()
)PY";

TEST(GuestImage, FindGuestKernelUnpacksAPvhElfOnceIntoTheCache) {
  TempDir cache;
  const GuestKernel kernel = find_guest_kernel(cache.path);
  ASSERT_EQ(kernel.vmlinux.parent_path(), cache.path);
  EXPECT_FALSE(kernel.version.empty());
  EXPECT_TRUE(fs::exists(fs::path("/lib/modules") / kernel.version));
  const std::string elf = read_file(kernel.vmlinux);
  ASSERT_GT(elf.size(), 1u << 20);
  EXPECT_EQ(elf.substr(0, 4),
            "\x7f"
            "ELF");
  EXPECT_TRUE(has_pvh_note(elf)) << kernel.vmlinux << " has no PVH entry note";

  struct stat first {};
  ASSERT_EQ(::stat(kernel.vmlinux.c_str(), &first), 0);
  const GuestKernel again = find_guest_kernel(cache.path);
  struct stat second {};
  ASSERT_EQ(::stat(again.vmlinux.c_str(), &second), 0);
  EXPECT_EQ(again.vmlinux, kernel.vmlinux);
  EXPECT_EQ(second.st_ino, first.st_ino) << "the cached kernel was written again";
  EXPECT_EQ(second.st_mtim.tv_nsec, first.st_mtim.tv_nsec);
  EXPECT_EQ(std::distance(fs::directory_iterator(cache.path), fs::directory_iterator()), 1)
      << "nothing but the kernel is left in the cache";
}

TEST(GuestImage, CmdlineCarriesThisHostsTscRate) {
  const std::string line = guest_cmdline();
  EXPECT_TRUE(line.starts_with("console=ttyS0 ")) << line;
  const auto at = line.find("tsc_early_khz=");
  ASSERT_NE(at, std::string::npos) << line;
  const long khz = std::stol(line.substr(at + 14));
  EXPECT_GT(khz, 100'000) << line;  // 100 MHz .. 10 GHz
  EXPECT_LT(khz, 10'000'000) << line;
  EXPECT_NE(line.find(" lpj=" + std::to_string(khz * 4)), std::string::npos) << line;
}

TEST(GuestImage, InitramfsIsABaseArchiveAndAReplicaArchive) {
  TempDir dir;
  const GuestKernel kernel = find_guest_kernel(shared_cache());
  Workload w;
  w.command = {"/usr/bin/python3", "-c", "print('it''s $(not run)')"};
  w.env = {{"GREETING", "it's \"quoted\"\n$HOME `x`"}, {"EMPTY", ""}};
  w.ports = {8080, 9090};
  w.replica = "web-1";
  const fs::path out = build_initramfs(kernel, w, dir.path / "cache", dir.path / "web-1.cpio");
  ASSERT_EQ(out, dir.path / "web-1.cpio");

  const auto archives = split_newc(read_file(out));
  ASSERT_EQ(archives.size(), 2u);
  const CpioArchive& base = archives[0];
  const CpioArchive& replica = archives[1];
  for (const auto& archive : archives) {
    std::vector<std::string> names;
    for (const auto& e : archive.entries) names.push_back(e.name);
    EXPECT_EQ(libarchive_names(archive.bytes), names);
  }

  const CpioEntry* init = find_entry(base, "init");
  ASSERT_NE(init, nullptr);
  EXPECT_EQ(init->mode, 0100755u);
  EXPECT_TRUE(init->data.starts_with("#!/blixard/bin/busybox sh\n"));
  const CpioEntry* busybox = find_entry(base, "blixard/bin/busybox");
  ASSERT_NE(busybox, nullptr);
  EXPECT_EQ(busybox->data.substr(0, 4),
            "\x7f"
            "ELF");
  const CpioEntry* console = find_entry(base, "dev/console");
  ASSERT_NE(console, nullptr);
  EXPECT_EQ(console->mode & 0170000, 0020000u);  // a character device
  const CpioEntry* usr_bin = find_entry(base, "bin");
  ASSERT_NE(usr_bin, nullptr);
  EXPECT_EQ(usr_bin->data, "usr/bin");  // a symlink's data is its target

  // Every module is there, uncompressed, after the modules it needs.
  const CpioEntry* order = find_entry(base, "blixard/modules/order");
  ASSERT_NE(order, nullptr);
  std::vector<std::string> modules;
  std::istringstream lines(order->data);
  for (std::string name; std::getline(lines, name);) {
    modules.push_back(name);
    const CpioEntry* module = find_entry(base, "blixard/modules/" + name + ".ko");
    ASSERT_NE(module, nullptr) << name;
    EXPECT_EQ(module->data.substr(0, 4),
              "\x7f"
              "ELF")
        << name;
  }
  const auto position = [&](const std::string& name) {
    return std::find(modules.begin(), modules.end(), name) - modules.begin();
  };
  for (const char* name : {"virtio_ring", "virtio", "virtio_mmio", "virtio_net", "virtio_console",
                           "9pnet", "9pnet_virtio", "9p"}) {
    EXPECT_LT(position(name), static_cast<long>(modules.size())) << name << " is not loaded";
  }
  EXPECT_LT(position("virtio_ring"), position("virtio"));
  EXPECT_LT(position("virtio"), position("virtio_mmio"));
  EXPECT_LT(position("9pnet"), position("9pnet_virtio"));
  EXPECT_LT(position("9pnet"), position("9p"));
  // What only a volume needs is loaded only for one, after the rest.
  EXPECT_EQ(position("ext4"), static_cast<long>(modules.size())) << "ext4 is loaded by every guest";
  const CpioEntry* volume_order = find_entry(base, "blixard/modules/order-volume");
  ASSERT_NE(volume_order, nullptr);
  EXPECT_NE(volume_order->data.find("ext4\n"), std::string::npos) << volume_order->data;
  EXPECT_NE(volume_order->data.find("virtio_blk\n"), std::string::npos) << volume_order->data;
  EXPECT_EQ(volume_order->data.find("virtio_ring\n"), std::string::npos) << volume_order->data;

  // The replica's archive holds the workload only, and a shell reads back exactly what was given.
  ASSERT_EQ(replica.entries.size(), 1u);
  ASSERT_EQ(replica.entries[0].name, "blixard/workload");
  std::ofstream(dir.path / "workload") << replica.entries[0].data;
  std::ofstream(dir.path / "read-back") << ". \"$1\"\necho \"host=$blixard_hostname "
                                           "ports=$blixard_ports\"\nprintf '[%s]\\n' \"$@\"\n";
  EXPECT_EQ(test_support::run("/bin/busybox sh " + (dir.path / "read-back").string() + " " +
                              (dir.path / "workload").string()),
            "host=web-1 ports=8080 9090\n"
            "[PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin]\n"
            "[HOME=/tmp]\n[TMPDIR=/tmp]\n[LANG=C.UTF-8]\n"
            "[EMPTY=]\n[GREETING=it's \"quoted\"\n$HOME `x`]\n"
            "[BLIXARD_REPLICA=web-1]\n[PORT=8080]\n[PORT_8080=8080]\n[PORT_9090=9090]\n"
            "[/usr/bin/python3]\n[-c]\n[print('it''s $(not run)')]");

  // The two halves on their own: the cached base (what the libvirt driver boots) and the
  // replica's archive (what it sends over the agent's port).
  EXPECT_EQ(read_file(base_initramfs(kernel, dir.path / "cache")), base.bytes);
  EXPECT_EQ(replica_archive(w), replica.bytes);

  // A second replica reuses the cached base: only the small archive differs.
  const auto base_file = *fs::directory_iterator(dir.path / "cache");
  const auto base_written = fs::last_write_time(base_file.path());
  w.replica = "web-2";
  build_initramfs(kernel, w, dir.path / "cache", dir.path / "web-2.cpio");
  EXPECT_EQ(fs::last_write_time(base_file.path()), base_written);
  const auto second = split_newc(read_file(dir.path / "web-2.cpio"));
  ASSERT_EQ(second.size(), 2u);
  EXPECT_EQ(second[0].bytes, base.bytes);
  EXPECT_NE(second[1].entries[0].data.find("'BLIXARD_REPLICA=web-2'"), std::string::npos);
}

TEST(GuestImage, RefusesWorkloadsTheGuestCannotRun) {
  TempDir dir;
  const GuestKernel kernel = find_guest_kernel(shared_cache());
  const auto refused = [&](Workload w, const std::string& field) {
    const Error e = test_support::expect_error(
        [&] { build_initramfs(kernel, w, dir.path, dir.path / "out.cpio"); }, errc::invalid_spec);
    EXPECT_EQ(e.field(), field) << e.what();
  };
  refused(Workload{}, "command");
  refused(Workload{{"python3", "-m", "http.server"}, {}, {}, "r", {}, {}, {}, {}, {}}, "command");
  refused(Workload{{"/usr/bin/true"}, {{"BAD-NAME", "x"}}, {}, "r", {}, {}, {}, {}, {}}, "env");
  refused(Workload{{"/usr/bin/true"}, {{"1ST", "x"}}, {}, "r", {}, {}, {}, {}, {}}, "env");
  refused(Workload{{"/usr/bin/true"}, {}, {0}, "r", {}, {}, {}, {}, {}}, "ports");
  refused(Workload{{"/usr/bin/true"}, {}, {70000}, "r", {}, {}, {}, {}, {}}, "ports");
  refused(Workload{{"/usr/bin/true"}, {}, {}, "r", {{"/usr/bin/sh", "x"}}, {}, {}, {}, {}},
          "files");
  refused(Workload{{"/usr/bin/true"}, {}, {}, "r", {{"/etc/../root/x", "x"}}, {}, {}, {}, {}},
          "files");
  refused(Workload{{"/usr/bin/true"}, {}, {}, "r", {{"/etc", "x"}}, {}, {}, {}, {}}, "files");
  refused(Workload{{"/usr/bin/true"}, {}, {}, "r", {}, "data", {}, {}, {}}, "storage.mountPoint");
  EXPECT_FALSE(fs::exists(dir.path / "out.cpio"));
}

TEST(GuestImage, BootsAServerThatIsReadyServesAndPowersOffWhenItExits) {
  if (!have_qemu()) GTEST_SKIP() << k_qemu << " is missing (scripts/bootstrap installs it)";
  TempDir dir;
  const GuestKernel kernel = find_guest_kernel(shared_cache());
  const fs::path initramfs = build_initramfs(kernel,
                                             Workload{{"/usr/bin/python3", "-c", k_http_workload},
                                                      {},
                                                      {k_guest_http_port},
                                                      "web-1",
                                                      {},
                                                      {},
                                                      {},
                                                      {},
                                                      {}},
                                             shared_cache(), dir.path / "web-1.cpio");

  Guest guest(kernel, initramfs);
  const auto ready = guest.wait_on_agent_port("BLIXARD-READY", 120s);
  ASSERT_TRUE(ready) << guest.diagnostics();
  std::cout << "boot to BLIXARD-READY: " << ready->count() << " ms\n"
            << "qemu command line: " << guest.command_line() << "\n";
  RecordProperty("boot_to_ready_ms", std::to_string(ready->count()));

  const std::string page =
      test_support::http_head_only(guest.http_port(), "GET / HTTP/1.0\r\n\r\n");
  EXPECT_TRUE(page.starts_with("HTTP/1.0 200")) << page << guest.diagnostics();
  EXPECT_NE(page.find("replica=web-1 port=8080"), std::string::npos) << page;

  // What the workload saw: its own unprivileged uid, our /etc, none of the host beyond /usr.
  const std::string console = guest.console();
  EXPECT_NE(console.find("uid=65534 gid=65534"), std::string::npos) << console;
  EXPECT_NE(console.find("/etc/shadow absent"), std::string::npos) << console;
  EXPECT_NE(console.find("/root absent"), std::string::npos) << console;
  EXPECT_NE(console.find("/home absent"), std::string::npos) << console;
  EXPECT_NE(console.find("/work absent"), std::string::npos) << console;
  EXPECT_NE(console.find("passwd-entries=2"), std::string::npos) << console;
  EXPECT_NE(console.find("usr-write-refused"), std::string::npos) << console;

  const std::string last =
      test_support::http_head_only(guest.http_port(), "GET /exit HTTP/1.0\r\n\r\n");
  EXPECT_TRUE(last.starts_with("HTTP/1.0 200")) << last;
  const auto status = guest.wait_exit(60s);
  ASSERT_TRUE(status) << "qemu did not exit after its workload did\n" << guest.diagnostics();
  EXPECT_EQ(*status, 0) << guest.diagnostics();
  EXPECT_NE(guest.console().find("BLIXARD-EXIT 3"), std::string::npos) << guest.diagnostics();
}

TEST(GuestImage, BootsACommandWithoutPortsThatCannotReadTheHostsSecrets) {
  if (!have_qemu()) GTEST_SKIP() << k_qemu << " is missing (scripts/bootstrap installs it)";
  TempDir dir;
  const GuestKernel kernel = find_guest_kernel(shared_cache());
  const std::string script =
      "echo \"id=$(id -u):$(id -g)\"; cat /etc/shadow; echo \"cat-shadow=$?\"; "
      "ls /root; echo \"ls-root=$?\"; echo \"replica=$BLIXARD_REPLICA\"; "
      "for port in /dev/vport*; do echo forged >\"$port\"; echo \"forge=$?\"; done; exit 7";
  const fs::path initramfs = build_initramfs(
      kernel, Workload{{"/bin/sh", "-c", script}, {}, {}, "batch-1", {}, {}, {}, {}, {}},
      shared_cache(), dir.path / "batch-1.cpio");

  Guest guest(kernel, initramfs);
  const auto ready = guest.wait_on_agent_port("BLIXARD-READY", 120s);
  ASSERT_TRUE(ready) << guest.diagnostics();
  std::cout << "boot to BLIXARD-READY, no ports: " << ready->count() << " ms\n";
  const auto status = guest.wait_exit(60s);
  ASSERT_TRUE(status) << guest.diagnostics();
  EXPECT_EQ(*status, 0);
  const std::string console = guest.console();
  EXPECT_NE(console.find("id=65534:65534"), std::string::npos) << console;
  EXPECT_NE(console.find("/etc/shadow: No such file or directory"), std::string::npos) << console;
  EXPECT_NE(console.find("cat-shadow=1"), std::string::npos) << console;
  EXPECT_NE(console.find("ls-root=2"), std::string::npos) << console;
  EXPECT_NE(console.find("replica=batch-1"), std::string::npos) << console;
  EXPECT_NE(console.find("BLIXARD-EXIT 7"), std::string::npos) << console;
  // The agent's port is root's: the workload cannot speak for the guest.
  EXPECT_NE(console.find("Permission denied"), std::string::npos) << console;
  EXPECT_NE(console.find("forge=2"), std::string::npos) << console;
  // The init's word only: when each of its steps ended (the guest's uptime), then ready.
  const std::string said = guest.drain_agent_port();
  EXPECT_TRUE(said.starts_with("BLIXARD-TIMES init=")) << said;
  EXPECT_NE(said.find(" ready="), std::string::npos) << said;
  EXPECT_EQ(std::count(said.begin(), said.end(), '\n'), 2) << said;
  EXPECT_TRUE(said.ends_with("\nBLIXARD-READY\n")) << said;
}

// The libvirt driver's way: every guest boots the cached base archive as it is, and the host
// sends the replica's own archive on the agent's port ("WORKLOAD <bytes>\n", then the bytes).
TEST(GuestImage, BootsTheBaseAloneWithTheWorkloadSentOnTheAgentsPort) {
  if (!have_qemu()) GTEST_SKIP() << k_qemu << " is missing (scripts/bootstrap installs it)";
  const GuestKernel kernel = find_guest_kernel(shared_cache());
  Workload w{{"/bin/sh", "-c", "cat /etc/blixard-test/greeting; echo \"replica=$BLIXARD_REPLICA\""},
             {},
             {},
             "sent-1",
             {{"/etc/blixard-test/greeting", "hello from the host"}},
             {},
             {},
             {},
             {}};
  const std::string archive = replica_archive(w);
  Guest guest(kernel, base_initramfs(kernel, shared_cache()));
  // Sent at once, before the guest runs its init: qemu holds it until the init opens the port.
  ASSERT_TRUE(
      guest.send_on_agent_port("WORKLOAD " + std::to_string(archive.size()) + "\n" + archive));
  const auto ready = guest.wait_on_agent_port("BLIXARD-READY", 120s);
  ASSERT_TRUE(ready) << guest.diagnostics();
  const auto status = guest.wait_exit(60s);
  ASSERT_TRUE(status) << guest.diagnostics();
  const std::string console = guest.console();
  EXPECT_NE(console.find("hello from the host"), std::string::npos) << console;
  EXPECT_NE(console.find("replica=sent-1"), std::string::npos) << console;
  EXPECT_NE(console.find("BLIXARD-EXIT 0"), std::string::npos) << console;

  // Without a workload from anywhere the guest says so and powers off.
  Guest bare(kernel, base_initramfs(kernel, shared_cache()));
  ASSERT_TRUE(bare.send_on_agent_port("NONSENSE 12\n"));
  ASSERT_TRUE(bare.wait_exit(120s)) << bare.diagnostics();
  EXPECT_NE(bare.console().find("expected WORKLOAD from the host"), std::string::npos)
      << bare.diagnostics();
  EXPECT_NE(bare.console().find("BLIXARD-EXIT 255"), std::string::npos) << bare.diagnostics();
}

// The host's side of the agent's port goes (an agent restarted) and comes back: the init keeps
// serving it, and a STOP sent on the new connection still stops the workload (the guest powers
// off with the workload's status).
TEST(GuestImage, AStopSentAfterTheHostReconnectsToTheAgentsPortStillStopsTheWorkload) {
  if (!have_qemu()) GTEST_SKIP() << k_qemu << " is missing (scripts/bootstrap installs it)";
  const GuestKernel kernel = find_guest_kernel(shared_cache());
  Workload w{{"/bin/sh", "-c", "trap 'echo stopped; exit 5' TERM; while :; do sleep 1; done"},
             {},
             {},
             "stop-1",
             {},
             {},
             {},
             {},
             {}};
  const std::string archive = replica_archive(w);
  Guest guest(kernel, base_initramfs(kernel, shared_cache()));
  ASSERT_TRUE(
      guest.send_on_agent_port("WORKLOAD " + std::to_string(archive.size()) + "\n" + archive));
  ASSERT_TRUE(guest.wait_on_agent_port("BLIXARD-READY", 120s)) << guest.diagnostics();
  guest.disconnect_agent();
  ASSERT_TRUE(eventually(
      [&] { return guest.console().find("the host left the agent port") != std::string::npos; },
      30s))
      << guest.diagnostics();
  ASSERT_TRUE(guest.send_on_agent_port("STOP\n"));
  const auto status = guest.wait_exit(60s);
  ASSERT_TRUE(status) << "the STOP after the reconnection was not served\n" << guest.diagnostics();
  EXPECT_NE(guest.console().find("stopped"), std::string::npos) << guest.diagnostics();
  EXPECT_NE(guest.console().find("BLIXARD-EXIT 5"), std::string::npos) << guest.diagnostics();
}

}  // namespace
}  // namespace blixard::image
