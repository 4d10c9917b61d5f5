// A TCP connection (optionally TLS) on an event loop, with a bounded write queue.
//
// Backpressure: bytes the peer has not yet taken are queued. Above `write_high_watermark` the
// connection stops reading from the peer (so a client that does not read cannot make the server
// produce more); below half of it reading resumes and the handler's OnDrained runs. A write that
// would take the queue past `write_queue_limit` aborts the connection with RESOURCE_EXHAUSTED:
// memory per connection stays bounded whatever the peer does.
//
// Ownership and threading: a Connection owns its handler, lives on one loop and is used only
// from that loop's thread. It deletes itself after its socket is closed, right after calling
// the handler's OnClose; a Connection& is valid until then.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "libs/net/event_loop.h"
#include "libs/net/socket_address.h"
#include "libs/net/tls.h"

typedef struct ssl_st SSL;
typedef struct bio_st BIO;

namespace herald::net {

class Connection;

// Protocol logic bound to one connection. All calls come on the connection's loop thread.
class ConnectionHandler {
 public:
  virtual ~ConnectionHandler() = default;
  // The connection is ready for data (after the TLS handshake when TLS is on).
  virtual void OnConnected(Connection& conn) {}
  // Bytes from the peer (decrypted when TLS is on). `data` is valid only during the call.
  virtual void OnData(Connection& conn, std::string_view data) = 0;
  // The write queue fell back below the low watermark after having been above the high one.
  virtual void OnDrained(Connection& conn) {}
  // Last call: the socket is closed. OK for an orderly close by either side; otherwise why.
  virtual void OnClose(Connection& conn, const absl::Status& reason) {}
};

struct ConnectionOptions {
  // Stop reading from the peer while more than this many bytes wait to be written to it.
  size_t write_high_watermark = 1 << 20;
  // Abort the connection rather than queue more than this many bytes (a slow reader).
  size_t write_queue_limit = 8 << 20;
  // A graceful Close() that cannot flush within this time aborts.
  std::chrono::milliseconds close_timeout{5000};
  // A TLS handshake that does not finish within this time aborts.
  std::chrono::milliseconds handshake_timeout{10000};
  bool tcp_nodelay = true;
};

// Counters shared by the connections of one listener (or of outbound connections).
struct ConnectionStats {
  std::atomic<int64_t> active{0};
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> closed_slow_reader{0};
  std::atomic<uint64_t> bytes_in{0};
  std::atomic<uint64_t> bytes_out{0};
};

class Connection final : public LoopResource {
 public:
  using HandlerFactory = std::function<std::unique_ptr<ConnectionHandler>(Connection&)>;

  // Opens an outbound connection from the loop thread. The handler then gets OnConnected, or
  // OnClose with the error. With `tls`, `server_name` is sent as SNI and verified.
  static Connection* Connect(EventLoop& loop, const SocketAddress& address,
                             std::unique_ptr<ConnectionHandler> handler,
                             const ConnectionOptions& options,
                             std::shared_ptr<TlsContext> tls = nullptr,
                             const std::string& server_name = "",
                             std::shared_ptr<ConnectionStats> stats = nullptr);

  // Queues bytes for the peer (encrypting them when TLS is on). Returns false when the
  // connection is closing or when the bytes would exceed the write queue limit, in which case
  // the connection is aborted with RESOURCE_EXHAUSTED.
  bool Send(std::string_view data);
  bool Send(std::string&& data);
  bool Send(const char* data) { return Send(std::string_view(data)); }
  // Flushes what is queued (and a TLS close_notify), then closes. No more reads.
  void Close();
  // Closes now, dropping what is queued; the handler's OnClose gets `reason`.
  void Abort(const absl::Status& reason);
  // Application-level flow control, independent of write backpressure.
  void PauseReading();
  void ResumeReading();

  bool is_open() const { return state_ == State::kOpen; }
  bool is_tls() const { return ssl_ != nullptr; }
  size_t queued_bytes() const { return queued_bytes_; }
  size_t peak_queued_bytes() const { return peak_queued_bytes_; }
  uint64_t id() const { return id_; }
  const SocketAddress& peer() const { return peer_; }
  EventLoop& loop() { return loop_; }
  ConnectionHandler* handler() { return handler_.get(); }

  // Used by Listener: wraps an accepted socket. Returns nullptr (and closes the socket) when
  // the factory refuses it.
  static void Accept(EventLoop& loop, uv_stream_t* server, const HandlerFactory& factory,
                     const ConnectionOptions& options, std::shared_ptr<TlsContext> tls,
                     std::shared_ptr<ConnectionStats> stats, int64_t max_connections);

 private:
  enum class State { kConnecting, kHandshaking, kOpen, kClosing, kClosed };

  Connection(EventLoop& loop, const ConnectionOptions& options, std::shared_ptr<TlsContext> tls,
             std::shared_ptr<ConnectionStats> stats);
  ~Connection() override;

  void CloseForShutdown() override;
  void StartEstablished();
  void OnReadable(const char* data, size_t len);
  void OnReadError(ssize_t err);
  void DoHandshake();
  void ReadTls();
  void FlushTls();
  bool SendPlain(std::string_view data, std::string* owned);
  bool WriteRaw(std::string_view data, std::string* owned);
  void StartWrite();
  void OnWriteDone(int status);
  void UpdateReading();
  void CloseHandle(const absl::Status& reason);
  void MaybeFinishClose();
  bool closing_or_closed() const { return state_ == State::kClosing || state_ == State::kClosed; }

  static void OnAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);

  EventLoop& loop_;
  const ConnectionOptions options_;
  const uint64_t id_;
  std::shared_ptr<TlsContext> tls_ctx_;
  std::shared_ptr<ConnectionStats> stats_;
  std::unique_ptr<ConnectionHandler> handler_;
  uv_tcp_t* tcp_;  // freed by the close callback
  std::unique_ptr<uv_connect_t> connect_req_;  // outbound connections only
  std::unique_ptr<uv_write_t> write_req_;  // allocated with the first queued write
  State state_ = State::kConnecting;
  SocketAddress peer_;
  absl::Status close_reason_;

  // Write queue: `pending_` waits for the next uv_write; `inflight_` belongs to the current one.
  // Allocated on first use: an idle connection should cost little memory.
  std::unique_ptr<std::deque<std::string>> pending_;
  bool has_pending() const { return pending_ && !pending_->empty(); }
  std::vector<std::string> inflight_;
  std::vector<uv_buf_t> iov_;
  bool write_in_flight_ = false;
  size_t queued_bytes_ = 0;
  size_t peak_queued_bytes_ = 0;

  bool reading_ = false;
  bool app_paused_ = false;
  bool backpressure_paused_ = false;
  std::unique_ptr<Timer> deadline_;  // handshake or close timeout

  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;        // ciphertext from the peer, read by OpenSSL
  BIO* wbio_ = nullptr;        // ciphertext for the peer, written by OpenSSL
  std::string pending_plain_;  // plaintext sent before the handshake finished
  bool handshake_notified_ = false;
};

}  // namespace herald::net
