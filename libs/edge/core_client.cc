#include "libs/edge/core_client.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <random>

#include "libs/common/partitioning.h"
#include "libs/common/strings.h"
#include "libs/common/thread.h"

namespace herald::edge {

using Clock = std::chrono::steady_clock;

namespace {

uint64_t RandomProducerId() {
  std::random_device rd;
  uint64_t id = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return id == 0 ? 1 : id;
}

absl::Status ToAbsl(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// The caller-facing status for a core error that retrying cannot fix (see core_api.h).
absl::Status FromErrorInfo(const v1::ErrorInfo& e) {
  switch (e.code()) {
    case v1::ERROR_CODE_FENCED:
      return absl::FailedPreconditionError(StrCat("fenced: ", e.message()));
    case v1::ERROR_CODE_SESSION_NOT_FOUND:
      return absl::NotFoundError(StrCat("session not found: ", e.message()));
    case v1::ERROR_CODE_CURSOR_INVALID:
      return absl::OutOfRangeError(StrCat("cursor invalid: ", e.message()));
    case v1::ERROR_CODE_EPOCH_CHANGED:
      // The position names a history that was reset: asking again cannot help.
      return absl::OutOfRangeError(StrCat("epoch changed: ", e.message()));
    case v1::ERROR_CODE_INVALID_ARGUMENT:
    case v1::ERROR_CODE_MESSAGE_TOO_LARGE:
      return absl::InvalidArgumentError(e.message());
    default:
      return absl::UnavailableError(e.message());
  }
}

bool Retryable(const v1::ErrorInfo* e, const grpc::Status& st) {
  if (e != nullptr) {
    switch (e->code()) {
      case v1::ERROR_CODE_NOT_LEADER:
      case v1::ERROR_CODE_PARTITION_UNAVAILABLE:
      case v1::ERROR_CODE_OUTCOME_UNKNOWN:
      case v1::ERROR_CODE_SHUTTING_DOWN:
      case v1::ERROR_CODE_OVERLOADED:
        return true;
      case v1::ERROR_CODE_UNSPECIFIED:
        break;
      default:
        return false;
    }
  }
  switch (st.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
      return true;
    default:
      return false;
  }
}

}  // namespace

// One Publish() call: done runs when `remaining` reaches zero or at the first failure.
struct CoreClient::Pending {
  PublishCallback done;
  size_t remaining = 0;
  bool finished = false;
  Clock::time_point deadline;
};

struct CoreClient::PartitionQueue {
  struct Item {
    v1::Message message;
    std::shared_ptr<Pending> pending;
  };
  uint64_t producer_id = 0;
  uint64_t next_sequence = 1;
  size_t leader = 0;  // index into stubs_
  std::deque<Item> queue;
  bool in_flight = false;
  bool retry_scheduled = false;
};

struct CoreClient::Call final : PublishLane::Waiter {
  CoreClient* client = nullptr;
  uint32_t partition = 0;
  size_t server = 0;
  grpc::ClientContext ctx;  // a unary Publish's
  v1::PublishRequest request;
  v1::PublishResponse response;
  size_t count = 0;  // items at the front of the partition queue this call carries
  uint64_t id = 0;   // on a PublishStream

  // On a PublishStream.
  void Answered(const grpc::Status& status, v1::PublishResponse* r) override {
    if (r != nullptr) response.Swap(r);
    client->OnPublishDone(this, status);
  }
};

struct CoreClient::Stream {
  size_t index = 0;
  std::thread thread;
  std::mutex write_mu;  // serializes writes to `rw`
  std::shared_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubscribeRequest, v1::SubscribeResponse>> rw;
  // Guarded by CoreClient::mu_:
  bool up = false;
  uint64_t next_change_id = 1;
  std::map<uint64_t, std::vector<std::string>> changes;  // change id -> filters added
  std::set<uint32_t> partitions;                         // attached (or to attach at start)
  std::set<uint32_t> attached;                           // confirmed by a change_applied
  bool ended_once = false;                               // the stream failed or ended at least once
};

CoreClient::CoreClient(CoreClientOptions options, DeliveryCallback on_delivery)
    : options_(std::move(options)), on_delivery_(std::move(on_delivery)) {
  for (const auto& a : options_.addresses) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    // A core node that vanished without closing its connections (power loss, a partition) is
    // noticed within 15 s: the streams on it fail, and publishes go to another node.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10'000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5'000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    // Reconnect to a node that went away at least once a second (gRPC's default backoff grows
    // to two minutes, which would keep a healed node's partitions unreachable that long), and
    // give up a connection attempt after a second rather than 20 s (a Subscribe stream waits
    // for its connection before it starts).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    channels_.push_back(grpc::CreateCustomChannel(
        a, options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(), args));
    stubs_.push_back(v1::Broker::NewStub(channels_.back()));
  }
  uint64_t producer = RandomProducerId();
  std::lock_guard<std::mutex> l(mu_);
  lanes_.resize(stubs_.size());
  unary_until_.assign(stubs_.size(), Clock::time_point());
  for (uint32_t p = 0; p < options_.partitions; ++p) {
    auto q = std::make_unique<PartitionQueue>();
    q->producer_id = producer;
    q->leader = stubs_.empty() ? 0 : p % stubs_.size();
    queues_.push_back(std::move(q));
  }
}

CoreClient::~CoreClient() { Shutdown(); }

absl::Status CoreClient::Start() {
  if (options_.addresses.empty()) return absl::InvalidArgumentError("no core address");
  if (options_.partitions == 0) return absl::InvalidArgumentError("partition count is 0");
  started_ = true;
  timer_thread_ = std::thread([this] {
    SetThreadName("core-timers");
    RunTimers();
  });
  RunAfter(options_.lease_renew_interval, [this] { RenewLeases(); });
  RunAfter(ExpiryCheckInterval(), [this] { ExpirePublishes(); });
  {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = 0; i < stubs_.size(); ++i) {
      auto s = std::make_unique<Stream>();
      s->index = i;
      streams_.push_back(std::move(s));
    }
    for (uint32_t p = 0; p < options_.partitions; ++p) {
      streams_[p % streams_.size()]->partitions.insert(p);
    }
  }
  for (auto& s : streams_) {
    Stream* raw = s.get();
    s->thread = std::thread([this, raw] {
      SetThreadName("core-stream-" + std::to_string(raw->index));
      RunStream(raw);
    });
  }
  return absl::OkStatus();
}

void CoreClient::Shutdown() {
  std::vector<std::shared_ptr<Pending>> failed;
  std::vector<std::shared_ptr<PublishLane>> lanes;
  {
    std::unique_lock<std::mutex> l(mu_);
    if (shutdown_) return;
    shutdown_ = true;
    for (auto& q : queues_) {
      // Items of an in-flight call stay until it returns.
      for (auto& item : q->queue) failed.push_back(item.pending);
    }
    for (Call* c : calls_) c->ctx.TryCancel();
    lanes = LanesLocked();
    for (grpc::ClientContext* c : unary_calls_) c->TryCancel();
    for (auto& s : streams_) {
      if (s->ctx) s->ctx->TryCancel();
    }
    cv_.notify_all();
  }
  for (auto& lane : lanes) lane->Cancel();  // not under mu_: its end takes mu_
  lanes.clear();
  for (auto& p : failed) FinishPending(p, absl::UnavailableError("edge shutting down"));
  for (auto& s : streams_) {
    if (s->thread.joinable()) s->thread.join();
  }
  if (timer_thread_.joinable()) timer_thread_.join();
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return calls_.empty() && unary_calls_.empty() && lanes_alive_ == 0;
  });
  for (auto& q : queues_) q->queue.clear();
  filter_waiters_.clear();
}

void CoreClient::RunAfter(std::chrono::milliseconds delay, std::function<void()> fn) {
  std::lock_guard<std::mutex> l(mu_);
  if (shutdown_) return;
  timers_.emplace(Clock::now() + delay, std::move(fn));
  cv_.notify_all();
}

void CoreClient::RunTimers() {
  std::unique_lock<std::mutex> l(mu_);
  while (!shutdown_) {
    if (timers_.empty()) {
      cv_.wait(l);
      continue;
    }
    auto first = timers_.begin();
    if (first->first > Clock::now()) {
      cv_.wait_until(l, first->first);
      continue;
    }
    std::function<void()> fn = std::move(first->second);
    timers_.erase(first);
    l.unlock();
    fn();
    l.lock();
  }
  timers_.clear();
}

// ---------------------------------------------------------------------------------------------
// Publish

void CoreClient::Publish(std::vector<v1::Message> messages, PublishCallback done) {
  auto pending = std::make_shared<Pending>();
  pending->done = std::move(done);
  pending->remaining = messages.size();
  pending->deadline = Clock::now() + options_.publish_timeout;
  if (messages.empty()) {
    FinishPending(pending, absl::OkStatus());
    return;
  }
  absl::Status refused;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_ || !started_) {
      refused = absl::UnavailableError("core client not running");
    }
    for (const auto& m : messages) {
      if (!refused.ok()) break;
      uint32_t p = PartitionFor(m.topic(), options_.partitions);
      if (queues_[p]->queue.size() >= options_.max_queued_per_partition) {
        refused = absl::ResourceExhaustedError(
            StrCat("partition ", p, " has ", queues_[p]->queue.size(), " messages waiting"));
      }
    }
    if (refused.ok()) {
      std::set<uint32_t> touched;
      for (auto& m : messages) {
        uint32_t p = PartitionFor(m.topic(), options_.partitions);
        PartitionQueue& q = *queues_[p];
        m.set_partition(p);
        m.set_producer_id(q.producer_id);
        m.set_sequence(q.next_sequence++);
        q.queue.push_back({std::move(m), pending});
        touched.insert(p);
      }
      for (uint32_t p : touched) MaybeSendLocked(p);
    }
  }
  SendQueued();
  if (!refused.ok()) FinishPending(pending, refused);
}

void CoreClient::FinishPending(const std::shared_ptr<Pending>& p, const absl::Status& s) {
  PublishCallback cb;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (p->finished) return;
    if (s.ok() && --p->remaining > 0) return;
    p->finished = true;
    cb = std::move(p->done);
  }
  if (cb) cb(s);
}

void CoreClient::MaybeSendLocked(uint32_t partition) {
  PartitionQueue& q = *queues_[partition];
  if (q.in_flight || q.retry_scheduled || q.queue.empty() || shutdown_) return;
  // Everything queued goes out (up to max_batch), including messages whose caller stopped
  // waiting: a later sequence can only be accepted once the earlier ones are resolved.
  auto* call = new Call();
  call->partition = partition;
  call->server = q.leader;
  call->client = this;
  for (auto& item : q.queue) {
    if (call->count >= options_.max_batch) break;
    *call->request.add_messages() = item.message;
    ++call->count;
  }
  q.in_flight = true;
  calls_.insert(call);
  if (Clock::now() >= unary_until_[call->server]) {
    call->id = ++next_request_id_;
    to_send_.push_back(call);  // SendQueued() writes it, outside the lock
    return;
  }
  call->ctx.set_deadline(std::chrono::system_clock::now() + options_.publish_request_timeout);
  stubs_[call->server]->async()->Publish(
      &call->ctx, &call->request, &call->response,
      [this, call](grpc::Status status) { OnPublishDone(call, status); });
}

void CoreClient::SendQueued() {
  std::vector<std::pair<std::shared_ptr<PublishLane>, Call*>> sends;
  std::vector<std::shared_ptr<PublishLane>> fresh;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (to_send_.empty()) return;
    for (Call* call : to_send_) {
      std::shared_ptr<PublishLane>& lane = lanes_[call->server];
      if (lane == nullptr && !shutdown_) {
        const size_t server = call->server;
        lane = std::make_shared<PublishLane>(
            stubs_[server].get(),
            [this, server](PublishLane* ended, const grpc::Status& status) {
              std::lock_guard<std::mutex> l(mu_);
              if (lanes_[server].get() == ended) lanes_[server].reset();
              // A core that does not know PublishStream (an older version) gets unary calls
              // for a minute (then the stream is tried again: it may have been upgraded); the
              // failed requests are retried there.
              if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
                unary_until_[server] = Clock::now() + std::chrono::minutes(1);
              }
            },
            [this] {
              std::lock_guard<std::mutex> l(mu_);
              --lanes_alive_;
              cv_.notify_all();
            });
        ++lanes_alive_;
        fresh.push_back(lane);
      }
      sends.emplace_back(lane, call);
    }
    to_send_.clear();
  }
  for (auto& lane : fresh) lane->Start(lane);
  for (auto& [lane, call] : sends) {
    if (lane == nullptr) {  // shutting down
      OnPublishDone(call, grpc::Status(grpc::StatusCode::UNAVAILABLE, "edge shutting down"));
    } else {
      lane->Send(call->id, &call->request, call);
    }
  }
}

std::vector<std::shared_ptr<PublishLane>> CoreClient::LanesLocked() const {
  std::vector<std::shared_ptr<PublishLane>> lanes;
  for (const auto& lane : lanes_) {
    if (lane != nullptr) lanes.push_back(lane);
  }
  return lanes;
}

void CoreClient::ExpirePublishes() {
  std::vector<std::shared_ptr<PublishLane>> lanes;
  {
    std::lock_guard<std::mutex> l(mu_);
    lanes = LanesLocked();
  }
  for (auto& lane : lanes) lane->Expire(Clock::now() - options_.publish_request_timeout);
  RunAfter(ExpiryCheckInterval(), [this] { ExpirePublishes(); });
}

size_t CoreClient::LeaderIndexLocked(uint32_t, const v1::ErrorInfo* error, size_t current) {
  size_t n = stubs_.size();
  if (error != nullptr && error->has_leader_hint()) {
    const auto& hint = error->leader_hint();
    if (hint.has_endpoint() && !hint.endpoint().host().empty()) {
      std::string ep = StrCat(hint.endpoint().host(), ":", hint.endpoint().port());
      for (size_t i = 0; i < n; ++i) {
        if (options_.addresses[i] == ep) return i;
      }
    }
    if (hint.node_id() != 0 && hint.node_id() <= n) return hint.node_id() - 1;
  }
  return (current + 1) % n;
}

void CoreClient::OnPublishDone(Call* call, const grpc::Status& status) {
  std::vector<std::pair<std::shared_ptr<Pending>, absl::Status>> finished;
  {
    std::lock_guard<std::mutex> l(mu_);
    PartitionQueue& q = *queues_[call->partition];
    q.in_flight = false;
    size_t committed = 0;
    const v1::ErrorInfo* error = nullptr;
    if (status.ok()) {
      for (const auto& r : call->response.results()) {
        if (r.partition() != call->partition && !partition_mismatch_logged_) {
          partition_mismatch_logged_ = true;
          spdlog::error(
              "the core put a message in partition {} where this edge expected {}: the edge's "
              "partition count ({}) differs from the cluster's; subscriptions will miss messages",
              r.partition(), call->partition, options_.partitions);
        }
        if (r.has_error() && r.error().code() != v1::ERROR_CODE_DUPLICATE) {
          error = &r.error();
          break;
        }
        ++committed;
      }
      if (committed < call->count && error == nullptr) {
        spdlog::warn("core answered {} results for {} messages", committed, call->count);
      }
    }
    for (size_t i = 0; i < committed && !q.queue.empty(); ++i) {
      finished.emplace_back(q.queue.front().pending, absl::OkStatus());
      q.queue.pop_front();
    }
    bool retry = committed < call->count;
    if (retry && !shutdown_) {
      bool permanent = false;
      absl::Status why =
          status.ok()
              ? absl::UnavailableError(StrCat("publish failed: ", error ? error->message() : ""))
              : ToAbsl(status);
      if (error != nullptr) {
        switch (error->code()) {
          case v1::ERROR_CODE_NOT_LEADER:
            q.leader = LeaderIndexLocked(call->partition, error, call->server);
            break;
          case v1::ERROR_CODE_OUT_OF_ORDER_SEQUENCE: {
            // Not committed, provably: resend under a fresh producer id, sequences from 1.
            q.producer_id = RandomProducerId();
            q.next_sequence = 1;
            for (auto& item : q.queue) {
              item.message.set_producer_id(q.producer_id);
              item.message.set_sequence(q.next_sequence++);
            }
            break;
          }
          case v1::ERROR_CODE_PARTITION_UNAVAILABLE:
          case v1::ERROR_CODE_OUTCOME_UNKNOWN:
          case v1::ERROR_CODE_SHUTTING_DOWN:
            if (error->has_leader_hint() && error->leader_hint().node_id() != 0) {
              q.leader = LeaderIndexLocked(call->partition, error, call->server);
            }
            break;
          default:
            permanent = true;  // INVALID_ARGUMENT, MESSAGE_TOO_LARGE...: retrying cannot help
            break;
        }
      } else if (!status.ok()) {
        if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
          permanent = true;
        } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
          q.leader = LeaderIndexLocked(call->partition, nullptr, call->server);
        }
      }
      if (permanent && !q.queue.empty()) {
        // Fail the first message; the rest are sent again (with sequences that now skip it, so
        // give them a fresh producer id).
        finished.emplace_back(q.queue.front().pending, absl::InvalidArgumentError(StrCat(
                                                           "publish refused: ", why.message())));
        q.queue.pop_front();
        q.producer_id = RandomProducerId();
        q.next_sequence = 1;
        for (auto& item : q.queue) {
          item.message.set_producer_id(q.producer_id);
          item.message.set_sequence(q.next_sequence++);
        }
      }
      // Give up on callers whose deadline passed (their messages may still be committed later:
      // the outcome is unknown, which is what DEADLINE_EXCEEDED means to the caller).
      auto now = Clock::now();
      for (auto& item : q.queue) {
        if (item.pending->deadline < now) {
          finished.emplace_back(item.pending,
                                absl::DeadlineExceededError(StrCat("publish: ", why.message())));
        }
      }
      if (!permanent) {
        q.retry_scheduled = true;
        uint32_t partition = call->partition;
        uint32_t after =
            error != nullptr && error->retry_after_ms() > 0 ? error->retry_after_ms() : 50;
        timers_.emplace(now + std::chrono::milliseconds(after), [this, partition] {
          {
            std::lock_guard<std::mutex> l(mu_);
            queues_[partition]->retry_scheduled = false;
            MaybeSendLocked(partition);
          }
          SendQueued();
        });
        cv_.notify_all();
      }
    }
    MaybeSendLocked(call->partition);
    cv_.notify_all();
  }
  SendQueued();
  for (auto& [p, s] : finished) FinishPending(p, s);
  // Only now may Shutdown() see the call gone: this callback touches the client until here.
  std::lock_guard<std::mutex> l(mu_);
  calls_.erase(call);
  delete call;
  cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Subscribe

void CoreClient::AddFilter(const std::string& filter, std::function<void()> applied) {
  // Change ids are allocated and written in one order per stream (see change_mu_).
  std::lock_guard<std::mutex> changes(change_mu_);
  std::vector<std::pair<Stream*, uint64_t>> writes;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_) return;
    int& refs = filter_refs_[filter];
    if (++refs > 1) {
      auto it = filter_waiters_.find(filter);
      if (it == filter_waiters_.end()) {
        if (applied) applied();
      } else if (applied) {
        it->second.callbacks.push_back(std::move(applied));
      }
      return;
    }
    FilterWaiters w;
    for (auto& s : streams_) {
      if (!s->up) continue;  // it gets the filter in its start message
      uint64_t id = s->next_change_id++;
      s->changes[id] = {filter};
      w.streams.insert(s.get());
      writes.emplace_back(s.get(), id);
    }
    if (w.streams.empty()) {
      if (applied) applied();
    } else {
      if (applied) w.callbacks.push_back(std::move(applied));
      filter_waiters_[filter] = std::move(w);
    }
  }
  for (auto& [s, id] : writes) {
    v1::SubscribeRequest req;
    req.mutable_change()->set_change_id(id);
    req.mutable_change()->add_add_filters(filter);
    std::lock_guard<std::mutex> wl(s->write_mu);
    if (s->rw) s->rw->Write(req);
  }
}

void CoreClient::RemoveFilter(const std::string& filter) {
  // Change ids are allocated and written in one order per stream (see change_mu_).
  std::lock_guard<std::mutex> changes(change_mu_);
  std::vector<std::pair<Stream*, uint64_t>> writes;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_) return;
    auto it = filter_refs_.find(filter);
    if (it == filter_refs_.end() || --it->second > 0) return;
    filter_refs_.erase(it);
    // Waiters of a filter removed before it applied are released now.
    if (auto w = filter_waiters_.find(filter); w != filter_waiters_.end()) {
      for (auto& cb : w->second.callbacks) cb();
      filter_waiters_.erase(w);
    }
    for (auto& s : streams_) {
      if (!s->up) continue;
      uint64_t id = s->next_change_id++;
      s->changes[id] = {};
      writes.emplace_back(s.get(), id);
    }
  }
  for (auto& [s, id] : writes) {
    v1::SubscribeRequest req;
    req.mutable_change()->set_change_id(id);
    req.mutable_change()->add_remove_filters(filter);
    std::lock_guard<std::mutex> wl(s->write_mu);
    if (s->rw) s->rw->Write(req);
  }
}

bool CoreClient::WaitUntilAttached(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait_for(l, timeout, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t n = 0;
    bool all_unreachable = true;  // no point waiting for core nodes that cannot be reached
    for (auto& s : streams_) {
      n += s->attached.size();
      all_unreachable = all_unreachable && s->ended_once && !s->up;
    }
    return shutdown_ || all_unreachable || n >= options_.partitions;
  });
  size_t n = 0;
  for (auto& s : streams_) n += s->attached.size();
  return !shutdown_ && n >= options_.partitions;
}

void CoreClient::ChangeAppliedLocked(Stream* s, const v1::SubscribeChangeApplied& applied) {
  for (const auto& pos : applied.switch_positions()) {
    if (!s->partitions.contains(pos.partition())) continue;
    s->attached.insert(pos.partition());
    // The core switched filter sets after sending every delivery up to this position, and
    // those were handed to the delivery callback before this event: live delivery has been
    // evaluated through it. Epoch 0: the node has not resolved the partition (it does not host
    // it), so the position means nothing.
    if (pos.epoch() == 0) continue;
    auto it = resume_.find(pos.partition());
    if (it == resume_.end() ||
        (it->second.epoch() == pos.epoch() && it->second.offset() < pos.offset())) {
      RecordPositionLocked(s, pos.partition(), pos.epoch(), pos.offset());
    }
  }
  cv_.notify_all();
  auto it = s->changes.find(applied.change_id());
  if (it == s->changes.end()) return;
  for (const auto& f : it->second) {
    auto w = filter_waiters_.find(f);
    if (w == filter_waiters_.end()) continue;
    w->second.streams.erase(s);
    if (w->second.streams.empty()) {
      for (auto& cb : w->second.callbacks) cb();
      filter_waiters_.erase(w);
    }
  }
  s->changes.erase(it);
}

void CoreClient::StreamDownLocked(Stream* s) {
  s->up = false;
  s->ended_once = true;
  cv_.notify_all();
  s->attached.clear();
  s->changes.clear();
  for (auto it = filter_waiters_.begin(); it != filter_waiters_.end();) {
    it->second.streams.erase(s);
    if (it->second.streams.empty()) {
      for (auto& cb : it->second.callbacks) cb();
      it = filter_waiters_.erase(it);
    } else {
      ++it;
    }
  }
}

void CoreClient::AttachPartition(uint32_t partition, size_t stream_index) {
  // Change ids are allocated and written in one order per stream (see change_mu_).
  std::lock_guard<std::mutex> changes(change_mu_);
  Stream* s = streams_[stream_index].get();
  uint64_t id;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_) return;
    for (auto& other : streams_) other->partitions.erase(partition);
    s->partitions.insert(partition);
    if (!s->up) return;  // attached by the stream's next start
    id = s->next_change_id++;
    s->changes[id] = {};
  }
  v1::SubscribeRequest req;
  req.mutable_change()->set_change_id(id);
  auto* ps = req.mutable_change()->add_add_partitions();
  ps->set_partition(partition);
  ps->set_mode(v1::START_MODE_LATEST);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (auto it = resume_.find(partition); it != resume_.end()) {
      // Moved from another node: carry on after the last position seen there.
      ps->set_mode(v1::START_MODE_AFTER_POSITION);
      ps->set_epoch(it->second.epoch());
      ps->set_offset(it->second.offset());
    }
  }
  std::lock_guard<std::mutex> wl(s->write_mu);
  if (s->rw) s->rw->Write(req);
}

void CoreClient::RecordPositionLocked(Stream* s, uint32_t partition, uint64_t epoch,
                                      uint64_t offset) {
  if (s->partitions.count(partition) == 0) return;  // moved away meanwhile: not ours to record
  v1::PartitionPosition& pos = resume_[partition];
  pos.set_partition(partition);
  pos.set_epoch(epoch);
  pos.set_offset(offset);
}

void CoreClient::ProcessStopped(Stream* s, const v1::PartitionStopped& stopped) {
  uint32_t p = stopped.partition();
  size_t target = s->index;
  std::chrono::milliseconds delay{200};
  {
    std::lock_guard<std::mutex> l(mu_);
    s->partitions.erase(p);
    s->attached.erase(p);
    if (stopped.has_last_position() && stopped.error().code() == v1::ERROR_CODE_NOT_LEADER) {
      resume_[p] = stopped.last_position();
    } else if (stopped.error().code() == v1::ERROR_CODE_CURSOR_INVALID) {
      resume_.erase(p);  // that position can never be valid: start over from LATEST
    }
    if (stopped.error().code() == v1::ERROR_CODE_NOT_LEADER &&
        stopped.error().leader_hint().node_id() != 0) {
      target = LeaderIndexLocked(p, &stopped.error(), s->index);
      // A hint with a term names the leader: go at once. A term-0 hint names a replica chosen by
      // a node that holds none; it may redirect again, so not in a tight loop.
      if (target != s->index) {
        delay = std::chrono::milliseconds(stopped.error().leader_hint().term() != 0 ? 0 : 50);
      }
    } else if (stopped.error().code() == v1::ERROR_CODE_NOT_LEADER) {
      target = (s->index + 1) % streams_.size();
    }
  }
  spdlog::debug("partition {} stopped on {} ({}); attaching on {}", p, options_.addresses[s->index],
                stopped.error().message(), options_.addresses[target]);
  RunAfter(delay, [this, p, target] { AttachPartition(p, target); });
}

void CoreClient::RunStream(Stream* s) {
  const std::string& address = options_.addresses[s->index];
  auto backoff = std::chrono::milliseconds(100);
  int failures = 0;  // streams in a row that ended (the first after reading, or not)
  while (true) {
    auto ctx = std::make_shared<grpc::ClientContext>();
    {
      std::lock_guard<std::mutex> l(mu_);
      if (shutdown_) return;
      s->ctx = ctx;  // Shutdown cancels it, also while the call is being created
    }
    // Creating the call waits for a connection (a node that drops packets holds it for a whole
    // connection attempt): not under change_mu_, which filter changes and partition moves need.
    auto rw = stubs_[s->index]->Subscribe(ctx.get());
    v1::SubscribeRequest start;
    // Filters and partitions added while the stream starts must land either in its start
    // message or in a change after it: hold change_mu_ until the stream is up.
    std::unique_lock<std::mutex> changes(change_mu_);
    {
      std::lock_guard<std::mutex> l(mu_);
      auto* st = start.mutable_start();
      st->set_edge_id(options_.edge_id);
      for (uint32_t p : s->partitions) {
        auto* ps = st->add_partitions();
        ps->set_partition(p);
        ps->set_mode(v1::START_MODE_LATEST);
        if (auto it = resume_.find(p); it != resume_.end()) {
          ps->set_mode(v1::START_MODE_AFTER_POSITION);
          ps->set_epoch(it->second.epoch());
          ps->set_offset(it->second.offset());
        }
      }
      for (const auto& [f, refs] : filter_refs_) st->add_filters(f);
      st->set_initial_credit_bytes(options_.stream_credit_bytes);
      st->set_heartbeat_interval_ms(5000);
      s->next_change_id = 1;
      s->changes.clear();
    }
    bool wrote;
    {
      std::lock_guard<std::mutex> wl(s->write_mu);
      wrote = rw->Write(start);
      s->rw = std::move(rw);
    }
    if (wrote) {
      // An empty change: its change_applied lists the partitions the start attached.
      v1::SubscribeRequest probe;
      {
        std::lock_guard<std::mutex> l(mu_);
        s->up = true;
        uint64_t id = s->next_change_id++;
        s->changes[id] = {};
        probe.mutable_change()->set_change_id(id);
      }
      std::lock_guard<std::mutex> wl(s->write_mu);
      wrote = s->rw->Write(probe);
    }
    changes.unlock();
    uint64_t consumed = 0;
    v1::SubscribeResponse resp;
    std::vector<v1::Message*> batch;
    while (wrote && s->rw->Read(&resp)) {
      backoff = std::chrono::milliseconds(100);
      if (failures > 0) {
        spdlog::info("subscribe stream to {} is up again after {} reconnection attempt(s)",
                     address, failures);
        failures = 0;
      }
      switch (resp.event_case()) {
        case v1::SubscribeResponse::kDeliveries: {
          batch.clear();
          for (auto& pm : *resp.mutable_deliveries()->mutable_partitions()) {
            for (auto& m : *pm.mutable_messages()) {
              m.set_partition(pm.partition());
              batch.push_back(&m);
              consumed += m.ByteSizeLong();
            }
          }
          if (!batch.empty() && on_delivery_) on_delivery_(batch);
          {
            // Where each partition would resume if it has to be attached again.
            std::lock_guard<std::mutex> l(mu_);
            for (const auto& pm : resp.deliveries().partitions()) {
              RecordPositionLocked(s, pm.partition(), pm.epoch(), pm.evaluated_through());
            }
          }
          if (consumed >= options_.stream_credit_bytes / 4) {
            v1::SubscribeRequest credit;
            credit.mutable_credit()->set_bytes(consumed);
            consumed = 0;
            std::lock_guard<std::mutex> wl(s->write_mu);
            s->rw->Write(credit);
          }
          break;
        }
        case v1::SubscribeResponse::kChangeApplied: {
          std::lock_guard<std::mutex> l(mu_);
          ChangeAppliedLocked(s, resp.change_applied());
          break;
        }
        case v1::SubscribeResponse::kStopped:
          ProcessStopped(s, resp.stopped());
          break;
        case v1::SubscribeResponse::kGap: {
          spdlog::warn("subscribe stream {}: gap on partition {}", address, resp.gap().partition());
          std::lock_guard<std::mutex> l(mu_);
          RecordPositionLocked(s, resp.gap().partition(), resp.gap().to_epoch(),
                               resp.gap().to_offset());
          break;
        }
        case v1::SubscribeResponse::kHeartbeat: {
          std::lock_guard<std::mutex> l(mu_);
          for (const auto& pos : resp.heartbeat().progress()) {
            RecordPositionLocked(s, pos.partition(), pos.epoch(), pos.offset());
          }
          break;
        }
        default:
          break;
      }
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      StreamDownLocked(s);
    }
    std::unique_ptr<grpc::ClientReaderWriter<v1::SubscribeRequest, v1::SubscribeResponse>> old;
    {
      std::lock_guard<std::mutex> wl(s->write_mu);
      old = std::move(s->rw);
    }
    ctx->TryCancel();
    grpc::Status st = old->Finish();
    std::unique_lock<std::mutex> l(mu_);
    if (shutdown_) return;
    // Once per outage, not at every attempt to reconnect.
    spdlog::log(failures++ == 0 ? spdlog::level::warn : spdlog::level::debug,
                "subscribe stream to {} ended ({}: {}); reconnecting", address,
                static_cast<int>(st.error_code()), st.error_message());
    // The node may stay gone (a crash, a network partition), and its partitions have new
    // leaders by now: attach each elsewhere, after its last position here (resume_), on the node
    // publishes last found leading it, else the next one. A node that does not lead it answers
    // NOT_LEADER with a hint, and it moves on from there (back here, if this node still leads
    // it once it is reachable again).
    if (streams_.size() > 1) {
      for (uint32_t p : s->partitions) {
        size_t to = p < queues_.size() ? queues_[p]->leader : s->index;
        if (to == s->index || to >= streams_.size()) to = (s->index + 1) % streams_.size();
        timers_.emplace(Clock::now(), [this, p, to] { AttachPartition(p, to); });
      }
      s->partitions.clear();  // not in this stream's next start
      cv_.notify_all();
    }
    cv_.wait_for(l, backoff, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_; });
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

// ---------------------------------------------------------------------------------------------
// Unary calls: Fetch, GetRetained, sessions

template <typename Req, typename Resp>
struct CoreClient::Unary {
  uint32_t partition = 0;
  Req request;
  std::function<void(v1::Broker::Stub*, grpc::ClientContext*, const Req*, Resp*,
                     std::function<void(grpc::Status)>)>
      invoke;
  std::function<const v1::ErrorInfo*(const Resp&)> item_error;
  std::function<void(absl::StatusOr<Resp>)> done;
  Clock::time_point deadline;
  int attempts = 0;
  // Current attempt.
  std::unique_ptr<grpc::ClientContext> ctx;
  Resp response;
  size_t server = 0;
};

template <typename Req, typename Resp>
void CoreClient::CallLeader(std::shared_ptr<Unary<Req, Resp>> call) {
  bool refused = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_ || !started_ || stubs_.empty()) {
      refused = true;
    } else {
      call->server = queues_[call->partition]->leader;
      call->ctx = std::make_unique<grpc::ClientContext>();
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(call->deadline - Clock::now());
      left = std::clamp(left, std::chrono::milliseconds(50), std::chrono::milliseconds(5000));
      call->ctx->set_deadline(std::chrono::system_clock::now() + left);
      call->response.Clear();
      unary_calls_.insert(call->ctx.get());
      ++call->attempts;
    }
  }
  if (refused) {
    call->done(absl::UnavailableError("core client not running"));
    return;
  }
  call->invoke(stubs_[call->server].get(), call->ctx.get(), &call->request, &call->response,
               [this, call](grpc::Status st) {
                 v1::ErrorInfo parsed;
                 const v1::ErrorInfo* err = nullptr;
                 if (!st.ok()) {
                   if (!st.error_details().empty() && parsed.ParseFromString(st.error_details())) {
                     err = &parsed;
                   }
                 } else if (call->item_error) {
                   err = call->item_error(call->response);
                 }
                 grpc::ClientContext* ctx = call->ctx.get();
                 std::optional<absl::StatusOr<Resp>> result;
                 {
                   std::lock_guard<std::mutex> l(mu_);
                   if (st.ok() && err == nullptr) {
                     result.emplace(std::move(call->response));
                   } else if (!shutdown_ && Retryable(err, st) && Clock::now() < call->deadline) {
                     if (err == nullptr || err->code() == v1::ERROR_CODE_NOT_LEADER ||
                         (err->has_leader_hint() && err->leader_hint().node_id() != 0)) {
                       size_t next = LeaderIndexLocked(call->partition, err, call->server);
                       queues_[call->partition]->leader = next;
                     }
                     int backoff = std::min(20 * call->attempts, 500);
                     if (err != nullptr && err->retry_after_ms() > 0)
                       backoff = err->retry_after_ms();
                     timers_.emplace(Clock::now() + std::chrono::milliseconds(backoff),
                                     [this, call] { CallLeader(call); });
                     cv_.notify_all();
                   } else if (err != nullptr) {
                     result.emplace(FromErrorInfo(*err));
                   } else {
                     result.emplace(ToAbsl(st));
                   }
                 }
                 if (result) call->done(std::move(*result));
                 std::lock_guard<std::mutex> l(mu_);
                 unary_calls_.erase(ctx);
                 cv_.notify_all();
               });
}

std::optional<v1::PartitionPosition> CoreClient::LivePosition(uint32_t partition) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = resume_.find(partition);
  if (it == resume_.end()) return std::nullopt;
  return it->second;
}

void CoreClient::Fetch(uint32_t partition, const v1::PartitionPosition& after,
                       std::vector<std::string> filters, uint32_t max_messages,
                       std::function<void(absl::StatusOr<v1::FetchResult>)> done) {
  auto call = std::make_shared<Unary<v1::FetchRequest, v1::FetchResponse>>();
  call->partition = partition % std::max<uint32_t>(options_.partitions, 1);
  v1::FetchRange* r = call->request.add_ranges();
  r->set_partition(partition);
  r->set_epoch(after.epoch());
  r->set_after_offset(after.offset());
  for (auto& f : filters) call->request.add_filters(std::move(f));
  call->request.set_max_messages(max_messages);
  call->invoke = [](v1::Broker::Stub* stub, grpc::ClientContext* ctx, const v1::FetchRequest* req,
                    v1::FetchResponse* resp, std::function<void(grpc::Status)> cb) {
    stub->async()->Fetch(ctx, req, resp, std::move(cb));
  };
  call->item_error = [](const v1::FetchResponse& resp) -> const v1::ErrorInfo* {
    if (resp.results_size() > 0 && resp.results(0).has_error()) return &resp.results(0).error();
    return nullptr;
  };
  call->done = [done = std::move(done)](absl::StatusOr<v1::FetchResponse> resp) {
    if (!resp.ok()) return done(resp.status());
    if (resp->results_size() == 0) return done(absl::InternalError("empty fetch response"));
    done(std::move(*resp->mutable_results(0)));
  };
  call->deadline = Clock::now() + options_.request_timeout;
  CallLeader(call);
}

// One GetRetained() call: every partition it needs is read page by page, concurrently.
struct CoreClient::RetainedScan {
  std::mutex mu;
  std::vector<std::string> filters;
  uint32_t max_messages = 0;
  size_t partitions_left = 0;
  std::vector<v1::Message> messages;
  std::map<uint32_t, uint64_t> epochs;  // epoch each partition's results were read in
  absl::Status status;
  std::function<void(absl::StatusOr<RetainedMessages>)> done;
};

void CoreClient::GetRetained(std::vector<std::string> filters, uint32_t max_messages,
                             std::function<void(absl::StatusOr<RetainedMessages>)> done) {
  auto scan = std::make_shared<RetainedScan>();
  // A filter without wildcards names one topic, which lives in one partition.
  std::set<uint32_t> parts;
  for (const auto& f : filters) {
    if (f.find_first_of("+#") == std::string::npos) {
      parts.insert(PartitionFor(f, options_.partitions));
    } else {
      for (uint32_t p = 0; p < options_.partitions; ++p) parts.insert(p);
      break;
    }
  }
  scan->filters = std::move(filters);
  scan->max_messages = max_messages;
  scan->done = std::move(done);
  scan->partitions_left = parts.size();
  if (parts.empty()) {
    scan->done(RetainedMessages{});
    return;
  }
  for (uint32_t p : parts) {
    auto call = std::make_shared<Unary<v1::GetRetainedRequest, v1::GetRetainedResponse>>();
    call->partition = p;
    call->request.add_queries()->set_partition(p);
    for (const auto& f : scan->filters) call->request.add_filters(f);
    call->request.set_max_messages(std::min<uint32_t>(max_messages, 1000));
    call->invoke = [](v1::Broker::Stub* stub, grpc::ClientContext* ctx,
                      const v1::GetRetainedRequest* req, v1::GetRetainedResponse* resp,
                      std::function<void(grpc::Status)> cb) {
      stub->async()->GetRetained(ctx, req, resp, std::move(cb));
    };
    call->item_error = [](const v1::GetRetainedResponse& resp) -> const v1::ErrorInfo* {
      if (resp.results_size() > 0 && resp.results(0).has_error()) return &resp.results(0).error();
      return nullptr;
    };
    call->deadline = Clock::now() + options_.request_timeout;
    std::weak_ptr<Unary<v1::GetRetainedRequest, v1::GetRetainedResponse>> weak = call;
    call->done = [this, scan, weak](absl::StatusOr<v1::GetRetainedResponse> resp) {
      auto self = weak.lock();
      bool more = false;
      {
        std::lock_guard<std::mutex> l(scan->mu);
        if (!resp.ok()) {
          if (scan->status.ok()) scan->status = resp.status();
        } else if (resp->results_size() > 0) {
          v1::RetainedResult& r = *resp->mutable_results(0);
          // Pages of one partition read in different epochs: positions cannot be compared.
          auto [e, fresh] = scan->epochs.emplace(r.partition(), r.epoch());
          if (!fresh && e->second != r.epoch()) e->second = 0;
          for (auto& m : *r.mutable_messages()) {
            if (scan->messages.size() >= scan->max_messages) break;
            scan->messages.push_back(std::move(m));
          }
          if (!r.next_after_topic().empty() && scan->messages.size() < scan->max_messages && self) {
            self->request.mutable_queries(0)->set_after_topic(r.next_after_topic());
            self->attempts = 0;
            self->deadline = Clock::now() + options_.request_timeout;
            more = true;
          }
        }
        if (!more && --scan->partitions_left > 0) return;
      }
      if (more) {
        CallLeader(self);
        return;
      }
      if (!scan->status.ok()) return scan->done(scan->status);
      RetainedMessages out;
      out.messages = std::move(scan->messages);
      std::sort(out.messages.begin(), out.messages.end(),
                [](const v1::Message& a, const v1::Message& b) { return a.topic() < b.topic(); });
      // Read after every page arrived: deliveries up to these positions already reached the
      // delivery callback, so they come before whatever `done` posts.
      for (const auto& [p, epoch] : scan->epochs) {
        if (epoch != 0) out.epochs[p] = epoch;
        std::optional<v1::PartitionPosition> live = LivePosition(p);
        if (epoch != 0 && live.has_value() && live->epoch() == epoch) {
          out.live_through[p] = live->offset();
        }
      }
      scan->done(std::move(out));
    };
    CallLeader(call);
  }
}

void CoreClient::OpenSession(v1::OpenSessionRequest request,
                             std::function<void(absl::StatusOr<v1::OpenSessionResponse>)> done) {
  auto call = std::make_shared<Unary<v1::OpenSessionRequest, v1::OpenSessionResponse>>();
  call->partition = PartitionFor(request.client_id(), options_.partitions);
  call->request = std::move(request);
  call->invoke = [](v1::Broker::Stub* stub, grpc::ClientContext* ctx,
                    const v1::OpenSessionRequest* req, v1::OpenSessionResponse* resp,
                    std::function<void(grpc::Status)> cb) {
    stub->async()->OpenSession(ctx, req, resp, std::move(cb));
  };
  call->deadline = Clock::now() + options_.request_timeout;
  call->done = [this, done = std::move(done)](absl::StatusOr<v1::OpenSessionResponse> resp) {
    if (resp.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      uint64_t& epoch = leases_[resp->session().client_id()];
      epoch = std::max(epoch, resp->session().owner_epoch());
    }
    done(std::move(resp));
  };
  CallLeader(call);
}

void CoreClient::UpdateSession(v1::SessionUpdate update,
                               std::function<void(const absl::Status&)> done) {
  auto call = std::make_shared<Unary<v1::UpdateSessionsRequest, v1::UpdateSessionsResponse>>();
  call->partition = PartitionFor(update.client_id(), options_.partitions);
  std::string client_id = update.client_id();
  uint64_t epoch = update.owner_epoch();
  *call->request.add_updates() = std::move(update);
  call->invoke = [](v1::Broker::Stub* stub, grpc::ClientContext* ctx,
                    const v1::UpdateSessionsRequest* req, v1::UpdateSessionsResponse* resp,
                    std::function<void(grpc::Status)> cb) {
    stub->async()->UpdateSessions(ctx, req, resp, std::move(cb));
  };
  call->item_error = [](const v1::UpdateSessionsResponse& resp) -> const v1::ErrorInfo* {
    if (resp.results_size() > 0 && resp.results(0).has_error()) return &resp.results(0).error();
    return nullptr;
  };
  call->deadline = Clock::now() + options_.request_timeout;
  call->done = [this, client_id, epoch,
                done = std::move(done)](absl::StatusOr<v1::UpdateSessionsResponse> resp) {
    if (absl::IsFailedPrecondition(resp.status()) || absl::IsNotFound(resp.status())) {
      std::lock_guard<std::mutex> l(mu_);
      auto it = leases_.find(client_id);
      if (it != leases_.end() && it->second == epoch) leases_.erase(it);
    }
    if (done) done(resp.status());
  };
  CallLeader(call);
}

void CoreClient::CloseSession(v1::CloseSessionRequest request,
                              std::function<void(const absl::Status&)> done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = leases_.find(request.client_id());
    if (it != leases_.end() && it->second == request.owner_epoch()) leases_.erase(it);
  }
  auto call = std::make_shared<Unary<v1::CloseSessionRequest, v1::CloseSessionResponse>>();
  call->partition = PartitionFor(request.client_id(), options_.partitions);
  call->request = std::move(request);
  call->invoke = [](v1::Broker::Stub* stub, grpc::ClientContext* ctx,
                    const v1::CloseSessionRequest* req, v1::CloseSessionResponse* resp,
                    std::function<void(grpc::Status)> cb) {
    stub->async()->CloseSession(ctx, req, resp, std::move(cb));
  };
  call->deadline = Clock::now() + options_.request_timeout;
  call->done = [done = std::move(done)](absl::StatusOr<v1::CloseSessionResponse> resp) {
    if (done) done(resp.status());
  };
  CallLeader(call);
}

void CoreClient::GetSession(const std::string& client_id,
                            std::function<void(absl::StatusOr<v1::Session>)> done) {
  auto call = std::make_shared<Unary<v1::GetSessionRequest, v1::GetSessionResponse>>();
  call->partition = PartitionFor(client_id, options_.partitions);
  call->request.set_client_id(client_id);
  call->invoke = [](v1::Broker::Stub* stub, grpc::ClientContext* ctx,
                    const v1::GetSessionRequest* req, v1::GetSessionResponse* resp,
                    std::function<void(grpc::Status)> cb) {
    stub->async()->GetSession(ctx, req, resp, std::move(cb));
  };
  call->deadline = Clock::now() + options_.request_timeout;
  call->done = [done = std::move(done)](absl::StatusOr<v1::GetSessionResponse> resp) {
    if (!resp.ok()) return done(resp.status());
    done(std::move(*resp->mutable_session()));
  };
  CallLeader(call);
}

void CoreClient::RenewLeases() {
  std::map<uint32_t, std::vector<std::pair<std::string, uint64_t>>> by_partition;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (shutdown_) return;
    for (const auto& [client, epoch] : leases_) {
      by_partition[PartitionFor(client, options_.partitions)].emplace_back(client, epoch);
    }
  }
  for (auto& [p, sessions] : by_partition) {
    auto call = std::make_shared<Unary<v1::UpdateSessionsRequest, v1::UpdateSessionsResponse>>();
    call->partition = p;
    for (const auto& [client, epoch] : sessions) {
      v1::SessionUpdate* u = call->request.add_updates();
      u->set_client_id(client);
      u->set_owner_epoch(epoch);
    }
    call->invoke = [](v1::Broker::Stub* stub, grpc::ClientContext* ctx,
                      const v1::UpdateSessionsRequest* req, v1::UpdateSessionsResponse* resp,
                      std::function<void(grpc::Status)> cb) {
      stub->async()->UpdateSessions(ctx, req, resp, std::move(cb));
    };
    call->deadline = Clock::now() + options_.lease_renew_interval;
    call->done = [this, sessions](absl::StatusOr<v1::UpdateSessionsResponse> resp) {
      if (!resp.ok()) return;
      std::lock_guard<std::mutex> l(mu_);
      for (int i = 0; i < resp->results_size() && i < static_cast<int>(sessions.size()); ++i) {
        v1::ErrorCode code = resp->results(i).error().code();
        if (code == v1::ERROR_CODE_FENCED || code == v1::ERROR_CODE_SESSION_NOT_FOUND) {
          auto it = leases_.find(sessions[i].first);
          if (it != leases_.end() && it->second == sessions[i].second) leases_.erase(it);
        }
      }
    };
    CallLeader(call);
  }
  RunAfter(options_.lease_renew_interval, [this] { RenewLeases(); });
}

}  // namespace herald::edge
