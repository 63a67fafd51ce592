// The libvirt domain of one VM replica (DESIGN §6): a microvm machine booting our guest kernel
// and initramfs directly (PVH entry, no firmware, no disk), the host's program tree shared
// read-only, a virtio-net on qemu's user network restricted to the forwarded ports, the serial
// console and the guest agent's virtio-serial channel on unix sockets the driver reads. A pure
// function of its config, so it is tested without a hypervisor.
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
  std::filesystem::path console_socket;  // the serial console (ttyS0)
  std::filesystem::path agent_socket;    // the guest init's channel: "BLIXARD-READY", "STOP"
  // Declared guest port -> host port (all of the host's addresses, as sandbox replicas).
  std::map<std::uint32_t, std::uint32_t> forwards;
};

// The virtio-serial port name the guest init writes to.
inline constexpr const char* k_agent_channel = "org.blixard.agent";

std::string domain_xml(const DomainConfig& config);

}  // namespace blixard::runtime
