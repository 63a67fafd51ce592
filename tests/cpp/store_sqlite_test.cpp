// The SQLite store: the shared conformance suite, plus what only an embedded file store has to
// prove (open errors naming the path, acknowledged writes surviving kill -9, group commit).
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>

#include "store_conformance.hpp"

namespace blixard::store::testing {
namespace {

constexpr std::int64_t k_history = 64;

std::unique_ptr<Store> open_for_test(const std::string& dir) {
  SqliteOptions options;
  options.lease_sweep_interval = std::chrono::milliseconds(20);
  options.history = k_history;
  return open_sqlite(dir + "/store.db", options);
}

// A second of lease: a 2-core CI machine running the suite in parallel can stall a thread for
// longer than a few hundred milliseconds, and a keep-alive that comes late is a lost lease.
INSTANTIATE_TEST_SUITE_P(Sqlite, StoreConformance,
                         ::testing::Values(StoreBackend{"sqlite", open_for_test, k_history,
                                                        std::chrono::milliseconds(1000)}),
                         store_backend_name);

Error open_error(const std::string& path) {
  try {
    open_sqlite(path);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "opening " << path << " succeeded";
  return Error(errc::internal, "no error");
}

TEST(SqliteStore, OpenUnderARegularFileIsUnavailable) {
  TempDir dir;
  std::string file = dir.path() + "/plain";
  std::ofstream(file) << "x";
  std::string path = file + "/store.db";
  auto e = open_error(path);
  EXPECT_EQ(e.code(), errc::unavailable);
  EXPECT_NE(e.message().find("cannot open store at " + path), std::string::npos) << e.message();
}

TEST(SqliteStore, OpenInAnUnwritableDirectoryIsUnavailable) {
  TempDir dir;
  std::string path;
  if (geteuid() == 0) {
    path = "/proc/blixard-store-test/store.db";  // root ignores permissions; /proc refuses it too
  } else {
    std::filesystem::permissions(
        dir.path(), std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
    path = dir.path() + "/store.db";
  }
  auto e = open_error(path);
  EXPECT_EQ(e.code(), errc::unavailable);
  EXPECT_NE(e.message().find(path), std::string::npos) << e.message();
}

TEST(SqliteStore, OpenOfAFileThatIsNotADatabaseIsUnavailable) {
  TempDir dir;
  std::string path = dir.path() + "/store.db";
  {
    std::ofstream out(path);
    for (int i = 0; i < 200; ++i) out << "this is not a database, just some text\n";
  }
  auto e = open_error(path);
  EXPECT_EQ(e.code(), errc::unavailable);
  EXPECT_NE(e.message().find(path), std::string::npos) << e.message();
}

TEST(SqliteStore, ADirectoryPathHoldsTheDatabaseAsStoreDb) {
  TempDir dir;
  {
    auto s = open_sqlite(dir.path());
    s->put("k", "v");
  }
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/store.db"));
  auto s = open_sqlite(dir.path() + "/store.db");
  EXPECT_EQ(s->get("k")->value, "v");
}

TEST(SqliteStore, MissingParentDirectoriesAreCreated) {
  TempDir dir;
  auto s = open_sqlite(dir.path() + "/a/b/store.db");
  EXPECT_EQ(s->put("k", "v").revision, 1);
}

// A bad request in a group-committed batch fails alone; its neighbours commit.
TEST(SqliteStore, AFailingTxnDoesNotSpoilConcurrentOnes) {
  TempDir dir;
  auto s = open_for_test(dir.path());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        std::string key = "t" + std::to_string(t) + "/" + std::to_string(i);
        try {
          s->put(key, "v", t == 0 ? 999999 : 0);
        } catch (const Error& e) {
          if (e.code() == errc::not_found) ++failures;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 20);
  EXPECT_EQ(s->revision(), 60);
  EXPECT_EQ(s->list("t").kvs.size(), 60u);
  EXPECT_TRUE(s->list("t0/").kvs.empty());
}

// The event log stays bounded: old revisions are compacted away as writes go on.
TEST(SqliteStore, CompactionSurvivesReopen) {
  TempDir dir;
  {
    auto s = open_for_test(dir.path());
    for (int i = 0; i < 3 * k_history; ++i) s->put("k", std::to_string(i));
  }
  auto s = open_for_test(dir.path());
  EXPECT_EQ(error_code_of([&] { s->watch("", 1, [](const auto&) {}); }), errc::conflict);
  EXPECT_NO_THROW(s->watch("", s->revision() - k_history + 1, [](const auto&) {}));
}

// Nothing acknowledged is lost on kill -9 (DESIGN §3). The child is forked before this process
// opens any store, so it inherits no threads; it reports each key on a pipe once put() returned.
TEST(SqliteStore, AcknowledgedWritesSurviveKill9) {
  TempDir dir;
  const std::string path = dir.path() + "/store.db";
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    try {
      auto s = open_sqlite(path);
      for (std::uint64_t i = 0;; ++i) {
        s->put("k/" + std::to_string(i), "value-" + std::to_string(i));
        if (write(fds[1], &i, sizeof i) != static_cast<ssize_t>(sizeof i)) _exit(3);
      }
    } catch (...) {
      _exit(2);
    }
  }
  close(fds[1]);
  struct Reaper {  // the child never outlives the test, whatever fails
    pid_t pid;
    ~Reaper() {
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
    }
  } reaper{pid};
  std::vector<std::uint64_t> acked;
  auto read_ack = [&] {
    std::uint64_t v = 0;
    ssize_t n = read(fds[0], &v, sizeof v);
    if (n == static_cast<ssize_t>(sizeof v)) acked.push_back(v);
    return n > 0;
  };
  while (acked.size() < 150 && read_ack()) {
  }
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  reaper.pid = 0;
  while (read_ack()) {  // acks written before the kill landed
  }
  close(fds[0]);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the writer exited early with status " << status;
  ASSERT_GE(acked.size(), 150u);

  auto s = open_sqlite(path);
  for (std::uint64_t i : acked) {
    auto kv = s->get("k/" + std::to_string(i));
    ASSERT_TRUE(kv) << "acknowledged key k/" << i << " was lost";
    EXPECT_EQ(kv->value, "value-" + std::to_string(i));
  }
  EXPECT_GE(s->revision(), static_cast<std::int64_t>(acked.size()));
}

}  // namespace
// A full filesystem is named as such, with the store's path, not as a store that is not there.
TEST(SqliteStore, AFullDiskSaysDiskFullAndWhere) {
  // A 1 MiB tmpfs in a mount namespace of this process's own: needs root (or CAP_SYS_ADMIN).
  if (::unshare(CLONE_NEWNS) != 0 ||
      ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    GTEST_SKIP() << "cannot make a mount namespace to fill a filesystem in";
  }
  TempDir dir;
  ASSERT_EQ(::mount("tmpfs", dir.path().c_str(), "tmpfs", 0, "size=1m"), 0) << strerror(errno);
  {
    auto s = open_for_test(dir.path());
    s->put("before", "v");
    {
      // Fill the rest of the filesystem.
      std::ofstream filler(dir.path() + "/filler", std::ios::binary);
      const std::string chunk(4096, 'x');
      while (filler.write(chunk.data(), chunk.size()) && filler.flush()) {
      }
    }
    std::optional<Error> failure;
    for (int i = 0; i < 64 && !failure; ++i) {
      try {
        s->put("big/" + std::to_string(i), std::string(64 << 10, 'y'));
      } catch (const Error& e) {
        failure = e;
      }
    }
    ASSERT_TRUE(failure.has_value()) << "writes kept succeeding on a full filesystem";
    const std::string message = failure->message();
    EXPECT_EQ(message.rfind("disk full: ", 0), 0u) << message;
    EXPECT_NE(message.find(dir.path() + "/store.db"), std::string::npos) << message;
  }
  ::umount2(dir.path().c_str(), MNT_DETACH);
}

}  // namespace blixard::store::testing
