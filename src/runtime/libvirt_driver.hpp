// The libvirt driver (DESIGN §6): a VM replica as a real guest, a microvm domain booting our guest
// kernel and initramfs (image/guest_image.hpp) through libvirt's C API, under KVM where a probe
// shows hardware virtualisation (runtime/accel.hpp) and TCG where not. Its readiness and exit come
// from the guest init over a virtio-serial channel and from the serial console, both unix sockets
// the driver reads; its ports are host ports forwarded by qemu's user network. Functions stay on
// the sandbox driver: this one runs replicas only.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "runtime/driver.hpp"

namespace blixard::runtime {

struct LibvirtOptions {
  std::string uri = "qemu:///system";
  // Per-replica files (an initramfs each) under replicas/, removed with the driver.
  std::filesystem::path work_dir;
  // The guest kernel and base archive (content-addressed, shared by agents); empty: work_dir's
  // images/.
  std::filesystem::path image_cache;
  // Where the guest's /usr comes from (the host's program tree, shared read-only).
  std::filesystem::path program_tree = "/usr";
  // Unset: by the probe (runtime/accel.hpp).
  std::optional<bool> kvm;
  std::chrono::milliseconds ready_timeout{120'000};
  // Save images per guest shape (memory, vCPUs, balloon, accelerator, kernel and base archive) a
  // replica without a volume or a VM network is restored from instead of booting; each image
  // serves one running replica at a time (libvirt restores it under its template's name and
  // UUID) and about the guest's used memory on disk (root's only, under work_dir/snapshots).
  // Made in the background once a shape has started; 0: every guest boots afresh.
  std::size_t snapshots = 2;
  // Keep what an earlier driver with this work_dir left running for adopt() to take back (a
  // joined agent, restarted within its node's lease); false: destroyed at once (the server's own
  // node, whose control plane starts afresh with it).
  bool adopt = false;
};

// The options of an agent whose data dir is `data_dir`: its guests' files under
// /var/lib/blixard-guests (qemu runs as another user, libvirt-qemu, that must reach them, and the
// data dir is its owner's only), and the guest images every agent on the host shares beside them
// (images/); `snapshots` save images per guest shape (LibvirtOptions::snapshots).
LibvirtOptions libvirt_options(const std::filesystem::path& data_dir, std::string uri,
                               std::size_t snapshots = 2);

// Connects to `uri` (Error(unavailable) naming it and how to start libvirtd when it cannot) and
// destroys what an earlier agent with this work_dir left running (domains "blixard-<hash>-..."),
// or with `adopt`, leaves that to Driver::adopt, which takes back the guests it can.
std::unique_ptr<Driver> make_libvirt_driver(LibvirtOptions options);

}  // namespace blixard::runtime
