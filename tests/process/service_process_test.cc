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
#include <vector>

#include "libs/net/socket_address.h"
#include "libs/net/test_util.h"

extern char** environ;

namespace herald {
namespace {

using namespace std::chrono_literals;

// A child process whose stderr is captured through a pipe.
class Process {
 public:
  Process(const std::string& binary, const std::vector<std::string>& args) {
    int fds[2];
    EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    std::vector<std::string> all = {binary};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string path = std::string(HERALD_BIN_DIR) + "/" + binary;
    int rc = posix_spawn(&pid_, path.c_str(), &fa, nullptr, argv.data(), environ);
    EXPECT_EQ(rc, 0) << path;
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    err_fd_ = fds[0];
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(err_fd_);
  }

  // Reads stderr until `pattern` matches a line; returns the match's first group ("" on timeout).
  std::string WaitForLine(const std::string& pattern, std::chrono::milliseconds timeout = 15s) {
    std::regex re(pattern);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      size_t nl;
      while ((nl = pending_.find('\n')) != std::string::npos) {
        std::string line = pending_.substr(0, nl);
        pending_.erase(0, nl + 1);
        log_ += line + "\n";
        std::smatch m;
        if (std::regex_search(line, m, re)) return m.size() > 1 ? m[1].str() : m[0].str();
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) return "";
      pollfd p{err_fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return "";
      char buf[4096];
      ssize_t n = ::read(err_fd_, buf, sizeof(buf));
      if (n <= 0) return "";
      pending_.append(buf, static_cast<size_t>(n));
    }
  }

  // Waits for exit; returns the exit status, or -1 on timeout / death by signal.
  int Wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        DrainStderr();
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

  void Signal(int sig) { ::kill(pid_, sig); }
  const std::string& log() { return log_; }

 private:
  void DrainStderr() {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(err_fd_, buf, sizeof(buf))) > 0)
      pending_.append(buf, static_cast<size_t>(n));
    log_ += pending_;
    pending_.clear();
  }
  pid_t pid_ = -1;
  int err_fd_ = -1;
  bool exited_ = false;
  std::string pending_, log_;
};

std::string HttpGet(const std::string& address, const std::string& path) {
  auto addr = net::SocketAddress::Parse(address);
  if (!addr.ok()) return "";
  int fd = net::testing::ConnectBlocking(*addr);
  if (fd < 0) return "";
  net::testing::WriteAll(fd, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string r = net::testing::ReadToEof(fd);
  ::close(fd);
  return r;
}

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
  Process p("herald", {"--admin.listen=127.0.0.1:0", "--data_dir=" + dir_ + "/data"});
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
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/data/LOCK"));

  auto start = std::chrono::steady_clock::now();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(5s), 0) << p.log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_NE(p.log().find("received SIGTERM, stopping"), std::string::npos) << p.log();
  EXPECT_NE(p.log().find("herald stopped"), std::string::npos) << p.log();
}

TEST_F(ServiceProcessTest, HeraldStopsOnSigintWithOpenAdminConnections) {
  Process p("herald", {"--admin.listen=127.0.0.1:0", "--data_dir=" + dir_});
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
  Process first("herald", {"--admin.listen=127.0.0.1:0", "--data_dir=" + dir_});
  ASSERT_FALSE(first.WaitForLine("herald ready").empty()) << first.log();
  Process second("herald", {"--admin.listen=127.0.0.1:0", "--data_dir=" + dir_});
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
  Process p("herald", {"--config=" + cfg, "--admin.listen=127.0.0.1:0", "--data_dir=" + dir_});
  ASSERT_FALSE(p.WaitForLine(kAdminLine).empty()) << p.log();
  EXPECT_NE(p.log().find("1 event loops"), std::string::npos) << p.log();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(5s), 0);
}

TEST_F(ServiceProcessTest, AdminPortInUseIsAClearStartupError) {
  Process first("herald", {"--admin.listen=127.0.0.1:0", "--data_dir=" + dir_ + "/a"});
  std::string admin = first.WaitForLine(kAdminLine);
  ASSERT_FALSE(admin.empty()) << first.log();
  // Listeners use SO_REUSEPORT among their own loops; a second process must still not be able
  // to join the port and take part of its connections.
  Process second("herald", {"--admin.listen=" + admin, "--data_dir=" + dir_ + "/b"});
  EXPECT_EQ(second.Wait(10s), 1);
  EXPECT_NE(second.log().find("address already in use"), std::string::npos) << second.log();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(5s), 0);
}

TEST_F(ServiceProcessTest, CoreAndEdgeStartServeAndStop) {
  for (const char* bin : {"herald-core", "herald-edge"}) {
    std::vector<std::string> args = {"--admin.listen=127.0.0.1:0"};
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
