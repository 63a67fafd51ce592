// Which accelerator a guest gets on this host (DESIGN §6): KVM only where it can run a stock
// guest kernel, TCG (qemu's emulator) otherwise. A /dev/kvm alone proves nothing: under KVM-PVM
// (a KVM for guests built for it) the device opens and KVM_CREATE_VM succeeds, yet a stock kernel
// stalls in the instruction emulator (ENVIRONMENT.md). Hardware virtualisation shows as the CPU's
// vmx (Intel) or svm (AMD) flag, nested inside a VM included.
#pragma once

#include <string>

namespace blixard::runtime {

struct AccelProbe {
  bool kvm = false;
  std::string why;  // "vmx and /dev/kvm", "no vmx/svm CPU flag (KVM-PVM or none): TCG", ...
};

// Reads /proc/cpuinfo and opens /dev/kvm; `cpuinfo` and `kvm_device` are for tests.
AccelProbe probe_accel(const std::string& cpuinfo = "/proc/cpuinfo",
                       const std::string& kvm_device = "/dev/kvm");

}  // namespace blixard::runtime
