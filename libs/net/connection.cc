#include "libs/net/connection.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <climits>

#include "libs/common/strings.h"

namespace herald::net {
namespace {

std::atomic<uint64_t> next_connection_id{1};

// Reads are handled synchronously in the read callback, so one buffer per loop thread serves
// every connection of that loop: an idle connection holds no read buffer.
constexpr size_t kReadBufferSize = 64 * 1024;
thread_local char read_buffer[kReadBufferSize];

constexpr size_t kMaxIov = 64;

absl::Status UvStatus(int err, std::string_view what) {
  absl::StatusCode code = absl::StatusCode::kUnavailable;
  if (err == UV_ECANCELED) code = absl::StatusCode::kCancelled;
  if (err == UV_ETIMEDOUT) code = absl::StatusCode::kDeadlineExceeded;
  return absl::Status(code, StrCat(what, ": ", uv_strerror(err)));
}

}  // namespace

Connection::Connection(EventLoop& loop, const ConnectionOptions& options,
                       std::shared_ptr<TlsContext> tls, std::shared_ptr<ConnectionStats> stats)
    : loop_(loop),
      options_(options),
      id_(next_connection_id.fetch_add(1)),
      tls_ctx_(std::move(tls)),
      stats_(stats ? std::move(stats) : std::make_shared<ConnectionStats>()),
      tcp_(new uv_tcp_t) {
  uv_tcp_init(loop_.uv(), tcp_);
  tcp_->data = this;
  stats_->active.fetch_add(1);
  loop_.Register(this);
  if (tls_ctx_) {
    ssl_ = SSL_new(tls_ctx_->ctx());
    rbio_ = BIO_new(BIO_s_mem());
    wbio_ = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl_, rbio_, wbio_);  // ssl_ owns both BIOs now
    if (tls_ctx_->is_server()) {
      SSL_set_accept_state(ssl_);
    } else {
      SSL_set_connect_state(ssl_);
    }
  }
}

Connection::~Connection() {
  if (ssl_ != nullptr) SSL_free(ssl_);
  stats_->active.fetch_sub(1);
}

Connection* Connection::Connect(EventLoop& loop, const SocketAddress& address,
                                std::unique_ptr<ConnectionHandler> handler,
                                const ConnectionOptions& options, std::shared_ptr<TlsContext> tls,
                                const std::string& server_name,
                                std::shared_ptr<ConnectionStats> stats) {
  auto* c = new Connection(loop, options, std::move(tls), std::move(stats));
  c->handler_ = std::move(handler);
  c->peer_ = address;
  if (c->ssl_ != nullptr && !server_name.empty()) {
    SSL_set_tlsext_host_name(c->ssl_, server_name.c_str());
    SSL_set1_host(c->ssl_, server_name.c_str());
  }
  c->connect_req_ = std::make_unique<uv_connect_t>();
  c->connect_req_->data = c;
  int rc = uv_tcp_connect(c->connect_req_.get(), c->tcp_, address.sockaddr_ptr(),
                          [](uv_connect_t* req, int status) {
                            auto* self = static_cast<Connection*>(req->data);
                            if (self->state_ != State::kConnecting) return;  // aborted meanwhile
                            if (status < 0) {
                              self->CloseHandle(UvStatus(status, "connect"));
                              return;
                            }
                            self->StartEstablished();
                          });
  if (rc < 0) c->CloseHandle(UvStatus(rc, "connect"));
  return c;
}

void Connection::Accept(EventLoop& loop, uv_stream_t* server, const HandlerFactory& factory,
                        const ConnectionOptions& options, std::shared_ptr<TlsContext> tls,
                        std::shared_ptr<ConnectionStats> stats, int64_t max_connections) {
  auto* c = new Connection(loop, options, std::move(tls), stats);
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(c->tcp_)) != 0) {
    c->CloseHandle(absl::UnavailableError("accept failed"));
    return;
  }
  sockaddr_storage ss{};
  int len = sizeof(ss);
  if (uv_tcp_getpeername(c->tcp_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
    c->peer_ = SocketAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&ss));
  }
  // `active` already counts this connection.
  if (max_connections > 0 && c->stats_->active.load() > max_connections) {
    c->stats_->rejected.fetch_add(1);
    c->CloseHandle(absl::ResourceExhaustedError("connection limit reached"));
    return;
  }
  c->stats_->accepted.fetch_add(1);
  c->handler_ = factory(*c);
  if (!c->handler_) {
    c->stats_->rejected.fetch_add(1);
    c->CloseHandle(absl::PermissionDeniedError("connection refused by handler"));
    return;
  }
  c->StartEstablished();
}

void Connection::StartEstablished() {
  if (options_.tcp_nodelay) uv_tcp_nodelay(tcp_, 1);
  if (ssl_ != nullptr) {
    state_ = State::kHandshaking;
    deadline_ = std::make_unique<Timer>(
        loop_, [this] { Abort(absl::DeadlineExceededError("TLS handshake timed out")); });
    deadline_->Start(options_.handshake_timeout);
    UpdateReading();
    if (!tls_ctx_->is_server()) DoHandshake();  // sends the ClientHello
    return;
  }
  state_ = State::kOpen;
  UpdateReading();
  handler_->OnConnected(*this);
}

// ---- reading ----

void Connection::OnAlloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  buf->base = read_buffer;
  buf->len = kReadBufferSize;
}

void Connection::OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
  auto* self = static_cast<Connection*>(s->data);
  if (n > 0) {
    self->OnReadable(buf->base, static_cast<size_t>(n));
  } else if (n < 0) {
    self->OnReadError(n);
  }
}

void Connection::OnReadable(const char* data, size_t len) {
  stats_->bytes_in.fetch_add(len);
  if (ssl_ == nullptr) {
    if (state_ == State::kOpen) handler_->OnData(*this, std::string_view(data, len));
    return;
  }
  if (BIO_write(rbio_, data, static_cast<int>(len)) != static_cast<int>(len)) {
    Abort(absl::InternalError("TLS: buffering ciphertext failed"));
    return;
  }
  if (state_ == State::kHandshaking) {
    DoHandshake();
  } else if (state_ == State::kOpen) {
    ReadTls();
  }
}

void Connection::OnReadError(ssize_t err) {
  if (err == UV_EOF) {
    // The peer finished sending. Flush what we owe it, then close.
    if (state_ == State::kOpen) {
      Close();
    } else {
      CloseHandle(state_ == State::kHandshaking
                      ? absl::UnavailableError("peer closed during TLS handshake")
                      : absl::OkStatus());
    }
    return;
  }
  CloseHandle(UvStatus(static_cast<int>(err), "read"));
}

void Connection::UpdateReading() {
  bool want = !app_paused_ && !backpressure_paused_ &&
              (state_ == State::kOpen || state_ == State::kHandshaking);
  if (want == reading_) return;
  auto* stream = reinterpret_cast<uv_stream_t*>(tcp_);
  if (want) {
    if (uv_read_start(stream, &Connection::OnAlloc, &Connection::OnRead) == 0) reading_ = true;
  } else {
    uv_read_stop(stream);
    reading_ = false;
  }
}

void Connection::PauseReading() {
  app_paused_ = true;
  UpdateReading();
}

void Connection::ResumeReading() {
  app_paused_ = false;
  UpdateReading();
}

// ---- TLS ----

void Connection::DoHandshake() {
  int r = SSL_do_handshake(ssl_);
  FlushTls();
  if (closing_or_closed()) return;
  if (r == 1) {
    state_ = State::kOpen;
    deadline_.reset();
    handshake_notified_ = true;
    handler_->OnConnected(*this);
    if (closing_or_closed()) return;
    if (!pending_plain_.empty()) {
      std::string plain = std::move(pending_plain_);
      pending_plain_.clear();
      SendPlain(plain, nullptr);
      if (closing_or_closed()) return;
    }
    ReadTls();  // application data may have arrived with the handshake's last flight
    return;
  }
  int err = SSL_get_error(ssl_, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
  Abort(absl::UnavailableError(StrCat("TLS handshake failed: ", DrainOpenSslErrors())));
}

void Connection::ReadTls() {
  char buf[16 * 1024];
  while (state_ == State::kOpen) {
    int n = SSL_read(ssl_, buf, sizeof(buf));
    if (n > 0) {
      handler_->OnData(*this, std::string_view(buf, static_cast<size_t>(n)));
      continue;
    }
    int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
    if (err == SSL_ERROR_ZERO_RETURN) {  // close_notify from the peer
      FlushTls();
      Close();
      return;
    }
    Abort(absl::UnavailableError(StrCat("TLS read failed: ", DrainOpenSslErrors())));
    return;
  }
  FlushTls();  // SSL_read may have produced output (session tickets, key updates)
}

void Connection::FlushTls() {
  if (state_ == State::kClosed) return;
  size_t pending = BIO_ctrl_pending(wbio_);
  if (pending == 0) return;
  std::string out(pending, '\0');
  int n = BIO_read(wbio_, out.data(), static_cast<int>(pending));
  if (n <= 0) return;
  out.resize(static_cast<size_t>(n));
  WriteRaw(out, &out);
}

// ---- writing ----

bool Connection::Send(std::string_view data) { return SendPlain(data, nullptr); }
bool Connection::Send(std::string&& data) { return SendPlain(data, &data); }

bool Connection::SendPlain(std::string_view data, std::string* owned) {
  if (closing_or_closed() || state_ == State::kConnecting) return false;
  if (data.empty()) return true;
  if (ssl_ == nullptr) return WriteRaw(data, owned);
  if (state_ == State::kHandshaking) {
    if (pending_plain_.size() + data.size() > options_.write_queue_limit) {
      stats_->closed_slow_reader.fetch_add(1);
      Abort(absl::ResourceExhaustedError("write queue limit exceeded during TLS handshake"));
      return false;
    }
    pending_plain_.append(data);
    return true;
  }
  // Memory BIOs accept everything, so SSL_write completes in one call.
  int n = SSL_write(ssl_, data.data(), static_cast<int>(data.size()));
  if (n <= 0) {
    Abort(absl::UnavailableError(StrCat("TLS write failed: ", DrainOpenSslErrors())));
    return false;
  }
  FlushTls();
  return !closing_or_closed();
}

bool Connection::WriteRaw(std::string_view data, std::string* owned) {
  if (state_ == State::kClosed) return false;
  size_t offset = 0;
  if (!write_in_flight_ && !has_pending()) {
    // Fast path: write straight from the caller's bytes; queue only the remainder.
    uv_buf_t b = uv_buf_init(const_cast<char*>(data.data()), static_cast<unsigned>(data.size()));
    int n = uv_try_write(reinterpret_cast<uv_stream_t*>(tcp_), &b, 1);
    if (n > 0) {
      offset = static_cast<size_t>(n);
      stats_->bytes_out.fetch_add(offset);
    } else if (n != UV_EAGAIN && n != UV_ENOSYS) {
      CloseHandle(UvStatus(n, "write"));
      return false;
    }
    if (offset == data.size()) return true;
  }
  size_t remaining = data.size() - offset;
  if (queued_bytes_ + remaining > options_.write_queue_limit) {
    stats_->closed_slow_reader.fetch_add(1);
    Abort(absl::ResourceExhaustedError(
        StrCat("write queue limit of ", options_.write_queue_limit,
               " bytes exceeded: peer is not reading (slow consumer)")));
    return false;
  }
  if (!pending_) pending_ = std::make_unique<std::deque<std::string>>();
  if (owned != nullptr && offset == 0) {
    pending_->push_back(std::move(*owned));
  } else {
    pending_->emplace_back(data.substr(offset));
  }
  queued_bytes_ += remaining;
  peak_queued_bytes_ = std::max(peak_queued_bytes_, queued_bytes_);
  if (queued_bytes_ > options_.write_high_watermark && !backpressure_paused_) {
    backpressure_paused_ = true;
    UpdateReading();
  }
  StartWrite();
  return true;
}

void Connection::StartWrite() {
  if (write_in_flight_ || !has_pending() || state_ == State::kClosed) return;
  inflight_.clear();
  iov_.clear();
  size_t max = std::min<size_t>(kMaxIov, IOV_MAX);
  while (!pending_->empty() && inflight_.size() < max) {
    inflight_.push_back(std::move(pending_->front()));
    pending_->pop_front();
  }
  for (auto& s : inflight_) iov_.push_back(uv_buf_init(s.data(), static_cast<unsigned>(s.size())));
  if (!write_req_) {
    write_req_ = std::make_unique<uv_write_t>();
    write_req_->data = this;
  }
  int rc = uv_write(write_req_.get(), reinterpret_cast<uv_stream_t*>(tcp_), iov_.data(),
                    static_cast<unsigned>(iov_.size()), [](uv_write_t* req, int status) {
                      static_cast<Connection*>(req->data)->OnWriteDone(status);
                    });
  if (rc < 0) {
    CloseHandle(UvStatus(rc, "write"));
    return;
  }
  write_in_flight_ = true;
}

void Connection::OnWriteDone(int status) {
  write_in_flight_ = false;
  size_t written = 0;
  for (auto& s : inflight_) written += s.size();
  inflight_.clear();
  queued_bytes_ -= std::min(written, queued_bytes_);
  if (status < 0) {
    if (status != UV_ECANCELED) CloseHandle(UvStatus(status, "write"));
    return;
  }
  stats_->bytes_out.fetch_add(written);
  StartWrite();
  if (backpressure_paused_ && queued_bytes_ <= options_.write_high_watermark / 2) {
    backpressure_paused_ = false;
    UpdateReading();
    if (state_ == State::kOpen) handler_->OnDrained(*this);
  }
  MaybeFinishClose();
}

// ---- closing ----

void Connection::Close() {
  if (closing_or_closed()) return;
  if (state_ != State::kOpen) {
    CloseHandle(absl::OkStatus());
    return;
  }
  if (ssl_ != nullptr) {
    SSL_shutdown(ssl_);
    FlushTls();
    if (state_ == State::kClosed) return;
  }
  state_ = State::kClosing;
  UpdateReading();
  deadline_ = std::make_unique<Timer>(
      loop_, [this] { CloseHandle(absl::DeadlineExceededError("graceful close timed out")); });
  deadline_->Start(options_.close_timeout);
  MaybeFinishClose();
}

void Connection::MaybeFinishClose() {
  if (state_ == State::kClosing && queued_bytes_ == 0 && !write_in_flight_) {
    CloseHandle(absl::OkStatus());
  }
}

void Connection::Abort(const absl::Status& reason) { CloseHandle(reason); }

void Connection::CloseForShutdown() { CloseHandle(absl::CancelledError("event loop stopping")); }

void Connection::CloseHandle(const absl::Status& reason) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  close_reason_ = reason;
  deadline_.reset();
  loop_.Unregister(this);
  uv_close(reinterpret_cast<uv_handle_t*>(tcp_), [](uv_handle_t* h) {
    auto* self = static_cast<Connection*>(h->data);
    delete reinterpret_cast<uv_tcp_t*>(h);
    if (self->handler_) self->handler_->OnClose(*self, self->close_reason_);
    delete self;
  });
}

}  // namespace herald::net
