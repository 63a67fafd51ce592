// The libvirt domain XML of a VM replica (see domain_xml.hpp).
#include "runtime/domain_xml.hpp"

namespace blixard::runtime {

std::string xml_escaped(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  for (const char c : in) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

namespace {

std::string attr(const std::string& value) { return "'" + xml_escaped(value) + "'"; }

}  // namespace

std::string user_netdev(const std::map<std::uint32_t, std::uint32_t>& forwards) {
  std::string netdev = "user,id=bxnet0,restrict=on";
  for (const auto& [guest, host] : forwards) {
    netdev += ",hostfwd=tcp::" + std::to_string(host) + "-:" + std::to_string(guest);
  }
  return netdev;
}

std::string domain_xml(const DomainConfig& c) {
  const std::string memory = std::to_string(c.memory_mib);
  std::string x;
  x += "<domain type=" + attr(c.kvm ? "kvm" : "qemu") +
       " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n";
  x += "  <name>" + xml_escaped(c.name) + "</name>\n";
  x += "  <memory unit='MiB'>" + memory + "</memory>\n";
  x += "  <currentMemory unit='MiB'>" + memory + "</currentMemory>\n";
  x += "  <vcpu>" + std::to_string(c.vcpus) + "</vcpu>\n";
  // microvm: no PCI, no firmware, no legacy devices to probe (ENVIRONMENT.md: about 1 s faster
  // to boot under TCG than q35).
  x += "  <os>\n    <type arch='x86_64' machine='microvm'>hvm</type>\n";
  x += "    <kernel>" + xml_escaped(c.kernel.string()) + "</kernel>\n";
  x += "    <initrd>" + xml_escaped(c.initrd.string()) + "</initrd>\n";
  x += "    <cmdline>" + xml_escaped(c.cmdline) + "</cmdline>\n  </os>\n";
  // ACPI describes the virtio-mmio devices to the guest and lets it power off.
  x += "  <features><acpi/></features>\n";
  x += c.kvm ? "  <cpu mode='host-passthrough'/>\n" : "  <cpu mode='maximum'/>\n";
  // Whatever ends the guest ends the domain: the driver reports the exit and the controller
  // decides what starts again.
  x += "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n"
       "  <on_crash>destroy</on_crash>\n";
  // microvm has no PCI bus: every device sits on virtio-mmio, and libvirt's default USB
  // controller (PCI) goes.
  const std::string mmio = "      <address type='virtio-mmio'/>\n";
  x += "  <devices>\n    <controller type='usb' model='none'/>\n";
  x += "    <controller type='virtio-serial' index='0'>\n" + mmio + "    </controller>\n";
  for (const auto& s : c.shares) {
    x += "    <filesystem type='mount' accessmode='passthrough'>\n";
    x += "      <source dir=" + attr(s.source.string()) + "/>\n";
    x += "      <target dir=" + attr(s.tag) + "/>\n";
    if (s.read_only) x += "      <readonly/>\n";
    x += mmio + "    </filesystem>\n";
  }
  for (std::size_t i = 0; i < c.disks.size(); ++i) {
    x += std::string("    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'") +
         (c.uncached_disks ? " cache='none'" : "") + "/>\n";
    x += "      <source file=" + attr(c.disks[i].string()) + "/>\n";
    x += "      <target dev=" + attr(std::string("vd") + static_cast<char>('a' + i)) +
         " bus='virtio'/>\n";
    if (c.shared_disks) x += "      <shareable/>\n";
    x += mmio + "    </disk>\n";
  }
  if (!c.bridge.empty()) {
    x += "    <interface type='bridge'>\n      <source bridge=" + attr(c.bridge) + "/>\n";
    x += "      <mac address=" + attr(c.bridge_mac) + "/>\n      <model type='virtio'/>\n" + mmio +
         "    </interface>\n";
  }
  x += "    <serial type='unix'>\n      <source mode='bind' path=" +
       attr(c.console_socket.string()) + "/>\n      <target port='0'/>\n    </serial>\n";
  x +=
      "    <channel type='unix'>\n      <source mode='bind' path=" + attr(c.agent_socket.string()) +
      "/>\n      <target type='virtio' name='" + std::string(k_agent_channel) +
      "'/>\n    </channel>\n";
  if (c.balloon_mib != 0) {
    x += "    <memballoon model='virtio'>\n" + mmio + "    </memballoon>\n";
  } else {
    x += "    <memballoon model='none'/>\n";
  }
  x += "  </devices>\n";
  // qemu's user network with only the forwarded ports: restrict=on cuts the guest off from the
  // host and everything else (libvirt 9.0 forwards ports only with passt, which Debian 12 lacks).
  const std::string netdev = user_netdev(c.forwards);
  x += "  <qemu:commandline>\n";
  // The microvm machine without what a PVH kernel does not use and libvirt cannot turn off: the
  // option ROMs (its firmware boots the kernel itself), the legacy PIT and PIC (the guest has an
  // IOAPIC and LAPIC timers). qemu merges a second -machine into libvirt's.
  for (const std::string& arg :
       {std::string("-machine"), std::string("x-option-roms=off,pit=off,pic=off"),
        std::string("-netdev"), netdev, std::string("-device"),
        std::string("virtio-net-device,netdev=bxnet0,mac=") + k_user_net_mac}) {
    x += "    <qemu:arg value=" + attr(arg) + "/>\n";
  }
  x += "  </qemu:commandline>\n</domain>\n";
  return x;
}

}  // namespace blixard::runtime
