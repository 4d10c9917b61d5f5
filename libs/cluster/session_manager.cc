#include "libs/cluster/session_manager.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <vector>

#include "libs/cluster/broker_service.h"
#include "libs/common/partitioning.h"
#include "libs/common/strings.h"
#include "libs/common/thread.h"

namespace herald::cluster {

namespace {

// Most deadlines proposed per group and check (the rest wait for the next check).
constexpr size_t kMaxTimersPerCheck = 1000;

bool RetryableError(v1::ErrorCode code) {
  switch (code) {
    case v1::ERROR_CODE_NOT_LEADER:
    case v1::ERROR_CODE_PARTITION_UNAVAILABLE:
    case v1::ERROR_CODE_OUTCOME_UNKNOWN:
    case v1::ERROR_CODE_OVERLOADED:
    case v1::ERROR_CODE_SHUTTING_DOWN:
    case v1::ERROR_CODE_INTERNAL:
      return true;
    default:
      return false;
  }
}

}  // namespace

SessionManager::SessionManager(RaftHost& host, SessionManagerOptions options, Clock& clock)
    : host_(host), options_(std::move(options)), clock_(clock) {}

SessionManager::~SessionManager() { Stop(); }

int64_t SessionManager::NowMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_.WallNow().time_since_epoch())
      .count();
}

void SessionManager::Start() {
  // Every partition: replicas come and go with membership changes (unhosted ones read as null).
  groups_.clear();
  for (uint32_t p = 0; p < options_.partition_count; ++p) groups_.push_back(GroupForPartition(p));
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] {
    SetThreadName("sessions");
    Run();
  });
}

void SessionManager::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void SessionManager::SetLease(GroupTimers& g, const std::string& client_id, uint64_t epoch,
                              int64_t deadline) {
  auto it = g.leases.find(client_id);
  if (it != g.leases.end()) {
    if (it->second.owner_epoch > epoch) return;  // a late renewal of an older connection
    g.lease_order.erase({it->second.deadline, client_id});
  }
  g.leases[client_id] = Lease{epoch, deadline};
  g.lease_order.insert({deadline, client_id});
}

void SessionManager::RenewLease(GroupId group, const std::string& client_id, uint64_t owner_epoch) {
  const int64_t deadline = NowMs() + options_.lease.count();
  std::lock_guard<std::mutex> l(mu_);
  auto it = timers_.find(group);
  // Before the leases of a new leadership are granted: granting covers this session anyway.
  if (it == timers_.end() || !it->second.leases_granted) return;
  SetLease(it->second, client_id, owner_epoch, deadline);
}

void SessionManager::Run() {
  auto next_check = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    cv_.wait_until(l, next_check, [this] { return stop_ || !forward_.empty(); });
    if (stop_) break;
    while (!forward_.empty() && !stop_) {
      WillJob job = std::move(forward_.front());
      forward_.pop_front();
      l.unlock();
      ForwardWill(std::move(job));
      l.lock();
    }
    if (stop_ || std::chrono::steady_clock::now() < next_check) continue;
    next_check = std::chrono::steady_clock::now() + options_.timer_interval;
    l.unlock();
    for (GroupId g : groups_) {
      host_.ReadAsync(g, [this, g](broker::PartitionStateMachine* sm, const GroupStatus* st) {
        Check(g, sm, st);
      });
    }
    l.lock();
  }
}

void SessionManager::Check(GroupId group, broker::PartitionStateMachine* sm,
                           const GroupStatus* st) {
  const int64_t now = NowMs();
  std::vector<broker::SessionTimer> due;
  std::vector<WillJob> wills;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return;
    GroupTimers& g = timers_[group];
    if (sm == nullptr || st->role != raft::Role::kLeader) {
      g = GroupTimers();
      return;
    }
    if (g.term != st->term) {
      g = GroupTimers();
      g.term = st->term;
      g.grant_at_index = st->last_index;
    }
    if (!g.leases_granted && st->applied >= g.grant_at_index) {
      // A new leadership that applied everything its predecessors committed: every connected
      // session gets a fresh lease from now.
      g.leases_granted = true;
      sm->ForEachConnectedSession([&](const std::string& client_id, uint64_t epoch) {
        SetLease(g, client_id, epoch, now + options_.lease.count());
      });
    }
    while (!g.lease_order.empty() && g.lease_order.begin()->first <= now &&
           due.size() < kMaxTimersPerCheck) {
      std::string client_id = g.lease_order.begin()->second;
      g.lease_order.erase(g.lease_order.begin());
      Lease lease = g.leases[client_id];
      g.leases.erase(client_id);
      if (!sm->SessionConnected(client_id, lease.owner_epoch)) continue;  // closed meanwhile
      // Checked again a few intervals later in case the proposal does not commit.
      SetLease(g, client_id, lease.owner_epoch, now + 5 * options_.timer_interval.count());
      due.push_back({client_id, lease.owner_epoch, v1::SessionTimerCommand::KIND_LEASE_LAPSED});
    }
    for (broker::SessionTimer& t : sm->DueSessionTimers(now, kMaxTimersPerCheck)) {
      due.push_back(std::move(t));
    }
    std::vector<broker::SessionTimer> fresh;
    for (broker::SessionTimer& t : due) {
      if (g.timers_in_flight.insert({t.client_id, static_cast<int>(t.kind)}).second) {
        fresh.push_back(std::move(t));
      }
    }
    due = std::move(fresh);
    for (const auto& [id, rec] : sm->will_outbox()) {
      if (g.wills_in_flight.insert(id).second) {
        wills.push_back(WillJob{group, id, rec.message(), 0});
      }
    }
  }
  for (broker::SessionTimer& t : due) {
    v1::PartitionCommand cmd;
    cmd.set_proposed_at_unix_ms(now);
    v1::SessionTimerCommand* tc = cmd.mutable_session_timer();
    tc->set_client_id(t.client_id);
    tc->set_owner_epoch(t.owner_epoch);
    tc->set_kind(t.kind);
    host_.Propose(
        group, cmd.SerializeAsString(),
        [this, group, key = std::make_pair(t.client_id, static_cast<int>(t.kind))](ProposalResult) {
          std::lock_guard<std::mutex> l(mu_);
          timers_[group].timers_in_flight.erase(key);
        });
  }
  for (WillJob& job : wills) PublishWill(std::move(job));
}

void SessionManager::PublishWill(WillJob job) {
  const uint32_t partition = PartitionFor(job.message.topic(), options_.partition_count);
  v1::PartitionCommand cmd;
  cmd.set_proposed_at_unix_ms(NowMs());
  *cmd.mutable_publish()->add_messages() = job.message;
  host_.Propose(GroupForPartition(partition), cmd.SerializeAsString(),
                [this, job = std::move(job)](ProposalResult r) mutable {
                  if (r.status.ok()) {
                    if (r.apply.publish.empty()) return ClearWillInFlight(job.group, job.will_id);
                    const v1::PublishResult& res = r.apply.publish[0];
                    if (res.has_error() && res.error().code() != v1::ERROR_CODE_DUPLICATE) {
                      spdlog::warn("will of session {} dropped: {}", job.will_id,
                                   res.error().message());
                    }
                    return WillPublished(job.group, job.will_id);
                  }
                  if (absl::IsNotFound(r.status) ||
                      (absl::IsUnavailable(r.status) && r.status.message() == "not leader")) {
                    // Another node leads the will's partition.
                    job.leader_hint = r.leader_hint;
                    {
                      std::lock_guard<std::mutex> l(mu_);
                      forward_.push_back(std::move(job));
                    }
                    cv_.notify_all();
                    return;
                  }
                  ClearWillInFlight(job.group, job.will_id);
                });
}

v1::Broker::Stub* SessionManager::StubFor(raft::NodeId node) {
  auto it = stubs_.find(node);
  if (it != stubs_.end()) return it->second.get();
  std::optional<std::string> addr = options_.directory->Address(node);
  if (!addr.has_value()) return nullptr;
  auto stub = v1::Broker::NewStub(grpc::CreateChannel(
      *addr, options_.channel_credentials ? options_.channel_credentials
                                                 : grpc::InsecureChannelCredentials()));
  return stubs_.emplace(node, std::move(stub)).first->second.get();
}

void SessionManager::ForwardWill(WillJob job) {
  std::vector<raft::NodeId> others;
  for (const auto& [id, addr] : options_.directory->Addresses()) {
    if (id != options_.node_id) others.push_back(id);
  }
  raft::NodeId target = job.leader_hint;
  for (int attempt = 0; attempt < 4; ++attempt) {
    if (target == 0 || target == options_.node_id) {
      if (others.empty()) break;
      target = others[next_peer_++ % others.size()];
    }
    v1::Broker::Stub* stub = StubFor(target);
    if (stub == nullptr) {
      target = 0;
      continue;
    }
    v1::PublishRequest req;
    *req.add_messages() = job.message;
    v1::PublishResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + options_.forward_timeout);
    grpc::Status s = stub->Publish(&ctx, req, &resp);
    if (!s.ok() || resp.results_size() != 1) {
      target = 0;
      continue;
    }
    const v1::PublishResult& r = resp.results(0);
    if (!r.has_error() || r.error().code() == v1::ERROR_CODE_DUPLICATE) {
      return WillPublished(job.group, job.will_id);
    }
    if (r.error().code() == v1::ERROR_CODE_NOT_LEADER) {
      target = r.error().leader_hint().node_id();
      continue;
    }
    if (RetryableError(r.error().code())) break;
    spdlog::warn("will of session {} dropped: {}", job.will_id, r.error().message());
    return WillPublished(job.group, job.will_id);
  }
  ClearWillInFlight(job.group, job.will_id);  // retried at a later check
}

void SessionManager::WillPublished(GroupId group, uint64_t will_id) {
  v1::PartitionCommand cmd;
  cmd.set_proposed_at_unix_ms(NowMs());
  cmd.mutable_will_published()->set_will_id(will_id);
  host_.Propose(group, cmd.SerializeAsString(),
                [this, group, will_id](ProposalResult) { ClearWillInFlight(group, will_id); });
}

void SessionManager::ClearWillInFlight(GroupId group, uint64_t will_id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = timers_.find(group);
  if (it != timers_.end()) it->second.wills_in_flight.erase(will_id);
}

}  // namespace herald::cluster
