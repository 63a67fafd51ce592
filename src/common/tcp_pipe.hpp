// Two TCP connections spliced together on an Asio io_context: the server's load balancer (client
// to replica) and an agent's port forwarder (host port to a replica's own network) relay bytes
// through it.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

namespace blixard {

// Bytes one way until EOF or an error, then the write side of the other end is shut (a
// half-close passes through); the pair ends when both ways have. `live` (optional) counts the
// pipes alive: the owner increments it, the pipe decrements it when it goes.
struct TcpPipe : std::enable_shared_from_this<TcpPipe> {
  using tcp = boost::asio::ip::tcp;
  // Per direction per pipe: 10,000 pipes hold 320 MiB at most.
  static constexpr std::size_t k_buffer = std::size_t{16} * 1024;

  tcp::socket client, target;
  std::array<char, k_buffer> up{}, down{};
  std::atomic<std::size_t>* live;

  TcpPipe(tcp::socket c, boost::asio::io_context& io, std::atomic<std::size_t>* counter = nullptr)
      : client(std::move(c)), target(io), live(counter) {}
  ~TcpPipe() {
    if (live != nullptr) --*live;
  }

  // Once `target` is connected.
  void start() {
    pump(client, target, up);
    pump(target, client, down);
  }

  void close() {
    boost::system::error_code ignored;
    client.close(ignored);
    target.close(ignored);
  }

 private:
  void pump(tcp::socket& from, tcp::socket& to, std::array<char, k_buffer>& buf) {
    from.async_read_some(
        boost::asio::buffer(buf),
        [self = shared_from_this(), &from, &to, &buf](boost::system::error_code ec, std::size_t n) {
          if (ec) {
            // EOF: pass the half-close on. A reset: end both ways.
            if (ec == boost::asio::error::eof) {
              boost::system::error_code ignored;
              to.shutdown(tcp::socket::shutdown_send, ignored);
            } else {
              self->close();
            }
            return;
          }
          boost::asio::async_write(
              to, boost::asio::buffer(buf.data(), n),
              [self, &from, &to, &buf](boost::system::error_code wec, std::size_t) {
                if (wec) {
                  self->close();
                  return;
                }
                self->pump(from, to, buf);
              });
        });
  }
};

}  // namespace blixard
