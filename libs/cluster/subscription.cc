// Broker.Subscribe: one stream, a thread writing events and a thread reading the edge's
// changes and credit grants.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "libs/cluster/broker_service.h"
#include "libs/common/strings.h"
#include "libs/protocol/mqtt/topic.h"

namespace herald::cluster {

namespace {

int64_t UnixMillis(Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.WallNow().time_since_epoch())
      .count();
}

}  // namespace

class BrokerService::Subscription {
 public:
  Subscription(BrokerService& service, grpc::ServerContext* ctx,
               grpc::ServerReaderWriter<v1::SubscribeResponse, v1::SubscribeRequest>* stream)
      : service_(service), ctx_(ctx), stream_(stream) {}

  grpc::Status Run() {
    v1::SubscribeRequest first;
    if (!stream_->Read(&first) || !first.has_start()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the first message of a Subscribe stream must be `start`");
    }
    const v1::SubscribeStart& start = first.start();
    for (const std::string& f : start.filters()) {
      if (auto err = mqtt::ValidateTopicFilter(f); err.has_value()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            StrCat("filter '", f, "': ", err->message));
      }
      AddFilter(f);
    }
    edge_id_ = start.edge_id();
    RebuildFetchSet();
    credit_ = static_cast<int64_t>(start.initial_credit_bytes());
    auto hb = std::chrono::milliseconds(start.heartbeat_interval_ms());
    if (hb.count() == 0) hb = service_.options_.heartbeat_default;
    heartbeat_ = std::clamp(hb, service_.options_.heartbeat_min, service_.options_.heartbeat_max);
    for (const v1::PartitionStart& ps : start.partitions()) Attach(ps);

    std::thread reader([this] { ReadLoop(); });
    WriteLoop();
    ctx_->TryCancel();  // unblocks the reader
    reader.join();
    LeaveSharedGroups();
    for (auto& [p, part] : parts_) service_.host_.RemoveWatcher(GroupForPartition(p), part.watcher);
    return grpc::Status::OK;
  }

 private:
  struct Part {
    v1::StartMode mode = v1::START_MODE_AFTER_POSITION;
    bool resolved = false;  // `position` is known (EARLIEST/LATEST resolve at the first read)
    uint64_t position = 0;  // evaluated through
    uint64_t epoch = 0;
    uint64_t watcher = 0;
  };

  // What one read of a partition found.
  struct Read {
    bool hosted = false;
    bool leader = false;
    raft::NodeId leader_id = 0;
    uint64_t term = 0;
    uint64_t epoch = 0;
    uint64_t last_offset = 0;
    uint64_t position = 0;  // after resolving the start mode
    absl::StatusOr<broker::FetchOutput> fetch = broker::FetchOutput();
  };

  // Edge -> core: credit and changes.
  void ReadLoop() {
    v1::SubscribeRequest req;
    while (stream_->Read(&req)) {
      std::lock_guard<std::mutex> l(mu_);
      if (req.has_credit()) {
        credit_ += static_cast<int64_t>(req.credit().bytes());
      } else if (req.has_change()) {
        changes_.push_back(req.change());
      }
      wake_ = true;
      cv_.notify_one();
    }
    std::lock_guard<std::mutex> l(mu_);
    closed_ = true;
    cv_.notify_one();
  }

  void Attach(const v1::PartitionStart& ps) {
    uint32_t p = ps.partition();
    auto it = parts_.find(p);
    if (it != parts_.end()) service_.host_.RemoveWatcher(GroupForPartition(p), it->second.watcher);
    Part part;
    part.mode = ps.mode() == v1::START_MODE_UNSPECIFIED ? v1::START_MODE_AFTER_POSITION : ps.mode();
    part.position = ps.offset();
    part.epoch = ps.epoch();
    part.resolved = part.mode == v1::START_MODE_AFTER_POSITION;
    part.watcher = service_.host_.AddWatcher(GroupForPartition(p), [this] {
      std::lock_guard<std::mutex> l(mu_);
      wake_ = true;
      cv_.notify_one();
    });
    parts_[p] = part;
  }

  void Detach(uint32_t p) {
    auto it = parts_.find(p);
    if (it == parts_.end()) return;
    service_.host_.RemoveWatcher(GroupForPartition(p), it->second.watcher);
    parts_.erase(it);
  }

  Read ReadPartition(uint32_t p, const Part& part, uint64_t max_bytes) {
    std::promise<Read> done;
    auto f = done.get_future();
    broker::FetchLimits limits{service_.options_.subscribe_batch_messages, max_bytes};
    int64_t now = UnixMillis(service_.clock_);
    service_.host_.ReadAsync(
        GroupForPartition(p), [&](broker::PartitionStateMachine* sm, const GroupStatus* st) {
          Read r;
          if (sm == nullptr) {
            done.set_value(std::move(r));
            return;
          }
          r.hosted = true;
          r.leader = st->role == raft::Role::kLeader;
          r.leader_id = st->leader;
          r.term = st->term;
          r.epoch = sm->state().epoch();
          r.last_offset = sm->last_offset();
          r.position = part.position;
          if (!part.resolved) {
            r.position = part.mode == v1::START_MODE_LATEST ? sm->last_offset()
                                                            : sm->state().first_offset() - 1;
          }
          if (r.leader) r.fetch = sm->Fetch(r.position, 0, fetch_set_, now, limits);
          done.set_value(std::move(r));
        });
    return f.get();
  }

  bool Write(const v1::SubscribeResponse& resp) {
    last_write_ = std::chrono::steady_clock::now();
    return stream_->Write(resp);
  }

  // Applies the edge's changes; returns false if the stream broke.
  bool ApplyChanges(std::deque<v1::SubscribeChange>& changes) {
    for (const v1::SubscribeChange& c : changes) {
      for (const std::string& f : c.remove_filters()) RemoveFilter(f);
      for (const std::string& f : c.add_filters()) {
        if (!mqtt::ValidateTopicFilter(f).has_value()) AddFilter(f);
      }
      RebuildFetchSet();
      for (uint32_t p : c.remove_partitions()) Detach(p);
      for (const v1::PartitionStart& ps : c.add_partitions()) Attach(ps);
      // Resolve new partitions now, so the switch positions are real offsets.
      v1::SubscribeResponse resp;
      v1::SubscribeChangeApplied* applied = resp.mutable_change_applied();
      applied->set_change_id(c.change_id());
      for (auto& [p, part] : parts_) {
        if (!part.resolved) {
          Read r = ReadPartition(p, part, 1);
          if (r.hosted) {
            part.position = r.position;
            part.epoch = r.epoch;
            part.resolved = true;
          }
        }
        v1::PartitionPosition* pos = applied->add_switch_positions();
        pos->set_partition(p);
        pos->set_epoch(part.epoch);
        pos->set_offset(part.position);
      }
      if (!Write(resp)) return false;
    }
    return true;
  }

  void AddFilter(const std::string& f) {
    if (!filters_.insert(f).second) return;
    mqtt::SharedSubscription shared;
    if (mqtt::IsSharedSubscription(f) && !mqtt::ParseSharedSubscription(f, &shared).has_value()) {
      shared_[f] = std::string(shared.topic_filter);
      if (!edge_id_.empty()) service_.AddSharedMember(f, edge_id_);
      return;
    }
    plain_set_.Add(f);
  }

  void RemoveFilter(const std::string& f) {
    if (filters_.erase(f) == 0) return;
    if (shared_.erase(f) > 0) {
      service_.RemoveSharedMember(f, edge_id_);
      return;
    }
    plain_set_.Remove(f);
  }

  void RebuildFetchSet() {
    fetch_set_ = plain_set_;
    for (const auto& [key, filter] : shared_) fetch_set_.Add(filter);
    if (!registered_ && !edge_id_.empty()) {
      registered_ = true;
      for (const auto& [key, filter] : shared_) service_.AddSharedMember(key, edge_id_);
    }
  }

  // Whether the stream carries `m`: a plain filter matches it, or a shared subscription whose
  // turn it is at this offset (named in m.shared_subscriptions for the edge).
  bool Select(v1::Message& m) {
    bool plain = plain_set_.Matches(m.topic());
    for (const auto& [key, filter] : shared_) {
      if (mqtt::TopicMatches(filter, m.topic()) &&
          service_.SharedTurn(key, edge_id_, m.offset())) {
        m.add_shared_subscriptions(key);
      }
    }
    return plain || m.shared_subscriptions_size() > 0;
  }

  void LeaveSharedGroups() {
    for (const auto& [key, filter] : shared_) service_.RemoveSharedMember(key, edge_id_);
  }

  void WriteLoop() {
    last_write_ = std::chrono::steady_clock::now();
    while (!ctx_->IsCancelled()) {
      std::deque<v1::SubscribeChange> changes;
      int64_t credit;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (closed_) return;
        changes.swap(changes_);
        credit = credit_;
      }
      if (!ApplyChanges(changes)) return;

      v1::SubscribeResponse deliveries;
      std::vector<v1::SubscribeResponse> events;  // gaps and stops, sent before deliveries
      std::vector<uint32_t> stopped;
      bool more = false;
      int64_t spent = 0;
      // Start each round after the partition that started the previous one, so a busy partition
      // cannot take every credit grant and starve the others.
      std::vector<uint32_t> order;
      for (const auto& [p, part] : parts_) order.push_back(p);
      if (!order.empty()) {
        auto first = std::upper_bound(order.begin(), order.end(), round_start_);
        std::rotate(order.begin(), first == order.end() ? order.begin() : first, order.end());
        round_start_ = order.front();
      }
      for (uint32_t p : order) {
        Part& part = parts_[p];
        if (credit - spent <= 0) break;
        Read r = ReadPartition(
            p, part,
            static_cast<uint64_t>(std::min<int64_t>(
                credit - spent, static_cast<int64_t>(service_.options_.subscribe_batch_bytes))));
        if (!r.hosted || !r.leader || !r.fetch.ok()) {
          v1::SubscribeResponse ev;
          v1::PartitionStopped* s = ev.mutable_stopped();
          s->set_partition(p);
          if (!r.hosted) {
            service_.SetNotHosted(GroupForPartition(p), s->mutable_error());
          } else if (!r.leader) {
            service_.SetNotLeader(r.leader_id, r.term, s->mutable_error());
          } else {
            s->mutable_error()->set_code(v1::ERROR_CODE_INTERNAL);
            s->mutable_error()->set_message(std::string(r.fetch.status().message()));
          }
          // A partition whose start (EARLIEST/LATEST) was never resolved has no position to
          // resume from; leave it unset rather than claim offset 0.
          if (part.resolved) {
            s->mutable_last_position()->set_partition(p);
            s->mutable_last_position()->set_epoch(part.epoch);
            s->mutable_last_position()->set_offset(part.position);
          }
          events.push_back(std::move(ev));
          stopped.push_back(p);
          continue;
        }
        part.resolved = true;
        part.epoch = r.epoch;
        const broker::FetchOutput& out = *r.fetch;
        if (out.gap_to != 0) {
          v1::SubscribeResponse ev;
          v1::Gap* g = ev.mutable_gap();
          g->set_partition(p);
          g->set_reason(v1::ERROR_CODE_CURSOR_GAP);
          g->set_from_epoch(r.epoch);
          g->set_from_offset(r.position);
          g->set_to_epoch(r.epoch);
          g->set_to_offset(out.gap_to);
          events.push_back(std::move(ev));
        }
        if (!out.messages.empty() || out.evaluated_through > r.position) {
          v1::PartitionMessages* pm = deliveries.mutable_deliveries()->add_partitions();
          pm->set_partition(p);
          pm->set_epoch(r.epoch);
          for (v1::Message& m : r.fetch->messages) {
            if (!Select(m)) continue;  // read only for a shared subscription: not this edge's turn
            spent += static_cast<int64_t>(m.ByteSizeLong());
            *pm->add_messages() = std::move(m);
          }
          pm->set_evaluated_through(out.evaluated_through);
        }
        part.position = std::max(r.position, out.evaluated_through);
        if (part.position < r.last_offset) more = true;
      }
      for (uint32_t p : stopped) Detach(p);
      {
        std::lock_guard<std::mutex> l(mu_);
        credit_ -= spent;
      }
      for (const auto& ev : events) {
        if (!Write(ev)) return;
      }
      if (deliveries.deliveries().partitions_size() > 0 && !Write(deliveries)) return;
      if (std::chrono::steady_clock::now() - last_write_ >= heartbeat_) {
        v1::SubscribeResponse hb;
        v1::SubscribeHeartbeat* h = hb.mutable_heartbeat();
        for (auto& [p, part] : parts_) {
          if (!part.resolved) continue;  // no position yet (start not resolved)
          v1::PartitionPosition* pos = h->add_progress();
          pos->set_partition(p);
          pos->set_epoch(part.epoch);
          pos->set_offset(part.position);
        }
        h->set_server_time_unix_ms(UnixMillis(service_.clock_));
        {
          std::lock_guard<std::mutex> l(mu_);
          h->set_credit_bytes(credit_);
        }
        if (!Write(hb)) return;
      }
      std::unique_lock<std::mutex> l(mu_);
      if (more && credit_ > 0) continue;  // backlog left: read on at once
      cv_.wait_until(l, last_write_ + heartbeat_,
                     [this] { return closed_ || !changes_.empty() || (wake_ && credit_ > 0); });
      wake_ = false;
    }
  }

  BrokerService& service_;
  grpc::ServerContext* ctx_;
  grpc::ServerReaderWriter<v1::SubscribeResponse, v1::SubscribeRequest>* stream_;
  std::chrono::milliseconds heartbeat_{5000};
  std::chrono::steady_clock::time_point last_write_;
  uint32_t round_start_ = 0;  // partition that started the last read round
  bool registered_ = false;   // shared_ entered in the service's registry
  // Writer thread only.
  std::set<std::string> filters_;
  std::string edge_id_;
  mqtt::TopicFilterSet plain_set_;  // filters_ without the shared subscriptions
  std::map<std::string, std::string> shared_;  // $share/{group}/{filter} -> filter
  mqtt::TopicFilterSet fetch_set_;  // plain_set_ and the filters of shared_: what to read
  std::map<uint32_t, Part> parts_;
  // Shared with the reader thread and watchers.
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t credit_ = 0;
  std::deque<v1::SubscribeChange> changes_;
  bool wake_ = true;
  bool closed_ = false;
};

grpc::Status BrokerService::Subscribe(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<v1::SubscribeResponse, v1::SubscribeRequest>* stream) {
  Subscription sub(*this, ctx, stream);
  return sub.Run();
}

void BrokerService::AddSharedMember(const std::string& key, const std::string& edge_id) {
  std::lock_guard<std::mutex> l(shared_mu_);
  ++shared_members_[key][edge_id];
}

void BrokerService::RemoveSharedMember(const std::string& key, const std::string& edge_id) {
  std::lock_guard<std::mutex> l(shared_mu_);
  auto it = shared_members_.find(key);
  if (it == shared_members_.end()) return;
  auto m = it->second.find(edge_id);
  if (m != it->second.end() && --m->second <= 0) it->second.erase(m);
  if (it->second.empty()) shared_members_.erase(it);
}

bool BrokerService::SharedTurn(const std::string& key, const std::string& edge_id,
                               uint64_t offset) {
  std::lock_guard<std::mutex> l(shared_mu_);
  auto it = shared_members_.find(key);
  if (it == shared_members_.end() || it->second.empty()) return true;
  auto m = it->second.begin();
  std::advance(m, static_cast<long>(offset % it->second.size()));
  return m->first == edge_id;
}

}  // namespace herald::cluster
