// Keeps a primary from outliving its node's lease (DESIGN §3; docs/vms.md, "Fencing"). The
// server promotes a new primary once the old one's node has not been heard from for the lease;
// by then the old one must be dead, whatever the agent is doing: paused (SIGSTOP), cut off from
// the server, or killed. So the agent does not kill it itself: a small process of its own does
// (the agent's binary run as `blixard-agent --fence-watchdog`, in a session of its own), fed over
// a pipe. The agent arms it with the process of each replica started under a fencing epoch (a
// set's primary: a sandboxed replica's init, whose PID namespace dies with it) and beats while it
// hears from the server. When the beats stop for `after` (lease / 2: the agent paused or its link
// cut) or the pipe closes (the agent died), the watchdog kills every armed process, as Patroni's
// watchdog resets a node whose leader key could not be renewed. It holds each as a pidfd from the
// moment it is armed, so a reused pid is never hit.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

namespace blixard::agent {

class FenceWatchdog {
 public:
  // Starts the watchdog process (`agent_binary --fence-watchdog`); throws Error(unavailable)
  // when it cannot.
  static std::unique_ptr<FenceWatchdog> start(const std::filesystem::path& agent_binary,
                                              std::chrono::milliseconds after);
  // Closes the pipe: the watchdog kills what is still armed and exits.
  ~FenceWatchdog();
  FenceWatchdog(const FenceWatchdog&) = delete;
  FenceWatchdog& operator=(const FenceWatchdog&) = delete;

  // How long without a beat before the armed cgroups are killed (the server's lease / 2).
  void set_after(std::chrono::milliseconds after);
  // `pid` is killed if the beats stop, until disarmed.
  void arm(int pid);
  void disarm(int pid);
  // The agent heard from the server just now (at most one write per 100 ms reaches the pipe).
  void beat();
  int pid() const { return pid_; }

 private:
  FenceWatchdog(int fd, int pid) : fd_(fd), pid_(pid) {}
  void send(const std::string& line);

  std::mutex mutex_;
  int fd_;
  int pid_;
  std::chrono::steady_clock::time_point last_beat_;
};

// The watchdog process: reads the agent's lines from `fd` (AFTER <ms>, ARM <pid>, DISARM <pid>,
// BEAT) until it closes; returns the exit status.
int run_fence_watchdog(int fd, std::chrono::milliseconds after);

}  // namespace blixard::agent
