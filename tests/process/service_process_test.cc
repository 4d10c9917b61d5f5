// Starts herald, herald-core and herald-edge as real processes and checks what an operator sees:
// the admin endpoint answers, metrics are exported, signals stop the process cleanly and bad
// configuration is refused with a message.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "libs/net/socket_address.h"
#include "libs/net/test_util.h"
#include "tests/support/process.h"

namespace herald {
namespace {

using testing::HttpGet;
using testing::Process;

using namespace std::chrono_literals;

class ServiceProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-process-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

constexpr char kAdminLine[] = R"(admin listening on (127\.0\.0\.1:\d+))";

TEST_F(ServiceProcessTest, HeraldServesHealthAndMetricsAndStopsOnSigterm) {
  Process p("herald", {"--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                       "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0", "--data_dir=" + dir_ + "/data"});
  std::string admin = p.WaitForLine(kAdminLine);
  ASSERT_FALSE(admin.empty()) << p.log();
  ASSERT_FALSE(p.WaitForLine("herald ready").empty()) << p.log();

  std::string health = HttpGet(admin, "/healthz");
  EXPECT_EQ(health.rfind("HTTP/1.1 200 OK", 0), 0u) << health;
  EXPECT_EQ(HttpGet(admin, "/readyz").rfind("HTTP/1.1 200 OK", 0), 0u);
  std::string metrics = HttpGet(admin, "/metrics");
  EXPECT_NE(metrics.find("herald_build_info{component=\"herald\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("process_resident_memory_bytes"), std::string::npos);
  EXPECT_NE(metrics.find("process_start_time_seconds"), std::string::npos);
  // The all-in-one core leads all 8 partitions of its single-replica cluster (once elected).
  for (int i = 0;
       i < 100 && metrics.find("herald_raft_groups{role=\"leader\"} 8") == std::string::npos; ++i) {
    std::this_thread::sleep_for(50ms);
    metrics = HttpGet(admin, "/metrics");
  }
  EXPECT_NE(metrics.find("herald_raft_groups{role=\"leader\"} 8"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("herald_storage_bytes{family=\"raft_log\"}"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/data/LOCK"));

  auto start = std::chrono::steady_clock::now();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(5s), 0) << p.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_NE(p.log().find("received SIGTERM, stopping"), std::string::npos) << p.log();
  EXPECT_NE(p.log().find("herald stopped"), std::string::npos) << p.log();
}

TEST_F(ServiceProcessTest, HeraldStopsOnSigintWithOpenAdminConnections) {
  Process p("herald", {"--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                       "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0", "--data_dir=" + dir_});
  std::string admin = p.WaitForLine(kAdminLine);
  ASSERT_FALSE(admin.empty()) << p.log();
  // An idle keep-alive connection must not hold up the stop.
  int fd = net::testing::ConnectBlocking(*net::SocketAddress::Parse(admin));
  ASSERT_GE(fd, 0);
  p.Signal(SIGINT);
  EXPECT_EQ(p.Wait(5s), 0) << p.log();
  ::close(fd);
}

TEST_F(ServiceProcessTest, SecondProcessOnTheSameDataDirIsRefused) {
  Process first("herald", {"--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                           "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0", "--data_dir=" + dir_});
  ASSERT_FALSE(first.WaitForLine("herald ready").empty()) << first.log();
  Process second("herald", {"--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                            "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0", "--data_dir=" + dir_});
  EXPECT_EQ(second.Wait(10s), 1);
  EXPECT_NE(second.log().find("is in use by another process"), std::string::npos) << second.log();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(5s), 0);
}

TEST_F(ServiceProcessTest, BadConfigurationIsRefusedWithExitStatus2) {
  {
    Process p("herald", {"--no-such-option=1"});
    EXPECT_EQ(p.Wait(10s), 2);
    EXPECT_NE(p.log().find("unknown flag '--no-such-option'"), std::string::npos) << p.log();
  }
  {
    Process p("herald", {"--admin.listen=nonsense", "--data_dir=" + dir_});
    EXPECT_EQ(p.Wait(10s), 2);
    EXPECT_NE(p.log().find("nonsense"), std::string::npos) << p.log();
  }
  {
    std::string cfg = dir_ + "/herald.yaml";
    FILE* f = std::fopen(cfg.c_str(), "w");
    std::fputs("admin:\n  listen: 127.0.0.1:0\n  bogus: 1\n", f);
    std::fclose(f);
    Process p("herald", {"--config", cfg, "--data_dir=" + dir_});
    EXPECT_EQ(p.Wait(10s), 2);
    EXPECT_NE(p.log().find("admin.bogus"), std::string::npos) << p.log();
  }
}

TEST_F(ServiceProcessTest, ConfigFileIsReadAndFlagsOverrideIt) {
  std::string cfg = dir_ + "/herald.yaml";
  FILE* f = std::fopen(cfg.c_str(), "w");
  std::fputs("admin:\n  listen: 127.0.0.1:1\nlog:\n  level: debug\nnet:\n  loops: 1\n", f);
  std::fclose(f);
  Process p("herald", {"--config=" + cfg, "--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                       "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0", "--data_dir=" + dir_});
  ASSERT_FALSE(p.WaitForLine(kAdminLine).empty()) << p.log();
  EXPECT_NE(p.log().find("1 event loops"), std::string::npos) << p.log();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(5s), 0);
}

TEST_F(ServiceProcessTest, AdminPortInUseIsAClearStartupError) {
  Process first("herald", {"--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                           "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0", "--data_dir=" + dir_ + "/a"});
  std::string admin = first.WaitForLine(kAdminLine);
  ASSERT_FALSE(admin.empty()) << first.log();
  // Listeners use SO_REUSEPORT among their own loops; a second process must still not be able
  // to join the port and take part of its connections.
  Process second("herald", {"--admin.listen=" + admin, "--core.listen=127.0.0.1:0",
                            "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0", "--data_dir=" + dir_ + "/b"});
  EXPECT_EQ(second.Wait(10s), 1);
  EXPECT_NE(second.log().find("address already in use"), std::string::npos) << second.log();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(5s), 0);
}

TEST_F(ServiceProcessTest, StartFailingHalfWayStopsWhatStartedAndExitsCleanly) {
  Process first("herald", {"--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                           "--mqtt.listen=127.0.0.1:0", "--http.listen=127.0.0.1:0",
                           "--data_dir=" + dir_ + "/a"});
  std::string http = first.WaitForLine(R"(http listening on (127\.0\.0\.1:\d+))");
  ASSERT_FALSE(http.empty()) << first.log();
  // The second process starts its core and its MQTT listener, then fails on the HTTP port:
  // what it started must be stopped while its event loops still run (no crash, exit 1).
  Process second("herald", {"--admin.listen=127.0.0.1:0", "--core.listen=127.0.0.1:0",
                            "--mqtt.listen=127.0.0.1:0", "--http.listen=" + http,
                            "--data_dir=" + dir_ + "/b"});
  EXPECT_EQ(second.Wait(10s), 1) << second.log();
  EXPECT_NE(second.log().find("address already in use"), std::string::npos) << second.log();
  EXPECT_NE(second.log().find("mqtt listening on"), std::string::npos)
      << "the failure came before the MQTT listener started: " << second.log();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(5s), 0);
}

TEST_F(ServiceProcessTest, CoreAndEdgeStartServeAndStop) {
  for (const char* bin : {"herald-core", "herald-edge"}) {
    std::vector<std::string> args = {"--admin.listen=127.0.0.1:0"};
    if (std::string(bin) == "herald-core") args.push_back("--core.listen=127.0.0.1:0");
    if (std::string(bin) == "herald-core") args.push_back("--data_dir=" + dir_ + "/core");
    Process p(bin, args);
    std::string admin = p.WaitForLine(kAdminLine);
    ASSERT_FALSE(admin.empty()) << bin << ": " << p.log();
    std::string metrics = HttpGet(admin, "/metrics");
    EXPECT_NE(metrics.find(std::string("herald_build_info{component=\"") + bin + "\""),
              std::string::npos)
        << metrics;
    p.Signal(SIGTERM);
    EXPECT_EQ(p.Wait(5s), 0) << p.log();
  }
}

// docs/configuration.md must list every option each binary accepts, with its default.
TEST(ConfigurationDocsTest, EveryOptionOfEveryBinaryIsDocumented) {
  std::ifstream in(std::string(HERALD_SOURCE_DIR) + "/docs/configuration.md");
  std::string docs((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(docs.empty());
  for (const char* bin : {"herald", "herald-core", "herald-edge"}) {
    std::string cmd = std::string(HERALD_BIN_DIR) + "/" + bin + " --help-config";
    FILE* p = ::popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    char line[4096];
    int rows = 0;
    while (std::fgets(line, sizeof(line), p) != nullptr) {
      std::string row(line);
      if (row.rfind("| `", 0) != 0) continue;
      ++rows;
      row.erase(row.find_last_not_of("\n") + 1);
      EXPECT_NE(docs.find(row), std::string::npos)
          << bin << ": docs/configuration.md lacks or differs on this row:\n"
          << row;
    }
    EXPECT_EQ(::pclose(p), 0);
    EXPECT_GT(rows, 3) << bin;
  }
}

}  // namespace
}  // namespace herald
