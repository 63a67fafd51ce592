// Code that travels (DESIGN §5): the archive a client packs (deterministic, refusing what it
// cannot carry), unpacking it as an agent does (hostile archives refused, nothing written outside,
// limits checked as it goes), the server's blob store, and the agent's code cache.
#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "agent/code_cache.hpp"
#include "blixard/error.hpp"
#include "common/code_archive.hpp"
#include "common/digest.hpp"
#include "store/blob_store.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using blixard::ArchiveLimits;
using blixard::errc;
using blixard::Error;
using blixard::test_support::expect_error;
using ::testing::HasSubstr;

void write_file(const fs::path& path, const std::string& text, fs::perms perms = fs::perms(0644)) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
  fs::permissions(path, perms);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

class CodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("blixard-code-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "outside");
  }
  void TearDown() override {
    EXPECT_TRUE(fs::is_empty(dir_ / "outside")) << "something was written outside";
    fs::remove_all(dir_);
  }

  // A handler's code dir: a module, an executable, a link, an empty dir, and what is left out.
  fs::path sample(const std::string& name) {
    const fs::path d = dir_ / name;
    write_file(d / "handler.py", "def handler(e, c):\n    return e\n");
    write_file(d / "bin/run", "#!/bin/sh\necho hi\n", fs::perms(0755));
    write_file(d / "lib/deep/data.json", "{}");
    fs::create_directories(d / "empty");
    fs::create_symlink("handler.py", d / "alias.py");
    write_file(d / "__pycache__/handler.cpython-311.pyc", "bytecode");
    write_file(d / ".git/HEAD", "ref: refs/heads/main");
    return d;
  }

  // A tar built entry by entry, as a hostile client could make one.
  struct Tar {
    archive* a = archive_write_new();
    std::string bytes;
    Tar() {
      archive_write_set_format_pax_restricted(a);
      archive_write_open(
          a, &bytes, nullptr,
          [](archive*, void* out, const void* data, size_t n) -> la_ssize_t {
            static_cast<std::string*>(out)->append(static_cast<const char*>(data), n);
            return static_cast<la_ssize_t>(n);
          },
          nullptr);
    }
    ~Tar() { archive_write_free(a); }
    Tar& add(const std::string& path, unsigned type, unsigned perm, const std::string& data = {},
             const std::string& link = {}, la_int64_t declared = -1) {
      archive_entry* e = archive_entry_new();
      archive_entry_set_pathname(e, path.c_str());
      archive_entry_set_filetype(e, type);
      archive_entry_set_perm(e, perm);
      if (type == AE_IFLNK) archive_entry_set_symlink(e, link.c_str());
      if (type == AE_IFREG && !link.empty()) archive_entry_set_hardlink(e, link.c_str());
      if (type == AE_IFCHR) archive_entry_set_rdev(e, makedev(1, 3));
      archive_entry_set_size(e, declared >= 0 ? declared : static_cast<la_int64_t>(data.size()));
      archive_write_header(a, e);
      if (!data.empty()) archive_write_data(a, data.data(), data.size());
      archive_entry_free(e);
      return *this;
    }
    std::string done() {
      archive_write_close(a);
      return bytes;
    }
  };

  Error refused(const std::string& archive, const ArchiveLimits& limits = {}) {
    auto e = expect_error([&] { blixard::unpack_code(archive, dir_ / "into", limits); },
                          errc::invalid_spec);
    EXPECT_FALSE(fs::exists(dir_ / "into")) << "a refused archive left files behind";
    return e;
  }

  fs::path dir_;
};

// ---- packing ----

TEST_F(CodeTest, TheSameTreeHasTheSameDigestWhereverAndWheneverItIs) {
  const auto a = blixard::pack_code(sample("a"));
  EXPECT_TRUE(blixard::is_sha256_digest(a.digest)) << a.digest;
  EXPECT_EQ(a.digest, blixard::sha256_digest(a.bytes));
  EXPECT_EQ(blixard::pack_code(dir_ / "a").digest, a.digest) << "packing twice differs";

  // Another path, other times, another group/other mode: the same code.
  const auto b_dir = sample("b");
  fs::last_write_time(b_dir / "handler.py",
                      fs::file_time_type::clock::now() - std::chrono::hours(5));
  fs::permissions(b_dir / "handler.py", fs::perms(0664));
  write_file(b_dir / "__pycache__/other.pyc", "more bytecode");
  EXPECT_EQ(blixard::pack_code(b_dir).digest, a.digest);

  write_file(b_dir / "handler.py", "def handler(e, c):\n    return 2\n");
  EXPECT_NE(blixard::pack_code(b_dir).digest, a.digest) << "a changed file kept the digest";
  fs::permissions(dir_ / "a/handler.py", fs::perms(0755));
  EXPECT_NE(blixard::pack_code(dir_ / "a").digest, a.digest) << "the executable bit is code too";
}

TEST_F(CodeTest, UnpackingGivesBackTheTreeWithNormalModesAndLinksKept) {
  const auto archive = blixard::pack_code(sample("src"));
  EXPECT_EQ(archive.files, 3u);
  const fs::path out = dir_ / "out";
  blixard::unpack_code(archive.bytes, out);
  EXPECT_EQ(read_file(out / "handler.py"), read_file(dir_ / "src/handler.py"));
  EXPECT_EQ(read_file(out / "lib/deep/data.json"), "{}");
  EXPECT_EQ(fs::status(out / "bin/run").permissions() & fs::perms::all, fs::perms(0755));
  EXPECT_EQ(fs::status(out / "handler.py").permissions() & fs::perms::all, fs::perms(0644));
  EXPECT_TRUE(fs::is_directory(out / "empty"));
  ASSERT_TRUE(fs::is_symlink(out / "alias.py"));
  EXPECT_EQ(fs::read_symlink(out / "alias.py"), "handler.py");
  EXPECT_FALSE(fs::exists(out / "__pycache__"));
  EXPECT_FALSE(fs::exists(out / ".git"));
}

TEST_F(CodeTest, AFingerprintSeesEveryChangeWithoutReadingTheFiles) {
  const auto d = sample("fp");
  auto fingerprint = [&] { return blixard::code_fingerprint(d, {}, std::chrono::seconds(0)); };
  const auto first = fingerprint();
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(fingerprint(), first);
  EXPECT_TRUE(blixard::code_fingerprint(d).empty()) << "a tree written just now is trusted";

  // The same size, and the modification time put back: the change time still tells.
  const auto mtime = fs::last_write_time(d / "handler.py");
  write_file(d / "handler.py", "def handler(e, c):\n    return c\n");
  fs::last_write_time(d / "handler.py", mtime);
  const auto second = fingerprint();
  EXPECT_NE(second, first);
  fs::create_directories(d / "empty/new");
  const auto third = fingerprint();
  EXPECT_NE(third, second);
  write_file(d / "__pycache__/x.pyc", "left out of the archive, and of its fingerprint");
  EXPECT_EQ(fingerprint(), third);
  EXPECT_TRUE(blixard::code_fingerprint(dir_ / "missing").empty());
}

TEST_F(CodeTest, PackingRefusesWhatItCannotCarryNamingIt) {
  auto e = expect_error([&] { blixard::pack_code(dir_ / "missing"); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "code");
  EXPECT_THAT(e.message(), HasSubstr("not found"));
  write_file(dir_ / "file", "x");
  expect_error([&] { blixard::pack_code(dir_ / "file"); }, errc::invalid_spec);

  const auto d = sample("fifo");
  ASSERT_EQ(::mkfifo((d / "pipe").c_str(), 0644), 0);
  e = expect_error([&] { blixard::pack_code(d); }, errc::invalid_spec);
  EXPECT_THAT(e.message(), HasSubstr((d / "pipe").string()));
  EXPECT_THAT(e.message(), HasSubstr("named pipe"));

  ArchiveLimits small;
  small.max_entries = 3;
  e = expect_error([&] { blixard::pack_code(sample("many"), small); }, errc::invalid_spec);
  EXPECT_THAT(e.message(), HasSubstr("more than 3 entries"));
  small = {};
  small.max_unpacked_bytes = 10;
  e = expect_error([&] { blixard::pack_code(sample("big"), small); }, errc::invalid_spec);
  EXPECT_THAT(e.message(), HasSubstr("MiB of files"));
}

// ---- unpacking what a hostile client made ----

TEST_F(CodeTest, PathsOutOfTheDirectoryAreRefused) {
  const std::string outside = (dir_ / "outside/evil").string();
  EXPECT_THAT(refused(Tar().add(outside, AE_IFREG, 0644, "x").done()).message(),
              HasSubstr("absolute path"));
  EXPECT_THAT(refused(Tar().add("../outside/evil", AE_IFREG, 0644, "x").done()).message(),
              HasSubstr(".."));
  EXPECT_THAT(refused(Tar().add("a/../../outside/evil", AE_IFREG, 0644, "x").done()).message(),
              HasSubstr(".."));
}

TEST_F(CodeTest, NothingIsWrittenThroughASymlink) {
  // The link itself may be code (it resolves inside the instance's own root); writing through it
  // on the agent may not.
  const auto bytes = Tar()
                         .add("link", AE_IFLNK, 0777, {}, (dir_ / "outside").string())
                         .add("link/evil", AE_IFREG, 0644, "x")
                         .done();
  refused(bytes);
  const auto relative =
      Tar().add("up", AE_IFLNK, 0777, {}, "../outside").add("up/evil", AE_IFREG, 0644, "x").done();
  refused(relative);
}

TEST_F(CodeTest, OnlyDirectoriesFilesAndSymlinksAreUnpacked) {
  EXPECT_THAT(refused(Tar().add("null", AE_IFCHR, 0666).done()).message(),
              HasSubstr("not a directory, file or symlink"));
  EXPECT_THAT(refused(Tar().add("fifo", AE_IFIFO, 0644).done()).message(),
              HasSubstr("not a directory, file or symlink"));
  EXPECT_THAT(refused(Tar().add("a", AE_IFREG, 0644, "x").add("b", AE_IFREG, 0644, {}, "a").done())
                  .message(),
              HasSubstr("hard link"));
}

TEST_F(CodeTest, SetuidAndWritableBitsAreDropped) {
  const auto bytes = Tar()
                         .add("dir", AE_IFDIR, 07777)
                         .add("dir/suid", AE_IFREG, 06777, "#!/bin/sh\n")
                         .add("plain", AE_IFREG, 0666, "x")
                         .done();
  blixard::unpack_code(bytes, dir_ / "into");
  EXPECT_EQ(fs::status(dir_ / "into/dir").permissions() & fs::perms::mask, fs::perms(0755));
  EXPECT_EQ(fs::status(dir_ / "into/dir/suid").permissions() & fs::perms::mask, fs::perms(0755));
  EXPECT_EQ(fs::status(dir_ / "into/plain").permissions() & fs::perms::mask, fs::perms(0644));
  fs::remove_all(dir_ / "into");
}

TEST_F(CodeTest, LimitsHoldWhateverTheArchiveSays) {
  ArchiveLimits limits;
  limits.max_unpacked_bytes = 1000;
  EXPECT_THAT(
      refused(Tar().add("big", AE_IFREG, 0644, std::string(2000, 'x')).done(), limits).message(),
      HasSubstr("unpacks to more than"));
  // A header claiming less than its data: libarchive reads only what the header says.
  limits.max_entries = 2;
  EXPECT_THAT(refused(Tar()
                          .add("a", AE_IFREG, 0644, "1")
                          .add("b", AE_IFREG, 0644, "2")
                          .add("c", AE_IFREG, 0644, "3")
                          .done(),
                      limits)
                  .message(),
              HasSubstr("more than 2 entries"));
  EXPECT_THAT(refused("not an archive at all").message(), HasSubstr("code archive"));
  std::string truncated = blixard::pack_code(sample("t")).bytes;
  truncated.resize(truncated.size() / 2);
  refused(truncated);
}

// ---- the server's blob store ----

TEST_F(CodeTest, TheBlobStoreKeepsBlobsByTheirDigestOnly) {
  auto blobs = blixard::store::open_blob_dir(dir_ / "blobs");
  const std::string bytes = "some archive";
  const std::string digest = blixard::sha256_digest(bytes);
  EXPECT_FALSE(blobs->has(digest));
  EXPECT_FALSE(blobs->get(digest));
  blobs->put(digest, bytes);
  blobs->put(digest, bytes);  // again: nothing changes
  EXPECT_TRUE(blobs->has(digest));
  EXPECT_EQ(*blobs->get(digest), bytes);
  ASSERT_EQ(blobs->list().size(), 1u);
  EXPECT_EQ(blobs->list()[0].size, bytes.size());
  // Asking after a blob is a use: the server collects only blobs unused for a while.
  const fs::path file = dir_ / "blobs/sha256" / digest.substr(7);
  fs::last_write_time(file, fs::file_time_type::clock::now() - std::chrono::hours(24));
  EXPECT_LT(blobs->list()[0].used_at, std::chrono::system_clock::now() - std::chrono::hours(23));
  EXPECT_TRUE(blobs->has(digest));
  EXPECT_GT(blobs->list()[0].used_at, std::chrono::system_clock::now() - std::chrono::minutes(1));

  auto e = expect_error([&] { blobs->put(digest, "other bytes"); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "digest");
  EXPECT_THAT(e.message(), HasSubstr("hash to"));
  expect_error([&] { blobs->put("sha256:../../etc/passwd", "x"); }, errc::invalid_spec);
  expect_error([&] { blobs->put("md5:abc", "x"); }, errc::invalid_spec);
  EXPECT_FALSE(blobs->has("sha256:../../etc/passwd"));

  // Durable: another store on the same dir sees it; a half-written upload is cleared.
  write_file(dir_ / "blobs/sha256/.tmp/left-by-a-crash", "partial");
  auto again = blixard::store::open_blob_dir(dir_ / "blobs");
  EXPECT_EQ(*again->get(digest), bytes);
  EXPECT_TRUE(fs::is_empty(dir_ / "blobs/sha256/.tmp"));
  EXPECT_TRUE(again->remove(digest));
  EXPECT_FALSE(again->remove(digest));
  EXPECT_FALSE(again->has(digest));
}

// ---- the agent's code cache ----

TEST_F(CodeTest, ConcurrentStartsShareOneFetchAndARestartFetchesNothing) {
  const auto archive = blixard::pack_code(sample("src"));
  std::atomic<int> fetches{0};
  auto fetch = [&](const std::string& digest) {
    EXPECT_EQ(digest, archive.digest);
    ++fetches;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server is slow
    return archive.bytes;
  };
  {
    blixard::agent::CodeCache cache(dir_ / "cache", fetch);
    std::vector<std::future<fs::path>> starts;
    for (int i = 0; i < 8; ++i) {
      starts.push_back(
          std::async(std::launch::async, [&] { return cache.directory(archive.digest); }));
    }
    for (auto& s : starts)
      EXPECT_EQ(read_file(s.get() / "handler.py"), read_file(dir_ / "src/handler.py"));
  }
  EXPECT_EQ(fetches, 1);
  blixard::agent::CodeCache again(dir_ / "cache", fetch);
  EXPECT_TRUE(fs::exists(again.directory(archive.digest) / "bin/run"));
  EXPECT_EQ(fetches, 1) << "the agent fetched again what it kept";
}

TEST_F(CodeTest, TheCacheChecksWhatItFetchedAndLeavesNothingHalfDone) {
  const auto archive = blixard::pack_code(sample("src"));
  std::string served = "not what was asked for";
  blixard::agent::CodeCache cache(dir_ / "cache", [&](const std::string&) { return served; });
  auto e = expect_error([&] { cache.directory(archive.digest); }, errc::unavailable);
  EXPECT_THAT(e.message(), HasSubstr("does not match"));
  expect_error([&] { cache.directory("sha256:nope"); }, errc::invalid_spec);

  // An archive that hashes right but is refused when unpacked (a hostile client's upload).
  served = Tar().add("../outside/evil", AE_IFREG, 0644, "x").done();
  e = expect_error([&] { cache.directory(blixard::sha256_digest(served)); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "codeDigest");
  for (const auto& entry : fs::directory_iterator(dir_ / "cache")) {
    ADD_FAILURE() << "left in the cache: " << entry.path();
  }
  // A crash mid-unpack leaves a partial dir: the next start removes it.
  fs::create_directories(dir_ / "cache/.partial-1-1/x");
  blixard::agent::CodeCache again(dir_ / "cache",
                                  [&](const std::string&) { return archive.bytes; });
  EXPECT_FALSE(fs::exists(dir_ / "cache/.partial-1-1"));
  EXPECT_TRUE(fs::exists(again.directory(archive.digest) / "handler.py"));
}

}  // namespace
