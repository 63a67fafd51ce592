// Host ports relayed into a replica's own network (see port_forward.hpp).
#include "runtime/port_forward.hpp"

#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>

#include "blixard/error.hpp"
#include "common/tcp_pipe.hpp"

namespace blixard::runtime {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

struct PortForwarder::Impl : std::enable_shared_from_this<Impl> {
  asio::io_context io;
  std::vector<std::pair<std::shared_ptr<tcp::acceptor>, tcp::endpoint>> listeners;
  std::vector<std::weak_ptr<TcpPipe>> pipes;  // to close them at the end (io thread only)
  std::thread thread;

  void accept(const std::shared_ptr<tcp::acceptor>& acceptor, const tcp::endpoint& target) {
    acceptor->async_accept(
        [self = shared_from_this(), acceptor, target](error_code ec, tcp::socket client) {
          if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
          if (!ec) {
            auto pipe = std::make_shared<TcpPipe>(std::move(client), self->io);
            std::erase_if(self->pipes, [](const auto& p) { return p.expired(); });
            self->pipes.push_back(pipe);
            pipe->target.async_connect(target, [pipe](error_code cec) {
              if (cec) {
                pipe->close();  // the replica does not listen (yet): the client sees it closed
                return;
              }
              pipe->start();
            });
          }
          self->accept(acceptor, target);
        });
  }
};

PortForwarder::PortForwarder(const std::map<std::uint32_t, std::uint32_t>& ports,
                             const std::string& target)
    : impl_(std::make_shared<Impl>()) {
  error_code ec;
  const auto address = asio::ip::make_address(target, ec);
  if (ec) throw Error(errc::internal, "not an address to forward to: " + target);
  for (const auto& [declared, host] : ports) {
    auto acceptor = std::make_shared<tcp::acceptor>(impl_->io);
    const tcp::endpoint at(tcp::v4(), static_cast<unsigned short>(host));
    acceptor->open(at.protocol(), ec);
    if (!ec) acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor->bind(at, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      throw Error(errc::unavailable,
                  "cannot listen on host port " + std::to_string(host) + ": " + ec.message());
    }
    impl_->listeners.emplace_back(acceptor,
                                  tcp::endpoint(address, static_cast<unsigned short>(declared)));
  }
  for (const auto& [acceptor, to] : impl_->listeners) impl_->accept(acceptor, to);
  impl_->thread = std::thread([impl = impl_] { impl->io.run(); });
}

PortForwarder::~PortForwarder() {
  // Everything closed on the io thread: the pending operations end, io.run() runs out of work.
  asio::post(impl_->io, [impl = impl_] {
    error_code ignored;
    for (auto& [acceptor, target] : impl->listeners) acceptor->close(ignored);
    for (auto& p : impl->pipes) {
      if (auto pipe = p.lock()) pipe->close();
    }
  });
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace blixard::runtime
