// Tokens and scopes through the public SDK: an embedded cluster (its SQLite store) served over
// HTTP with an admin token, and clients connected with tokens the admin made (Cluster::connect).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <google/protobuf/util/time_util.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "api/http_server.hpp"
#include "blixard/blixard.hpp"
#include "common/digest.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using blixard::Cluster;
using blixard::errc;
using blixard::Error;
using blixard::test_support::expect_error;
using blixard::test_support::python;

namespace {

const fs::path k_data = fs::path(BLIXARD_TEST_DATA) / "cluster";
constexpr const char* k_admin = "admin-secret-for-this-test";

class TokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("blixard-token-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    blixard::LocalOptions options;
    options.python = python();
    local_.emplace(Cluster::local(dir_, options));
    blixard::api::HttpServerOptions http;
    http.token = k_admin;
    server_ = std::make_unique<blixard::api::HttpServer>(local_->backend(), http);
    server_->start();
  }
  void TearDown() override {
    if (server_) server_->stop();
    server_.reset();
    if (local_) local_->close();
    local_.reset();
    fs::remove_all(dir_);
  }

  Cluster as(const std::string& token) const {
    blixard::ConnectOptions options;
    options.token = token;
    return Cluster::connect(server_->url(), options);
  }
  Cluster admin() const { return as(k_admin); }

  static blixard::v1::TokenRequest request(const std::string& role, const std::string& name = {},
                                           const std::string& function = {}) {
    blixard::v1::TokenRequest r;
    r.set_role(role);
    r.set_name(name);
    r.set_function(function);
    return r;
  }

  fs::path dir_;
  std::optional<Cluster> local_;
  std::unique_ptr<blixard::api::HttpServer> server_;
};

TEST_F(TokenTest, AReadTokenReadsAndCannotWrite) {
  auto created = admin().create_token(request("read", "ci-reader"));
  EXPECT_EQ(created.token().metadata().name(), "ci-reader");
  ASSERT_TRUE(created.secret().starts_with("blx_")) << created.secret();
  EXPECT_TRUE(created.token().spec().secret_sha256().empty()) << "the answer shows no hash";

  auto reader = as(created.secret());
  EXPECT_TRUE(reader.functions().empty());
  auto e = expect_error([&] { reader.create_function("echo", k_data / "echo.yaml"); },
                        errc::permission_denied);
  EXPECT_NE(e.message().find("admin"), std::string::npos) << e.message();
  expect_error([&] { reader.tokens(); }, errc::permission_denied);
  expect_error([&] { as("blx_0000000000000000_nope").functions(); }, errc::unauthenticated);
  expect_error([&] { as("").functions(); }, errc::unauthenticated);
}

TEST_F(TokenTest, ListingShowsNoSecretAndRevokingTakesEffectAtOnce) {
  auto c = admin();
  auto created = c.create_token(request("read", "short-lived"));
  auto reader = as(created.secret());
  EXPECT_TRUE(reader.functions().empty());

  auto tokens = c.tokens();
  ASSERT_EQ(tokens.size(), 1U);
  EXPECT_EQ(tokens[0].metadata().name(), "short-lived");
  EXPECT_TRUE(tokens[0].spec().secret_sha256().empty());
  EXPECT_EQ(tokens[0].spec().id(), created.token().spec().id());

  // By id as well as by name.
  EXPECT_EQ(c.revoke_token(created.token().spec().id()).metadata().name(), "short-lived");
  EXPECT_TRUE(c.tokens().empty());
  auto e = expect_error([&] { reader.functions(); }, errc::unauthenticated);
  EXPECT_NE(e.message().find("revoked"), std::string::npos) << e.message();
  expect_error([&] { c.revoke_token("short-lived"); }, errc::not_found);
}

TEST_F(TokenTest, AnInvokeTokenForOneFunctionCallsOnlyThatOne) {
  auto c = admin();
  c.create_function("echo", k_data / "echo.yaml");
  c.create_function("other", k_data / "echo.yaml");
  auto caller = as(c.create_token(request("invoke", "echo-caller", "echo")).secret());
  EXPECT_NE(caller.function("echo").invoke(R"({"x": 7})").result.find(R"("x": 7)"),
            std::string::npos);
  auto e = expect_error([&] { caller.function("other").invoke("{}"); }, errc::permission_denied);
  EXPECT_NE(e.message().find("echo"), std::string::npos) << e.message();
  expect_error([&] { caller.functions(); }, errc::permission_denied);
  // A message or an event would run whatever its triggers name: not for this token.
  c.create_queue("jobs");
  expect_error([&] { caller.queue("jobs").send("{}"); }, errc::permission_denied);
  expect_error([&] { caller.publish("invoice-created", "{}"); }, errc::permission_denied);
  // Its own function's async invocations it may queue.
  EXPECT_FALSE(caller.function("echo").submit("{}").id().empty());
  auto any = as(c.create_token(request("invoke", "any-caller")).secret());
  EXPECT_FALSE(any.queue("jobs").send("{}").empty());
}

TEST_F(TokenTest, TokensAreKeptInTheStoreAcrossARestart) {
  auto secret = admin().create_token(request("read", "kept")).secret();
  server_->stop();
  server_.reset();
  local_->close();
  local_.reset();

  blixard::LocalOptions options;
  options.python = python();
  local_.emplace(Cluster::local(dir_, options));
  blixard::api::HttpServerOptions http;
  http.token = k_admin;
  server_ = std::make_unique<blixard::api::HttpServer>(local_->backend(), http);
  server_->start();
  EXPECT_TRUE(as(secret).functions().empty());
}

TEST_F(TokenTest, BadRequestsNameTheirField) {
  auto c = admin();
  auto e = expect_error([&] { c.create_token(request("root")); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "role");
  e = expect_error([&] { c.create_token(request("read", "", "echo")); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "function");
  auto negative = request("read");
  negative.mutable_ttl()->set_seconds(-5);
  e = expect_error([&] { c.create_token(negative); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "ttl");
  e = expect_error([&] { c.create_token(request("read", "Not A Name!")); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "name");
  c.create_token(request("read", "taken"));
  expect_error([&] { c.create_token(request("read", "taken")); }, errc::already_exists);
}

TEST_F(TokenTest, ATtlSetsTheExpiry) {
  using google::protobuf::util::TimeUtil;
  auto r = request("read", "day");
  r.mutable_ttl()->set_seconds(86'400);
  const auto before = TimeUtil::GetCurrentTime();
  auto created = admin().create_token(r);
  ASSERT_TRUE(created.token().spec().has_expires_at());
  const auto left = created.token().spec().expires_at() - before;
  EXPECT_GE(left.seconds(), 86'400 - 1);
  EXPECT_LE(left.seconds(), 86'400 + 60);
}

// Code archives (DESIGN §5): an admin uploads, the agents that run the code (node) fetch it, a
// reader may only ask whether one is there.
TEST_F(TokenTest, BlobsAreUploadedByAdminsAndFetchedByNodes) {
  auto c = admin();
  std::string bytes(10 << 20, '\0');  // past the 8 MiB of other API bodies
  for (std::size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<char>(i * 2654435761U >> 24);
  const std::string digest = blixard::sha256_digest(bytes);
  EXPECT_FALSE(c.backend()->has_blob(digest));
  EXPECT_EQ(c.backend()->put_blob(digest, bytes).size(), bytes.size());
  EXPECT_TRUE(c.backend()->has_blob(digest));

  auto node = as(c.create_token(request("node", "agent-1")).secret());
  EXPECT_EQ(node.backend()->get_blob(digest), bytes);
  EXPECT_FALSE(node.backend()->get_blob("sha256:" + std::string(64, 'a')).has_value());

  auto reader = as(c.create_token(request("read", "reader")).secret());
  EXPECT_TRUE(reader.backend()->has_blob(digest));
  expect_error([&] { reader.backend()->get_blob(digest); }, errc::permission_denied);
  expect_error([&] { reader.backend()->put_blob(digest, "x"); }, errc::permission_denied);

  auto e =
      expect_error([&] { c.backend()->put_blob(digest, "not those bytes"); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "digest");
  e = expect_error([&] { c.backend()->put_blob("sha256:nope", "x"); }, errc::invalid_spec);
  EXPECT_EQ(e.field(), "digest");
}

// A body larger than the API's usual limit is for an admin's upload only: anyone else gets 413
// from the head, before any of it is read.
TEST_F(TokenTest, OnlyAnAdminMaySendALargeBlob) {
  const auto reader = admin().create_token(request("read", "reader")).secret();
  auto head = [&](const std::string& token, std::uint64_t length) {
    return blixard::test_support::http_head_only(
        server_->port(), "PUT /v1/blobs/sha256:" + std::string(64, 'b') +
                             " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
                             "\r\nContent-Length: " + std::to_string(length) + "\r\n\r\n");
  };
  EXPECT_THAT(head(reader, 9 << 20), ::testing::StartsWith("HTTP/1.1 413"));
  EXPECT_THAT(head(k_admin, 65 << 20), ::testing::StartsWith("HTTP/1.1 413"));
}

}  // namespace
