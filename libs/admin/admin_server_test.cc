#include "libs/admin/admin_server.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>

#include "libs/admin/process_metrics.h"
#include "libs/net/test_util.h"

namespace herald::admin {
namespace {

using net::testing::ConnectBlocking;
using net::testing::ReadToEof;
using net::testing::WriteAll;

class AdminServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(loops_.Start().ok());
    RegisterProcessMetrics(*registry_, "test");
    server_.AddStandardRoutes([this] { return ready_.load(); });
    AdminServerOptions o;
    o.address = *net::SocketAddress::Parse("127.0.0.1:0");
    ASSERT_TRUE(server_.Start(loops_, o).ok());
    RegisterConnectionMetrics(*registry_, "admin", server_.stats());
  }
  void TearDown() override {
    server_.Stop();
    loops_.Stop();
  }
  // Sends raw bytes, returns everything the server answers until it closes.
  std::string Exchange(const std::string& raw) {
    int fd = ConnectBlocking(server_.address());
    EXPECT_GE(fd, 0);
    EXPECT_TRUE(WriteAll(fd, raw));
    std::string out = ReadToEof(fd);
    ::close(fd);
    return out;
  }
  std::string Get(const std::string& path) {
    return Exchange("GET " + path + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  }

  net::LoopGroup loops_{1, "admin"};
  std::shared_ptr<MetricsRegistry> registry_ = std::make_shared<MetricsRegistry>();
  AdminServer server_{registry_};
  std::atomic<bool> ready_{false};
};

TEST_F(AdminServerTest, HealthzAnswersOk) {
  std::string r = Get("/healthz");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
  EXPECT_NE(r.find("\r\n\r\nok\n"), std::string::npos) << r;
}

TEST_F(AdminServerTest, ReadyzFollowsReadiness) {
  EXPECT_EQ(Get("/readyz").rfind("HTTP/1.1 503 Service Unavailable", 0), 0u);
  ready_ = true;
  EXPECT_EQ(Get("/readyz").rfind("HTTP/1.1 200 OK", 0), 0u);
}

TEST_F(AdminServerTest, MetricsAreInPrometheusTextFormat) {
  Get("/healthz");  // so the connection counters have something to show
  std::string r = Get("/metrics");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK", 0), 0u) << r;
  EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << r;
  EXPECT_NE(r.find("# TYPE herald_build_info gauge"), std::string::npos) << r;
  EXPECT_NE(r.find("herald_build_info{component=\"test\""), std::string::npos) << r;
  EXPECT_NE(r.find("# TYPE process_cpu_seconds_total counter"), std::string::npos) << r;
  EXPECT_NE(r.find("process_resident_memory_bytes "), std::string::npos) << r;
  EXPECT_NE(r.find("process_open_fds "), std::string::npos) << r;
  EXPECT_NE(r.find("herald_connections_accepted_total{listener=\"admin\"} 2"), std::string::npos)
      << r;
}

TEST_F(AdminServerTest, UnknownPathIs404AndWrongMethodIs405) {
  EXPECT_EQ(Get("/nope").rfind("HTTP/1.1 404 Not Found", 0), 0u);
  std::string r =
      Exchange("POST /healthz HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 405 Method Not Allowed", 0), 0u) << r;
  EXPECT_NE(r.find("Allow: GET, HEAD"), std::string::npos);
}

TEST_F(AdminServerTest, HeadHasNoBody) {
  std::string r = Exchange("HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 200 OK", 0), 0u);
  EXPECT_NE(r.find("Content-Length: 3\r\n"), std::string::npos);
  EXPECT_EQ(r.substr(r.size() - 4), "\r\n\r\n");
}

TEST_F(AdminServerTest, PipelinedRequestsAreAnsweredInOrderOnOneConnection) {
  std::string r = Exchange(
      "GET /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n"
      "GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n");
  size_t a = r.find("200 OK"), b = r.find("404 Not Found"), c = r.find("503 Service");
  ASSERT_NE(a, std::string::npos) << r;
  ASSERT_NE(b, std::string::npos) << r;
  ASSERT_NE(c, std::string::npos) << r;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
}

TEST_F(AdminServerTest, MalformedRequestGets400AndTheServerKeepsServing) {
  std::string r = Exchange("\x01\x02garbage\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 400 Bad Request", 0), 0u) << r;
  std::string big = "GET /healthz HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n";
  EXPECT_EQ(Exchange(big).rfind("HTTP/1.1 431", 0), 0u);
  EXPECT_EQ(Get("/healthz").rfind("HTTP/1.1 200 OK", 0), 0u);
}

}  // namespace
}  // namespace herald::admin
