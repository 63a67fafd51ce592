// What replicas on VM networks may reach of their node: only answers to what the node itself
// opened (its relays and readiness checks into them); nothing the node serves, and nothing it
// would route elsewhere. Without it a replica's default gateway (the bridge's address, the node)
// would answer on every port the host listens on 0.0.0.0, and a host that forwards IP would route
// the replica out. An nftables table of its own (libnftables, as the nft tool), in the calling
// thread's network namespace, covering every VM network bridge ("bx-*") and IPv6 as well.
#pragma once

#include <string>
#include <vector>

namespace blixard::net {

// Installs (or replaces) the guard for the node's `bridges`: input from a bridge is dropped unless
// it answers a connection the node made; forwarding from or to a bridge is dropped but from a
// bridge to itself (a network's own traffic, where br_netfilter shows it). Idempotent. Throws
// Error(unavailable) when nftables refuses (no nf_tables in the kernel, no CAP_NET_ADMIN): a
// replica is then not put on a network (closed rather than open).
void guard_bridges(const std::vector<std::string>& bridges);
// Removes the guard (the node's last VM network is gone). Idempotent.
void unguard_bridges();

}  // namespace blixard::net
