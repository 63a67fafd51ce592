// Host ports for a replica with a network namespace of its own (a sandbox replica on a VM
// network): each connection to a host port is relayed to the replica's address and declared port,
// as Docker's userland proxy does. (Kernel NAT would need route_localnet for the 127.0.0.1 the
// server connects to, which opens 127/8 to the network.) Guests need none: qemu forwards theirs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace blixard::runtime {

class PortForwarder {
 public:
  // Listens on every host address at each host port of `ports` (declared -> host) and relays to
  // `target`:declared. Throws Error(unavailable) when a host port cannot be bound.
  PortForwarder(const std::map<std::uint32_t, std::uint32_t>& ports, const std::string& target);
  // Closes the listeners and every relayed connection.
  ~PortForwarder();
  PortForwarder(const PortForwarder&) = delete;
  PortForwarder& operator=(const PortForwarder&) = delete;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace blixard::runtime
