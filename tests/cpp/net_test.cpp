// VM networks: subnets and address management, and the links (bridge, veth pairs, VXLAN overlay)
// built in network namespaces of the test's own, never the host's: replicas of a network reach
// each other by address on one node and across two "nodes" joined by an underlay.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "common/subnet.hpp"
#include "net/links.hpp"
#include "test_support.hpp"

using namespace blixard;
using namespace blixard::net;
using blixard::test_support::expect_error;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

namespace {

Address ip(const char* text) { return Address::parse(text).value(); }

// ---- subnets ----

TEST(Subnet, ParsesANetwork) {
  const auto s = parse_subnet("10.88.0.0/24", "subnet");
  EXPECT_EQ(s.network(), ip("10.88.0.0"));
  EXPECT_EQ(s.prefix(), 24);
  EXPECT_EQ(s.gateway(), ip("10.88.0.1"));
  EXPECT_EQ(s.broadcast(), ip("10.88.0.255"));
  EXPECT_EQ(s.to_string(), "10.88.0.0/24");
  EXPECT_TRUE(s.contains(ip("10.88.0.77")));
  EXPECT_FALSE(s.contains(ip("10.88.1.1")));
  const auto wide = parse_subnet("172.16.0.0/12", "subnet");
  EXPECT_EQ(wide.broadcast(), ip("172.31.255.255"));
  EXPECT_EQ(parse_subnet("10.88.0.4/30", "subnet").broadcast(), ip("10.88.0.7"));
}

TEST(Subnet, RejectsBadNetworksNamingTheField) {
  for (const char* bad : {"", "10.88.0.0", "10.88.0/24", "10.88.0.300/24", "web/24", "10.88.0.0/",
                          "10.88.0.0/x", "10.88.0.0/24x", "10.88.0.0/-8", "10.0.0.0/7",
                          "10.88.0.0/31", "10.88.0.1/32", " 10.88.0.0/24"}) {
    const auto e =
        expect_error([&] { parse_subnet(bad, "spec.network.subnet"); }, errc::invalid_spec);
    EXPECT_EQ(e.field(), "spec.network.subnet") << bad;
  }
  const auto e = expect_error([] { parse_subnet("10.88.0.5/24", "subnet"); }, errc::invalid_spec);
  EXPECT_THAT(e.message(), HasSubstr("host bits"));
  EXPECT_THAT(e.message(), HasSubstr("10.88.0.0/24"));
  EXPECT_THAT(
      expect_error([] { parse_subnet("10.88.0.0/31", "subnet"); }, errc::invalid_spec).message(),
      HasSubstr("8 to 30"));
}

TEST(Address, ParsesAndPrintsDottedQuads) {
  EXPECT_EQ(ip("10.88.0.1").value, 0x0a580001u);
  EXPECT_EQ(ip("255.255.255.255").to_string(), "255.255.255.255");
  EXPECT_EQ(Address{0x0a580001}.to_string(), "10.88.0.1");
  for (const char* bad : {"", "10.88.0", "10.88.0.1.2", "10.88.0.256", "a.b.c.d", "10.88.0.1 "}) {
    EXPECT_FALSE(Address::parse(bad)) << bad;
  }
  EXPECT_LT(ip("10.88.0.2"), ip("10.88.0.10"));
}

TEST(NextFree, PicksTheLowestHostPastTheGateway) {
  const auto s = parse_subnet("10.88.0.0/24", "subnet");
  EXPECT_EQ(next_free(s, {}), ip("10.88.0.2"));
  EXPECT_EQ(next_free(s, {ip("10.88.0.2"), ip("10.88.0.3"), ip("10.88.0.5")}), ip("10.88.0.4"));
  // Addresses outside the subnet change nothing.
  EXPECT_EQ(next_free(s, {ip("10.0.0.1"), ip("10.88.0.2"), ip("192.168.0.1")}), ip("10.88.0.3"));
}

TEST(NextFree, HandsOutEveryHostOnceAndNeverTheNetworkGatewayOrBroadcast) {
  const auto s = parse_subnet("10.88.0.0/24", "subnet");
  std::set<Address> taken;
  while (const auto a = next_free(s, taken)) {
    EXPECT_TRUE(s.contains(*a));
    EXPECT_NE(*a, s.network());
    EXPECT_NE(*a, s.gateway());
    EXPECT_NE(*a, s.broadcast());
    ASSERT_TRUE(taken.insert(*a).second) << a->to_string() << " handed out twice";
  }
  EXPECT_EQ(taken.size(), 253u);
  // The smallest subnet has a single replica address.
  const auto tiny = parse_subnet("10.88.0.8/30", "subnet");
  EXPECT_EQ(next_free(tiny, {}), ip("10.88.0.10"));
  EXPECT_EQ(next_free(tiny, {ip("10.88.0.10")}), std::nullopt);
}

TEST(NetworkNames, AreShortStableAndPerNetwork) {
  const auto br = bridge_name("web-vlan");
  const auto vx = vxlan_name("web-vlan");
  EXPECT_EQ(br.size(), 11u);
  EXPECT_LT(br.size(), std::size_t{IFNAMSIZ});
  EXPECT_EQ(br.substr(0, 3), "bx-");
  EXPECT_EQ(vx, "vx-" + br.substr(3));
  // Every agent, of every build, derives the same names: these values are part of the protocol.
  EXPECT_EQ(br, "bx-d6956839");
  EXPECT_EQ(vni_of("web-vlan"), 5155766u);
  EXPECT_NE(bridge_name("db-vlan"), br);
  EXPECT_NE(vni_of("db-vlan"), vni_of("web-vlan"));
  EXPECT_EQ(bridge_name(std::string(200, 'n')).size(), 11u);
  for (const char* name : {"", "a", "web-vlan", "db", "x-123"}) {
    EXPECT_GE(vni_of(name), 1u);
    EXPECT_LE(vni_of(name), 0xffffffu);
  }
}

// ---- namespaces, sockets ----

struct Fd {
  int fd = -1;
  explicit Fd(int f = -1) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd, o.fd);
    return *this;
  }
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// A network namespace of its own, held by an fd: a thread unshares into it and opens
// /proc/thread-self/ns/net; the fd keeps the namespace once the thread is gone, and closing it
// tears the namespace down with every link in it.
class Netns {
 public:
  Netns() {
    std::thread([this] {
      if (::unshare(CLONE_NEWNET) != 0) {
        error_ = errno;
        return;
      }
      fd_ = Fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
      if (fd_.fd < 0) error_ = errno;
    }).join();
    if (error_ != 0) throw std::system_error(error_, std::generic_category(), "new netns");
  }
  int fd() const { return fd_.fd; }

  // Runs `f` on a thread in this namespace: returns what it returns, rethrows what it throws.
  template <class F>
  auto run(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task([&] {
      if (::setns(fd_.fd, CLONE_NEWNET) != 0) {
        throw std::system_error(errno, std::generic_category(), "setns");
      }
      return f();
    });
    auto result = task.get_future();
    std::thread(std::ref(task)).join();
    return result.get();
  }

 private:
  Fd fd_;
  int error_ = 0;
};

// Why these tests cannot make namespaces here, or nullopt.
std::optional<std::string> namespaces_unavailable() {
  static const std::optional<std::string> why = []() -> std::optional<std::string> {
    try {
      Netns probe;
    } catch (const std::system_error& e) {
      if (e.code().value() == EPERM) return std::string("unshare(CLONE_NEWNET): ") + e.what();
      throw;
    }
    return std::nullopt;
  }();
  return why;
}

class NetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const auto why = namespaces_unavailable()) GTEST_SKIP() << *why << " (needs root)";
  }
};

constexpr std::uint16_t k_port = 7000;

Fd listen_on(std::uint16_t port) {
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (s.fd < 0 || ::bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(s.fd, 8) != 0) {
    throw std::system_error(errno, std::generic_category(), "listen");
  }
  return s;
}

bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

// Connects from namespace `from` to `to`:k_port within `limit` (a non-blocking connect, polled);
// the socket, or nullopt when it was refused, unreachable or still pending at the deadline.
std::optional<Fd> connect_from(Netns& from, Address to, std::chrono::milliseconds limit) {
  Fd s =
      from.run([] { return Fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)); });
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(k_port);
  a.sin_addr.s_addr = htonl(to.value);
  if (::connect(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
    return std::nullopt;
  }
  int error = 0;
  socklen_t len = sizeof error;
  if (!wait_for(s.fd, POLLOUT, Clock::now() + limit) ||
      ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
    return std::nullopt;
  }
  return s;
}

// A connection from `from` to the listener at `to` carries bytes, and the listener sees it come
// from `from_address` (no translation on the way). Empty when it works, else what failed.
std::string exchange(Netns& from, Address from_address, const Fd& listener, Address to) {
  const auto client = connect_from(from, to, std::chrono::seconds(10));
  if (!client) return "no connection to " + to.to_string();
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  if (!wait_for(listener.fd, POLLIN, deadline)) return "nothing to accept";
  sockaddr_in peer{};
  socklen_t len = sizeof peer;
  const Fd server(::accept4(listener.fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
  if (server.fd < 0) return std::string("accept: ") + std::strerror(errno);
  if (ntohl(peer.sin_addr.s_addr) != from_address.value) {
    return "came from " + Address{ntohl(peer.sin_addr.s_addr)}.to_string();
  }
  if (::send(client->fd, "hello", 5, MSG_NOSIGNAL) != 5) return "send failed";
  std::string got;
  std::array<char, 16> buf{};
  while (got.size() < 5 && wait_for(server.fd, POLLIN, deadline)) {
    const ssize_t n = ::recv(server.fd, buf.data(), buf.size(), 0);
    if (n <= 0) break;
    got.append(buf.data(), static_cast<std::size_t>(n));
  }
  return got == "hello" ? "" : "received '" + got + "'";
}

// The calling thread's namespace, read with the C library (not libnl): "ADDR/PREFIX" of `link`.
std::vector<std::string> ipv4_addresses(const std::string& link) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) throw std::system_error(errno, std::generic_category(), "ifaddrs");
  std::vector<std::string> out;
  for (const ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (link != i->ifa_name || i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) {
      continue;
    }
    const auto* a = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
    const auto* m = reinterpret_cast<const sockaddr_in*>(i->ifa_netmask);
    out.push_back(Address{ntohl(a->sin_addr.s_addr)}.to_string() + "/" +
                  std::to_string(std::popcount(m->sin_addr.s_addr)));
  }
  ::freeifaddrs(list);
  return out;
}

bool is_up(const std::string& link) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) throw std::system_error(errno, std::generic_category(), "ifaddrs");
  bool up = false;
  for (const ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (link == i->ifa_name) up = (i->ifa_flags & IFF_UP) != 0;
  }
  ::freeifaddrs(list);
  return up;
}

// The bridge `link` is a port of, "" for none; read with libnl, not through the library.
std::string master_of(const std::string& link) {
  const std::unique_ptr<nl_sock, void (*)(nl_sock*)> sk(nl_socket_alloc(), nl_socket_free);
  rtnl_link* raw = nullptr;
  if (!sk || nl_connect(sk.get(), NETLINK_ROUTE) < 0 ||
      rtnl_link_get_kernel(sk.get(), 0, link.c_str(), &raw) < 0) {
    return "?";
  }
  const std::unique_ptr<rtnl_link, void (*)(rtnl_link*)> l(raw, rtnl_link_put);
  std::array<char, IF_NAMESIZE> name{};
  const int master = rtnl_link_get_master(l.get());
  return master != 0 && ::if_indextoname(master, name.data()) != nullptr ? name.data() : "";
}

// The calling thread's default route, from /proc/thread-self/net/route: "DEV via GATEWAY".
std::string default_route() {
  std::ifstream in("/proc/thread-self/net/route");
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string dev, dst, gateway;
    fields >> dev >> dst >> gateway;
    if (dst == "00000000") {
      const auto raw = static_cast<std::uint32_t>(std::stoul(gateway, nullptr, 16));
      return dev + " via " + Address{ntohl(raw)}.to_string();
    }
  }
  return "";
}

// ---- one node ----

TEST_F(NetTest, ReplicasOnOneBridgeReachEachOtherByAddress) {
  const auto subnet = parse_subnet("10.88.0.0/24", "subnet");
  const auto br = bridge_name("web-vlan");
  Netns node, a, b;
  node.run([&] {
    ensure_bridge(br, subnet);
    connect_netns(br, "ve-a", a.fd(), "eth0", ip("10.88.0.10"), subnet);
    connect_netns(br, "ve-b", b.fd(), "eth0", ip("10.88.0.11"), subnet);
    EXPECT_TRUE(is_up("ve-a"));
    EXPECT_EQ(master_of("ve-a"), br);
    EXPECT_FALSE(link_exists("eth0"));  // made inside the replica's namespace only
  });
  b.run([] {
    EXPECT_THAT(ipv4_addresses("eth0"), ElementsAre("10.88.0.11/24"));
    EXPECT_TRUE(is_up("eth0"));
    EXPECT_TRUE(is_up("lo"));
    EXPECT_EQ(default_route(), "eth0 via 10.88.0.1");
  });

  const Fd listener = b.run([] { return listen_on(k_port); });
  EXPECT_EQ(exchange(a, ip("10.88.0.10"), listener, ip("10.88.0.11")), "");
  // The node itself reaches its replicas through the gateway address.
  EXPECT_EQ(exchange(node, ip("10.88.0.1"), listener, ip("10.88.0.11")), "");

  // A replica's link goes with its host end.
  node.run([] { remove_link("ve-b"); });
  b.run([] { EXPECT_FALSE(link_exists("eth0")); });
}

TEST_F(NetTest, ConnectNetnsRefusesBadInputAndLeavesNothingWhenItFails) {
  const auto subnet = parse_subnet("10.88.0.0/24", "subnet");
  Netns node, replica;
  node.run([&] {
    ensure_bridge("bx-test", subnet);
    for (const char* a : {"10.88.0.0", "10.88.0.1", "10.88.0.255", "10.89.0.5"}) {
      EXPECT_EQ(expect_error(
                    [&] { connect_netns("bx-test", "ve-r", replica.fd(), "eth0", ip(a), subnet); },
                    errc::invalid_spec)
                    .field(),
                "address")
          << a;
    }
    EXPECT_EQ(expect_error(
                  [&] {
                    connect_netns("bx-test", "a-name-far-too-long", replica.fd(), "eth0",
                                  ip("10.88.0.5"), subnet);
                  },
                  errc::invalid_spec)
                  .field(),
              "host_end");
    expect_error(
        [&] { connect_netns("bx-none", "ve-r", replica.fd(), "eth0", ip("10.88.0.5"), subnet); },
        errc::not_found);
    // "lo" exists inside: the pair cannot be made, and no half of it stays.
    const auto e = expect_error(
        [&] { connect_netns("bx-test", "ve-r", replica.fd(), "lo", ip("10.88.0.5"), subnet); },
        errc::internal);
    EXPECT_THAT(e.message(), HasSubstr("ve-r"));
    EXPECT_FALSE(link_exists("ve-r"));
  });
}

TEST_F(NetTest, EnsureAndSetPeersTwiceLeaveTheSameState) {
  const auto subnet = parse_subnet("10.88.0.0/24", "subnet");
  Netns node;
  node.run([&] {
    const std::string br = "bx-test", vx = "vx-test";
    ensure_bridge(br, subnet);
    const auto bridge_index = ::if_nametoindex(br.c_str());
    ensure_bridge(br, subnet);
    EXPECT_EQ(::if_nametoindex(br.c_str()), bridge_index);
    EXPECT_THAT(ipv4_addresses(br), ElementsAre("10.88.0.1/24"));
    EXPECT_TRUE(is_up(br));

    ensure_vxlan(vx, 42, ip("192.168.77.1"), k_vxlan_port, br);
    const auto vxlan_index = ::if_nametoindex(vx.c_str());
    ASSERT_NE(vxlan_index, 0u);
    ensure_vxlan(vx, 42, ip("192.168.77.1"), k_vxlan_port, br);
    EXPECT_EQ(::if_nametoindex(vx.c_str()), vxlan_index);
    EXPECT_TRUE(is_up(vx));
    EXPECT_EQ(master_of(vx), br);
    // Kept, and moved, when only its bridge differs.
    ensure_bridge("bx-other", parse_subnet("10.77.0.0/24", "subnet"));
    ensure_vxlan(vx, 42, ip("192.168.77.1"), k_vxlan_port, "bx-other");
    EXPECT_EQ(master_of(vx), "bx-other");
    ensure_vxlan(vx, 42, ip("192.168.77.1"), k_vxlan_port, br);
    EXPECT_EQ(master_of(vx), br);
    EXPECT_EQ(::if_nametoindex(vx.c_str()), vxlan_index);

    const std::set<Address> peers{ip("192.168.77.2"), ip("192.168.77.3")};
    set_vxlan_peers(vx, peers);
    set_vxlan_peers(vx, peers);
    EXPECT_EQ(vxlan_peers(vx), peers);
    set_vxlan_peers(vx, {ip("192.168.77.3"), ip("192.168.77.4")});
    EXPECT_EQ(vxlan_peers(vx), (std::set<Address>{ip("192.168.77.3"), ip("192.168.77.4")}));
    set_vxlan_peers(vx, {});
    EXPECT_TRUE(vxlan_peers(vx).empty());

    // A changed subnet replaces the bridge's address; a changed VNI replaces the device.
    ensure_bridge(br, parse_subnet("10.99.0.0/16", "subnet"));
    EXPECT_THAT(ipv4_addresses(br), ElementsAre("10.99.0.1/16"));
    set_vxlan_peers(vx, peers);
    ensure_vxlan(vx, 43, ip("192.168.77.1"), k_vxlan_port, br);
    EXPECT_NE(::if_nametoindex(vx.c_str()), vxlan_index);
    EXPECT_TRUE(vxlan_peers(vx).empty());

    remove_link(vx);
    remove_link(vx);
    EXPECT_FALSE(link_exists(vx));
    EXPECT_TRUE(link_exists(br));
  });
}

TEST_F(NetTest, BadArgumentsNameTheirField) {
  Netns node;
  node.run([] {
    const auto subnet = parse_subnet("10.88.0.0/24", "subnet");
    EXPECT_EQ(expect_error([&] { ensure_bridge("bx-0123456789abc", subnet); }, errc::invalid_spec)
                  .field(),
              "bridge");
    EXPECT_EQ(expect_error([&] { ensure_bridge("bx/x", subnet); }, errc::invalid_spec).field(),
              "bridge");
    ensure_bridge("bx-test", subnet);
    for (const std::uint32_t vni : {0u, 1u << 24}) {
      EXPECT_EQ(
          expect_error(
              [&] { ensure_vxlan("vx-test", vni, ip("192.168.77.1"), k_vxlan_port, "bx-test"); },
              errc::invalid_spec)
              .field(),
          "vni");
    }
    expect_error([&] { ensure_vxlan("vx-test", 42, ip("192.168.77.1"), k_vxlan_port, "bx-none"); },
                 errc::not_found);
    EXPECT_EQ(expect_error([] { set_vxlan_peers("bx-test", {}); }, errc::invalid_spec).field(),
              "name");
    expect_error([] { set_vxlan_peers("vx-none", {}); }, errc::not_found);
    EXPECT_EQ(expect_error([] { remove_link(""); }, errc::invalid_spec).field(), "name");
  });
}

// ---- two nodes ----

// Two nodes, N1 and N2, whose underlay is 192.168.77.0/24 (N1 .1 on a bridge, N2 .2 on a veth
// from it), each with the bridge of network web-vlan (10.88.0.0/24, gateway .1 on both) and its
// VXLAN device naming the other node, and a replica: 10.88.0.10 on N1, 10.88.0.11 on N2.
struct TwoNodes {
  const Subnet subnet = parse_subnet("10.88.0.0/24", "subnet");
  const std::string br = bridge_name("web-vlan");
  const std::string vx = vxlan_name("web-vlan");
  Netns n1, n2, r1, r2;

  TwoNodes() {
    const auto underlay = parse_subnet("192.168.77.0/24", "underlay");
    n1.run([&] {
      ensure_bridge("underlay", underlay);
      connect_netns("underlay", "ul-n2", n2.fd(), "ul0", ip("192.168.77.2"), underlay);
    });
    join(n1, ip("192.168.77.1"), ip("192.168.77.2"), r1, ip("10.88.0.10"));
    join(n2, ip("192.168.77.2"), ip("192.168.77.1"), r2, ip("10.88.0.11"));
  }

  void join(Netns& node, Address local, Address peer, Netns& replica, Address address) {
    node.run([&] {
      ensure_bridge(br, subnet);
      ensure_vxlan(vx, vni_of("web-vlan"), local, k_vxlan_port, br);
      set_vxlan_peers(vx, {peer});
      connect_netns(br, "ve-r", replica.fd(), "eth0", address, subnet);
    });
  }

  void set_peers(Netns& node, const std::set<Address>& peers) {
    node.run([&] { set_vxlan_peers(vx, peers); });
  }
};

TEST_F(NetTest, ReplicasOnTwoNodesReachEachOtherThroughVxlan) {
  TwoNodes nodes;
  const Fd listener = nodes.r2.run([] { return listen_on(k_port); });
  EXPECT_EQ(exchange(nodes.r1, ip("10.88.0.10"), listener, ip("10.88.0.11")), "");
  nodes.n1.run([&] { EXPECT_EQ(vxlan_peers(nodes.vx), std::set{ip("192.168.77.2")}); });
}

TEST_F(NetTest, RemovingThePeerCutsTheOverlay) {
  TwoNodes nodes;
  const Fd listener = nodes.r2.run([] { return listen_on(k_port); });
  ASSERT_EQ(exchange(nodes.r1, ip("10.88.0.10"), listener, ip("10.88.0.11")), "");

  // Both nodes drop each other, N2 first: with learning on, a packet N2 still sent to N1 would
  // teach N1 the way back. The entries each learned for the other's replica go with the peer.
  nodes.set_peers(nodes.n2, {});
  nodes.set_peers(nodes.n1, {});
  EXPECT_FALSE(connect_from(nodes.r1, ip("10.88.0.11"), std::chrono::seconds(2)));

  nodes.set_peers(nodes.n2, {ip("192.168.77.1")});
  nodes.set_peers(nodes.n1, {ip("192.168.77.2")});
  EXPECT_EQ(exchange(nodes.r1, ip("10.88.0.10"), listener, ip("10.88.0.11")), "");
}

}  // namespace
