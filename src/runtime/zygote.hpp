// A pre-initialised Python interpreter that forks function instances: a Python cold start
// without a fresh interpreter (as Android's zygote). The zygote is the handler runtime started as
// `python -S handler_runtime.py --zygote`; for each instance it forks a child that enters its own
// namespaces and cgroup, makes the host read-only and runs the handler (the zygote section of
// python/blixard/handler_runtime.py has its side of the control channel).
//
// Instances it forks are not our children: their exit status comes from the zygote, which reaps
// them, and the pidfd it hands over (poll, pidfd_send_signal) works as for a child of ours.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime/spawn.hpp"

namespace blixard::runtime {

class PythonZygote {
 public:
  // Starts the zygote from a thread of its own (PR_SET_PDEATHSIG follows the spawning thread, so
  // the zygote, and with it every instance it forked, dies with this object or the process).
  // Returns at once; ready() waits for it to come up.
  PythonZygote(std::string python, std::filesystem::path runtime, std::vector<std::string> env);
  ~PythonZygote();
  PythonZygote(const PythonZygote&) = delete;
  PythonZygote& operator=(const PythonZygote&) = delete;

  // Waits up to `wait` for the zygote's hello. False when it cannot fork sandboxed instances
  // (it failed to start, died, or may not create namespaces here); `why` says why.
  bool ready(std::chrono::milliseconds wait, std::string* why = nullptr);

  // Forks an instance running `args` (MODULE:FUNCTION [CODE_DIR]) with the request's environment,
  // working dir, pipes, scratch dir, kept dirs, cgroups, RLIMIT_AS and network namespace. Returns
  // once it is forked (not yet ready). Throws Error(unavailable) when the zygote cannot.
  Spawned spawn(const SpawnRequest& request, const std::vector<std::string>& args);

  // It died, or could not start (not: it may not create namespaces here, which it reports at once
  // and which a new one would report again).
  bool gone();
  std::string why_gone();

  // How an instance it forked ended; call once its pidfd polled readable. If the zygote is gone
  // the instance died with it: reported as killed by SIGKILL.
  siginfo_t wait_exit(pid_t pid);

 private:
  enum class State { starting, up, refused, gone };
  struct Reply {
    bool done = false;
    pid_t pid = -1;
    int pidfd = -1;
    std::string error;
  };

  void run(std::string python, const std::filesystem::path& runtime, std::vector<std::string> env);
  void on_message(const std::string& text, std::vector<int>& fds);
  void mark_gone(const std::string& why);

  int socket_ = -1;  // ours of the control socket pair
  int peer_ = -1;    // the zygote's end, until it is started
  int pidfd_ = -1;
  std::thread thread_;

  std::mutex mutex_;
  std::condition_variable changed_;
  State state_ = State::starting;
  std::string why_;
  std::uint64_t next_id_ = 0;
  std::map<std::uint64_t, Reply*> replies_;
  std::map<pid_t, siginfo_t> exits_;
  std::set<pid_t> abandoned_;  // forked after their caller gave up: killed, exit not kept
  std::mutex send_mutex_;
};

}  // namespace blixard::runtime
