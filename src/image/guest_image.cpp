// Guest kernels and initramfs archives (see guest_image.hpp and docs/guest-images.md).
#include "image/guest_image.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include "blixard/error.hpp"
#include "common/digest.hpp"
#include "common/libarchive.hpp"
#include "runtime/process.hpp"

namespace blixard::detail {
std::string_view embedded_guest_init();  // guest/init, by cmake/Embed.cmake
std::string_view embedded_guest_seed();  // guest/seed.c, built freestanding at build time
}  // namespace blixard::detail

namespace blixard::image {
namespace {

namespace fs = std::filesystem;
using runtime::UniqueFd;

const fs::path k_boot_dir = "/boot";
const fs::path k_modules_dir = "/lib/modules";
constexpr std::string_view k_kernel_package_hint = "apt-get install linux-image-amd64";
// The drivers of qemu's microvm devices (virtio-mmio): network, the agent's serial port and the
// 9p share of /usr, loaded by every guest; and the volume's disk (ext4, whose checksums need
// crc32c), loaded only by a guest with a volume (ext4 and its helpers take a quarter of a second
// to load under TCG, as long as all the others). modules.dep adds what they need.
constexpr std::array<std::string_view, 5> k_guest_modules = {
    "virtio_mmio", "virtio_net", "virtio_console", "9pnet_virtio", "9p"};
constexpr std::array<std::string_view, 3> k_volume_modules = {"virtio_blk", "crc32c_generic",
                                                              "ext4"};
// Debian's kernels tick at 250 Hz, and lpj counts delay loops per tick.
constexpr std::uint64_t k_guest_hz = 250;
// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry point qemu jumps to when it boots an ELF kernel.
constexpr std::uint32_t k_pvh_entry_note = 18;
// Bump when the base archive's layout changes, so caches built by an older binary are not used.
constexpr std::string_view k_base_layout = "blixard initramfs base 4";

Error unavailable(const std::string& message) { return {errc::unavailable, message}; }

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  if (!in || !(bytes << in.rdbuf())) {
    throw unavailable("cannot read " + path.string() + ": " + std::strerror(errno));
  }
  return std::move(bytes).str();
}

// Readers of the cache see the old file or the whole new one, never a part.
void write_atomically(const fs::path& path, std::initializer_list<std::string_view> parts) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  std::string temp = (path.parent_path() / ("." + path.filename().string() + ".XXXXXX")).string();
  UniqueFd fd(::mkostemp(temp.data(), O_CLOEXEC));
  if (fd.get() < 0) {
    throw unavailable("cannot write in " + path.parent_path().string() + ": " +
                      std::strerror(errno));
  }
  bool written = ::fchmod(fd.get(), 0644) == 0;
  for (auto part : parts) {
    while (written && !part.empty()) {
      const ssize_t n = ::write(fd.get(), part.data(), part.size());
      if (n < 0 && errno == EINTR) continue;
      written = n > 0;
      if (written) part.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  written = written && ::fdatasync(fd.get()) == 0;
  const int saved = errno;
  fd.reset();
  if (!written || ::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(written ? errno : saved);
    ::unlink(temp.c_str());
    throw unavailable("cannot write " + path.string() + ": " + why);
  }
}

// Older versions of a cached file (another kernel, another busybox): only the newest is used.
void remove_stale(const fs::path& dir, std::string_view prefix, const fs::path& keep) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename();
    if (name.starts_with(prefix) && entry.path() != keep) fs::remove(entry.path(), ec);
  }
}

// Changes whenever the file is replaced (a package upgrade keeps the version but not the inode
// and times).
std::string file_identity(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw unavailable("cannot read " + path.string() + ": " + std::strerror(errno));
  }
  std::ostringstream id;
  id << path.string() << ' ' << st.st_size << ' ' << st.st_ino << ' ' << st.st_mtim.tv_sec << '.'
     << st.st_mtim.tv_nsec << '\n';
  return id.str();
}

std::string short_digest(std::string_view bytes) { return sha256_hex(bytes).substr(0, 16); }

using libarchive::Entry;
using libarchive::ReadArchive;
using libarchive::WriteArchive;

// The compression is detected from the data: LZ4 (Debian's cloud kernel), XZ (its generic
// kernel, compressed modules), gzip, zstd.
std::string decompress(std::string_view data, const std::string& what) {
  ReadArchive r;
  archive_read_support_filter_all(r.a);
  archive_read_support_format_raw(r.a);
  archive_entry* entry = nullptr;
  if (archive_read_open_memory(r.a, data.data(), data.size()) != ARCHIVE_OK ||
      archive_read_next_header(r.a, &entry) != ARCHIVE_OK) {
    throw unavailable("cannot decompress " + what + ": " + archive_error_string(r.a));
  }
  if (archive_filter_code(r.a, 0) == ARCHIVE_FILTER_NONE) {
    throw unavailable(what + " is not compressed in a format libarchive reads");
  }
  std::string out;
  std::array<char, 1 << 16> buf{};
  for (la_ssize_t n; (n = archive_read_data(r.a, buf.data(), buf.size())) != 0;) {
    if (n < 0) throw unavailable("cannot decompress " + what + ": " + archive_error_string(r.a));
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
  return out;
}

template <class T>
T read_le(std::string_view bytes, std::size_t at) {
  T value{};
  std::memcpy(&value, bytes.data() + at, sizeof value);
  return value;
}

// The compressed kernel inside a bzImage, by its setup header (Documentation/x86/boot.rst,
// protocol 2.08 and later): where the payload lies and how long it is. The build appends the
// uncompressed size as its last 4 bytes, which no decompressor wants to see.
std::string uncompressed_kernel(const std::string& bzimage, const fs::path& from) {
  const auto not_bzimage = [&] {
    return unavailable(from.string() + " is not a bzImage with boot protocol 2.08 or later");
  };
  if (bzimage.size() < 0x250 || bzimage.compare(0x202, 4, "HdrS") != 0 ||
      read_le<std::uint16_t>(bzimage, 0x206) < 0x208) {
    throw not_bzimage();
  }
  const std::size_t setup_sectors = static_cast<unsigned char>(bzimage[0x1f1]);
  const std::size_t start =
      ((setup_sectors == 0 ? 4 : setup_sectors) + 1) * 512 + read_le<std::uint32_t>(bzimage, 0x248);
  const std::size_t length = read_le<std::uint32_t>(bzimage, 0x24c);
  if (length <= 4 || start + length > bzimage.size()) throw not_bzimage();
  const std::string_view payload = std::string_view(bzimage).substr(start, length);
  std::string vmlinux = decompress(payload.substr(0, length - 4), "the kernel in " + from.string());
  if (vmlinux.size() != read_le<std::uint32_t>(payload, length - 4)) {
    throw unavailable("the kernel in " + from.string() + " did not decompress to its stated size");
  }
  return vmlinux;
}

bool is_elf64(std::string_view bytes) {
  return bytes.size() >= sizeof(Elf64_Ehdr) && bytes.starts_with(ELFMAG) &&
         bytes[EI_CLASS] == ELFCLASS64;
}

// Calls f(header) for each program header that lies inside the file.
void for_each_program_header(std::string_view elf,
                             const std::function<void(const Elf64_Phdr&)>& f) {
  const auto eh = read_le<Elf64_Ehdr>(elf, 0);
  if (eh.e_phentsize != sizeof(Elf64_Phdr)) return;
  for (std::size_t i = 0; i < eh.e_phnum; ++i) {
    const std::size_t at = eh.e_phoff + i * sizeof(Elf64_Phdr);
    if (at + sizeof(Elf64_Phdr) > elf.size()) return;
    f(read_le<Elf64_Phdr>(elf, at));
  }
}

// qemu boots an ELF kernel only through its PVH entry (CONFIG_PVH), given by a Xen note.
bool has_pvh_entry(std::string_view elf) {
  if (!is_elf64(elf)) return false;
  bool found = false;
  for_each_program_header(elf, [&](const Elf64_Phdr& ph) {
    if (ph.p_type != PT_NOTE || ph.p_offset + ph.p_filesz > elf.size()) return;
    const auto notes = elf.substr(ph.p_offset, ph.p_filesz);
    const auto aligned = [](std::size_t n) { return (n + 3) & ~std::size_t{3}; };
    for (std::size_t at = 0; at + sizeof(Elf64_Nhdr) <= notes.size();) {
      const auto note = read_le<Elf64_Nhdr>(notes, at);
      const std::size_t name_at = at + sizeof(Elf64_Nhdr);
      if (note.n_type == k_pvh_entry_note && note.n_namesz == 4 &&
          notes.substr(name_at, 4) == std::string_view("Xen\0", 4)) {
        found = true;
      }
      at = name_at + aligned(note.n_namesz) + aligned(note.n_descsz);
    }
  });
  return found;
}

// A static busybox runs before /usr is mounted.
bool is_static_elf(std::string_view elf) {
  if (!is_elf64(elf)) return false;
  bool interpreter = false;
  for_each_program_header(elf,
                          [&](const Elf64_Phdr& ph) { interpreter |= ph.p_type == PT_INTERP; });
  return !interpreter;
}

struct InstalledKernel {
  fs::path vmlinuz;
  std::string version;
};

// Newest first.
std::vector<InstalledKernel> installed_kernels() {
  std::vector<InstalledKernel> kernels;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(k_boot_dir, ec)) {
    const std::string name = entry.path().filename();
    if (name.starts_with("vmlinuz-") && entry.is_regular_file(ec))
      kernels.push_back({entry.path(), name.substr(8)});
  }
  std::sort(kernels.begin(), kernels.end(), [](const auto& a, const auto& b) {
    return ::strverscmp(a.version.c_str(), b.version.c_str()) > 0;
  });
  return kernels;
}

// "kernel/fs/9p/9p.ko.xz" -> "9p"
std::string module_name(std::string_view path) {
  path = path.substr(path.rfind('/') + 1);
  return std::string(path.substr(0, path.find(".ko")));
}

struct GuestModules {
  std::vector<fs::path> files;  // in load order: each after what it needs
  std::size_t always = 0;       // files[0, always): every guest's; the rest: a volume's only
  std::string missing;          // a needed module the kernel neither builds in nor ships
};

GuestModules guest_modules(const std::string& version) {
  const fs::path dir = k_modules_dir / version;
  // modules.dep: "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko ..."
  std::map<std::string, std::pair<std::string, std::vector<std::string>>> shipped;
  std::ifstream dep(dir / "modules.dep");
  for (std::string line; std::getline(dep, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream needs(line.substr(colon + 1));
    std::vector<std::string> names;
    for (std::string path; needs >> path;) names.push_back(module_name(path));
    shipped[module_name(line.substr(0, colon))] = {line.substr(0, colon), std::move(names)};
  }
  std::set<std::string> built_in;
  std::ifstream builtin(dir / "modules.builtin");
  for (std::string line; std::getline(builtin, line);) built_in.insert(module_name(line));

  GuestModules out;
  std::set<std::string> placed;
  std::function<void(const std::string&)> place = [&](const std::string& name) {
    if (!out.missing.empty() || placed.count(name) || built_in.count(name)) return;
    const auto found = shipped.find(name);
    if (found == shipped.end()) {
      out.missing = name;
      return;
    }
    placed.insert(name);
    for (const auto& need : found->second.second) place(need);
    out.files.push_back(dir / found->second.first);
  };
  for (const auto name : k_guest_modules) place(std::string(name));
  out.always = out.files.size();
  for (const auto name : k_volume_modules) place(std::string(name));
  return out;
}

fs::path extract_vmlinux(const InstalledKernel& kernel, const fs::path& cache_dir) {
  fs::path cached =
      cache_dir / ("vmlinux-" + kernel.version + "-" + short_digest(file_identity(kernel.vmlinuz)));
  {
    std::ifstream in(cached, std::ios::binary);
    std::array<char, 4> magic{};
    if (in.read(magic.data(), magic.size()) &&
        std::string_view(magic.data(), magic.size()) == ELFMAG) {
      return cached;
    }
  }
  const std::string vmlinux = uncompressed_kernel(read_file(kernel.vmlinuz), kernel.vmlinuz);
  if (!has_pvh_entry(vmlinux)) {
    throw unavailable(
        "the kernel " + kernel.vmlinuz.string() +
        " has no PVH entry point (CONFIG_PVH): qemu's microvm machine cannot boot it");
  }
  write_atomically(cached, {vmlinux});
  remove_stale(cache_dir, "vmlinux-", cached);
  return cached;
}

// An uncompressed cpio "newc" archive, the format the kernel unpacks into its first root. Every
// entry belongs to root and is dated 0, so the same inputs make the same bytes.
class CpioWriter {
 public:
  CpioWriter() {
    check(archive_write_set_format_cpio_newc(w_.a));
    check(archive_write_add_filter_none(w_.a));
    // No padding after the trailer (which newc aligns to 4 bytes, as a next archive must be).
    check(archive_write_set_bytes_in_last_block(w_.a, 1));
    check(archive_write_open(w_.a, &bytes_, nullptr, append, nullptr));
  }
  void directory(const std::string& path, mode_t mode = 0755) { add(path, AE_IFDIR, mode); }
  void symlink(const std::string& path, const std::string& target) {
    add(path, AE_IFLNK, 0777, {}, target);
  }
  void char_device(const std::string& path, unsigned major, unsigned minor, mode_t mode) {
    add(path, AE_IFCHR, mode, {}, {}, ::makedev(major, minor));
  }
  void file(const std::string& path, std::string_view content, mode_t mode = 0644) {
    add(path, AE_IFREG, mode, content);
  }
  std::string finish() {
    check(archive_write_close(w_.a));
    return std::move(bytes_);
  }

 private:
  static la_ssize_t append(archive*, void* out, const void* data, size_t size) {
    static_cast<std::string*>(out)->append(static_cast<const char*>(data), size);
    return static_cast<la_ssize_t>(size);
  }
  void check(int rc) {
    if (rc != ARCHIVE_OK) {
      throw unavailable(std::string("cannot write an initramfs: ") + archive_error_string(w_.a));
    }
  }
  void add(const std::string& path, unsigned type, mode_t mode, std::string_view content = {},
           const std::string& link_target = {}, dev_t rdev = 0) {
    Entry e(archive_entry_new());
    archive_entry_set_pathname(e.get(), path.c_str());
    archive_entry_set_filetype(e.get(), type);
    archive_entry_set_perm(e.get(), mode);
    archive_entry_set_uid(e.get(), 0);
    archive_entry_set_gid(e.get(), 0);
    archive_entry_set_mtime(e.get(), 0, 0);
    archive_entry_set_nlink(e.get(), type == AE_IFDIR ? 2 : 1);
    if (type == AE_IFLNK) archive_entry_set_symlink(e.get(), link_target.c_str());
    if (type == AE_IFCHR) archive_entry_set_rdev(e.get(), rdev);
    archive_entry_set_size(e.get(), static_cast<la_int64_t>(content.size()));
    check(archive_write_header(w_.a, e.get()));
    if (!content.empty() && archive_write_data(w_.a, content.data(), content.size()) !=
                                static_cast<la_ssize_t>(content.size())) {
      check(ARCHIVE_FATAL);
    }
  }

  WriteArchive w_;
  std::string bytes_;
};

std::optional<fs::path> find_busybox() {
  for (const char* path : {"/usr/bin/busybox", "/bin/busybox"}) {
    if (::access(path, X_OK) == 0) return fs::path(path);
  }
  return std::nullopt;
}

// busybox, the modules in load order (listed in blixard/modules/order, and in order-volume what
// only a volume needs) and our init; the /bin, /sbin and /lib links point into the /usr the init
// mounts (Debian's /usr is merged).
fs::path base_archive(const GuestKernel& kernel, const fs::path& cache_dir) {
  const GuestModules modules = guest_modules(kernel.version);
  if (!modules.missing.empty()) {
    throw unavailable("the kernel " + kernel.version + " has no module " + modules.missing +
                      " for guests: " + std::string(k_kernel_package_hint));
  }
  const auto busybox = find_busybox();
  if (!busybox) throw unavailable("no busybox for guests: apt-get install busybox-static");

  std::string inputs = std::string(k_base_layout) + '\n' + kernel.version + '\n' +
                       std::string(detail::embedded_guest_init()) +
                       std::string(detail::embedded_guest_seed()) + file_identity(*busybox);
  for (const auto& module : modules.files) inputs += file_identity(module);
  const std::string prefix = "initramfs-base-" + kernel.version + "-";
  fs::path cached = cache_dir / (prefix + short_digest(inputs) + ".cpio");
  std::error_code ec;
  if (fs::is_regular_file(cached, ec) && fs::file_size(cached, ec) > 0) return cached;

  const std::string busybox_binary = read_file(*busybox);
  if (!is_static_elf(busybox_binary)) {
    throw unavailable(busybox->string() +
                      " is linked dynamically and cannot run before /usr is mounted: apt-get "
                      "install busybox-static");
  }
  CpioWriter cpio;
  for (const char* dir : {"blixard", "blixard/bin", "blixard/modules", "dev", "etc", "proc", "run",
                          "sys", "tmp", "usr", "var"}) {
    cpio.directory(dir);
  }
  // The kernel opens it as init's stdin, stdout and stderr before any devtmpfs is mounted.
  cpio.char_device("dev/console", 5, 1, 0600);
  for (const char* dir : {"bin", "sbin", "lib", "lib64"})
    cpio.symlink(dir, std::string("usr/") + dir);
  cpio.file("init", detail::embedded_guest_init(), 0755);
  cpio.file("blixard/bin/busybox", busybox_binary, 0755);
  // The init's reseed after a workload arrives (guest/seed.c): root's only, as its ioctls are.
  cpio.file("blixard/bin/blixard-seed", detail::embedded_guest_seed(), 0700);
  std::string order, volume_order;
  for (std::size_t i = 0; i < modules.files.size(); ++i) {
    const auto& module = modules.files[i];
    const std::string name = module_name(module.string());
    const std::string bytes = read_file(module);
    cpio.file("blixard/modules/" + name + ".ko",
              module.extension() == ".ko" ? bytes : decompress(bytes, module.string()));
    (i < modules.always ? order : volume_order) += name + '\n';
  }
  cpio.file("blixard/modules/order", order);
  cpio.file("blixard/modules/order-volume", volume_order);
  write_atomically(cached, {cpio.finish()});
  remove_stale(cache_dir, prefix, cached);
  return cached;
}

std::string sh_quote(std::string_view s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

bool is_env_name(std::string_view name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return c == '_' || std::isalnum(static_cast<unsigned char>(c));
  });
}

std::string host_name(std::string_view replica) {
  std::string name;
  for (const char c : replica.substr(0, 63)) {
    name += std::isalnum(static_cast<unsigned char>(c))
                ? static_cast<char>(std::tolower(static_cast<unsigned char>(c)))
                : '-';
  }
  return name.empty() ? "guest" : name;
}

// /blixard/workload, which guest/init sources: the host name, the ports it waits for, and as "$@"
// the whole environment (`env -i` starts from nothing) followed by the command. Blixard's own
// variables come last so a spec's env cannot hide them.
std::string workload_file(const Workload& w) {
  if (w.command.empty())
    throw Error(errc::invalid_spec, "a guest workload needs a command", "command");
  const std::string& program = w.command.front();
  if (!program.starts_with('/') || program.find('=') != std::string::npos) {
    throw Error(
        errc::invalid_spec,
        "the command must be an absolute path in the guest, whose /usr is the host's: " + program,
        "command");
  }
  const auto has_nul = [](const std::string& s) { return s.find('\0') != std::string::npos; };
  if (std::any_of(w.command.begin(), w.command.end(), has_nul)) {
    throw Error(errc::invalid_spec, "the command holds a NUL byte", "command");
  }
  std::vector<std::string> env = {
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp",
      "TMPDIR=/tmp", "LANG=C.UTF-8"};
  for (const auto& [name, value] : w.env) {
    if (!is_env_name(name) || has_nul(value)) {
      throw Error(errc::invalid_spec,
                  "an environment variable needs a name of letters, digits and _ and a value "
                  "without NUL: " +
                      name,
                  "env");
    }
    env.push_back(name);
    env.back().append("=").append(value);
  }
  env.push_back("BLIXARD_REPLICA=" + w.replica);
  if (!w.network_address.empty()) {
    const auto plain = [](const std::string& v, const char* allowed) {
      return !v.empty() && v.find_first_not_of(allowed) == std::string::npos;
    };
    if (!plain(w.network_address, "0123456789./") || !plain(w.network_mac, "0123456789abcdef:")) {
      throw Error(errc::invalid_spec, "not a network address and MAC: " + w.network_address,
                  "network");
    }
    env.push_back("BLIXARD_ADDRESS=" + w.network_address.substr(0, w.network_address.find('/')));
  }
  if (!w.volume_mount.empty()) {
    if (!w.volume_mount.starts_with('/') || has_nul(w.volume_mount)) {
      throw Error(errc::invalid_spec, "a volume's mount point must be an absolute path",
                  "storage.mountPoint");
    }
    if (!w.volume_standby) env.push_back("BLIXARD_VOLUME=" + w.volume_mount);
  }
  std::string ports;
  for (const auto port : w.ports) {
    if (port == 0 || port > 65535) {
      throw Error(errc::invalid_spec, "not a TCP port: " + std::to_string(port), "ports");
    }
    if (ports.empty()) env.push_back("PORT=" + std::to_string(port));
    env.push_back("PORT_" + std::to_string(port) + "=" + std::to_string(port));
    ports += (ports.empty() ? "" : " ") + std::to_string(port);
  }
  std::string file = "blixard_hostname=" + sh_quote(host_name(w.replica)) + "\n" +
                     "blixard_ports=" + sh_quote(ports) + "\n" +
                     "blixard_volume=" + sh_quote(w.volume_mount) + "\n" +
                     "blixard_volume_standby=" + (w.volume_standby ? "1" : "") + "\n" +
                     "blixard_network_mac=" + sh_quote(w.network_mac) + "\n" +
                     "blixard_network_address=" + sh_quote(w.network_address) + "\nset --";
  for (const auto& item : env) file += " " + sh_quote(item);
  for (const auto& arg : w.command) file += " " + sh_quote(arg);
  return file + "\n";
}

// A file the guest may be given: absolute, plain, under a directory that is the guest's own.
void check_guest_file(const std::string& path) {
  const fs::path p(path);
  const bool plain = p.is_absolute() && p.lexically_normal() == p && p.has_filename() &&
                     path.find('\0') == std::string::npos;
  const auto top = plain ? (++p.begin())->string() : std::string();
  if (!plain || (top != "etc" && top != "var" && top != "srv") ||
      std::distance(p.begin(), p.end()) < 3) {
    throw Error(errc::invalid_spec,
                "a guest file needs a plain absolute path under /etc, /var or /srv: " + path,
                "files");
  }
}

std::optional<std::uint64_t> parse_mhz_as_khz(std::string_view text) {
  const std::string number(text.substr(0, text.find(' ')));
  char* end = nullptr;
  const double mhz = std::strtod(number.c_str(), &end);
  if (end == number.c_str() || !(mhz > 0)) return std::nullopt;
  return static_cast<std::uint64_t>(std::llround(mhz * 1000));
}

// What this host's kernel measured at boot, while the record is still in its log.
std::optional<std::uint64_t> logged_tsc_khz() {
  UniqueFd kmsg(::open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (kmsg.get() < 0) return std::nullopt;
  constexpr std::string_view refined = "tsc: Refined TSC clocksource calibration: ";
  constexpr std::string_view detected = "tsc: Detected ";
  std::optional<std::uint64_t> best, early;
  std::array<char, 8192> record{};
  for (;;) {
    const ssize_t n = ::read(kmsg.get(), record.data(), record.size());
    if (n < 0 && errno == EPIPE) continue;  // overwritten while we read: the next one follows
    if (n <= 0) break;
    const std::string_view line(record.data(), static_cast<std::size_t>(n));
    if (const auto at = line.find(refined); at != std::string_view::npos)
      best = parse_mhz_as_khz(line.substr(at + refined.size()));
    if (const auto at = line.find(detected); at != std::string_view::npos)
      early = parse_mhz_as_khz(line.substr(at + detected.size()));
  }
  return best ? best : early;
}

// The TSC against CLOCK_MONOTONIC_RAW over 20 ms: a few parts in 100000, plenty for a guest.
std::optional<std::uint64_t> measured_tsc_khz() {
#if defined(__x86_64__)
  timespec start{}, end{};
  ::clock_gettime(CLOCK_MONOTONIC_RAW, &start);
  const std::uint64_t ticks_start = __rdtsc();
  const timespec pause{0, 20'000'000};
  ::nanosleep(&pause, nullptr);
  ::clock_gettime(CLOCK_MONOTONIC_RAW, &end);
  const std::uint64_t ticks_end = __rdtsc();
  const auto ns = static_cast<double>((end.tv_sec - start.tv_sec) * 1'000'000'000LL +
                                      (end.tv_nsec - start.tv_nsec));
  if (ns <= 0 || ticks_end <= ticks_start) return std::nullopt;
  return std::llround(static_cast<double>(ticks_end - ticks_start) * 1e6 / ns);
#else
  return std::nullopt;
#endif
}

}  // namespace

GuestKernel find_guest_kernel(const fs::path& cache_dir) {
  const auto kernels = installed_kernels();
  if (kernels.empty()) {
    throw unavailable("no kernel for guests in " + k_boot_dir.string() + ": " +
                      std::string(k_kernel_package_hint));
  }
  std::string lacking;
  for (const auto& kernel : kernels) {
    const GuestModules modules = guest_modules(kernel.version);
    if (modules.missing.empty()) return {extract_vmlinux(kernel, cache_dir), kernel.version};
    lacking += (lacking.empty() ? "" : ", ") + kernel.version + " has no " + modules.missing;
  }
  throw unavailable(
      "no kernel in " + k_boot_dir.string() + " can mount the host's /usr over 9p (" + lacking +
      "; Debian's cloud kernel is built without 9p): " + std::string(k_kernel_package_hint));
}

std::string guest_cmdline() {
  static const std::string line = [] {
    std::string timing;
    auto khz = logged_tsc_khz();
    if (!khz) khz = measured_tsc_khz();
    if (khz) {
      timing = " tsc_early_khz=" + std::to_string(*khz) +
               " lpj=" + std::to_string(*khz * 1000 / k_guest_hz);
    }
    return "console=ttyS0 reboot=t panic=-1 quiet no_timer_check" + timing +
           " i8042.noaux i8042.nokbd i8042.nopnp random.trust_cpu=on mitigations=off"
           " 8250.nr_uarts=1 cryptomgr.notests";
  }();
  return line;
}

fs::path base_initramfs(const GuestKernel& kernel, const fs::path& cache_dir) {
  return base_archive(kernel, cache_dir);
}

std::string replica_archive(const Workload& workload) {
  const std::string workload_script = workload_file(workload);
  for (const auto& [path, content] : workload.files) check_guest_file(path);
  CpioWriter replica;
  replica.file("blixard/workload", workload_script);
  // Under blixard/files, copied into place by the init once its tmpfs mounts (/var) are up.
  std::set<std::string> dirs;
  for (const auto& [path, content] : workload.files) {
    const fs::path p(path);
    for (auto d = fs::path("blixard/files") / p.relative_path().parent_path();
         d != "blixard" && dirs.insert(d.string()).second; d = d.parent_path()) {
    }
  }
  for (const auto& d : dirs) replica.directory(d);  // parents sort before their children
  for (const auto& [path, content] : workload.files) {
    replica.file("blixard/files" + path, content);
  }
  return replica.finish();
}

fs::path build_initramfs(const GuestKernel& kernel, const Workload& workload,
                         const fs::path& cache_dir, const fs::path& out) {
  const std::string replica = replica_archive(workload);  // a bad spec costs no disk work
  write_atomically(out, {read_file(base_archive(kernel, cache_dir)), replica});
  return out;
}

}  // namespace blixard::image
