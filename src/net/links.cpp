// VM network links over rtnetlink (see links.hpp).
#include "net/links.hpp"

#include <arpa/inet.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/bridge.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/link/vxlan.h>
#include <netlink/route/neighbour.h>
#include <netlink/route/route.h>
#include <sched.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string_view>
#include <thread>
#include <vector>

#include "blixard/error.hpp"

namespace blixard::net {
namespace {

template <auto free_fn>
struct Free {
  template <class T>
  void operator()(T* p) const noexcept {
    free_fn(p);
  }
};
using SockPtr = std::unique_ptr<nl_sock, Free<nl_socket_free>>;
using LinkPtr = std::unique_ptr<rtnl_link, Free<rtnl_link_put>>;
using AddrPtr = std::unique_ptr<nl_addr, Free<nl_addr_put>>;
using IfAddrPtr = std::unique_ptr<rtnl_addr, Free<rtnl_addr_put>>;
using CachePtr = std::unique_ptr<nl_cache, Free<nl_cache_free>>;
using RoutePtr = std::unique_ptr<rtnl_route, Free<rtnl_route_put>>;
using NeighPtr = std::unique_ptr<rtnl_neigh, Free<rtnl_neigh_put>>;

using Mac = std::array<unsigned char, 6>;
constexpr Mac k_zero_mac{};

// libnl's allocators fail only when memory does.
template <class T>
T* made(T* p) {
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

// A refused request: "net: creating bridge bx-0a1b2c3d: Object exists".
void check(int err, std::string_view what, std::string_view link) {
  if (err < 0) {
    throw Error(errc::internal,
                "net: " + std::string(what) + " " + std::string(link) + ": " + nl_geterror(err));
  }
}

bool not_found(int err) { return err == -NLE_OBJ_NOTFOUND || err == -NLE_NODEV; }

// The kernel's dev_valid_name(), so that a bad name fails here with its field, not as EINVAL.
void check_name(const std::string& name, const char* field) {
  if (name.empty() || name.size() >= IFNAMSIZ || name == "." || name == ".." ||
      name.find_first_of("/: \t\n\r\v\f") != std::string::npos) {
    throw Error(
        errc::invalid_spec,
        "'" + name + "' is not an interface name (1 to 15 characters, no '/', ':' or space)",
        field);
  }
}

// A netlink socket in the calling thread's network namespace.
SockPtr connect() {
  SockPtr sk(made(nl_socket_alloc()));
  if (const int err = nl_connect(sk.get(), NETLINK_ROUTE); err < 0) {
    throw Error(errc::unavailable,
                std::string("net: connecting to rtnetlink: ") + nl_geterror(err));
  }
  return sk;
}

AddrPtr ipv4(Address a, int prefix = 32) {
  const std::uint32_t be = htonl(a.value);
  AddrPtr p(made(nl_addr_build(AF_INET, &be, sizeof be)));
  nl_addr_set_prefixlen(p.get(), prefix);
  return p;
}

std::optional<Address> ipv4_of(const nl_addr* a) {
  if (a == nullptr || nl_addr_get_family(a) != AF_INET || nl_addr_get_len(a) != 4) {
    return std::nullopt;
  }
  std::uint32_t be = 0;
  std::memcpy(&be, nl_addr_get_binary_addr(a), sizeof be);
  return Address{ntohl(be)};
}

LinkPtr find_link(nl_sock* sk, const std::string& name) {
  rtnl_link* link = nullptr;
  const int err = rtnl_link_get_kernel(sk, 0, name.c_str(), &link);
  if (not_found(err)) return nullptr;
  check(err, "looking up", name);
  return LinkPtr(link);
}

LinkPtr need_link(nl_sock* sk, const std::string& name) {
  auto link = find_link(sk, name);
  if (!link) throw Error(errc::not_found, "net: there is no link " + name);
  return link;
}

bool has_type(rtnl_link* link, std::string_view type) {
  const char* t = rtnl_link_get_type(link);
  return t != nullptr && type == t;
}

// Sets `link` up and, when `master` is non-zero, makes it a port of that bridge.
void set_up(nl_sock* sk, rtnl_link* link, int master = 0) {
  const bool up = (rtnl_link_get_flags(link) & IFF_UP) != 0;
  if (up && (master == 0 || rtnl_link_get_master(link) == master)) return;
  LinkPtr change(made(rtnl_link_alloc()));
  if (master != 0) rtnl_link_set_master(change.get(), master);
  rtnl_link_set_flags(change.get(), IFF_UP);
  check(rtnl_link_change(sk, link, change.get(), 0), "setting up", rtnl_link_get_name(link));
}

void add_address(nl_sock* sk, rtnl_link* link, Address a, const Subnet& subnet) {
  IfAddrPtr addr(made(rtnl_addr_alloc()));
  rtnl_addr_set_ifindex(addr.get(), rtnl_link_get_ifindex(link));
  const auto local = ipv4(a, subnet.prefix());
  const auto broadcast = ipv4(subnet.broadcast());
  const std::string what =
      "adding " + a.to_string() + "/" + std::to_string(subnet.prefix()) + " to";
  check(rtnl_addr_set_local(addr.get(), local.get()), what, rtnl_link_get_name(link));
  rtnl_addr_set_prefixlen(addr.get(), subnet.prefix());
  check(rtnl_addr_set_broadcast(addr.get(), broadcast.get()), what, rtnl_link_get_name(link));
  check(rtnl_addr_add(sk, addr.get(), 0), what, rtnl_link_get_name(link));
}

// Makes the IPv4 addresses of `link` exactly `a`/prefix.
void set_only_address(nl_sock* sk, rtnl_link* link, Address a, const Subnet& subnet) {
  nl_cache* raw = nullptr;
  check(rtnl_addr_alloc_cache(sk, &raw), "listing the addresses of", rtnl_link_get_name(link));
  const CachePtr cache(raw);
  bool present = false;
  for (nl_object* o = nl_cache_get_first(cache.get()); o != nullptr; o = nl_cache_get_next(o)) {
    auto* addr = reinterpret_cast<rtnl_addr*>(o);
    if (rtnl_addr_get_ifindex(addr) != rtnl_link_get_ifindex(link) ||
        rtnl_addr_get_family(addr) != AF_INET) {
      continue;
    }
    if (ipv4_of(rtnl_addr_get_local(addr)) == a &&
        rtnl_addr_get_prefixlen(addr) == subnet.prefix()) {
      present = true;
    } else {
      check(rtnl_addr_delete(sk, addr, 0), "removing an old address from",
            rtnl_link_get_name(link));
    }
  }
  if (!present) add_address(sk, link, a, subnet);
}

// Runs `work` on a thread of its own in the network namespace `netns_fd`, leaving the caller's
// thread where it is; rethrows what `work` threw.
template <class F>
void in_netns(int netns_fd, F&& work) {
  std::exception_ptr failure;
  std::thread thread([&] {
    try {
      if (::setns(netns_fd, CLONE_NEWNET) != 0) {
        const int err = errno;
        throw Error(errc::unavailable, "net: entering the network namespace of fd " +
                                           std::to_string(netns_fd) + ": " + std::strerror(err));
      }
      work();
    } catch (...) {
      failure = std::current_exception();
    }
  });
  thread.join();
  if (failure) std::rethrow_exception(failure);
}

// Inside the replica's namespace: `lo` and `name` up, the address, the default route.
void configure_inside(const std::string& name, Address address, const Subnet& subnet) {
  const auto sk = connect();
  set_up(sk.get(), need_link(sk.get(), "lo").get());
  const auto link = need_link(sk.get(), name);
  set_up(sk.get(), link.get());
  add_address(sk.get(), link.get(), address, subnet);

  RoutePtr route(made(rtnl_route_alloc()));
  rtnl_route_set_family(route.get(), AF_INET);
  rtnl_route_set_table(route.get(), RT_TABLE_MAIN);
  rtnl_route_set_protocol(route.get(), RTPROT_STATIC);
  rtnl_route_set_scope(route.get(), RT_SCOPE_UNIVERSE);
  rtnl_route_set_type(route.get(), RTN_UNICAST);
  const auto any = ipv4(Address{0}, 0);
  const auto gateway = ipv4(subnet.gateway());
  const std::string what = "adding the default route via " + subnet.gateway().to_string() + " on";
  check(rtnl_route_set_dst(route.get(), any.get()), what, name);
  rtnl_nexthop* hop = made(rtnl_route_nh_alloc());
  rtnl_route_nh_set_ifindex(hop, rtnl_link_get_ifindex(link.get()));
  rtnl_route_nh_set_gateway(hop, gateway.get());
  rtnl_route_add_nexthop(route.get(), hop);  // the route owns it now
  check(rtnl_route_add(sk.get(), route.get(), NLM_F_EXCL), what, name);
}

struct FdbEntry {
  Mac mac{};
  Address dst;
};

// The FDB entries of VXLAN device `ifindex` with an IPv4 destination: the device's own (the
// bridge's entries for it as a port have no destination).
std::vector<FdbEntry> fdb_entries(nl_sock* sk, int ifindex, const std::string& name) {
  struct Dump {
    int ifindex;
    std::vector<FdbEntry> entries;
  } dump{ifindex, {}};
  const auto on_message = [](nl_msg* msg, void* arg) -> int {
    auto& d = *static_cast<Dump*>(arg);
    nlmsghdr* hdr = nlmsg_hdr(msg);
    std::array<nlattr*, NDA_MAX + 1> attrs{};
    if (hdr->nlmsg_type != RTM_NEWNEIGH ||
        nlmsg_parse(hdr, sizeof(ndmsg), attrs.data(), NDA_MAX, nullptr) < 0) {
      return NL_OK;
    }
    const auto* ndm = static_cast<const ndmsg*>(nlmsg_data(hdr));
    const nlattr* mac = attrs[NDA_LLADDR];
    const nlattr* dst = attrs[NDA_DST];
    if (ndm->ndm_ifindex != d.ifindex || mac == nullptr || nla_len(mac) != 6 || dst == nullptr ||
        nla_len(dst) != 4) {
      return NL_OK;
    }
    FdbEntry e;
    std::memcpy(e.mac.data(), nla_data(mac), e.mac.size());
    std::uint32_t be = 0;
    std::memcpy(&be, nla_data(dst), sizeof be);
    e.dst = Address{ntohl(be)};
    d.entries.push_back(e);
    return NL_OK;
  };
  const std::string what = "listing the FDB of";
  check(nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, on_message, &dump), what, name);
  // An ndmsg header asks for every bridge-family entry; the kernel filters only on an ifinfomsg.
  ndmsg request{};
  request.ndm_family = AF_BRIDGE;
  check(nl_send_simple(sk, RTM_GETNEIGH, NLM_F_DUMP, &request, sizeof request), what, name);
  check(nl_recvmsgs_default(sk), what, name);
  return std::move(dump.entries);
}

// A static FDB entry of the VXLAN device, as `bridge fdb append MAC dev NAME dst DST` makes.
NeighPtr fdb_entry(int ifindex, const Mac& mac, Address dst, const std::string& name) {
  NeighPtr n(made(rtnl_neigh_alloc()));
  rtnl_neigh_set_ifindex(n.get(), ifindex);
  const auto lladdr = AddrPtr(made(nl_addr_build(AF_LLC, mac.data(), mac.size())));
  const auto remote = ipv4(dst);
  rtnl_neigh_set_lladdr(n.get(), lladdr.get());
  // The destination first: setting it takes its family, which must then become AF_BRIDGE.
  check(rtnl_neigh_set_dst(n.get(), remote.get()), "addressing an FDB entry of", name);
  rtnl_neigh_set_family(n.get(), AF_BRIDGE);
  rtnl_neigh_set_flags(n.get(), NTF_SELF);
  rtnl_neigh_set_state(n.get(), NUD_NOARP | NUD_PERMANENT);
  return n;
}

bool same_vxlan(rtnl_link* link, std::uint32_t vni, Address local, std::uint16_t port) {
  if (!has_type(link, "vxlan")) return false;
  std::uint32_t id = 0;
  std::uint32_t dst_port = 0;
  nl_addr* raw = nullptr;
  if (rtnl_link_vxlan_get_id(link, &id) < 0 || rtnl_link_vxlan_get_port(link, &dst_port) < 0 ||
      rtnl_link_vxlan_get_local(link, &raw) < 0) {
    return false;
  }
  const AddrPtr from(raw);
  return id == vni && dst_port == port && ipv4_of(from.get()) == local &&
         rtnl_link_vxlan_get_learning(link) > 0;
}

}  // namespace

void ensure_bridge(const std::string& name, const Subnet& subnet) {
  check_name(name, "bridge");
  const auto sk = connect();
  // One MAC for the bridge of this name on every node (02:63 and a hash of the name): the
  // gateway is one neighbour wherever a replica runs, so an ARP answer that crossed the overlay
  // from another node's bridge still sends the replica's frames to its own node.
  std::uint32_t h = 2166136261U;
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 16777619U;
  const std::array<unsigned char, 6> mac{0x02,
                                         0x63,
                                         static_cast<unsigned char>(h >> 24),
                                         static_cast<unsigned char>(h >> 16),
                                         static_cast<unsigned char>(h >> 8),
                                         static_cast<unsigned char>(h)};
  const AddrPtr lladdr(made(nl_addr_build(AF_LLC, mac.data(), mac.size())));
  auto link = find_link(sk.get(), name);
  if (!link) {
    LinkPtr want(made(rtnl_link_bridge_alloc()));
    rtnl_link_set_name(want.get(), name.c_str());
    rtnl_link_set_addr(want.get(), lladdr.get());
    check(rtnl_link_add(sk.get(), want.get(), NLM_F_CREATE | NLM_F_EXCL), "creating bridge", name);
    link = need_link(sk.get(), name);
  } else if (!has_type(link.get(), "bridge")) {
    throw Error(errc::already_exists, "net: link " + name + " exists and is not a bridge");
  } else if (nl_addr_cmp(rtnl_link_get_addr(link.get()), lladdr.get()) != 0) {
    LinkPtr change(made(rtnl_link_alloc()));
    rtnl_link_set_addr(change.get(), lladdr.get());
    check(rtnl_link_change(sk.get(), link.get(), change.get(), 0), "setting the MAC of", name);
  }
  set_only_address(sk.get(), link.get(), subnet.gateway(), subnet);
  set_up(sk.get(), link.get());
}

void remove_link(const std::string& name) {
  check_name(name, "name");
  const auto sk = connect();
  LinkPtr link(made(rtnl_link_alloc()));
  rtnl_link_set_name(link.get(), name.c_str());
  const int err = rtnl_link_delete(sk.get(), link.get());
  if (!not_found(err)) check(err, "deleting", name);
}

bool link_exists(const std::string& name) {
  check_name(name, "name");
  const auto sk = connect();
  return find_link(sk.get(), name) != nullptr;
}

void connect_netns(const std::string& bridge, const std::string& host_end, int netns_fd,
                   const std::string& inside_name, Address address, const Subnet& subnet) {
  check_name(bridge, "bridge");
  check_name(host_end, "host_end");
  check_name(inside_name, "inside_name");
  if (!subnet.contains(address) || address == subnet.network() || address == subnet.gateway() ||
      address == subnet.broadcast()) {
    throw Error(errc::invalid_spec,
                address.to_string() + " is not a replica address of " + subnet.to_string(),
                "address");
  }
  const auto sk = connect();
  const auto br = need_link(sk.get(), bridge);

  // One request makes both ends: ours a port of the bridge and up, the peer created inside the
  // namespace under its final name (no clash with a link of ours, nothing to rename).
  LinkPtr veth(made(rtnl_link_veth_alloc()));
  rtnl_link_set_name(veth.get(), host_end.c_str());
  rtnl_link_set_master(veth.get(), rtnl_link_get_ifindex(br.get()));
  rtnl_link_set_flags(veth.get(), IFF_UP);
  const LinkPtr peer(made(rtnl_link_veth_get_peer(veth.get())));
  rtnl_link_set_name(peer.get(), inside_name.c_str());
  rtnl_link_set_ns_fd(peer.get(), netns_fd);
  // Its MAC follows from its address (locally administered, 02:62:<address>): a replica started
  // again with the same address is the same neighbour to the others, whose ARP caches stay right.
  const std::uint32_t be = htonl(address.value);
  std::array<unsigned char, 6> mac{0x02, 0x62};
  std::memcpy(mac.data() + 2, &be, sizeof be);
  const AddrPtr lladdr(made(nl_addr_build(AF_LLC, mac.data(), mac.size())));
  rtnl_link_set_addr(peer.get(), lladdr.get());
  check(rtnl_link_add(sk.get(), veth.get(), NLM_F_CREATE | NLM_F_EXCL), "creating veth pair",
        host_end + "/" + inside_name);
  try {
    in_netns(netns_fd, [&] { configure_inside(inside_name, address, subnet); });
  } catch (...) {
    rtnl_link_delete(sk.get(), veth.get());  // takes the peer with it
    throw;
  }
}

void ensure_vxlan(const std::string& name, std::uint32_t vni, Address local, std::uint16_t port,
                  const std::string& bridge) {
  check_name(name, "name");
  check_name(bridge, "bridge");
  if (vni == 0 || vni > 0xffffff) {
    throw Error(errc::invalid_spec, "a VNI is 1 to 16777215, not " + std::to_string(vni), "vni");
  }
  if (port == 0) throw Error(errc::invalid_spec, "the VXLAN port cannot be 0", "port");
  const auto sk = connect();
  const int master = rtnl_link_get_ifindex(need_link(sk.get(), bridge).get());
  if (const auto link = find_link(sk.get(), name)) {
    if (same_vxlan(link.get(), vni, local, port)) {
      set_up(sk.get(), link.get(), master);
      return;
    }
    check(rtnl_link_delete(sk.get(), link.get()), "replacing", name);
  }
  LinkPtr want(made(rtnl_link_vxlan_alloc()));
  rtnl_link_set_name(want.get(), name.c_str());
  const auto from = ipv4(local);
  const std::string what = "creating VXLAN device";
  check(rtnl_link_vxlan_set_id(want.get(), vni), what, name);
  check(rtnl_link_vxlan_set_local(want.get(), from.get()), what, name);
  check(rtnl_link_vxlan_set_port(want.get(), port), what, name);
  check(rtnl_link_vxlan_set_learning(want.get(), 1), what, name);
  rtnl_link_set_master(want.get(), master);
  rtnl_link_set_flags(want.get(), IFF_UP);
  check(rtnl_link_add(sk.get(), want.get(), NLM_F_CREATE | NLM_F_EXCL), what, name);
}

void set_vxlan_peers(const std::string& name, const std::set<Address>& peers) {
  check_name(name, "name");
  const auto sk = connect();
  const auto link = need_link(sk.get(), name);
  if (!has_type(link.get(), "vxlan")) {
    throw Error(errc::invalid_spec, "link " + name + " is not a VXLAN device", "name");
  }
  const int index = rtnl_link_get_ifindex(link.get());
  std::set<Address> present;
  for (const auto& e : fdb_entries(sk.get(), index, name)) {
    if (peers.contains(e.dst)) {
      if (e.mac == k_zero_mac) present.insert(e.dst);
      continue;
    }
    const auto stale = fdb_entry(index, e.mac, e.dst, name);
    const int err = rtnl_neigh_delete(sk.get(), stale.get(), 0);
    // A learned entry may have aged out since the dump.
    if (!not_found(err)) check(err, "removing peer " + e.dst.to_string() + " from", name);
  }
  for (const Address p : peers) {
    if (present.contains(p)) continue;
    const auto entry = fdb_entry(index, k_zero_mac, p, name);
    check(rtnl_neigh_add(sk.get(), entry.get(), NLM_F_CREATE | NLM_F_APPEND),
          "adding peer " + p.to_string() + " to", name);
  }
}

std::set<Address> vxlan_peers(const std::string& name) {
  check_name(name, "name");
  const auto sk = connect();
  const auto link = need_link(sk.get(), name);
  std::set<Address> out;
  for (const auto& e : fdb_entries(sk.get(), rtnl_link_get_ifindex(link.get()), name)) {
    if (e.mac == k_zero_mac) out.insert(e.dst);
  }
  return out;
}

}  // namespace blixard::net
