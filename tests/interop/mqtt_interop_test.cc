// The all-in-one `herald` against the real mosquitto_sub / mosquitto_pub (Debian package
// mosquitto-clients), MQTT 3.1.1 and 5.0, QoS 0 and 1; and a raw-socket malformed packet.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "libs/protocol/mqtt/codec.h"
#include "tests/support/process.h"

extern char** environ;

namespace herald {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A child process found on PATH, with stdin and stdout+stderr piped. SIGKILLed if still running
// on destruction.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (auto& a : copy) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    in_fd_ = in[1];
    out_fd_ = out[0];
  }
  ~Child() {
    if (in_fd_ >= 0) ::close(in_fd_);
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
  }

  void Write(const std::string& s) {
    ASSERT_EQ(::write(in_fd_, s.data(), s.size()), static_cast<ssize_t>(s.size()));
  }
  void CloseStdin() {
    ::close(in_fd_);
    in_fd_ = -1;
  }

  // Reads output until a line contains `needle`; false on timeout or end of output.
  bool WaitForLine(const std::string& needle, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (true) {
      size_t start = 0;
      for (size_t nl; (nl = output_.find('\n', start)) != std::string::npos; start = nl + 1) {
        if (output_.compare(start, nl - start, needle) == 0 ||
            output_.substr(start, nl - start).find(needle) != std::string::npos) {
          if (start >= scanned_) {
            scanned_ = nl + 1;
            return true;
          }
        }
      }
      if (!ReadSome(deadline)) return false;
    }
  }

  // Waits for exit, reading the rest of the output; the exit status or -1.
  int Wait(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (ReadSome(deadline)) {
    }
    while (Clock::now() < deadline) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

  const std::string& output() const { return output_; }
  bool started() const { return pid_ > 0; }

 private:
  bool ReadSome(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{out_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[4096];
    ssize_t n = ::read(out_fd_, buf, sizeof buf);
    if (n <= 0) return false;
    output_.append(buf, static_cast<size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int in_fd_ = -1, out_fd_ = -1;
  bool exited_ = false;
  std::string output_;
  size_t scanned_ = 0;
};

class MqttInteropTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/herald-mqtt-interop-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    port_ = testing::PickFreePort();
    herald_ = new testing::Process(
        "herald", {"--mqtt.listen=127.0.0.1:" + std::to_string(port_), "--core.listen=127.0.0.1:0",
                   "--http.listen=127.0.0.1:0", "--admin.listen=127.0.0.1:0", "--data_dir=" + *dir_, "--storage.sync=false"});
    ready_ = !herald_->WaitForLine("herald ready", 30s).empty();
  }
  static void TearDownTestSuite() {
    if (herald_ != nullptr) {
      herald_->Signal(SIGTERM);
      herald_->Wait(15s);
      delete herald_;
      herald_ = nullptr;
    }
    if (dir_ != nullptr) {
      std::filesystem::remove_all(*dir_);
      delete dir_;
      dir_ = nullptr;
    }
  }
  void SetUp() override {
    ASSERT_EQ(std::system("command -v mosquitto_sub mosquitto_pub >/dev/null"), 0)
        << "mosquitto_sub/mosquitto_pub not found: install the Debian package mosquitto-clients";
    ASSERT_TRUE(ready_) << (herald_ ? herald_->log() : "");
  }

  static std::vector<std::string> Common(const std::string& version, int qos, int port) {
    return {"-h", "127.0.0.1", "-p", std::to_string(port),
            "-V", version,     "-q", std::to_string(qos)};
  }

  // Starts a subscriber on `topic/#`, publishes `n` messages to `topic/x` through one
  // mosquitto_pub, and checks the subscriber printed them all, in order.
  void Exchange(const std::string& version, int qos, const std::string& topic, int n,
                int port = port_) {
    // stdbuf: mosquitto_sub's stdout is a pipe here, which stdio would buffer fully.
    std::vector<std::string> sub_args = {"stdbuf", "-oL", "mosquitto_sub"};
    for (auto& a : Common(version, qos, port)) sub_args.push_back(a);
    for (auto a : {"-d", "-t", "", "-C", "", "-F", "MSG %t %p"}) sub_args.push_back(a);
    sub_args[sub_args.size() - 5] = topic + "/#";
    sub_args[sub_args.size() - 3] = std::to_string(n);
    Child sub(sub_args);
    ASSERT_TRUE(sub.started());
    ASSERT_TRUE(sub.WaitForLine("Subscribed", 10s)) << sub.output();

    std::vector<std::string> pub_args = {"mosquitto_pub"};
    for (auto& a : Common(version, qos, port)) pub_args.push_back(a);
    for (auto a : {"-t", "", "-l"}) pub_args.push_back(a);
    pub_args[pub_args.size() - 2] = topic + "/x";
    Child pub(pub_args);
    ASSERT_TRUE(pub.started());
    for (int i = 0; i < n; ++i) pub.Write("m" + std::to_string(i) + "\n");
    pub.CloseStdin();
    EXPECT_EQ(pub.Wait(20s), 0) << pub.output();

    EXPECT_EQ(sub.Wait(20s), 0) << sub.output();
    std::vector<std::string> got;
    const std::string& out = sub.output();
    size_t start = 0;
    for (size_t nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string line = out.substr(start, nl - start);
      if (line.rfind("MSG ", 0) == 0) got.push_back(line);
    }
    ASSERT_EQ(got.size(), static_cast<size_t>(n)) << sub.output();
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(got[i], "MSG " + topic + "/x m" + std::to_string(i));
    }
  }

  static std::string* dir_;
  static int port_;
  static testing::Process* herald_;
  static bool ready_;
};

std::string* MqttInteropTest::dir_ = nullptr;
int MqttInteropTest::port_ = 0;
testing::Process* MqttInteropTest::herald_ = nullptr;
bool MqttInteropTest::ready_ = false;

TEST_F(MqttInteropTest, MosquittoV311QoS0) { Exchange("mqttv311", 0, "v311q0", 50); }
TEST_F(MqttInteropTest, MosquittoV311QoS1) { Exchange("mqttv311", 1, "v311q1", 50); }
TEST_F(MqttInteropTest, MosquittoV5QoS0) { Exchange("mqttv5", 0, "v5q0", 50); }
TEST_F(MqttInteropTest, MosquittoV5QoS1) { Exchange("mqttv5", 1, "v5q1", 50); }

TEST_F(MqttInteropTest, MalformedPacketGetsDisconnectAndOthersAreStillServed) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port_));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::string connect;
  ASSERT_TRUE(mqtt::Encode(mqtt::Connect{.client_id = "raw"}, mqtt::Version::kV5, &connect).ok());
  ASSERT_EQ(::send(fd, connect.data(), connect.size(), 0), static_cast<ssize_t>(connect.size()));
  // CONNACK, then garbage (reserved packet type 0), then read until the server closes.
  std::string garbage("\x00\x03\xde\xad\xbe", 5);
  char buf[256];
  ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  ASSERT_GT(n, 0);
  EXPECT_EQ(static_cast<uint8_t>(buf[0]), 0x20);  // CONNACK
  ASSERT_EQ(::send(fd, garbage.data(), garbage.size(), 0), static_cast<ssize_t>(garbage.size()));
  std::string rest;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) rest.append(buf, static_cast<size_t>(n));
  EXPECT_EQ(n, 0) << "the server did not close the connection";
  ::close(fd);
  if (!rest.empty()) {
    // DISCONNECT (0xE0) with reason code 0x81 Malformed Packet.
    ASSERT_GE(rest.size(), 3u);
    EXPECT_EQ(static_cast<uint8_t>(rest[0]), 0xE0);
    EXPECT_EQ(static_cast<uint8_t>(rest[2]), 0x81);
  }
  Exchange("mqttv5", 1, "after-malformed", 5);
}

// herald-edge in front of a separate herald-core (64 partitions on both sides by default).
TEST_F(MqttInteropTest, EdgeAndCoreProcesses) {
  std::string core_dir = *dir_ + "/core";
  testing::Process core("herald-core", {"--core.listen=127.0.0.1:0", "--admin.listen=127.0.0.1:0",
                                        "--data_dir=" + core_dir, "--storage.sync=false"});
  std::string core_address =
      core.WaitForLine(R"(core node \d+ listening on (127\.0\.0\.1:\d+))", 30s);
  ASSERT_FALSE(core_address.empty()) << core.log();
  ASSERT_FALSE(core.WaitForLine("herald-core ready", 30s).empty()) << core.log();
  int edge_port = testing::PickFreePort();
  testing::Process edge("herald-edge",
                        {"--mqtt.listen=127.0.0.1:" + std::to_string(edge_port),
                         "--edge.core=" + core_address, "--admin.listen=127.0.0.1:0",
                         "--http.listen=127.0.0.1:0"});
  ASSERT_FALSE(edge.WaitForLine("herald-edge ready", 30s).empty()) << edge.log();
  Exchange("mqttv5", 1, "split/v5", 20, edge_port);
  Exchange("mqttv311", 0, "split/v311", 20, edge_port);
  edge.Signal(SIGTERM);
  EXPECT_EQ(edge.Wait(15s), 0) << edge.log();
  core.Signal(SIGTERM);
  EXPECT_EQ(core.Wait(15s), 0) << core.log();
}

}  // namespace
}  // namespace herald
