// The VM sets' load balancer (see vm_balancer.hpp).
#include "api/vm_balancer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <map>
#include <thread>
#include <vector>

#include "common/tcp_pipe.hpp"
#include "control/vm_sets.hpp"

namespace blixard::api {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

using Pipe = TcpPipe;

}  // namespace

struct VmBalancer::Impl : std::enable_shared_from_this<Impl> {
  struct Listener {
    std::string vm;
    std::uint32_t port = 0;
    tcp::acceptor acceptor;
    std::atomic<std::size_t> next{0};  // round robin
    Listener(asio::io_context& io, std::string v, std::uint32_t p)
        : vm(std::move(v)), port(p), acceptor(io) {}
  };

  control::VmSets& sets;
  VmBalancerOptions options;
  std::shared_ptr<spdlog::logger> logger;
  std::atomic<std::size_t> live{0};  // before io: connections count down as io destroys them
  asio::io_context io;
  asio::steady_timer refresh_timer{io};
  std::map<std::pair<std::string, std::uint32_t>, std::shared_ptr<Listener>> listeners;
  std::thread thread;
  bool stopped = false;

  Impl(control::VmSets& s, VmBalancerOptions o, std::shared_ptr<spdlog::logger> l)
      : sets(s), options(std::move(o)), logger(std::move(l)) {}

  // New sets' ports get a listener, deleted sets' listeners close (on the io thread).
  void refresh() {
    const auto exposed = sets.exposed();
    for (auto it = listeners.begin(); it != listeners.end();) {
      const auto& [vm, port] = it->first;
      auto e = exposed.find(vm);
      const bool wanted = e != exposed.end() &&
                          std::find(e->second.begin(), e->second.end(), port) != e->second.end();
      if (wanted) {
        ++it;
        continue;
      }
      error_code ignored;
      it->second->acceptor.close(ignored);
      sets.set_balanced(vm, port, "");
      it = listeners.erase(it);
    }
    for (const auto& [vm, ports] : exposed) {
      for (const auto port : ports) {
        auto& l = listeners[{vm, port}];
        if (l) continue;
        l = std::make_shared<Listener>(io, vm, port);
        error_code ec;
        const tcp::endpoint at(asio::ip::make_address(options.address, ec), 0);
        if (!ec) l->acceptor.open(at.protocol(), ec);
        if (!ec) l->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
        if (!ec) l->acceptor.bind(at, ec);
        if (!ec) l->acceptor.listen(asio::socket_base::max_listen_connections, ec);
        if (ec) {
          logger->warn("vm {}: cannot listen for port {} on {}: {}", vm, port, options.address,
                       ec.message());
          continue;  // tried again at the next refresh
        }
        const auto bound = l->acceptor.local_endpoint(ec);
        const std::string where = options.address + ":" + std::to_string(bound.port());
        sets.set_balanced(vm, port, where);
        logger->info("vm {}: port {} balanced at {}", vm, port, where);
        accept(l);
      }
    }
    std::erase_if(listeners, [](const auto& kv) { return !kv.second->acceptor.is_open(); });
    refresh_timer.expires_after(options.refresh);
    refresh_timer.async_wait([self = shared_from_this()](error_code ec) {
      if (!ec && !self->stopped) self->refresh();
    });
  }

  void accept(const std::shared_ptr<Listener>& l) {
    l->acceptor.async_accept([self = shared_from_this(), l](error_code ec, tcp::socket client) {
      if (ec == asio::error::operation_aborted || !l->acceptor.is_open()) return;
      if (!ec) {
        if (self->live.load() >= self->options.max_connections) {
          error_code ignored;
          client.close(ignored);  // over the limit: refused rather than queued without bound
        } else {
          ++self->live;
          auto pipe = std::make_shared<Pipe>(std::move(client), self->io, &self->live);
          self->connect(l, pipe, 0);
        }
      }
      self->accept(l);
    });
  }

  // Connects the client to the next ready replica; one that refuses is skipped (it may have
  // just failed: the controller has not heard yet), up to one round over the replicas.
  void connect(const std::shared_ptr<Listener>& l, const std::shared_ptr<Pipe>& pipe,
               std::size_t tried) {
    const auto targets = sets.endpoints(l->vm, l->port);
    if (targets.empty() || tried >= targets.size()) {
      error_code ignored;
      pipe->client.close(ignored);  // nothing serves it now: the client sees a closed connection
      return;
    }
    const auto& target = targets[l->next.fetch_add(1) % targets.size()];
    error_code ec;
    const auto address =
        asio::ip::make_address(target.address.empty() ? "127.0.0.1" : target.address, ec);
    if (ec) {
      connect(l, pipe, tried + 1);
      return;
    }
    auto timer = std::make_shared<asio::steady_timer>(io, options.connect_timeout);
    timer->async_wait([pipe](error_code tec) {
      if (!tec) {
        error_code ignored;
        pipe->target.close(ignored);
      }
    });
    pipe->target.async_connect(tcp::endpoint(address, static_cast<unsigned short>(target.port)),
                               [self = shared_from_this(), l, pipe, tried, timer](error_code cec) {
                                 timer->cancel();
                                 if (cec) {
                                   error_code ignored;
                                   pipe->target.close(ignored);
                                   self->connect(l, pipe, tried + 1);
                                   return;
                                 }
                                 error_code ignored;
                                 pipe->client.set_option(tcp::no_delay(true), ignored);
                                 pipe->target.set_option(tcp::no_delay(true), ignored);
                                 pipe->start();
                               });
  }
};

VmBalancer::VmBalancer(control::VmSets& sets, VmBalancerOptions options,
                       std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_shared<Impl>(sets, std::move(options), std::move(logger))) {
  asio::post(impl_->io, [impl = impl_] { impl->refresh(); });
  impl_->thread = std::thread([impl = impl_] { impl->io.run(); });
}

VmBalancer::~VmBalancer() { stop(); }

void VmBalancer::stop() {
  if (!impl_->thread.joinable()) return;
  asio::post(impl_->io, [impl = impl_] {
    impl->stopped = true;
    impl->refresh_timer.cancel();
    for (auto& [key, l] : impl->listeners) {
      error_code ignored;
      l->acceptor.close(ignored);
      impl->sets.set_balanced(key.first, key.second, "");
    }
    impl->listeners.clear();
    impl->io.stop();  // connections in progress end with the balancer
  });
  impl_->thread.join();
}

}  // namespace blixard::api
