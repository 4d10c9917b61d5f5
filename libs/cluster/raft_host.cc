#include "libs/cluster/raft_host.h"

#include <spdlog/spdlog.h>

#include <future>

#include "libs/common/logging.h"
#include "libs/common/strings.h"

namespace herald::cluster {

struct RaftHost::Group {
  GroupId id = 0;
  uint32_t partition = 0;
  std::unique_ptr<storage::RaftLogStore> log;
  std::unique_ptr<broker::PartitionStateMachine> sm;
  std::unique_ptr<raft::Node> node;
  // Proposals this node appended as leader, by log index, awaiting their apply.
  std::map<uint64_t, PendingProposal> pending;
  bool was_leader = false;
  raft::NodeId last_leader = 0;
  // Membership changes are not driven by this host yet; a group that has seen one is never
  // compacted, because the snapshot metadata would need the membership as of the compaction
  // index.
  bool saw_conf_change = false;
  // Highest compaction index proposed by this node as leader and not yet applied.
  uint64_t compaction_proposed = 0;
};

namespace {

// A storage failure leaves the in-memory Raft state ahead of the disk: the only safe reaction
// is to stop the process and recover from what is durable.
[[noreturn]] void Fatal(const std::string& what, const absl::Status& s) {
  spdlog::critical("raft host: {}: {}", what, s);
  spdlog::default_logger()->flush();
  std::abort();
}

}  // namespace

RaftHost::RaftHost(storage::Engine& engine, Transport& transport, RaftHostOptions options,
                   Clock& clock)
    : engine_(engine), transport_(transport), options_(options), clock_(clock) {}

RaftHost::~RaftHost() { Stop(); }

absl::Status RaftHost::AddPartitionGroup(GroupId id, uint32_t partition,
                                         std::vector<raft::NodeId> initial_voters) {
  if (groups_.count(id) != 0) return absl::AlreadyExistsError(StrCat("group ", id, " exists"));
  auto g = std::make_unique<Group>();
  g->id = id;
  g->partition = partition;
  auto log = storage::RaftLogStore::Load(engine_, id);
  if (!log.ok()) return log.status();
  g->log = std::move(*log);
  auto sm = broker::PartitionStateMachine::Open(engine_, partition);
  if (!sm.ok()) return sm.status();
  g->sm = std::move(*sm);
  bool fresh = g->log->LastIndex() == 0 && g->log->hard_state().IsEmpty();
  if (fresh && !initial_voters.empty()) {
    std::sort(initial_voters.begin(), initial_voters.end());
    raft::ConfState cs;
    cs.voters = initial_voters;
    rocksdb::WriteBatch batch;
    absl::Status s = g->log->ApplySnapshot(raft::MemoryStorage::BootstrapSnapshot(cs), &batch);
    if (s.ok()) s = engine_.Write(&batch);
    if (!s.ok()) return s;
  }
  raft::Config cfg;
  cfg.id = options_.node_id;
  cfg.storage = g->log.get();
  cfg.election_tick = options_.election_ticks;
  cfg.heartbeat_tick = options_.heartbeat_ticks;
  cfg.applied = g->sm->applied_index();
  cfg.max_uncommitted_entries = options_.max_uncommitted_entries;
  cfg.random_seed =
      options_.random_seed != 0 ? options_.random_seed + id : options_.node_id * 1000003 + id;
  auto node = raft::Node::Create(cfg);
  if (!node.ok()) return node.status();
  g->node = std::move(*node);
  groups_[id] = std::move(g);
  return absl::OkStatus();
}

absl::Status RaftHost::Start() {
  std::lock_guard<std::mutex> l(mu_);
  if (running_) return absl::FailedPreconditionError("raft host already running");
  running_ = true;
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void RaftHost::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_) return;
    inbox_.stop = true;
  }
  cv_.notify_one();
  thread_.join();
  std::lock_guard<std::mutex> l(mu_);
  running_ = false;
  // Proposals that never reached the thread.
  for (auto& [g, cmd, done] : inbox_.proposals) {
    done({absl::UnavailableError("raft host stopped"), 0, {}});
  }
  inbox_ = Inbox();
}

void RaftHost::Deliver(GroupId group, raft::Message message) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_) return;
    inbox_.messages.emplace_back(group, std::move(message));
  }
  cv_.notify_one();
}

void RaftHost::Propose(GroupId group, std::string command, ProposalCallback done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (running_ && !inbox_.stop) {
      inbox_.proposals.emplace_back(group, std::move(command), std::move(done));
      done = nullptr;
    }
  }
  if (done) {
    done({absl::UnavailableError("raft host is not running"), 0, {}});
    return;
  }
  cv_.notify_one();
}

void RaftHost::TransferLeadership(GroupId group, raft::NodeId to) {
  std::lock_guard<std::mutex> l(mu_);
  if (!running_) return;
  inbox_.tasks.push_back([this, group, to] {
    auto it = groups_.find(group);
    if (it != groups_.end()) it->second->node->TransferLeadership(to).IgnoreError();
  });
  cv_.notify_one();
}

uint64_t RaftHost::AddWatcher(GroupId group, std::function<void()> fn) {
  std::lock_guard<std::mutex> l(watchers_mu_);
  uint64_t id = next_watcher_id_++;
  watchers_[group][id] = std::move(fn);
  return id;
}

void RaftHost::RemoveWatcher(GroupId group, uint64_t id) {
  std::lock_guard<std::mutex> l(watchers_mu_);
  auto it = watchers_.find(group);
  if (it == watchers_.end()) return;
  it->second.erase(id);
  if (it->second.empty()) watchers_.erase(it);
}

int RaftHost::HandOffLeadership(std::chrono::milliseconds timeout) {
  auto count_led = [this] {
    int n = 0;
    for (const GroupStatus& st : Status()) n += st.role == raft::Role::kLeader ? 1 : 0;
    return n;
  };
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_ || inbox_.stop) return 0;
    inbox_.tasks.push_back([this] {
      for (auto& [id, g] : groups_) {
        raft::Node& node = *g->node;
        if (node.role() != raft::Role::kLeader) continue;
        raft::NodeId best = raft::kNoNode;
        uint64_t best_match = 0;
        for (raft::NodeId v : node.conf_state().voters) {
          const raft::Progress* pr = v == options_.node_id ? nullptr : node.progress(v);
          if (pr != nullptr && (best == raft::kNoNode || pr->match > best_match)) {
            best = v;
            best_match = pr->match;
          }
        }
        if (best != raft::kNoNode) node.TransferLeadership(best).IgnoreError();
      }
    });
  }
  cv_.notify_one();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int led = count_led();
  while (led > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    led = count_led();
  }
  return led;
}

bool RaftHost::WithPartition(GroupId group,
                             const std::function<void(broker::PartitionStateMachine&)>& fn) {
  std::promise<bool> done;
  auto f = done.get_future();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_ || inbox_.stop) return false;
    inbox_.tasks.push_back([&] {
      auto it = groups_.find(group);
      if (it == groups_.end()) {
        done.set_value(false);
        return;
      }
      fn(*it->second->sm);
      done.set_value(true);
    });
  }
  cv_.notify_one();
  return f.get();
}

void RaftHost::ReadAsync(GroupId group, ReadFn fn) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (running_ && !inbox_.stop) {
      inbox_.tasks.push_back([this, group, fn = std::move(fn)] {
        auto it = groups_.find(group);
        if (it == groups_.end()) {
          fn(nullptr, nullptr);
          return;
        }
        Group& g = *it->second;
        GroupStatus st = StatusOf(g);
        fn(g.sm.get(), &st);
      });
      fn = nullptr;
    }
  }
  if (fn) {
    fn(nullptr, nullptr);
    return;
  }
  cv_.notify_one();
}

GroupStatus RaftHost::StatusOf(const Group& g) {
  GroupStatus st;
  st.group = g.id;
  st.role = g.node->role();
  st.leader = g.node->leader();
  st.term = g.node->term();
  st.commit = g.node->committed();
  st.applied = g.sm->applied_index();
  st.last_index = g.node->last_index();
  st.first_index = g.log->FirstIndex();
  st.conf_state = g.node->conf_state();
  st.partition = g.partition;
  st.last_offset = g.sm->last_offset();
  st.stored_messages = g.sm->state().message_count();
  st.stored_bytes = g.sm->state().message_bytes();
  st.trimmed_messages = g.sm->state().trimmed_messages();
  return st;
}

std::vector<GroupStatus> RaftHost::Status() {
  std::promise<std::vector<GroupStatus>> done;
  auto f = done.get_future();
  auto collect = [this] {
    std::vector<GroupStatus> out;
    for (auto& [id, g] : groups_) {
      out.push_back(StatusOf(*g));
    }
    return out;
  };
  {
    std::lock_guard<std::mutex> l(mu_);
    // Read the groups directly only when no host thread runs; while it stops, it still owns them.
    if (!running_) return collect();
    if (inbox_.stop) return {};
    inbox_.tasks.push_back([&] { done.set_value(collect()); });
  }
  cv_.notify_one();
  return f.get();
}

void RaftHost::Run() {
  auto next_tick = clock_.Now() + options_.tick;
  while (true) {
    Inbox inbox;
    {
      std::unique_lock<std::mutex> l(mu_);
      auto has_work = [this] {
        return inbox_.stop || !inbox_.messages.empty() || !inbox_.proposals.empty() ||
               !inbox_.tasks.empty();
      };
      // The clock may be a test clock; wait in real time slices of at most one tick.
      if (!has_work()) cv_.wait_for(l, options_.tick, has_work);
      std::swap(inbox, inbox_);
    }
    // Ticks that are due. After a long stall, do not replay a storm of ticks.
    int ticks = 0;
    auto now = clock_.Now();
    while (now >= next_tick && ticks <= options_.election_ticks) {
      ++ticks;
      next_tick += options_.tick;
    }
    if (now >= next_tick) next_tick = now + options_.tick;
    for (auto& [id, g] : groups_) {
      for (int i = 0; i < ticks; ++i) g->node->Tick();
    }
    RunPass(inbox);
    if (inbox.stop) break;
  }
  for (auto& [id, g] : groups_)
    FailPending(*g, absl::UnavailableError("raft host stopped; outcome unknown"));
}

void RaftHost::FailPending(Group& g, const absl::Status& why) {
  auto pending = std::move(g.pending);
  g.pending.clear();
  for (auto& [index, p] : pending) p.done({why, g.node->leader(), {}});
}

void RaftHost::RunPass(Inbox& inbox) {
  for (auto& [group, m] : inbox.messages) {
    auto it = groups_.find(group);
    if (it != groups_.end()) it->second->node->Step(std::move(m)).IgnoreError();
  }
  for (auto& task : inbox.tasks) task();
  for (auto& [group, cmd, done] : inbox.proposals) {
    auto it = groups_.find(group);
    if (it == groups_.end()) {
      done({absl::NotFoundError(StrCat("no group ", group, " on this node")), 0, {}});
      continue;
    }
    Group& g = *it->second;
    stats_.proposals.fetch_add(1, std::memory_order_relaxed);
    if (g.node->role() != raft::Role::kLeader) {
      stats_.proposals_refused.fetch_add(1, std::memory_order_relaxed);
      done({absl::UnavailableError("not leader"), g.node->leader(), {}});
      continue;
    }
    absl::Status s = g.node->Propose(std::move(cmd));
    if (!s.ok()) {
      stats_.proposals_refused.fetch_add(1, std::memory_order_relaxed);
      done({s, g.node->leader(), {}});
      continue;
    }
    g.pending[g.node->last_index()] = PendingProposal{g.node->term(), std::move(done)};
  }

  // Collect every group's Ready into one batch.
  struct Applied {
    Group* group;
    uint64_t index;
    uint64_t term;
    broker::ApplyResult result;
  };
  std::vector<std::pair<Group*, raft::Ready>> readies;
  std::vector<Applied> applied;
  rocksdb::WriteBatch batch;
  for (auto& [id, gp] : groups_) {
    Group& g = *gp;
    if (!g.node->HasReady()) continue;
    raft::Ready rd = g.node->GetReady();
    absl::Status s = g.log->StageReady(rd, &batch);
    if (!s.ok()) Fatal(StrCat("group ", id, ": staging Ready"), s);
    if (!rd.snapshot.IsEmpty() && !rd.snapshot.data.empty()) {
      Fatal(StrCat("group ", id, ": received a partition snapshot"),
            absl::UnimplementedError("installing partition snapshots is not supported yet"));
    }
    for (const raft::Entry& e : rd.committed_entries) {
      if (e.type == raft::EntryType::kNormal && !e.data.empty()) {
        auto r = g.sm->Apply(e.index, e.data, &batch);
        if (!r.ok()) Fatal(StrCat("group ", id, ": applying entry ", e.index), r.status());
        uint64_t through = r->compact_log_through;
        if (through > 0 && !g.saw_conf_change && through > g.log->FirstIndex() &&
            through < e.index) {
          // Every replica applies this at the same log position and discards the same prefix.
          // The marker data makes the transport refuse to ship this snapshot: it carries no
          // partition state, so it must never stand in for one.
          absl::Status cs =
              g.log->CreateSnapshot(through, g.node->conf_state(), "log-compaction", &batch);
          if (!cs.ok()) Fatal(StrCat("group ", id, ": compacting the log"), cs);
        }
        if (through >= g.compaction_proposed) g.compaction_proposed = 0;
        applied.push_back(Applied{&g, e.index, e.term, std::move(*r)});
      } else {
        if (e.type == raft::EntryType::kConfChange) g.saw_conf_change = true;
        g.sm->ApplyOther(e.index, &batch);
        applied.push_back(Applied{&g, e.index, e.term, {}});
      }
    }
    readies.emplace_back(&g, std::move(rd));
  }
  stats_.passes.fetch_add(1, std::memory_order_relaxed);
  if (readies.empty()) return;
  auto write_start = std::chrono::steady_clock::now();
  absl::Status s = engine_.Write(&batch);
  if (!s.ok()) Fatal("group commit write", s);
  stats_.write_batches.fetch_add(1, std::memory_order_relaxed);
  stats_.write_nanos.fetch_add(
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::steady_clock::now() - write_start)
                                .count()),
      std::memory_order_relaxed);
  stats_.entries_applied.fetch_add(applied.size(), std::memory_order_relaxed);

  for (auto& [g, rd] : readies) {
    g->sm->Flushed();
    for (raft::Message& m : rd.messages) transport_.Send(g->id, std::move(m));
  }
  transport_.Flush();

  for (Applied& a : applied) {
    auto it = a.group->pending.find(a.index);
    if (it == a.group->pending.end()) continue;
    PendingProposal p = std::move(it->second);
    a.group->pending.erase(it);
    if (p.term == a.term) {
      p.done({absl::OkStatus(), 0, std::move(a.result)});
    } else {
      // Another leader's entry committed at this index: ours never will.
      p.done({absl::UnavailableError("proposal was superseded by a new leader; not committed"),
              a.group->node->leader(),
              {}});
    }
  }
  // Wake whoever waits on these groups: new messages applied, or leadership moved.
  {
    std::lock_guard<std::mutex> l(watchers_mu_);
    if (!watchers_.empty()) {
      for (auto& [g, rd] : readies) {
        if (rd.committed_entries.empty() && !rd.soft_state) continue;
        auto it = watchers_.find(g->id);
        if (it == watchers_.end()) continue;
        for (auto& [wid, fn] : it->second) fn();
      }
    }
  }
  for (auto& [g, rd] : readies) {
    if (rd.soft_state && rd.soft_state->leader != g->last_leader) {
      g->last_leader = rd.soft_state->leader;
      stats_.leader_changes.fetch_add(1, std::memory_order_relaxed);
    }
    bool leader = g->node->role() == raft::Role::kLeader;
    if (g->was_leader && !leader) {
      FailPending(*g, absl::UnavailableError("leadership lost; outcome unknown"));
      g->compaction_proposed = 0;
    }
    g->was_leader = leader;
    g->node->Advance(rd);
    if (leader) MaybeProposeCompaction(*g);
  }
}

void RaftHost::MaybeProposeCompaction(Group& g) {
  if (options_.log_compact_threshold == 0 || g.saw_conf_change || g.compaction_proposed != 0) {
    return;
  }
  uint64_t applied = g.sm->applied_index();
  uint64_t first = g.log->FirstIndex();
  if (applied < first || applied - first < options_.log_compact_threshold) return;
  // Only what every voter already has: nobody will need the discarded entries again.
  uint64_t min_match = applied;
  for (raft::NodeId v : g.node->conf_state().voters) {
    if (v == options_.node_id) continue;
    const raft::Progress* pr = g.node->progress(v);
    min_match = std::min(min_match, pr != nullptr ? pr->match : 0);
  }
  if (min_match <= first + options_.log_keep_entries) return;
  uint64_t through = min_match - options_.log_keep_entries;
  v1::PartitionCommand cmd;
  cmd.set_proposed_at_unix_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_.WallNow().time_since_epoch())
          .count());
  cmd.mutable_compact_log()->set_through_index(through);
  if (g.node->Propose(cmd.SerializeAsString()).ok()) g.compaction_proposed = through;
}

}  // namespace herald::cluster
