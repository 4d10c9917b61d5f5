#include "libs/cluster/broker_service.h"

#include <atomic>
#include <deque>
#include <memory>

#include "absl/strings/str_join.h"
#include "libs/common/partitioning.h"
#include "libs/common/strings.h"
#include "libs/protocol/mqtt/topic.h"

namespace herald::cluster {
namespace {

int64_t UnixMs(Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.WallNow().time_since_epoch())
      .count();
}

// Fetch and GetRetained need at least one filter, each valid.
grpc::Status ValidateFilters(const google::protobuf::RepeatedPtrField<std::string>& filters) {
  if (filters.empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "filters must not be empty");
  }
  for (const std::string& f : filters) {
    if (auto err = mqtt::ValidateTopicFilter(f); err.has_value()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          StrCat("filter '", f, "': ", err->message));
    }
  }
  return grpc::Status::OK;
}

void SetError(v1::ErrorInfo* e, v1::ErrorCode code, std::string message) {
  e->set_code(code);
  e->set_message(std::move(message));
}

}  // namespace

BrokerService::BrokerService(RaftHost& host, BrokerServiceOptions options, Clock& clock,
                             SessionManager* sessions)
    : host_(host), options_(std::move(options)), clock_(clock), sessions_(sessions) {}

void BrokerService::SetProposalError(const ProposalResult& r, GroupId group,
                                     v1::ErrorInfo* e) const {
  if (r.status.ok()) {
    SetError(e, v1::ERROR_CODE_INTERNAL, "apply produced no result");
  } else if (absl::IsNotFound(r.status)) {
    SetNotHosted(group, e);  // RaftHost: no such group on this node
  } else if (absl::IsUnavailable(r.status) && r.status.message() == "not leader") {
    SetNotLeader(r.leader_hint, 0, e);
  } else if (absl::IsUnavailable(r.status)) {
    // The entry may still commit: retry with the same idempotency key.
    SetError(e, v1::ERROR_CODE_OUTCOME_UNKNOWN, std::string(r.status.message()));
  } else if (absl::IsResourceExhausted(r.status)) {
    SetError(e, v1::ERROR_CODE_OVERLOADED, std::string(r.status.message()));
    e->set_retry_after_ms(50);
  } else if (absl::IsFailedPrecondition(r.status)) {
    SetNotLeader(r.leader_hint, 0, e);
  } else {
    SetError(e, v1::ERROR_CODE_PARTITION_UNAVAILABLE, std::string(r.status.message()));
  }
}

void BrokerService::SetNotHosted(GroupId group, v1::ErrorInfo* error) const {
  const uint32_t partition = static_cast<uint32_t>(group - 1);  // GroupForPartition
  std::vector<raft::NodeId> replicas;
  if (partition < options_.partition_count) replicas = options_.directory->Replicas(partition);
  // Another node (this one may be assigned a replica it has not created yet), preferably one
  // this node hears from; among those, a different one each time, so that a client is not sent
  // to the same dead node over and over.
  std::vector<raft::NodeId> alive, others;
  for (raft::NodeId r : replicas) {
    if (r == options_.node_id) continue;
    others.push_back(r);
    if (host_.PeerAlive(r)) alive.push_back(r);
  }
  const std::vector<raft::NodeId>& pick = alive.empty() ? others : alive;
  if (pick.empty()) {
    SetError(error, v1::ERROR_CODE_PARTITION_UNAVAILABLE,
             StrCat("partition ", partition, " is not hosted on this node"));
    return;
  }
  static std::atomic<uint64_t> turn{0};
  SetNotLeader(pick[turn.fetch_add(1, std::memory_order_relaxed) % pick.size()], 0, error);
  error->set_message(StrCat("partition ", partition,
                            " is not hosted on this node; its replicas are on nodes ",
                            absl::StrJoin(replicas, ",")));
}

void BrokerService::SetNotLeader(raft::NodeId leader, uint64_t term, v1::ErrorInfo* error) const {
  SetError(error, v1::ERROR_CODE_NOT_LEADER, "this node does not lead the partition");
  if (leader == 0) return;
  v1::LeaderHint* hint = error->mutable_leader_hint();
  hint->set_node_id(leader);
  hint->set_term(term);
  if (std::optional<std::string> found = options_.directory->Address(leader); found) {
    if (auto parsed = ParseEndpoint(*found); parsed.ok()) {
      *hint->mutable_endpoint() = *std::move(parsed);
    }
  }
}

grpc::Status BrokerService::StartPublish(const v1::PublishRequest& request,
                                         v1::PublishResponse* response,
                                         std::function<void()> done) {
  const int n = request.messages_size();
  if (static_cast<uint32_t>(n) > options_.max_messages_per_request) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        StrCat("at most ", options_.max_messages_per_request, " messages per request"));
  }
  std::map<uint32_t, std::vector<int>> by_partition;
  for (int i = 0; i < n; ++i) {
    v1::PublishResult* r = response->add_results();
    const v1::Message& m = request.messages(i);
    uint32_t p = PartitionFor(m.topic(), options_.partition_count);
    r->set_partition(p);
    if (auto err = mqtt::ValidateTopicName(m.topic()); err.has_value()) {
      SetError(r->mutable_error(), v1::ERROR_CODE_INVALID_ARGUMENT,
               StrCat("topic '", m.topic(), "': ", err->message));
      continue;
    }
    if (m.ByteSizeLong() > options_.max_message_bytes) {
      SetError(r->mutable_error(), v1::ERROR_CODE_MESSAGE_TOO_LARGE,
               StrCat("message is larger than ", options_.max_message_bytes, " bytes"));
      continue;
    }
    by_partition[p].push_back(i);
  }
  if (by_partition.empty()) {
    done();
    return grpc::Status::OK;
  }
  // Callbacks run on the Raft host's thread (or here, when the host is stopping); the last one
  // to finish answers. Each writes only its own, pre-allocated results.
  struct Outstanding {
    std::atomic<size_t> count;
    std::function<void()> done;
  };
  auto outstanding = std::make_shared<Outstanding>();
  outstanding->count = by_partition.size();
  outstanding->done = std::move(done);
  const int64_t now = UnixMs(clock_);
  for (auto& [partition, indexes] : by_partition) {
    v1::PartitionCommand cmd;
    cmd.set_proposed_at_unix_ms(now);
    for (int i : indexes) {
      v1::Message* m = cmd.mutable_publish()->add_messages();
      *m = request.messages(i);
      m->clear_partition();
      m->clear_offset();
      m->clear_publish_time_unix_ms();
    }
    const size_t count = indexes.size();
    host_.ProposePublish(GroupForPartition(partition), cmd.SerializeAsString(), count,
                         [this, response, outstanding, partition = partition,
                          indexes = std::move(indexes)](ProposalResult r) {
                           for (size_t k = 0; k < indexes.size(); ++k) {
                             v1::PublishResult* out = response->mutable_results(indexes[k]);
                             if (r.status.ok() && k < r.apply.publish.size()) {
                               *out = std::move(r.apply.publish[k]);
                               continue;
                             }
                             SetProposalError(r, GroupForPartition(partition),
                                              out->mutable_error());
                           }
                           if (outstanding->count.fetch_sub(1) == 1) outstanding->done();
                         });
  }
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* BrokerService::Publish(grpc::CallbackServerContext* ctx,
                                                 const v1::PublishRequest* request,
                                                 v1::PublishResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  grpc::Status st =
      StartPublish(*request, response, [reactor] { reactor->Finish(grpc::Status::OK); });
  if (!st.ok()) reactor->Finish(st);
  return reactor;
}

// One PublishStream: reads a stream message, starts its requests, and reads the next while
// fewer than `max_stream_inflight` requests of fewer than `max_stream_inflight_bytes` are
// unanswered. Answers are written in completion order: one stream message at a time, holding
// the answers that came while the previous one was being written (up to 256 or 1 MiB). gRPC allows
// one outstanding read and one outstanding write per stream, and may run a reaction inline from a
// Start call made on a thread of ours, so no Start call is made under `mu_`. The stream finishes
// once the client half-closed (or the call broke) and every request it started has completed: the
// completions reference this reactor.
class BrokerService::PublishStreamReactor final
    : public grpc::ServerBidiReactor<v1::PublishStreamRequest, v1::PublishStreamResponse> {
 public:
  explicit PublishStreamReactor(BrokerService& service) : service_(service) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-closed by the client, or the call is over
      bool finish;
      {
        std::lock_guard<std::mutex> l(mu_);
        reads_done_ = true;
        finish = FinishNowLocked();
      }
      if (finish) Finish(FinalStatus());
      return;
    }
    for (v1::StreamedPublish& r : *request_.mutable_requests()) Start(r);
    bool read;
    {
      std::lock_guard<std::mutex> l(mu_);
      read = RoomLocked();
      read_paused_ = !read;
    }
    if (read) StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    const v1::PublishStreamResponse* next = nullptr;
    bool finish;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!ok) {  // the call is broken: nobody reads the rest
        broken_ = true;
        answers_.clear();
      }
      if (!answers_.empty()) {
        FillWritingLocked();
        next = &writing_;
      } else {
        write_in_progress_ = false;
      }
      finish = FinishNowLocked();
    }
    if (next != nullptr) StartWrite(next);
    if (finish) Finish(FinalStatus());
  }

  void OnDone() override { delete this; }

 private:
  void Start(v1::StreamedPublish& r) {
    auto* answer = new v1::StreamedPublishAnswer();
    answer->set_request_id(r.request_id());
    const uint64_t bytes = r.publish().ByteSizeLong();
    {
      std::lock_guard<std::mutex> l(mu_);
      ++inflight_;
      inflight_bytes_ += bytes;
    }
    grpc::Status st = service_.StartPublish(r.publish(), answer->mutable_publish(),
                                            [this, answer, bytes] { Completed(answer, bytes); });
    if (!st.ok()) {
      answer->clear_publish();
      SetError(answer->mutable_error(),
               st.error_code() == grpc::StatusCode::INVALID_ARGUMENT
                   ? v1::ERROR_CODE_INVALID_ARGUMENT
                   : v1::ERROR_CODE_INTERNAL,
               st.error_message());
      Completed(answer, bytes);
    }
  }

  // A request has its answer (on the Raft host's thread, or on gRPC's).
  void Completed(v1::StreamedPublishAnswer* answer, uint64_t bytes) {
    std::unique_ptr<v1::StreamedPublishAnswer> owned(answer);
    const size_t answer_bytes = answer->ByteSizeLong();
    const v1::PublishStreamResponse* write = nullptr;
    bool read = false, finish;
    {
      std::lock_guard<std::mutex> l(mu_);
      --inflight_;
      inflight_bytes_ -= bytes;
      if (!broken_) {
        answers_.emplace_back(std::move(owned), answer_bytes);
        if (!write_in_progress_) {
          write_in_progress_ = true;
          FillWritingLocked();
          write = &writing_;
        }
      }
      if (read_paused_ && RoomLocked()) {
        read_paused_ = false;
        read = true;
      }
      finish = FinishNowLocked();
    }
    if (write != nullptr) StartWrite(write);
    if (read) StartRead(&request_);
    if (finish) Finish(FinalStatus());
  }

  // Moves answers into writing_: at least one, then up to 256 answers or 1 MiB (a stream
  // message stays far below gRPC's message size limits).
  void FillWritingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_.Clear();
    size_t total = 0;
    while (!answers_.empty() && writing_.answers_size() < 256 &&
           (writing_.answers_size() == 0 || total + answers_.front().second <= (1u << 20))) {
      total += answers_.front().second;
      writing_.mutable_answers()->AddAllocated(answers_.front().first.release());
      answers_.pop_front();
    }
  }

  // Whether another stream message may be read (one always may when nothing is unanswered: the
  // limits bound what is read ahead, not the size of one message).
  bool RoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return inflight_ < service_.options_.max_stream_inflight &&
           inflight_bytes_ < service_.options_.max_stream_inflight_bytes;
  }
  // Whether the stream is over now (and this caller is the one to finish it).
  bool FinishNowLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || !reads_done_ || inflight_ != 0 || write_in_progress_) return false;
    finished_ = true;
    return true;
  }
  grpc::Status FinalStatus() {
    std::lock_guard<std::mutex> l(mu_);
    return broken_ ? grpc::Status::CANCELLED : grpc::Status::OK;
  }

  BrokerService& service_;
  v1::PublishStreamRequest request_;  // the read in progress (one at a time)
  std::mutex mu_;
  uint32_t inflight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t inflight_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // their requests' serialized sizes
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool write_in_progress_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The message being written (while write_in_progress_), and the answers for the next ones
  // with their sizes.
  v1::PublishStreamResponse writing_;
  std::deque<std::pair<std::unique_ptr<v1::StreamedPublishAnswer>, size_t>> answers_
      ABSL_GUARDED_BY(mu_);
};

grpc::ServerBidiReactor<v1::PublishStreamRequest, v1::PublishStreamResponse>*
BrokerService::PublishStream(grpc::CallbackServerContext* /*ctx*/) {
  return new PublishStreamReactor(*this);
}

broker::FetchLimits BrokerService::RequestLimits(uint32_t max_messages, uint64_t max_bytes) const {
  broker::FetchLimits limits;
  limits.max_messages = max_messages != 0 ? max_messages : options_.fetch_default_max_messages;
  limits.max_bytes = max_bytes != 0 ? max_bytes : options_.fetch_default_max_bytes;
  return limits;
}

template <typename Result>
bool BrokerService::LeaderServes(GroupId group, const broker::PartitionStateMachine* sm,
                                 const GroupStatus* st, Result* out) const {
  if (sm == nullptr) {
    SetNotHosted(group, out->mutable_error());
    return false;
  }
  if (st->role != raft::Role::kLeader) {
    SetNotLeader(st->leader, st->term, out->mutable_error());
    return false;
  }
  return true;
}

grpc::ServerUnaryReactor* BrokerService::Fetch(grpc::CallbackServerContext* ctx,
                                               const v1::FetchRequest* request,
                                               v1::FetchResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = ValidateFilters(request->filters()); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  if (request->ranges_size() == 0) {
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  std::vector<std::string> filters(request->filters().begin(), request->filters().end());
  const broker::FetchLimits limits = RequestLimits(request->max_messages(), request->max_bytes());
  for (int i = 0; i < request->ranges_size(); ++i) response->add_results();
  auto outstanding = std::make_shared<std::atomic<int>>(request->ranges_size());
  const int64_t now = UnixMs(clock_);
  // Each range is bounded by the request's limits on its own.
  for (int i = 0; i < request->ranges_size(); ++i) {
    const v1::FetchRange& range = request->ranges(i);
    v1::FetchResult* out = response->mutable_results(i);
    out->set_partition(range.partition());
    if (range.partition() >= options_.partition_count) {
      SetError(out->mutable_error(), v1::ERROR_CODE_INVALID_ARGUMENT,
               StrCat("partition ", range.partition(), " does not exist"));
      if (outstanding->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
      continue;
    }
    host_.ReadLinearizable(
        GroupForPartition(range.partition()),
        [this, reactor, out, outstanding, range, filters, limits, now](
            broker::PartitionStateMachine* sm, const GroupStatus* st) {
          if (!LeaderServes(GroupForPartition(range.partition()), sm, st, out)) {
            // LeaderServes filled in the error.
          } else if (range.epoch() != 0 && range.epoch() != sm->state().epoch()) {
            SetError(out->mutable_error(), v1::ERROR_CODE_EPOCH_CHANGED,
                     StrCat("partition epoch is ", sm->state().epoch()));
          } else {
            auto f = sm->Fetch(range.after_offset(), range.until_offset(), filters, now, limits);
            if (!f.ok()) {
              SetError(out->mutable_error(), v1::ERROR_CODE_INTERNAL,
                       std::string(f.status().message()));
            } else {
              out->set_epoch(sm->state().epoch());
              out->set_log_start_offset(sm->state().first_offset());
              out->set_last_offset(sm->last_offset());
              out->set_evaluated_through(f->evaluated_through);
              if (f->gap_to != 0) {
                v1::Gap* gap = out->mutable_gap();
                gap->set_partition(range.partition());
                gap->set_reason(v1::ERROR_CODE_CURSOR_GAP);
                gap->set_from_epoch(sm->state().epoch());
                gap->set_from_offset(range.after_offset());
                gap->set_to_epoch(sm->state().epoch());
                gap->set_to_offset(f->gap_to);
              }
              for (auto& m : f->messages) *out->add_messages() = std::move(m);
            }
          }
          if (outstanding->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
        });
  }
  return reactor;
}

grpc::ServerUnaryReactor* BrokerService::GetRetained(grpc::CallbackServerContext* ctx,
                                                     const v1::GetRetainedRequest* request,
                                                     v1::GetRetainedResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (grpc::Status st = ValidateFilters(request->filters()); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  if (request->queries_size() == 0) {
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  std::vector<std::string> filters(request->filters().begin(), request->filters().end());
  const broker::FetchLimits limits = RequestLimits(request->max_messages(), request->max_bytes());
  for (int i = 0; i < request->queries_size(); ++i) response->add_results();
  auto outstanding = std::make_shared<std::atomic<int>>(request->queries_size());
  const int64_t now = UnixMs(clock_);
  // Each query is bounded by the request's limits on its own.
  for (int i = 0; i < request->queries_size(); ++i) {
    const v1::RetainedQuery& q = request->queries(i);
    v1::RetainedResult* out = response->mutable_results(i);
    out->set_partition(q.partition());
    if (q.partition() >= options_.partition_count) {
      SetError(out->mutable_error(), v1::ERROR_CODE_INVALID_ARGUMENT,
               StrCat("partition ", q.partition(), " does not exist"));
      if (outstanding->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
      continue;
    }
    host_.ReadLinearizable(GroupForPartition(q.partition()),
                           [this, reactor, out, outstanding, q, filters, limits, now](
                               broker::PartitionStateMachine* sm, const GroupStatus* st) {
                             if (LeaderServes(GroupForPartition(q.partition()), sm, st, out)) {
                               std::string next;
                               auto page =
                                   sm->RetainedPage(filters, q.after_topic(), now,
                                                    limits.max_messages, limits.max_bytes, &next);
                               if (!page.ok()) {
                                 SetError(out->mutable_error(), v1::ERROR_CODE_INTERNAL,
                                          std::string(page.status().message()));
                               } else {
                                 out->set_epoch(sm->state().epoch());
                                 out->set_as_of_offset(sm->last_offset());
                                 for (auto& m : *page) *out->add_messages() = std::move(m);
                                 out->set_next_after_topic(next);
                               }
                             }
                             if (outstanding->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
                           });
  }
  return reactor;
}

}  // namespace herald::cluster
