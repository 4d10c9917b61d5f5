#include "libs/net/tls.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <future>

#include "libs/net/connection.h"
#include "libs/net/listener.h"
#include "libs/net/test_util.h"

namespace herald::net {
namespace {

using namespace std::chrono_literals;

// Line protocol: echoes each line; on "quit" answers "bye" and closes gracefully.
class LineEcho : public ConnectionHandler {
 public:
  explicit LineEcho(std::promise<absl::Status>* closed = nullptr) : closed_(closed) {}
  void OnData(Connection& c, std::string_view data) override {
    buf_.append(data);
    size_t nl;
    while ((nl = buf_.find('\n')) != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (line == "quit") {
        c.Send("bye\n");
        c.Close();
        return;
      }
      c.Send(line + "\n");
    }
  }
  void OnClose(Connection&, const absl::Status& s) override {
    if (closed_) closed_->set_value(s);
  }

 private:
  std::string buf_;
  std::promise<absl::Status>* closed_;
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(loops_.Start().ok());
    auto ctx = TlsContext::NewServer({cert_.cert_file(), cert_.key_file(), ""});
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    server_ctx_ = *ctx;
  }
  void TearDown() override {
    listener_.reset();
    loops_.Stop();
  }
  SocketAddress Listen(std::promise<absl::Status>* closed = nullptr,
                       std::chrono::milliseconds handshake_timeout = 10s) {
    ListenerOptions opts;
    opts.tls = server_ctx_;
    opts.connection.handshake_timeout = handshake_timeout;
    auto l = ListenerGroup::Listen(
        loops_, *SocketAddress::Parse("127.0.0.1:0"),
        // Only the first connection reports its close.
        [closed, first = std::make_shared<std::atomic<bool>>(true)](Connection&) {
          return std::make_unique<LineEcho>(first->exchange(false) ? closed : nullptr);
        },
        opts);
    EXPECT_TRUE(l.ok()) << l.status();
    listener_ = std::move(*l);
    return listener_->address();
  }

  testing::SelfSignedCert cert_;
  LoopGroup loops_{2, "tls"};
  std::shared_ptr<TlsContext> server_ctx_;
  std::unique_ptr<ListenerGroup> listener_;
};

std::string RunCommand(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

TEST_F(TlsTest, OpensslSClientCompletesHandshakeVerifiesCertificateAndExchangesData) {
  SocketAddress addr = Listen();
  std::string cmd = "printf 'hello\\nworld\\nquit\\n' | timeout 20 openssl s_client -connect " +
                    addr.ToString() + " -servername localhost -CAfile " + cert_.cert_file() +
                    " -verify_return_error -verify_hostname localhost -ign_eof 2>&1";
  std::string out = RunCommand(cmd);
  EXPECT_NE(out.find("Verify return code: 0 (ok)"), std::string::npos) << out;
  EXPECT_NE(out.find("hello\nworld\nbye\n"), std::string::npos) << out;
  EXPECT_NE(out.find("TLSv1.3"), std::string::npos) << out;
}

TEST_F(TlsTest, OpensslSClientWithTls12AlsoWorks) {
  SocketAddress addr = Listen();
  std::string cmd = "printf 'v12\\nquit\\n' | timeout 20 openssl s_client -tls1_2 -connect " +
                    addr.ToString() + " -CAfile " + cert_.cert_file() +
                    " -verify_return_error -ign_eof 2>&1";
  std::string out = RunCommand(cmd);
  EXPECT_NE(out.find("Protocol  : TLSv1.2"), std::string::npos) << out;
  EXPECT_NE(out.find("v12\nbye\n"), std::string::npos) << out;
}

TEST_F(TlsTest, HeraldClientVerifiesServerAndExchangesLargeData) {
  SocketAddress addr = Listen();
  auto client_ctx = TlsContext::NewClient({cert_.cert_file(), true, "", ""});
  ASSERT_TRUE(client_ctx.ok()) << client_ctx.status();
  // Many TLS records: about 250 KiB of lines.
  std::string expect;
  for (int i = 0; i < 16384; ++i) expect += "line-" + std::to_string(i % 1000) + "-xyz\n";
  struct Client : ConnectionHandler {
    std::string expect, got;
    std::promise<std::string> reply;
    std::promise<absl::Status> closed;
    void OnConnected(Connection& c) override {
      c.Send(expect);
      c.Send("quit\n");
    }
    void OnData(Connection&, std::string_view d) override { got.append(d); }
    void OnClose(Connection&, const absl::Status& s) override {
      reply.set_value(got);
      closed.set_value(s);
    }
  };
  auto client = std::make_unique<Client>();
  client->expect = expect;
  auto reply = client->reply.get_future();
  auto closed = client->closed.get_future();
  loops_.loop(1).Post([&, h = std::move(client)]() mutable {
    Connection::Connect(loops_.loop(1), addr, std::move(h), ConnectionOptions{}, *client_ctx,
                        "localhost");
  });
  ASSERT_EQ(reply.wait_for(20s), std::future_status::ready);
  std::string got = reply.get();
  EXPECT_TRUE(closed.get().ok());
  EXPECT_EQ(got, expect + "bye\n");
}

TEST_F(TlsTest, ClientRejectsServerWithWrongName) {
  SocketAddress addr = Listen();
  auto client_ctx = TlsContext::NewClient({cert_.cert_file(), true, "", ""});
  ASSERT_TRUE(client_ctx.ok());
  struct Client : ConnectionHandler {
    std::promise<absl::Status> closed;
    bool connected = false;
    void OnConnected(Connection&) override { connected = true; }
    void OnData(Connection&, std::string_view) override {}
    void OnClose(Connection&, const absl::Status& s) override { closed.set_value(s); }
  };
  auto client = std::make_unique<Client>();
  auto closed = client->closed.get_future();
  loops_.loop(0).Post([&, h = std::move(client)]() mutable {
    Connection::Connect(loops_.loop(0), addr, std::move(h), ConnectionOptions{}, *client_ctx,
                        "not-localhost.example");
  });
  absl::Status s = closed.get();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("certificate verify failed"), std::string::npos) << s;
}

TEST_F(TlsTest, PlaintextGarbageOnTlsPortIsRejectedAndServerKeepsServing) {
  std::promise<absl::Status> closed;
  SocketAddress addr = Listen(&closed);
  int fd = testing::ConnectBlocking(addr);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(testing::WriteAll(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  testing::ReadToEof(fd);  // the server answers with an alert and closes
  ::close(fd);
  absl::Status s = closed.get_future().get();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("TLS handshake failed"), std::string::npos) << s;
  std::string out = RunCommand("printf 'still\\nquit\\n' | timeout 20 openssl s_client -connect " +
                               addr.ToString() + " -ign_eof 2>/dev/null");
  EXPECT_NE(out.find("still\nbye\n"), std::string::npos) << out;
}

TEST_F(TlsTest, SilentClientIsDisconnectedAfterHandshakeTimeout) {
  std::promise<absl::Status> closed;
  SocketAddress addr = Listen(&closed, 200ms);
  int fd = testing::ConnectBlocking(addr);
  ASSERT_GE(fd, 0);
  auto f = closed.get_future();
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_TRUE(absl::IsDeadlineExceeded(f.get()));
  ::close(fd);
}

TEST(TlsContextTest, MissingOrMismatchedFilesAreClearErrors) {
  auto missing = TlsContext::NewServer({"/nonexistent/cert.pem", "/nonexistent/key.pem", ""});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/cert.pem"), std::string::npos);
  testing::SelfSignedCert a, b;
  auto mismatch = TlsContext::NewServer({a.cert_file(), b.key_file(), ""});
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("mismatch"), std::string::npos) << mismatch.status();
}

}  // namespace
}  // namespace herald::net
