#include "tests/support/process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include "libs/net/socket_address.h"
#include "libs/net/test_util.h"

extern char** environ;

namespace herald::testing {

using namespace std::chrono_literals;

Process::Process(const std::string& binary, const std::vector<std::string>& args,
                 const std::vector<std::string>& prefix) {
  // stderr goes to an unlinked file, not a pipe: a child that logs a lot never blocks on a
  // full pipe while the test is busy elsewhere. The parent reads it at its own offset (pread).
  err_fd_ = ::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (err_fd_ < 0) {
    char tmpl[] = "/tmp/herald-process-log-XXXXXX";
    err_fd_ = ::mkostemp(tmpl, O_CLOEXEC);
    if (err_fd_ < 0) return;
    ::unlink(tmpl);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, err_fd_, 2);
  std::string path = std::string(HERALD_BIN_DIR) + "/" + binary;
  std::vector<std::string> all = prefix;
  all.push_back(prefix.empty() ? binary : path);
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (!prefix.empty()) path = prefix.front();
  if (posix_spawn(&pid_, path.c_str(), &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&fa);
}

Process::~Process() {
  if (pid_ > 0 && !exited_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (err_fd_ >= 0) ::close(err_fd_);
}

bool Process::ReadMore() const {
  if (err_fd_ < 0) return false;
  char buf[16384];
  bool got = false;
  ssize_t n;
  while ((n = ::pread(err_fd_, buf, sizeof(buf), static_cast<off_t>(read_offset_))) > 0) {
    pending_.append(buf, static_cast<size_t>(n));
    log_.append(buf, static_cast<size_t>(n));
    read_offset_ += static_cast<size_t>(n);
    got = true;
  }
  return got;
}

bool Process::Exited() const {
  if (pid_ <= 0 || exited_) return true;
  siginfo_t info{};
  // WNOWAIT: look without reaping; Wait() still collects the status.
  return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid_;
}

const std::string& Process::log() const {
  ReadMore();
  return log_;
}

std::string Process::WaitForLine(const std::string& pattern, std::chrono::milliseconds timeout) {
  std::regex re(pattern);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    size_t nl;
    while ((nl = pending_.find('\n')) != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      std::smatch m;
      if (std::regex_search(line, m, re)) return m.size() > 1 ? m[1].str() : m[0].str();
    }
    if (ReadMore()) continue;
    // Nothing new: the child exited (after a last look at its output), or wait a little.
    if (Exited()) {
      if (ReadMore()) continue;
      return "";
    }
    if (std::chrono::steady_clock::now() >= deadline) return "";
    std::this_thread::sleep_for(5ms);
  }
}

int Process::Wait(std::chrono::milliseconds timeout) {
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

void Process::Signal(int sig) {
  if (pid_ > 0 && !exited_) ::kill(pid_, sig);
}

void Process::DrainStderr() { ReadMore(); }

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

namespace {

// Binds a TCP socket to 127.0.0.1:port (0: any); returns the port bound, or 0.
int TryBind(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  int bound = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    socklen_t len = sizeof(a);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) bound = ntohs(a.sin_port);
  }
  ::close(fd);
  return bound;
}

}  // namespace

int PickFreePort() {
  // Below the kernel's ephemeral range: a port handed out here is never the one the kernel
  // gives a listener on port 0 or an outgoing connection (which is how a picked port used to
  // be taken before the test's server bound it). Random, so that tests running in parallel
  // rarely pick the same one.
  int low = 32768;
  if (std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range"); range) range >> low;
  constexpr int kFirst = 10000;
  if (low - kFirst >= 1000) {
    static std::mt19937 rnd(static_cast<uint32_t>(::getpid()) * 2654435761u ^
                            static_cast<uint32_t>(
                                std::chrono::steady_clock::now().time_since_epoch().count()));
    static std::mutex mu;
    static std::set<int> handed_out;  // a port is handed out once per process
    std::lock_guard<std::mutex> l(mu);
    for (int attempt = 0; attempt < 100; ++attempt) {
      int port = kFirst + static_cast<int>(rnd() % static_cast<uint32_t>(low - kFirst));
      if (handed_out.count(port) == 0 && TryBind(port) == port) {
        handed_out.insert(port);
        return port;
      }
    }
  }
  return TryBind(0);
}

}  // namespace herald::testing
