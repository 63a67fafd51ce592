// The accelerator probe (see accel.hpp).
#include "runtime/accel.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace blixard::runtime {

AccelProbe probe_accel(const std::string& cpuinfo, const std::string& kvm_device) {
  std::string flag;
  std::ifstream in(cpuinfo);
  for (std::string line; flag.empty() && std::getline(in, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    for (std::string w; words >> w;) {
      if (w == "vmx" || w == "svm") flag = w;
    }
  }
  if (flag.empty()) return {false, "no vmx/svm CPU flag (no hardware virtualisation): TCG"};
  const int fd = ::open(kvm_device.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return {false,
            flag + " but " + kvm_device + " cannot be opened (" + std::strerror(errno) + "): TCG"};
  }
  const int version = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  const int vm = version == KVM_API_VERSION ? ::ioctl(fd, KVM_CREATE_VM, 0) : -1;
  const int err = errno;
  if (vm >= 0) ::close(vm);
  ::close(fd);
  if (vm < 0) {
    return {false,
            flag + " but KVM_CREATE_VM failed (" + std::string(std::strerror(err)) + "): TCG"};
  }
  return {true, flag + " and " + kvm_device};
}

}  // namespace blixard::runtime
