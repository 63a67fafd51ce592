// The agent's fence watchdog (agent/fence_watchdog.hpp), as the agent runs it: blixard-agent
// --fence-watchdog in a process of its own, fed through FenceWatchdog. An armed process dies once
// the beats stop for `after`, or at once when the agent's end of the pipe closes; a disarmed one,
// or one kept beating for, lives.
#include "agent/fence_watchdog.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "test_support.hpp"

namespace fs = std::filesystem;
using blixard::agent::FenceWatchdog;
using blixard::test_support::eventually;
using namespace std::chrono_literals;

namespace {

const fs::path k_agent = fs::path(BLIXARD_BINARY_DIR) / "blixard-agent";

// A child standing in for a primary: sleeps until killed; reaped by its destructor.
struct Sleeper {
  pid_t pid = ::fork();
  Sleeper() {
    if (pid == 0) {
      ::execl("/bin/sleep", "sleep", "600", nullptr);
      ::_exit(127);
    }
  }
  ~Sleeper() {
    if (pid <= 0) return;  // reaped already (never kill(-1, ...): that is every process)
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  // Killed (by anyone): its exit is collected here.
  bool killed() {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r != pid) return false;
    pid = -1;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  }
};

TEST(FenceWatchdog, KillsWhatIsArmedOnceTheBeatsStop) {
  auto watchdog = FenceWatchdog::start(k_agent, 300ms);
  Sleeper armed, disarmed, never;
  watchdog->arm(armed.pid);
  watchdog->arm(disarmed.pid);
  watchdog->disarm(disarmed.pid);
  // Beaten for: alive well past `after`.
  const auto until = std::chrono::steady_clock::now() + 900ms;
  while (std::chrono::steady_clock::now() < until) {
    watchdog->beat();
    std::this_thread::sleep_for(100ms);
    ASSERT_FALSE(armed.killed()) << "killed while the agent beat";
  }
  // The beats stop: the armed one goes within `after` (and some slack), the others stay.
  EXPECT_TRUE(eventually([&] { return armed.killed(); }, 3s));
  EXPECT_FALSE(disarmed.killed());
  EXPECT_FALSE(never.killed());
}

TEST(FenceWatchdog, KillsWhatIsArmedWhenTheAgentGoes) {
  Sleeper armed;
  {
    auto watchdog = FenceWatchdog::start(k_agent, 60s);
    watchdog->arm(armed.pid);
    watchdog->beat();
  }  // the pipe closes, as when the agent dies
  EXPECT_TRUE(eventually([&] { return armed.killed(); }, 3s));
}

TEST(FenceWatchdog, ALaterLeaseIsTakenAndNothingArmedIsNotTimed) {
  auto watchdog = FenceWatchdog::start(k_agent, 60s);
  watchdog->set_after(200ms);  // the welcome's lease / 2
  Sleeper armed;
  watchdog->arm(armed.pid);
  EXPECT_TRUE(eventually([&] { return armed.killed(); }, 3s));
  // Its process lives on for the next primary.
  Sleeper next;
  watchdog->arm(next.pid);
  EXPECT_TRUE(eventually([&] { return next.killed(); }, 3s));
}

}  // namespace
