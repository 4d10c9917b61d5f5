// PublishLane: one PublishStream call to a core node (proto/herald/v1/broker.proto), carrying
// Publish requests of many senders (the edge's partitions, herald-bench's publishers).
//
// Requests go out in the order they were sent: one stream message at a time, holding the
// requests sent while the previous message was being written (up to 256 requests or 1 MiB); answers
// come back by request id and are handed to their waiters. When the call ends (broken, cancelled,
// the server gone) the waiters still unanswered get its status (UNAVAILABLE when it ended OK), and
// the lane is done: its owner opens a new one for the next request.
//
// Threading: Send, Expire and Cancel are thread-safe. gRPC may run a reaction inline from a Start
// call made on an application thread, so none is made under a lock; a hold keeps OnDone from
// running while a write may still be started (it is released once the stream is over and no
// write is in progress). Waiters are called on gRPC threads, or on the thread calling Send or
// Expire, without the lane's lock held.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "herald/v1/broker.grpc.pb.h"

namespace herald::edge {

class PublishLane final
    : public grpc::ClientBidiReactor<v1::PublishStreamRequest, v1::PublishStreamResponse> {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kMessageRequests = 256;
  static constexpr size_t kMessageBytes = 1 << 20;

  // Whoever waits for a request's answer. `response` holds the results when `status` is OK (the
  // waiter may move them out); a request refused as a whole has the status INVALID_ARGUMENT (a
  // malformed request: retrying cannot help) or INTERNAL.
  class Waiter {
   public:
    virtual ~Waiter() = default;
    virtual void Answered(const grpc::Status& status, v1::PublishResponse* response) = 0;
  };

  // `on_end` runs once, when the call ended, before the unanswered waiters are failed;
  // `on_gone` after them, as the lane's last use of its owner.
  using EndFn = std::function<void(PublishLane* lane, const grpc::Status& status)>;
  PublishLane(v1::Broker::Stub* stub, EndFn on_end, std::function<void()> on_gone);

  // Once, after construction, outside the owner's locks. `self` keeps the lane alive until it is
  // done. Send may be called before Start (the requests wait for it).
  void Start(std::shared_ptr<PublishLane> self);
  void Cancel() { ctx_.TryCancel(); }

  // Sends `request` (moved out) under `id`; `waiter` gets the answer. When the call is already
  // over, the waiter is failed at once with CANCELLED (the request never left: no sign that the
  // node is down).
  void Send(uint64_t id, v1::PublishRequest* request, Waiter* waiter);
  // Fails with DEADLINE_EXCEEDED the waiters sent before `before` that have no answer yet; a
  // late answer is dropped, and a request not written yet is not written.
  void Expire(Clock::time_point before);

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  struct Sent {
    Waiter* waiter;
    Clock::time_point at;
  };
  const EndFn on_end_;
  const std::function<void()> on_gone_;
  grpc::ClientContext ctx_;
  v1::PublishStreamResponse response_;
  std::shared_ptr<PublishLane> self_;
  std::mutex mu_;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool write_in_progress_ ABSL_GUARDED_BY(mu_) = false;
  v1::PublishStreamRequest writing_;  // the message being written (while write_in_progress_)
  // Requests sent meanwhile, with their sizes; the next message takes from the front.
  std::deque<std::pair<v1::StreamedPublish, size_t>> queued_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Sent> pending_ ABSL_GUARDED_BY(mu_);

  // Moves queued requests into writing_: at least one, then up to kMessageRequests requests
  // or kMessageBytes bytes (a stream message stays far below gRPC's message size limits).
  void FillWritingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace herald::edge
