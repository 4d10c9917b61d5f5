#include "libs/net/connection.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include "libs/net/listener.h"
#include "libs/net/test_util.h"

namespace herald::net {
namespace {

using namespace std::chrono_literals;
using testing::ConnectBlocking;
using testing::ReadExactly;
using testing::ReadToEof;
using testing::WriteAll;

// What the server side saw of its connections' ends.
struct CloseLog {
  std::mutex mu;
  std::vector<absl::Status> reasons;
  std::vector<size_t> peaks;
  std::condition_variable cv;
  void Add(const absl::Status& s, size_t peak) {
    std::lock_guard<std::mutex> l(mu);
    reasons.push_back(s);
    peaks.push_back(peak);
    cv.notify_all();
  }
  bool WaitFor(size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, timeout, [&] { return reasons.size() >= n; });
  }
};

class EchoHandler : public ConnectionHandler {
 public:
  explicit EchoHandler(CloseLog* log) : log_(log) {}
  void OnData(Connection& c, std::string_view data) override { c.Send(data); }
  void OnClose(Connection& c, const absl::Status& s) override {
    if (log_) log_->Add(s, c.peak_queued_bytes());
  }

 private:
  CloseLog* log_;
};

// Frames are a 4-byte big-endian length and a body; the answer to each frame is
// "<body length>:<sum of its bytes>\n". Checks that frames split across reads are reassembled.
class FrameHandler : public ConnectionHandler {
 public:
  void OnData(Connection& c, std::string_view data) override {
    buf_.append(data);
    while (buf_.size() >= 4) {
      uint32_t len = (uint8_t(buf_[0]) << 24) | (uint8_t(buf_[1]) << 16) | (uint8_t(buf_[2]) << 8) |
                     uint8_t(buf_[3]);
      if (buf_.size() < 4 + len) break;
      uint64_t sum = 0;
      for (size_t i = 0; i < len; ++i) sum += uint8_t(buf_[4 + i]);
      c.Send(std::to_string(len) + ":" + std::to_string(sum) + "\n");
      buf_.erase(0, 4 + len);
    }
  }

 private:
  std::string buf_;
};

// On any input, sends `size` bytes of a known pattern in one Send.
class BulkHandler : public ConnectionHandler {
 public:
  explicit BulkHandler(size_t size) : size_(size) {}
  void OnData(Connection& c, std::string_view) override {
    std::string body(size_, '\0');
    for (size_t i = 0; i < size_; ++i) body[i] = static_cast<char>('a' + i % 26);
    c.Send(std::move(body));
  }

 private:
  size_t size_;
};

// A producer that ignores backpressure: sends 64 KiB every millisecond until the connection
// is aborted.
class FloodHandler : public ConnectionHandler {
 public:
  explicit FloodHandler(CloseLog* log) : log_(log) {}
  void OnConnected(Connection& c) override {
    timer_ = std::make_unique<Timer>(c.loop(), [this, &c] {
      for (int i = 0; i < 4 && c.is_open(); ++i) c.Send(std::string(64 * 1024, 'x'));
    });
    timer_->Start(1ms, 1ms);
  }
  void OnData(Connection&, std::string_view) override {}
  void OnClose(Connection& c, const absl::Status& s) override {
    timer_.reset();
    log_->Add(s, c.peak_queued_bytes());
  }

 private:
  CloseLog* log_;
  std::unique_ptr<Timer> timer_;
};

class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::RaiseFileLimit();
    ASSERT_TRUE(loops_.Start().ok());
  }
  void TearDown() override {
    listener_.reset();
    loops_.Stop();
  }
  SocketAddress Listen(Connection::HandlerFactory factory, ListenerOptions options = {}) {
    auto l = ListenerGroup::Listen(loops_, *SocketAddress::Parse("127.0.0.1:0"), std::move(factory),
                                   std::move(options));
    EXPECT_TRUE(l.ok()) << l.status();
    listener_ = std::move(*l);
    EXPECT_NE(listener_->address().port(), 0);
    return listener_->address();
  }

  LoopGroup loops_{2, "test"};
  std::unique_ptr<ListenerGroup> listener_;
};

TEST_F(ConnectionTest, EchoesOnAThousandConcurrentConnections) {
  CloseLog log;
  SocketAddress addr = Listen([&](Connection&) { return std::make_unique<EchoHandler>(&log); });
  constexpr int kConns = 1000;
  std::vector<int> fds;
  for (int i = 0; i < kConns; ++i) {
    int fd = ConnectBlocking(addr);
    ASSERT_GE(fd, 0) << "connection " << i << ": " << strerror(errno);
    fds.push_back(fd);
  }
  // All connections are open at once; each talks only after every one is established.
  for (int i = 0; i < kConns; ++i) ASSERT_TRUE(WriteAll(fds[i], "message-" + std::to_string(i)));
  for (int i = 0; i < kConns; ++i) {
    std::string expect = "message-" + std::to_string(i);
    EXPECT_EQ(ReadExactly(fds[i], expect.size()), expect);
  }
  EXPECT_EQ(listener_->stats().active.load(), kConns);
  EXPECT_EQ(listener_->stats().accepted.load(), static_cast<uint64_t>(kConns));
  for (int fd : fds) ::close(fd);
  ASSERT_TRUE(log.WaitFor(kConns));
  for (auto& s : log.reasons) EXPECT_TRUE(s.ok() || absl::IsUnavailable(s)) << s;
}

TEST_F(ConnectionTest, ReassemblesFramesSplitIntoSingleByteWrites) {
  SocketAddress addr = Listen([](Connection&) { return std::make_unique<FrameHandler>(); });
  int fd = ConnectBlocking(addr);
  ASSERT_GE(fd, 0);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::string body(300, '\0');
  uint64_t sum = 0;
  for (size_t i = 0; i < body.size(); ++i) {
    body[i] = static_cast<char>(i * 7);
    sum += uint8_t(body[i]);
  }
  std::string frame = {0, 0, 1, 44};  // 300
  frame += body;
  frame += frame;  // two frames back to back
  for (char ch : frame) {
    ASSERT_TRUE(WriteAll(fd, std::string_view(&ch, 1)));
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  std::string line = "300:" + std::to_string(sum) + "\n";
  EXPECT_EQ(ReadExactly(fd, 2 * line.size()), line + line);
  ::close(fd);
}

TEST_F(ConnectionTest, LargeResponseIsDeliveredWholeThroughPartialWrites) {
  static constexpr size_t kSize = 16 << 20;  // far beyond the kernel's socket buffers
  ListenerOptions opts;
  opts.connection.write_queue_limit = 32 << 20;
  SocketAddress addr =
      Listen([](Connection&) { return std::make_unique<BulkHandler>(kSize); }, opts);
  int fd = ConnectBlocking(addr, /*rcvbuf=*/16 * 1024);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(WriteAll(fd, "go"));
  std::this_thread::sleep_for(100ms);  // let the server's first write fill the buffers
  std::string got;
  char buf[3000];  // small, odd-sized reads
  while (got.size() < kSize) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  ASSERT_EQ(got.size(), kSize);
  for (size_t i = 0; i < kSize; i += 4099) {
    ASSERT_EQ(got[i], static_cast<char>('a' + i % 26)) << "at " << i;
  }
}

TEST_F(ConnectionTest, SlowReaderIsDisconnectedAtTheQueueLimit) {
  CloseLog log;
  ListenerOptions opts;
  opts.connection.write_high_watermark = 256 * 1024;
  opts.connection.write_queue_limit = 1 << 20;
  SocketAddress addr =
      Listen([&](Connection&) { return std::make_unique<FloodHandler>(&log); }, opts);
  int fd = ConnectBlocking(addr, /*rcvbuf=*/4096);
  ASSERT_GE(fd, 0);
  // Never read; the server must give up on us instead of buffering without bound.
  ASSERT_TRUE(log.WaitFor(1, 20s));
  EXPECT_EQ(log.reasons[0].code(), absl::StatusCode::kResourceExhausted) << log.reasons[0];
  EXPECT_LE(log.peaks[0], opts.connection.write_queue_limit);
  EXPECT_EQ(listener_->stats().closed_slow_reader.load(), 1u);
  // The client then finds the connection closed (after whatever the kernel had buffered).
  std::string rest = ReadToEof(fd);
  EXPECT_GT(rest.size(), 0u);
  ::close(fd);
}

TEST_F(ConnectionTest, PeerThatDoesNotReadStopsBeingReadFromAndLosesNothing) {
  CloseLog log;
  ListenerOptions opts;
  opts.connection.write_high_watermark = 128 * 1024;
  opts.connection.write_queue_limit = 64 << 20;
  SocketAddress addr =
      Listen([&](Connection&) { return std::make_unique<EchoHandler>(&log); }, opts);
  int fd = ConnectBlocking(addr, /*rcvbuf=*/8192);
  ASSERT_GE(fd, 0);
  // Write without reading until the server stops reading us (our send blocks: EAGAIN).
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::string chunk(16 * 1024, 'e');
  size_t sent = 0;
  auto deadline = std::chrono::steady_clock::now() + 20s;
  int blocked_rounds = 0;
  while (blocked_rounds < 20 && std::chrono::steady_clock::now() < deadline) {
    ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      blocked_rounds = 0;
    } else {
      ASSERT_EQ(errno, EAGAIN);
      ++blocked_rounds;
      std::this_thread::sleep_for(10ms);
    }
  }
  ASSERT_EQ(blocked_rounds, 20) << "server never stopped reading";
  // Now read everything back: every byte comes back, the connection survived.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  std::string back = ReadExactly(fd, sent);
  EXPECT_EQ(back.size(), sent);
  EXPECT_EQ(back.find_first_not_of('e'), std::string::npos);
  ::close(fd);
  ASSERT_TRUE(log.WaitFor(1));
  EXPECT_TRUE(log.reasons[0].ok()) << log.reasons[0];
  // Reading stopped near the high watermark: at most one read's worth beyond it.
  EXPECT_LE(log.peaks[0], opts.connection.write_high_watermark + 64 * 1024);
  EXPECT_GT(log.peaks[0], opts.connection.write_high_watermark);
}

TEST_F(ConnectionTest, SecondListenerOnABoundPortIsRefused) {
  SocketAddress addr = Listen([](Connection&) { return std::make_unique<EchoHandler>(nullptr); });
  auto again = ListenerGroup::Listen(
      loops_, addr, [](Connection&) { return std::make_unique<EchoHandler>(nullptr); }, {});
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(absl::IsAlreadyExists(again.status())) << again.status();
  EXPECT_NE(again.status().message().find("address already in use"), std::string::npos);
}

TEST_F(ConnectionTest, ConnectionsBeyondTheLimitAreRefused) {
  ListenerOptions opts;
  opts.max_connections = 2;
  SocketAddress addr =
      Listen([](Connection&) { return std::make_unique<EchoHandler>(nullptr); }, opts);
  int a = ConnectBlocking(addr), b = ConnectBlocking(addr);
  ASSERT_TRUE(WriteAll(a, "a") && WriteAll(b, "b"));
  EXPECT_EQ(ReadExactly(a, 1), "a");
  EXPECT_EQ(ReadExactly(b, 1), "b");
  int c = ConnectBlocking(addr);
  ASSERT_GE(c, 0);
  EXPECT_EQ(ReadToEof(c), "");  // closed by the server without a byte
  EXPECT_EQ(listener_->stats().rejected.load(), 1u);
  ::close(a);
  ::close(b);
  ::close(c);
}

TEST_F(ConnectionTest, OutboundConnectionTalksToListener) {
  SocketAddress addr = Listen([](Connection&) { return std::make_unique<EchoHandler>(nullptr); });
  struct Client : ConnectionHandler {
    std::promise<std::string> reply;
    std::promise<absl::Status> closed;
    std::string got;
    void OnConnected(Connection& c) override { c.Send("ping"); }
    void OnData(Connection& c, std::string_view d) override {
      got.append(d);
      if (got.size() == 4) {
        reply.set_value(got);
        c.Close();
      }
    }
    void OnClose(Connection&, const absl::Status& s) override { closed.set_value(s); }
  };
  auto client = std::make_unique<Client>();
  auto reply = client->reply.get_future();
  auto closed = client->closed.get_future();
  loops_.loop(0).Post([&, h = std::move(client)]() mutable {
    Connection::Connect(loops_.loop(0), addr, std::move(h), ConnectionOptions{});
  });
  EXPECT_EQ(reply.get(), "ping");
  EXPECT_TRUE(closed.get().ok());
}

TEST_F(ConnectionTest, ConnectToClosedPortReportsAnError) {
  // Bind a port, then close it so nothing listens there.
  SocketAddress addr = Listen([](Connection&) { return std::make_unique<EchoHandler>(nullptr); });
  listener_.reset();
  struct Client : ConnectionHandler {
    std::promise<absl::Status> closed;
    void OnData(Connection&, std::string_view) override {}
    void OnClose(Connection&, const absl::Status& s) override { closed.set_value(s); }
  };
  auto client = std::make_unique<Client>();
  auto closed = client->closed.get_future();
  loops_.loop(0).Post([&, h = std::move(client)]() mutable {
    Connection::Connect(loops_.loop(0), addr, std::move(h), ConnectionOptions{});
  });
  absl::Status s = closed.get();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
}

TEST_F(ConnectionTest, StoppingTheLoopsClosesOpenConnectionsCleanly) {
  CloseLog log;
  SocketAddress addr = Listen([&](Connection&) { return std::make_unique<EchoHandler>(&log); });
  std::vector<int> fds;
  for (int i = 0; i < 50; ++i) {
    int fd = ConnectBlocking(addr);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(WriteAll(fd, "x"));
    ASSERT_EQ(ReadExactly(fd, 1), "x");
    fds.push_back(fd);
  }
  auto start = std::chrono::steady_clock::now();
  listener_.reset();
  loops_.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  ASSERT_TRUE(log.WaitFor(50, 1s));
  for (auto& s : log.reasons) EXPECT_TRUE(absl::IsCancelled(s)) << s;
  for (int fd : fds) {
    EXPECT_EQ(ReadToEof(fd), "");
    ::close(fd);
  }
}

}  // namespace
}  // namespace herald::net
