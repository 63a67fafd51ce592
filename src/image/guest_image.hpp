// What a real microVM guest boots from (docs/guest-images.md): the host's own Debian kernel,
// uncompressed so qemu's microvm machine can enter it directly (PVH, no firmware, no
// decompressor), and an initramfs holding busybox, the kernel's virtio and 9p modules, our init
// (guest/init) and the replica's workload. Everything else the workload runs comes from the host's
// /usr, which the VMM shares read-only over 9p; the guest never sees the rest of the host.
//
// Built on the node from what the node has installed: nothing is downloaded, and the
// costly parts (the kernel, the base archive) are made once into a cache directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace blixard::image {

struct GuestKernel {
  std::filesystem::path vmlinux;  // an ELF with a PVH entry note, in the cache directory
  std::string version;            // "6.1.0-57-amd64": its modules are /lib/modules/<version>
};

// The newest /boot/vmlinuz-* whose modules can mount the shared /usr (9p over virtio): Debian's
// cloud kernel cannot (built without CONFIG_NET_9P), its generic kernel can. Its compressed
// payload is unpacked once into cache_dir (written aside, then renamed; reused while the vmlinuz
// is the same file). Throws Error(unavailable) naming the package to install when there is none.
GuestKernel find_guest_kernel(const std::filesystem::path& cache_dir);

// The kernel command line for a fast microvm boot on this host. tsc_early_khz (this host's TSC
// rate, which a TCG guest's TSC runs at) spares the guest a calibration that can hang without
// timers; lpj does the same for the delay loop.
std::string guest_cmdline();

struct Workload {
  // argv; [0] is an absolute path in the guest, where the host's /usr is (/usr/bin/python3).
  std::vector<std::string> command;
  std::map<std::string, std::string> env;
  // The TCP ports it serves, as the guest sees them: PORT and PORT_<n> say them, and the first
  // one accepting connections makes the guest ready (at once when there are none).
  std::vector<std::uint32_t> ports;
  std::string replica;  // BLIXARD_REPLICA, and the guest's host name
  // Absolute path -> content, put in place by the init before the workload starts (under /etc,
  // /var or /srv: the rest of the guest's tree is the host's /usr or the init's own).
  std::map<std::string, std::string> files;
  // Where the replica's volume (the first disk, /dev/vda, ext4) is mounted; empty: none.
  std::string volume_mount;
  // Its interface on a VM network: the MAC the init finds it by and its address ("10.88.0.2/24");
  // empty: none.
  std::string network_mac, network_address;
  // A standby of a set with a primary: the volume is attached but mounted only once the host
  // promotes the guest (guest/init, PROMOTE); BLIXARD_VOLUME is set from then on.
  bool volume_standby = false;
};

// The base archive every guest of `kernel` boots (busybox, modules, /init), built once into
// cache_dir (aside, then renamed) and returned. On its own it is a whole initramfs: its init reads
// the replica's archive from the host on the agent's port (docs/guest-images.md). Throws
// Error(unavailable) when busybox-static or a module is missing or the disk refuses.
std::filesystem::path base_initramfs(const GuestKernel& kernel,
                                     const std::filesystem::path& cache_dir);

// The replica's own small cpio archive: /blixard/workload and the workload's files under
// /blixard/files. Throws Error(invalid_spec) for a workload the guest could not run.
std::string replica_archive(const Workload& workload);

// The initramfs of one replica, written to `out` (aside, then renamed) and returned: the base
// archive followed by the replica's archive; the kernel unpacks concatenated cpio archives one
// after the other. For a VMM started by hand (the libvirt driver sends the replica's archive over
// the agent's port instead, and boots the base as it is). Throws as the two above.
std::filesystem::path build_initramfs(const GuestKernel& kernel, const Workload& workload,
                                      const std::filesystem::path& cache_dir,
                                      const std::filesystem::path& out);

}  // namespace blixard::image
