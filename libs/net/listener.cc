#include "libs/net/listener.h"

#include <sys/socket.h>
#include <unistd.h>

#include <future>

#include "libs/common/status.h"
#include "libs/common/strings.h"

namespace herald::net {

// One listening socket on one loop. Lives until its handle is closed (by Close() or by the
// loop's shutdown), then deletes itself.
class ListenerGroup::Listener final : public LoopResource {
 public:
  Listener(EventLoop& loop, Connection::HandlerFactory factory, const ListenerOptions& options,
           std::shared_ptr<ConnectionStats> stats)
      : loop_(loop), factory_(std::move(factory)), options_(options), stats_(std::move(stats)) {}

  // Loop thread. Takes ownership of `fd`.
  absl::Status Open(int fd) {
    tcp_ = new uv_tcp_t;
    uv_tcp_init(loop_.uv(), tcp_);
    tcp_->data = this;
    loop_.Register(this);
    int rc = uv_tcp_open(tcp_, fd);
    if (rc == 0) {
      rc = uv_listen(reinterpret_cast<uv_stream_t*>(tcp_), options_.backlog,
                     [](uv_stream_t* server, int status) {
                       auto* self = static_cast<Listener*>(server->data);
                       if (status < 0) return;  // e.g. EMFILE: libuv retries later
                       Connection::Accept(self->loop_, server, self->factory_,
                                          self->options_.connection, self->options_.tls,
                                          self->stats_, self->options_.max_connections);
                     });
    } else {
      ::close(fd);
    }
    if (rc != 0) {
      CloseForShutdown();
      return absl::UnavailableError(StrCat("listen: ", uv_strerror(rc)));
    }
    return absl::OkStatus();
  }

  // Loop thread.
  void CloseForShutdown() override {
    if (tcp_ == nullptr) return;
    loop_.Unregister(this);
    uv_close(reinterpret_cast<uv_handle_t*>(tcp_), [](uv_handle_t* h) {
      delete static_cast<Listener*>(h->data);
      delete reinterpret_cast<uv_tcp_t*>(h);
    });
    tcp_ = nullptr;
  }

 private:
  EventLoop& loop_;
  Connection::HandlerFactory factory_;
  ListenerOptions options_;
  std::shared_ptr<ConnectionStats> stats_;
  uv_tcp_t* tcp_ = nullptr;
};

namespace {

absl::StatusOr<int> BindSocket(const SocketAddress& address, bool reuseport) {
  int fd = ::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoToStatus(errno, "socket");
  int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      (reuseport && ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)) {
    int err = errno;
    ::close(fd);
    return ErrnoToStatus(err, "setsockopt");
  }
  if (::bind(fd, address.sockaddr_ptr(), address.length()) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EADDRINUSE) {
      return absl::AlreadyExistsError(
          StrCat("bind ", address.ToString(), ": address already in use"));
    }
    return ErrnoToStatus(err, StrCat("bind ", address.ToString()));
  }
  return fd;
}

SocketAddress LocalAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return SocketAddress::FromSockaddr(reinterpret_cast<sockaddr*>(&ss));
}

// Runs `fn` on `loop` (which must be running) and waits for it. Returns `if_stopped` without
// running `fn` when the loop is stopping.
template <typename Fn, typename R = decltype(std::declval<Fn>()())>
R RunOn(EventLoop& loop, Fn fn, R if_stopped) {
  if (loop.InLoopThread()) return fn();
  std::promise<R> p;
  auto f = p.get_future();
  if (!loop.Post([&] { p.set_value(fn()); })) return if_stopped;
  return f.get();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ListenerGroup>> ListenerGroup::Listen(
    LoopGroup& loops, const SocketAddress& address, Connection::HandlerFactory factory,
    ListenerOptions options) {
  std::unique_ptr<ListenerGroup> group(new ListenerGroup());
  group->stats_ = std::make_shared<ConnectionStats>();
  // SO_REUSEPORT would let another process of the same user join our port and silently take
  // part of its connections. A probe bound without it first fails if anyone listens there (and
  // resolves port 0); the loops' sockets then share the port among themselves.
  SocketAddress bound;
  {
    absl::StatusOr<int> probe = BindSocket(address, /*reuseport=*/false);
    if (!probe.ok()) return probe.status();
    bound = LocalAddress(*probe);
    ::close(*probe);
  }
  group->address_ = bound;
  for (size_t i = 0; i < loops.size(); ++i) {
    absl::StatusOr<int> fd = BindSocket(bound, /*reuseport=*/true);
    if (!fd.ok()) return fd.status();
    EventLoop& loop = loops.loop(i);
    auto* listener = new Listener(loop, factory, options, group->stats_);
    absl::Status s = RunOn(
        loop, [&] { return listener->Open(*fd); },
        absl::UnavailableError("event loop is stopping"));
    if (!s.ok()) {
      if (absl::IsUnavailable(s) && s.message() == "event loop is stopping") {
        ::close(*fd);
        delete listener;
      }
      return s;  // earlier listeners close in ~ListenerGroup
    }
    group->listeners_.push_back(listener);
    group->loops_.push_back(&loop);
  }
  return group;
}

ListenerGroup::~ListenerGroup() { Close(); }

void ListenerGroup::Close() {
  if (closed_) return;
  closed_ = true;
  for (size_t i = 0; i < listeners_.size(); ++i) {
    EventLoop* loop = loops_[i];
    Listener* l = listeners_[i];
    // When the loop is already stopping, its shutdown closes the listener.
    RunOn(
        *loop,
        [l] {
          l->CloseForShutdown();
          return 0;
        },
        0);
  }
}

}  // namespace herald::net
