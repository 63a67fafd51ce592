// The libvirt domain of one VM replica (DESIGN §6): a microvm machine booting our guest kernel
// and initramfs directly (PVH entry, no firmware, no disk), the host's program tree shared
// read-only, a virtio-net on qemu's user network restricted to the forwarded ports, the serial
// console and the guest agent's virtio-serial channel, and the volume's disk image on unix sockets
// the driver reads. A pure function of its config, so it is tested without a hypervisor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace blixard::runtime {

struct DomainShare {
  std::string tag;  // the mount tag the guest mounts it by
  std::filesystem::path source;
  bool read_only = true;
};

struct DomainConfig {
  std::string name;  // the libvirt domain's name, unique on the host
  std::uint64_t memory_mib = 128;
  std::uint64_t balloon_mib = 0;  // 0: no balloon device
  std::uint32_t vcpus = 1;
  bool kvm = false;  // hardware virtualisation, else TCG (qemu's emulator)
  std::filesystem::path kernel, initrd;
  std::string cmdline;
  std::vector<DomainShare> shares;
  // Raw disk images the guest sees as /dev/vda, /dev/vdb... (virtio-blk), in this order.
  std::vector<std::filesystem::path> disks;
  // The disks are shared with other guests (a set's volume, held by its primary and standbys):
  // libvirt's <shareable/>, so that qemu lets several guests open them and libvirt does not
  // give a dead guest's disk back to its old owner under a guest still using it.
  bool shared_disks = false;
  // qemu opens the disks with O_DIRECT (cache='none'): no host page cache between guests on
  // different hosts sharing an image (a standby's would hold what it read before a promotion).
  bool uncached_disks = false;
  std::filesystem::path console_socket;  // the serial console (ttyS0)
  std::filesystem::path agent_socket;    // the guest init's channel: "BLIXARD-READY", "STOP"
  // Declared guest port -> host port (all of the host's addresses, as sandbox replicas).
  std::map<std::uint32_t, std::uint32_t> forwards;
  // A second interface on this bridge (a VM network), with this MAC; empty: none.
  std::string bridge, bridge_mac;
};

// The MAC of the guest's interface on qemu's user network (the init finds it by it).
inline constexpr const char* k_user_net_mac = "52:54:00:12:34:56";

// The virtio-serial port name the guest init writes to.
inline constexpr const char* k_agent_channel = "org.blixard.agent";

std::string domain_xml(const DomainConfig& config);

// qemu's -netdev for the guest's user network with `forwards` (the one thing of a domain's
// command line that differs between guests of one shape: a restore from a snapshot swaps it).
std::string user_netdev(const std::map<std::uint32_t, std::uint32_t>& forwards);

// `text` with XML's five special characters escaped (for libvirt's other XML documents too).
std::string xml_escaped(const std::string& text);

}  // namespace blixard::runtime
