// VM networks on the sandbox driver, through the public C++ SDK on an embedded cluster: replicas
// of a set on a network get a namespace of their own on the network's bridge, an address from the
// store (kept across restarts), reach each other by it, and their ports still reach the host.
// Each test runs in a network namespace of its own (the bridge it makes is not the host's).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>
#include <thread>

#include "blixard/cluster.hpp"
#include "blixard/error.hpp"
#include "net/links.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using blixard::Cluster;
using blixard::errc;
using blixard::Error;
using blixard::test_support::eventually;
using blixard::test_support::expect_error;
using blixard::test_support::http_head_only;
using blixard::test_support::instances_with;
using blixard::test_support::python;
using ::testing::HasSubstr;
namespace v1 = blixard::v1;
using namespace std::chrono_literals;

namespace {

// The calling thread (and the threads it starts from now on) in a new network namespace with its
// loopback up; false if the kernel refuses (not root).
bool own_network_namespace() {
  if (::unshare(CLONE_NEWNET) != 0) return false;
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq req{};
  std::snprintf(req.ifr_name, sizeof req.ifr_name, "lo");
  req.ifr_flags = IFF_UP;
  const bool up = fd >= 0 && ::ioctl(fd, SIOCSIFFLAGS, &req) == 0;
  ::close(fd);
  return up;
}

std::string body(std::uint32_t port, const std::string& path) {
  const auto reply =
      http_head_only(static_cast<unsigned short>(port), "GET " + path + " HTTP/1.0\r\n\r\n");
  const auto at = reply.find("\r\n\r\n");
  return at == std::string::npos ? "" : reply.substr(at + 4);
}

class VmNetworkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0 || !own_network_namespace()) {
      GTEST_SKIP() << "VM networks need root (a network namespace, bridges, veth pairs)";
    }
    token_ = "blixard-vmnet-test-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = fs::temp_directory_path() / token_;
    fs::remove_all(dir_);
    blixard::LocalOptions options;
    options.python = python();
    cluster_.emplace(Cluster::local(dir_, options));
  }
  void TearDown() override {
    if (!cluster_) return;
    cluster_->close();
    cluster_.reset();
    EXPECT_TRUE(eventually([&] { return instances_with(token_) == 0; }, 5s)) << "leaked replicas";
    fs::remove_all(dir_);
  }

  // Serves "I am <its address>" on port 80, and on /via/<address> what that address's port 80
  // serves (a request from this replica to another over the network).
  v1::VmSpec peer_spec(std::uint32_t replicas) {
    v1::VmSpec s;
    s.add_command(python());
    s.add_command("-c");
    s.add_command(
        "import http.server as h, os, signal, sys, urllib.request\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "me = os.environ['BLIXARD_ADDRESS']\n"
        "class P(h.BaseHTTPRequestHandler):\n"
        "  def do_GET(self):\n"
        "    if self.path.startswith('/via/'):\n"
        "      try:\n"
        "        t = self.path[5:] if ':' in self.path[5:] else self.path[5:] + ':80'\n"
        "        b = urllib.request.urlopen('http://' + t + '/', timeout=2).read()\n"
        "      except Exception as e:\n"
        "        b = ('failed: %s' % e).encode()\n"
        "    else:\n"
        "      b = ('I am ' + me).encode()\n"
        "    self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
        "    self.end_headers(); self.wfile.write(b)\n"
        "  def log_message(self, *a): pass\n"
        // (socketserver's, not http.server's: that one looks its name up in DNS, which this
        // network has none of, and waits out the resolver's timeout.)
        "import socketserver\n"
        "socketserver.TCPServer(('0.0.0.0', 80), P).serve_forever()\n");
    s.add_ports(80);
    s.set_memory_mib(64);
    s.set_replicas(replicas);
    s.set_network("net");
    (*s.mutable_env())["TEST_TOKEN"] = token_;
    return s;
  }

  v1::VmStatus status(const std::string& vm) { return cluster_->vm(vm).status(); }
  bool running(const std::string& vm, std::uint32_t ready) {
    const auto st = status(vm);
    return st.phase() == "Running" && st.ready_replicas() == ready &&
           st.instances_size() == static_cast<int>(ready);
  }

  std::string token_;
  fs::path dir_;
  std::optional<Cluster> cluster_;
};

TEST_F(VmNetworkTest, ReplicasOfANetworkReachEachOtherByAddress) {
  // Named before it exists: refused, saying how to make it.
  const auto e =
      expect_error([&] { cluster_->create_vm("web", peer_spec(2)); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.network");
  EXPECT_THAT(e.what(), HasSubstr("blixard network create net --subnet"));
  v1::NetworkSpec spec;
  spec.set_subnet("10.77.0.0/24");
  cluster_->create_network("net", spec);

  cluster_->create_vm("web", peer_spec(2));
  ASSERT_TRUE(eventually([&] { return running("web", 2); }, 20s)) << status("web").DebugString();
  const auto st = status("web");
  const std::string a1 = st.instances(0).network_address();
  const std::string a2 = st.instances(1).network_address();
  // The lowest free addresses (the gateway, .1, is each node's), one each.
  EXPECT_EQ((std::set<std::string>{a1, a2}), (std::set<std::string>{"10.77.0.2", "10.77.0.3"}));
  EXPECT_EQ(cluster_->network("net").status().addresses(), 2U);
  // Its host port reaches it (relayed into its namespace); it reaches the other by address.
  const auto port1 = st.instances(0).host_ports().at(80);
  EXPECT_EQ(body(port1, "/"), "I am " + a1);
  EXPECT_EQ(body(port1, "/via/" + a2), "I am " + a2);
  EXPECT_EQ(body(st.instances(1).host_ports().at(80), "/via/" + a1), "I am " + a1);

  // Its node is its gateway, and nothing more: a port the host serves on every address (here:
  // this test's, in its namespace) is not reached from the network.
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in any{};
  any.sin_family = AF_INET;
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
  ASSERT_EQ(::listen(listener, 8), 0);
  socklen_t len = sizeof any;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&any), &len);
  const std::string host_port = "10.77.0.1:" + std::to_string(ntohs(any.sin_port));
  std::thread server([listener] {  // answers whoever reaches it
    for (int fd; (fd = ::accept(listener, nullptr, nullptr)) >= 0; ::close(fd)) {
      const std::string reply = "HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nreached";
      (void)!::write(fd, reply.data(), reply.size());
    }
  });
  // (From the test itself, on the host's side, it answers.)
  EXPECT_THAT(http_head_only(ntohs(any.sin_port), "GET / HTTP/1.0\r\n\r\n"), HasSubstr("reached"));
  const auto from_replica = body(port1, "/via/" + host_port);
  EXPECT_EQ(from_replica.rfind("failed", 0), 0U) << from_replica;
  ::shutdown(listener, SHUT_RDWR);
  server.join();
  ::close(listener);

  // Killed, it comes back with its address.
  const auto before = status("web").instances(1).restarts();
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const auto env = blixard::test_support::read_proc_file(entry.path() / "environ");
    if (env.find("TEST_TOKEN=" + token_) != std::string::npos &&
        env.find(std::string("BLIXARD_REPLICA=web-2") + '\0') != std::string::npos) {
      ::kill(std::stoi(entry.path().filename()), SIGKILL);
    }
  }
  ASSERT_TRUE(eventually(
      [&] {
        const auto now = status("web");
        return running("web", 2) && now.instances(1).restarts() > before;
      },
      20s))
      << status("web").DebugString();
  EXPECT_EQ(status("web").instances(1).network_address(), a2);
  EXPECT_TRUE(eventually([&] {
    return body(status("web").instances(0).host_ports().at(80), "/via/" + a2) == "I am " + a2;
  }));

  // The network stays while a VM names it; the set's addresses go with the set.
  expect_error([&] { cluster_->delete_network("net"); }, errc::conflict);
  cluster_->delete_vm("web");
  ASSERT_TRUE(eventually([&] { return cluster_->network("net").status().addresses() == 0; }));
  // Its last replica gone, the node's bridge goes too.
  const auto bridge = cluster_->network("net").status().bridge();
  EXPECT_THAT(bridge, ::testing::StartsWith("bx-"));
  EXPECT_TRUE(eventually([&] { return !blixard::net::link_exists(bridge); }));
  cluster_->delete_network("net");
  EXPECT_TRUE(cluster_->networks().empty());
}

TEST_F(VmNetworkTest, ABadSubnetIsNamed) {
  v1::NetworkSpec spec;
  spec.set_subnet("10.77.0.1/24");
  const auto e = expect_error([&] { cluster_->create_network("net", spec); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "spec.subnet");
  EXPECT_THAT(e.what(), HasSubstr("10.77.0.0/24"));
  spec.set_subnet("10.77.0.0/33");
  EXPECT_EQ(
      expect_error([&] { cluster_->create_network("net", spec); }, errc::invalid_spec).field(),
      "spec.subnet");
}

}  // namespace
