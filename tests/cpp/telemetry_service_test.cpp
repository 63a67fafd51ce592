// Telemetry behind the Backend of an embedded cluster: object changes reach the event stream,
// metrics and logs of unknown functions are not_found, long polls end when the cluster closes.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>

#include "blixard/blixard.hpp"

namespace fs = std::filesystem;
using blixard::Cluster;
using blixard::errc;
using blixard::Error;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

const fs::path k_data = fs::path(BLIXARD_TEST_DATA) / "cluster";

class TelemetryServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("blixard-telemetry-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  template <class F>
  static void expect_error(F&& f, errc code) {
    try {
      f();
      ADD_FAILURE() << "no error thrown";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
    }
  }

  // Long-polls the backend until an event of `type` on functions/`name` arrives (or 10 s pass).
  static blixard::v1::WatchEvent wait_for_event(blixard::detail::Backend& backend,
                                                const std::string& type, const std::string& name,
                                                std::int64_t& after) {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      auto list = backend.events("functions", name, after, milliseconds(2000));
      after = list.next();
      for (const auto& e : list.events()) {
        if (e.type() == type) return e;
      }
    }
    ADD_FAILURE() << "no " << type << " event for " << name;
    return {};
  }

  fs::path dir_;
};

TEST_F(TelemetryServiceTest, CreatingAndDeletingAFunctionArePublished) {
  auto c = Cluster::local(dir_);
  auto backend = c.backend();
  std::int64_t after = backend->events("", "", -1, milliseconds(0)).next();

  c.create_function("echo", k_data / "echo.yaml");
  auto put = wait_for_event(*backend, "put", "echo", after);
  EXPECT_EQ(put.kind(), "functions");
  EXPECT_EQ(put.name(), "echo");
  EXPECT_GT(put.sequence(), 0);
  EXPECT_GT(put.store_revision(), 0);
  EXPECT_TRUE(put.has_time());
  EXPECT_NE(put.object_json().find("\"name\":\"echo\""), std::string::npos) << put.object_json();
  EXPECT_EQ(put.store_revision(), c.function("echo").get().metadata().resource_version());

  c.delete_function("echo");
  auto del = wait_for_event(*backend, "delete", "echo", after);
  EXPECT_GT(del.store_revision(), put.store_revision());
  EXPECT_TRUE(del.object_json().empty());
  c.close();
}

TEST_F(TelemetryServiceTest, MetricsAndLogsOfFunctions) {
  auto c = Cluster::local(dir_);
  auto backend = c.backend();
  expect_error([&] { backend->function_metrics("missing"); }, errc::not_found);
  expect_error([&] { backend->function_logs("missing", 0, milliseconds(0)); }, errc::not_found);

  c.create_function("echo", k_data / "echo.yaml");
  auto m = backend->function_metrics("echo");
  EXPECT_EQ(m.function(), "echo");
  EXPECT_EQ(m.errors(), 0u);
  EXPECT_EQ(m.throttles(), 0u);
  EXPECT_EQ(backend->function_logs("echo", 0, milliseconds(0)).lines_size(), 0);
  // Whatever has been recorded so far is well-formed text (possibly empty).
  auto text = backend->prometheus_metrics();
  EXPECT_TRUE(text.empty() || text.back() == '\n');
  c.close();
}

TEST_F(TelemetryServiceTest, CloseEndsLongPolls) {
  auto c = Cluster::local(dir_);
  auto backend = c.backend();
  c.close();
  const auto start = Clock::now();
  try {
    backend->events("functions", "nothing", -1, milliseconds(30000));
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::unavailable) << e.what();
  }
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
