#include "libs/cluster/raft_host.h"

#include <spdlog/spdlog.h>

#include <spdlog/fmt/ranges.h>

#include <future>

#include "libs/common/logging.h"
#include "libs/common/strings.h"
#include "libs/common/thread.h"
#include "libs/storage/keys.h"

namespace herald::cluster {

struct RaftHost::Group {
  GroupId id = 0;
  uint32_t partition = 0;
  std::unique_ptr<storage::RaftLogStore> log;
  std::unique_ptr<broker::PartitionStateMachine> sm;  // partition groups
  std::unique_ptr<MetadataStateMachine> meta;         // the metadata group
  std::unique_ptr<raft::Node> node;
  // Proposals this node appended as leader, by log index, awaiting their apply.
  std::map<uint64_t, PendingProposal> pending;
  bool was_leader = false;
  raft::NodeId last_leader = 0;
  // Membership as of the applied index, and the index of the last change applied: a snapshot
  // carries the former, and the log is never compacted past the latter.
  raft::ConfState applied_conf;
  uint64_t conf_index = 0;
  // Highest compaction index proposed by this node as leader and not yet applied.
  uint64_t compaction_proposed = 0;
  // Log index of the retention trim this node proposed as leader, until applied (0: none), and
  // when retention is next planned here.
  uint64_t retention_proposed = 0;
  Clock::MonotonicTime next_retention_check{};
  // A snapshot is being written into this replica: it takes no Raft messages and no ticks.
  bool installing = false;
  // The image captured by the last snapshot handed to Raft, until its message is sent.
  std::shared_ptr<SnapshotSource> outgoing;
  // Quiescence (see raft_host.h): not ticking; and, on a leader, ticks spent idle so far.
  bool quiesced = false;
  int idle_ticks = 0;
  // Pipelined fsync: the highest log index known durable on this node; committed entries above
  // it wait in `stash` (in order) until it catches up. `unsent` counts written passes whose
  // messages for this group still wait for their fsync.
  uint64_t durable = 0;
  std::deque<raft::Entry> stash;
  int unsent = 0;
  // Linearizable reads (ReadIndex, Raft dissertation §6.4), on a leader: asked since the last
  // pass; waiting for their heartbeat round, by ReadIndex context; confirmed at a read index,
  // waiting for the apply to reach it.
  std::vector<RaftHost::ReadFn> reads_asked;
  std::map<uint64_t, std::vector<RaftHost::ReadFn>> reads_waiting;
  std::deque<std::pair<uint64_t, std::vector<RaftHost::ReadFn>>> reads_ready;
  bool reads_pending() const {
    return !reads_asked.empty() || !reads_waiting.empty() || !reads_ready.empty();
  }

  uint64_t applied() const { return meta ? meta->applied_index() : sm->applied_index(); }
  void LoadConf() {
    const auto& voters = meta ? meta->state().conf_voters() : sm->state().conf_voters();
    const auto& learners = meta ? meta->state().conf_learners() : sm->state().conf_learners();
    conf_index = meta ? meta->state().conf_index() : sm->state().conf_index();
    if (voters.empty()) {
      applied_conf = log->GetInitialState().conf_state;  // the founding membership
      conf_index = 0;
    } else {
      applied_conf.voters.assign(voters.begin(), voters.end());
      applied_conf.learners.assign(learners.begin(), learners.end());
    }
  }
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

SnapshotSource::SnapshotSource(storage::Engine& e, GroupId g, uint64_t i)
    : engine(e), group(g), index(i), prefix(GroupStatePrefix(g)),
      db_snapshot(e.db()->GetSnapshot()) {}

SnapshotSource::~SnapshotSource() { engine.db()->ReleaseSnapshot(db_snapshot); }

namespace {

std::string PrefixEnd(std::string prefix) {
  // Prefixes are 4-byte big-endian ids below 0xffffffff, or 0xffffffff itself.
  for (size_t i = prefix.size(); i-- > 0;) {
    if (static_cast<unsigned char>(prefix[i]) != 0xff) {
      prefix[i] = static_cast<char>(static_cast<unsigned char>(prefix[i]) + 1);
      prefix.resize(i + 1);
      return prefix;
    }
  }
  return prefix + std::string(1, '\xff') + std::string(8, '\xff');
}

// Stages the deletion of a group's state-machine keys, Raft log and snapshot record. The hard
// state stays, with commit 0 (its term and vote must outlive the data).
void StageWipe(storage::Engine& engine, GroupId id, const raft::HardState& hs,
               rocksdb::WriteBatch* batch) {
  std::string prefix = GroupStatePrefix(id);
  engine.StageDeleteRange(batch, storage::Family::kPartition, prefix, PrefixEnd(prefix));
  engine.StageDeleteRange(batch, storage::Family::kRaftLog, storage::RaftLogKey(id, 0),
                          storage::RaftLogKey(id + 1, 0));
  batch->Delete(engine.handle(storage::Family::kRaftState), storage::RaftStateKey(id, 's'));
  batch->Delete(engine.handle(storage::Family::kRaftState), storage::RaftStateKey(id, 'i'));
  if (!hs.IsEmpty()) {
    raft::HardState kept = hs;
    kept.commit = 0;
    batch->Put(engine.handle(storage::Family::kRaftState), storage::RaftStateKey(id, 'h'),
               storage::EncodeHardState(kept));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RaftHost::Group>> RaftHost::CreateGroup(
    GroupId id, uint32_t partition, std::vector<raft::NodeId> initial_voters) {
  auto g = std::make_unique<Group>();
  g->id = id;
  g->partition = partition;
  // A snapshot whose installation was interrupted left part of an image: start empty and let
  // the leader send a new one.
  auto marker = engine_.Get(storage::Family::kRaftState, storage::RaftStateKey(id, 'i'));
  if (!marker.ok()) return marker.status();
  if (marker->has_value()) {
    auto hs = engine_.Get(storage::Family::kRaftState, storage::RaftStateKey(id, 'h'));
    if (!hs.ok()) return hs.status();
    raft::HardState hard;
    if (hs->has_value()) {
      auto decoded = storage::DecodeHardState(**hs);
      if (!decoded.ok()) return decoded.status();
      hard = *decoded;
    }
    rocksdb::WriteBatch batch;
    StageWipe(engine_, id, hard, &batch);
    if (absl::Status s = engine_.Write(&batch); !s.ok()) return s;
    spdlog::warn("raft group {}: an interrupted snapshot installation was discarded", id);
  }
  auto log = storage::RaftLogStore::Load(engine_, id);
  if (!log.ok()) return log.status();
  g->log = std::move(*log);
  if (id == kMetadataGroup) {
    auto meta = MetadataStateMachine::Open(engine_);
    if (!meta.ok()) return meta.status();
    g->meta = std::move(*meta);
  } else {
    auto sm = broker::PartitionStateMachine::Open(engine_, partition);
    if (!sm.ok()) return sm.status();
    g->sm = std::move(*sm);
  }
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
  g->LoadConf();
  raft::Config cfg;
  cfg.id = options_.node_id;
  cfg.storage = g->log.get();
  cfg.election_tick = options_.election_ticks;
  cfg.heartbeat_tick = options_.heartbeat_ticks;
  // A snapshot's image may be ahead of the log when the node stopped before the snapshot
  // message was persisted, and the stored commit index may lag the applied index (it is written
  // with term and vote changes and every RaftLogStore::kCommitWriteInterval entries): Raft then
  // hands out entries the state machine skips. (Raising the commit index to the applied index
  // would be wrong in the first case: the log may still hold a deposed leader's entries there.)
  cfg.applied = std::max(g->log->FirstIndex() - 1,
                         std::min(g->applied(), g->log->hard_state().commit));
  cfg.max_uncommitted_entries = options_.max_uncommitted_entries;
  // Pipelined fsync: a leader's appends leave before its own fsync (Release reports it).
  cfg.self_ack_on_persist = engine_.syncs();
  // Followers learn commits with the next append or heartbeat: under load this halves the
  // messages between replicas (no empty append and response per commit). Acknowledgements,
  // reads and subscriptions are served by leaders (a transferee is told the commit index before
  // it campaigns). A subscription whose EARLIEST or LATEST start is resolved at a follower (an
  // edge with stale leader information) may start up to a heartbeat earlier than at the leader.
  cfg.broadcast_commit = false;
  cfg.random_seed =
      options_.random_seed != 0 ? options_.random_seed + id : options_.node_id * 1000003 + id;
  auto node = raft::Node::Create(cfg);
  if (!node.ok()) return node.status();
  g->node = std::move(*node);
  g->durable = g->node->last_index();  // everything loaded from the database is durable
  Group* gp = g.get();
  g->log->set_snapshot_provider([this, gp] { return SnapshotFor(*gp); });
  return g;
}

absl::Status RaftHost::AddPartitionGroup(GroupId id, uint32_t partition,
                                         std::vector<raft::NodeId> initial_voters) {
  if (groups_.count(id) != 0) return absl::AlreadyExistsError(StrCat("group ", id, " exists"));
  auto g = CreateGroup(id, partition, std::move(initial_voters));
  if (!g.ok()) return g.status();
  groups_[id] = std::move(*g);
  return absl::OkStatus();
}

absl::Status RaftHost::AddMetadataGroup(std::vector<raft::NodeId> initial_voters) {
  return AddPartitionGroup(kMetadataGroup, 0, std::move(initial_voters));
}

absl::StatusOr<raft::Snapshot> RaftHost::SnapshotFor(Group& g) {
  if (g.installing) return absl::UnavailableError("installing a snapshot");
  uint64_t index = g.applied();
  auto term = g.log->Term(index);
  if (!term.ok()) return absl::UnavailableError("applied entry's term unknown");
  raft::Snapshot snap;
  snap.metadata.index = index;
  snap.metadata.term = *term;
  snap.metadata.conf_state = g.applied_conf;
  snap.data = std::string(kStreamedSnapshot);
  // Every batch up to the applied index is written whenever Raft asks (between passes' writes),
  // so the database holds exactly the state at `index`.
  g.outgoing = std::make_shared<SnapshotSource>(engine_, g.id, index);
  return snap;
}

absl::Status RaftHost::RunOnHost(std::function<absl::Status()> fn) {
  std::promise<absl::Status> done;
  auto f = done.get_future();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_ || inbox_.stop) return absl::UnavailableError("raft host is not running");
    inbox_.tasks.push_back([&] { done.set_value(fn()); });
  }
  cv_.notify_one();
  return f.get();
}

void RaftHost::RunTask(std::function<void()> fn) {
  std::lock_guard<std::mutex> l(mu_);
  if (!running_ || inbox_.stop) return;
  inbox_.tasks.push_back(std::move(fn));
  cv_.notify_one();
}

void RaftHost::EnsurePartitionGroup(GroupId group, uint32_t partition) {
  std::lock_guard<std::mutex> l(mu_);
  if (!running_ || inbox_.stop) return;
  inbox_.tasks.push_back([this, group, partition] {
    if (groups_.count(group) != 0) return;
    auto g = CreateGroup(group, partition, {});
    if (!g.ok()) {
      spdlog::error("raft group {}: cannot create a replica: {}", group, g.status());
      return;
    }
    spdlog::info("raft group {} (partition {}): new replica, waiting for its leader", group,
                 partition);
    groups_[group] = std::move(*g);
  });
  cv_.notify_one();
}

void RaftHost::RemoveGroup(GroupId group, std::optional<raft::ConfState> if_conf) {
  std::lock_guard<std::mutex> l(mu_);
  if (!running_ || inbox_.stop) return;
  inbox_.tasks.push_back([this, group, if_conf = std::move(if_conf)] {
    auto it = groups_.find(group);
    if (it == groups_.end() || group == kMetadataGroup) return;
    Group& g = *it->second;
    if (if_conf && g.node->conf_state() != *if_conf) {
      spdlog::info("raft group {}: membership changed since removal was decided; replica kept",
                   group);
      return;
    }
    FailPending(g, absl::UnavailableError("replica removed from this node"));
    AnswerReads(g, /*gone=*/true);
    rocksdb::WriteBatch batch;
    StageWipe(engine_, group, g.log->hard_state(), &batch);
    if (absl::Status s = engine_.Write(&batch); !s.ok()) Fatal("removing a replica", s);
    spdlog::info("raft group {} (partition {}): replica removed from this node", group,
                 g.partition);
    // A later replica of the group must not inherit this one's pending durability marks.
    for (Outgoing& o : outgoing_) {
      std::erase_if(o.written, [group](const auto& w) { return w.first == group; });
      std::erase(o.senders, group);
    }
    groups_.erase(it);
  });
  cv_.notify_one();
}

void RaftHost::ReconcileMembership(TargetFn target) {
  std::lock_guard<std::mutex> l(mu_);
  if (!running_ || inbox_.stop) return;
  inbox_.tasks.push_back([this, target = std::move(target)] {
    for (auto& [id, g] : groups_) {
      if (g->node->role() != raft::Role::kLeader || g->installing) continue;
      std::optional<MembershipTarget> t = target(id);
      if (t.has_value() && !t->voters.empty()) ReconcileGroup(*g, *t);
    }
  });
  cv_.notify_one();
}

void RaftHost::ReconcileGroup(Group& g, const MembershipTarget& t) {
  raft::Node& node = *g.node;
  const raft::ConfState& cs = node.conf_state();
  auto in = [](const std::vector<raft::NodeId>& v, raft::NodeId n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  };
  auto change = [&](raft::ConfChangeType type, raft::NodeId n) {
    absl::Status s = node.ProposeConfChange({type, n});
    if (s.ok()) {
      spdlog::info("raft group {}: proposing {} node {}", g.id,
                   type == raft::ConfChangeType::kAddLearner  ? "add learner"
                   : type == raft::ConfChangeType::kAddVoter ? "promote"
                                                              : "remove",
                   n);
    }
  };
  // One change at a time (Raft refuses another while one is uncommitted): additions first, so
  // that a group never has fewer replicas than its target while it moves.
  for (const auto* list : {&t.voters, &t.learners}) {
    for (raft::NodeId n : *list) {
      if (!cs.IsMember(n)) return change(raft::ConfChangeType::kAddLearner, n);
    }
  }
  for (raft::NodeId n : t.voters) {
    // Refused until the learner has caught up; retried on the next round.
    if (cs.IsLearner(n)) return change(raft::ConfChangeType::kAddVoter, n);
  }
  std::vector<raft::NodeId> members = cs.voters;
  members.insert(members.end(), cs.learners.begin(), cs.learners.end());
  for (raft::NodeId n : members) {
    if (in(t.voters, n) || in(t.learners, n)) continue;
    if (n != options_.node_id) return change(raft::ConfChangeType::kRemoveNode, n);
    // This node leaves: hand leadership to the most caught-up target voter first.
    raft::NodeId best = MostCaughtUpLiveVoter(node, t.voters);
    if (best != raft::kNoNode && node.transferee() == raft::kNoNode) {
      node.TransferLeadership(best).IgnoreError();
    }
    return;
  }
}

absl::Status RaftHost::BeginSnapshotInstall(GroupId group, uint64_t index, uint64_t term,
                                            bool* skip_data) {
  return RunOnHost([&]() -> absl::Status {
    auto it = groups_.find(group);
    if (it == groups_.end()) {
      if (group == kMetadataGroup) return absl::NotFoundError("no metadata group on this node");
      auto g = CreateGroup(group, static_cast<uint32_t>(group - 1), {});
      if (!g.ok()) return g.status();
      it = groups_.emplace(group, std::move(*g)).first;
    }
    Group& g = *it->second;
    // Raft §5.1: a message from an older term is ignored; so is its image.
    if (term < g.node->term()) {
      return absl::FailedPreconditionError(StrCat("snapshot from term ", term,
                                                  " is older than this replica's term ",
                                                  g.node->term()));
    }
    // Raft ignores a snapshot at or below its commit index; committed entries still waiting
    // for their fsync (the stash) are applied later, so the image must not replace them.
    if (!g.installing && (g.applied() >= index || g.node->committed() >= index)) {
      *skip_data = true;
      return absl::OkStatus();
    }
    *skip_data = false;
    g.installing = true;
    g.stash.clear();  // the image supersedes committed entries not applied yet
    Wake(g);
    FailPending(g, absl::UnavailableError("replica is installing a snapshot; outcome unknown"));
    AnswerReads(g, /*gone=*/true);  // the state is about to be replaced
    rocksdb::WriteBatch batch;
    std::string prefix = GroupStatePrefix(group);
    batch.Put(engine_.handle(storage::Family::kRaftState), storage::RaftStateKey(group, 'i'),
              std::to_string(index));
    engine_.StageDeleteRange(&batch, storage::Family::kPartition, prefix, PrefixEnd(prefix));
    return engine_.Write(&batch);
  });
}

absl::Status RaftHost::WriteSnapshotRecords(GroupId group, std::string_view records) {
  // Records: [key length u32][key][value length u32][value]..., every key under the group's
  // prefix. The group is paused (installing), so nothing else writes these keys.
  const std::string prefix = GroupStatePrefix(group);
  rocksdb::WriteBatch batch;
  std::string_view in = records;
  while (!in.empty()) {
    uint32_t klen = 0, vlen = 0;
    if (!storage::GetU32(&in, &klen) || in.size() < klen) {
      return absl::InvalidArgumentError("snapshot record truncated");
    }
    std::string_view key = in.substr(0, klen);
    in.remove_prefix(klen);
    if (!storage::GetU32(&in, &vlen) || in.size() < vlen) {
      return absl::InvalidArgumentError("snapshot record truncated");
    }
    std::string_view value = in.substr(0, vlen);
    in.remove_prefix(vlen);
    if (key.substr(0, prefix.size()) != prefix) {
      return absl::InvalidArgumentError("snapshot record outside the group's keys");
    }
    batch.Put(engine_.handle(storage::Family::kPartition), key, value);
  }
  return engine_.Write(&batch);
}

absl::Status RaftHost::FinishSnapshotInstall(GroupId group, raft::Message message,
                                             bool data_written) {
  return RunOnHost([&]() -> absl::Status {
    auto it = groups_.find(group);
    if (it == groups_.end()) return absl::NotFoundError(StrCat("no group ", group));
    Group& g = *it->second;
    if (message.snapshot == nullptr) return absl::InvalidArgumentError("no snapshot metadata");
    if (data_written) {
      if (!g.installing) return absl::FailedPreconditionError("no installation in progress");
      const uint64_t index = message.snapshot->metadata.index;
      if (g.meta) {
        auto meta = MetadataStateMachine::Open(engine_);
        if (!meta.ok()) return meta.status();
        if ((*meta)->applied_index() != index) {
          return absl::DataLossError("metadata snapshot image is not at its index");
        }
        g.meta = std::move(*meta);
      } else {
        auto sm = broker::PartitionStateMachine::Open(engine_, g.partition);
        if (!sm.ok()) return sm.status();
        if ((*sm)->applied_index() != index) {
          return absl::DataLossError(StrCat("partition snapshot image is at ",
                                            (*sm)->applied_index(), ", not ", index));
        }
        g.sm = std::move(*sm);
      }
      rocksdb::WriteBatch batch;
      batch.Delete(engine_.handle(storage::Family::kRaftState), storage::RaftStateKey(group, 'i'));
      if (absl::Status s = engine_.Write(&batch); !s.ok()) Fatal("finishing a snapshot", s);
      g.installing = false;
      g.LoadConf();
      if (g.meta && metadata_listener_) metadata_listener_(g.meta->state());
    }
    auto snap = std::make_shared<raft::Snapshot>(*message.snapshot);
    snap->data = std::string(kStreamedSnapshot);
    message.snapshot = std::move(snap);
    return g.node->Step(std::move(message));
  });
}

absl::Status RaftHost::Start() {
  std::lock_guard<std::mutex> l(mu_);
  if (running_) return absl::FailedPreconditionError("raft host already running");
  running_ = true;
  {
    std::lock_guard<std::mutex> sl(sync_mu_);
    sync_stop_ = false;
    sync_requested_ = 0;
  }
  syncer_ = std::thread([this] { RunSyncer(); });
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void RaftHost::RunSyncer() {
  SetThreadName("raft-sync");
  uint64_t done = 0;
  std::unique_lock<std::mutex> l(sync_mu_);
  while (true) {
    sync_cv_.wait(l, [&] { return sync_stop_ || sync_requested_ > done; });
    if (sync_stop_) return;
    // Everything in the WAL buffer when the sync starts is covered, including passes written
    // after the request.
    const uint64_t target =
        std::max(sync_requested_, buffered_seq_.load(std::memory_order_acquire));
    l.unlock();
    auto start = std::chrono::steady_clock::now();
    absl::Status s = engine_.SyncWal();
    if (!s.ok()) Fatal("syncing the write-ahead log", s);
    stats_.syncs.fetch_add(1, std::memory_order_relaxed);
    stats_.write_nanos.fetch_add(
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                  std::chrono::steady_clock::now() - start)
                                  .count()),
        std::memory_order_relaxed);
    done = target;
    {
      std::lock_guard<std::mutex> hl(mu_);
      inbox_.synced = std::max(inbox_.synced, target);
    }
    cv_.notify_one();
    l.lock();
  }
}

void RaftHost::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_) return;
    inbox_.stop = true;
  }
  cv_.notify_one();
  thread_.join();
  {
    std::lock_guard<std::mutex> sl(sync_mu_);
    sync_stop_ = true;
  }
  sync_cv_.notify_one();
  syncer_.join();
  // Held messages are dropped (as a network may drop them); a restarted host starts clean.
  outgoing_.clear();
  sync_in_flight_ = false;
  for (auto& [id, g] : groups_) g->unsent = 0;
  std::lock_guard<std::mutex> l(mu_);
  running_ = false;
  // Proposals that never reached the thread.
  for (auto& [g, cmd, done, n] : inbox_.proposals) {
    done({absl::UnavailableError("raft host stopped"), 0, {}});
  }
  inbox_ = Inbox();
}

void RaftHost::Deliver(GroupId group, raft::Message message, bool quiesce) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_) return;
    inbox_.messages.push_back(Inbound{group, std::move(message), quiesce});
  }
  cv_.notify_one();
}

void RaftHost::DeliverAll(std::vector<Inbound> messages) {
  if (messages.empty()) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!running_) return;
    if (inbox_.messages.empty()) {
      inbox_.messages = std::move(messages);
    } else {
      for (Inbound& in : messages) inbox_.messages.push_back(std::move(in));
    }
  }
  cv_.notify_one();
}

void RaftHost::RunDownElectionTimer(raft::Node& node) {
  // The election timeout is randomized in [election_ticks, 2 * election_ticks): after
  // election_ticks - 1 ticks the lease has all but run out and the campaign keeps its jitter.
  for (int i = 0; i + 1 < options_.election_ticks; ++i) node.Tick();
}

raft::NodeId RaftHost::MostCaughtUpLiveVoter(const raft::Node& node,
                                             const std::vector<raft::NodeId>& candidates) {
  raft::NodeId best = raft::kNoNode;
  uint64_t best_match = 0;
  for (raft::NodeId v : candidates) {
    if (v == options_.node_id || !node.conf_state().IsVoter(v) ||
        !PeerAlive(v, kTransferLiveness)) {
      continue;
    }
    const raft::Progress* pr = node.progress(v);
    if (pr != nullptr && (best == raft::kNoNode || pr->match > best_match)) {
      best = v;
      best_match = pr->match;
    }
  }
  return best;
}

bool RaftHost::PeerAlive(raft::NodeId node, int election_timeouts) {
  if (node == options_.node_id) return true;
  auto now = clock_.Now();
  std::lock_guard<std::mutex> l(heard_mu_);
  auto it = heard_.find(node);
  return it != heard_.end() &&
         now - it->second < options_.tick * options_.election_ticks * election_timeouts;
}

void RaftHost::HeardFrom(raft::NodeId node) {
  auto now = clock_.Now();
  std::lock_guard<std::mutex> l(heard_mu_);
  heard_[node] = now;
}

void RaftHost::Propose(GroupId group, std::string command, ProposalCallback done) {
  ProposePublish(group, std::move(command), 0, std::move(done));
}

void RaftHost::ProposePublish(GroupId group, std::string command, size_t messages,
                              ProposalCallback done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (running_ && !inbox_.stop) {
      inbox_.proposals.emplace_back(group, std::move(command), std::move(done), messages);
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
    if (it == groups_.end()) return;
    if (!PeerAlive(to, kTransferLiveness)) {
      spdlog::info("raft group {}: not transferring leadership to node {}: not heard from lately",
                   group, to);
      return;
    }
    it->second->node->TransferLeadership(to).IgnoreError();
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
        raft::NodeId best = MostCaughtUpLiveVoter(node, node.conf_state().voters);
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
      if (it == groups_.end() || !it->second->sm) {
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
        if (it == groups_.end() || !it->second->sm) {
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

void RaftHost::ReadLinearizable(GroupId group, ReadFn fn) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (running_ && !inbox_.stop) {
      inbox_.tasks.push_back([this, group, fn = std::move(fn)]() mutable {
        auto it = groups_.find(group);
        if (it == groups_.end() || !it->second->sm) {
          fn(nullptr, nullptr);
          return;
        }
        Group& g = *it->second;
        if (g.installing) {
          fn(nullptr, nullptr);  // its state is being replaced
          return;
        }
        if (g.node->role() != raft::Role::kLeader) {
          GroupStatus st = StatusOf(g);
          fn(g.sm.get(), &st);  // not the leader: the reader refuses with a hint
          return;
        }
        // A quiesced leader ticks again: its heartbeat round wakes the followers, which must
        // then keep hearing from it.
        Wake(g);
        if (g.reads_asked.empty()) groups_with_reads_.push_back(group);
        g.reads_asked.push_back(std::move(fn));
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
  st.applied = g.applied();
  st.last_index = g.node->last_index();
  st.first_index = g.log->FirstIndex();
  st.conf_state = g.node->conf_state();
  if (st.role == raft::Role::kLeader) {
    // Also on the read path (every ReadAsync): inline storage, no allocation for small groups.
    auto add = [&](raft::NodeId id) {
      if (id == g.node->id()) {
        st.match.emplace_back(id, std::min(g.durable, g.node->last_index()));
        return;
      }
      const raft::Progress* pr = g.node->progress(id);
      st.match.emplace_back(id, pr != nullptr ? pr->match : 0);
    };
    for (raft::NodeId id : st.conf_state.voters) add(id);
    for (raft::NodeId id : st.conf_state.learners) add(id);
    std::sort(st.match.begin(), st.match.end());
  }
  st.partition = g.partition;
  st.quiesced = g.quiesced;
  if (g.sm) {
    st.last_offset = g.sm->last_offset();
    st.stored_messages = g.sm->state().message_count();
    st.stored_bytes = g.sm->state().message_bytes();
    st.trimmed_messages = g.sm->state().trimmed_messages();
  }
  return st;
}

std::vector<GroupStatus> RaftHost::Status() {
  std::promise<std::vector<GroupStatus>> done;
  auto f = done.get_future();
  auto collect = [this] {
    std::vector<GroupStatus> out;
    for (auto& [id, g] : groups_) {
      if (g->sm) out.push_back(StatusOf(*g));
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
  SetThreadName("raft-host");
  auto next_tick = clock_.Now() + options_.tick;
  while (true) {
    Inbox inbox;
    {
      std::unique_lock<std::mutex> l(mu_);
      auto has_work = [this] {
        return inbox_.stop || !inbox_.messages.empty() || !inbox_.proposals.empty() ||
               !inbox_.tasks.empty() || inbox_.synced != 0;
      };
      // The clock may be a test clock; wait in real time slices of at most one tick.
      if (!has_work()) cv_.wait_for(l, options_.tick, has_work);
      std::swap(inbox, inbox_);
      // Stopping: this is the last pass; later requests are refused, not queued and dropped.
      inbox_.stop = inbox.stop;
    }
    if (inbox.synced != 0) {
      sync_in_flight_ = false;  // the syncer reports only the one fsync it was asked for
      Release(inbox.synced);
    }
    // Ticks that are due. After a long stall, do not replay a storm of ticks.
    int ticks = 0;
    auto now = clock_.Now();
    while (now >= next_tick && ticks <= options_.election_ticks) {
      ++ticks;
      next_tick += options_.tick;
    }
    if (now >= next_tick) next_tick = now + options_.tick;
    if (ticks > 0) {
      // Quiescence first: a group quiesced now must not also tick (its heartbeats would wake
      // the followers the quiesce heartbeat just put to rest).
      TickQuiescence(ticks);
      for (auto& [id, g] : groups_) {
        if (g->installing || g->quiesced) continue;
        for (int i = 0; i < ticks; ++i) g->node->Tick();
      }
      transport_.Tick();
      if (options_.retention_max_age.count() > 0 || options_.retention_max_bytes > 0) {
        // A few groups per tick, each read bounded (PlanRetention): never a long stall of
        // this thread, however many groups or however much there is to remove.
        // Round-robin from the group after the last one planned, so that groups with much to
        // remove (due again as soon as their trim applies) do not starve the others.
        int planned = 0;
        auto start = groups_.upper_bound(retention_cursor_);
        for (size_t n = 0; n < groups_.size() && planned < kRetentionPlansPerTick; ++n) {
          if (start == groups_.end()) start = groups_.begin();
          if (MaybeProposeRetention(*start->second, now)) {
            ++planned;
            retention_cursor_ = start->first;
          }
          ++start;
        }
      }
    }
    RunPass(inbox);
    if (inbox.stop) break;
  }
  for (auto& [id, g] : groups_) {
    FailPending(*g, absl::UnavailableError("raft host stopped; outcome unknown"));
    AnswerReads(*g, /*gone=*/true);
  }
}

void RaftHost::FailPending(Group& g, const absl::Status& why) {
  auto pending = std::move(g.pending);
  g.pending.clear();
  for (auto& [index, p] : pending) p.done({why, g.node->leader(), {}});
}

void RaftHost::AnswerReads(Group& g, bool gone) {
  std::vector<ReadFn> all = std::move(g.reads_asked);
  g.reads_asked.clear();
  for (auto& [ctx, fns] : g.reads_waiting) {
    for (auto& fn : fns) all.push_back(std::move(fn));
  }
  g.reads_waiting.clear();
  for (auto& [index, fns] : g.reads_ready) {
    for (auto& fn : fns) all.push_back(std::move(fn));
  }
  g.reads_ready.clear();
  if (all.empty()) return;
  GroupStatus st = StatusOf(g);
  for (auto& fn : all) {
    if (gone || !g.sm) {
      fn(nullptr, nullptr);
    } else {
      fn(g.sm.get(), &st);  // no longer the leader: the reader refuses with a hint
    }
  }
}

void RaftHost::ServeReads(Group& g) {
  if (g.reads_ready.empty()) return;
  GroupStatus st = StatusOf(g);
  while (!g.reads_ready.empty() && g.reads_ready.front().first <= g.applied()) {
    auto fns = std::move(g.reads_ready.front().second);
    g.reads_ready.pop_front();
    for (auto& fn : fns) fn(g.sm.get(), &st);
  }
}

void RaftHost::RunPass(Inbox& inbox) {
  for (Inbound& in : inbox.messages) {
    auto it = groups_.find(in.group);
    if (it == groups_.end() || it->second->installing) continue;
    Group& g = *it->second;
    const raft::MessageType type = in.message.type;
    const raft::NodeId from = in.message.from;
    const uint64_t term = in.message.term;
    if (g.quiesced && !in.quiesce && type != raft::MessageType::kHeartbeatResp) {
      Wake(g);
      // Woken by someone else (a vote request, most likely) while the leader's node is silent:
      // let the lease run out now, as TickQuiescence would have, so that this replica can
      // grant the vote instead of waiting a whole election timeout first.
      const raft::NodeId leader = g.node->leader();
      if (g.node->role() != raft::Role::kLeader && leader != raft::kNoNode && leader != from &&
          !PeerAlive(leader)) {
        RunDownElectionTimer(*g.node);
      }
    }
    g.node->Step(std::move(in.message)).IgnoreError();
    if (in.quiesce) {
      // The leader's last heartbeat before it goes quiet: stop ticking, unless it is not (or
      // no longer) this replica's leader in this term.
      g.quiesced = g.node->role() != raft::Role::kLeader && g.node->leader() == from &&
                   g.node->term() == term;
    }
  }
  for (auto& task : inbox.tasks) task();
  // One ReadIndex (one heartbeat round) per group for the reads asked since the last pass.
  for (GroupId id : groups_with_reads_) {
    auto it = groups_.find(id);
    if (it == groups_.end() || it->second->reads_asked.empty()) continue;
    Group& g = *it->second;
    if (g.installing || g.node->role() != raft::Role::kLeader) {
      AnswerReads(g, /*gone=*/g.installing);  // a task of this pass changed that
      continue;
    }
    const uint64_t ctx = next_read_ctx_++;
    std::string context;
    storage::PutU64(&context, ctx);
    if (absl::Status s = g.node->ReadIndex(context); !s.ok()) {
      AnswerReads(g, /*gone=*/false);
      continue;
    }
    g.reads_waiting[ctx] = std::move(g.reads_asked);
    g.reads_asked.clear();
  }
  groups_with_reads_.clear();
  // Publish proposals of one group that arrived together become one entry (up to 1 MiB); the
  // others keep their place in the group's order.
  constexpr size_t kMaxMergedBytes = 1 << 20;
  struct Part {
    ProposalCallback done;
    size_t messages;
  };
  std::vector<std::tuple<GroupId, std::string, ProposalCallback>> proposals;
  std::vector<std::shared_ptr<std::vector<Part>>> parts;  // per merged proposal, else null
  std::map<GroupId, size_t> open;  // group -> its mergeable proposal being built
  for (auto& [group, cmd, done, n] : inbox.proposals) {
    if (n > 0) {
      auto o = open.find(group);
      if (o != open.end() && std::get<1>(proposals[o->second]).size() + cmd.size() <= kMaxMergedBytes) {
        std::get<1>(proposals[o->second]).append(cmd);
        parts[o->second]->push_back(Part{std::move(done), n});
        continue;
      }
      open[group] = proposals.size();
      proposals.emplace_back(group, std::move(cmd), nullptr);
      parts.push_back(std::make_shared<std::vector<Part>>());
      parts.back()->push_back(Part{std::move(done), n});
    } else {
      open.erase(group);
      proposals.emplace_back(group, std::move(cmd), std::move(done));
      parts.push_back(nullptr);
    }
  }
  for (size_t i = 0; i < proposals.size(); ++i) {
    if (!parts[i]) continue;
    if (parts[i]->size() == 1) {
      std::get<2>(proposals[i]) = std::move(parts[i]->front().done);
      continue;
    }
    // Each caller gets the results of its own messages, in order.
    std::get<2>(proposals[i]) = [p = parts[i]](ProposalResult r) {
      size_t at = 0;
      for (Part& part : *p) {
        ProposalResult mine{r.status, r.leader_hint, {}};
        for (size_t k = 0; k < part.messages && at < r.apply.publish.size(); ++k) {
          mine.apply.publish.push_back(std::move(r.apply.publish[at++]));
        }
        part.done(std::move(mine));
      }
    };
  }
  for (auto& [group, cmd, done] : proposals) {
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
  struct Collected {
    Group* group;
    raft::Ready rd;
    bool has_ready;
    size_t applied;  // entries applied in this pass
  };
  std::vector<Collected> readies;
  std::vector<Applied> applied;
  // Sized like the last pass's batch (up to 1 MiB): a busy pass appends tens of kilobytes,
  // which would otherwise be copied over and over as the buffer grows.
  rocksdb::WriteBatch batch(std::min<size_t>(last_batch_bytes_, 1 << 20));
  Outgoing out;
  // Pipelined fsync (raft_host.h): with syncing on, the write returns before the disk has it;
  // the syncer makes it durable and Release() then sends what depends on it.
  const bool pipelined = engine_.syncs();
  for (auto& [id, gp] : groups_) {
    Group& g = *gp;
    const bool has_ready = g.node->HasReady();
    if (!has_ready && (g.stash.empty() || g.stash.front().index > g.durable)) continue;
    raft::Ready rd;
    if (has_ready) {
      rd = g.node->GetReady();
      for (const raft::ReadState& rs : rd.read_states) {
        std::string_view in = rs.context;
        uint64_t ctx = 0;
        if (!storage::GetU64(&in, &ctx)) continue;
        auto w = g.reads_waiting.find(ctx);
        if (w == g.reads_waiting.end()) continue;
        g.reads_ready.emplace_back(rs.index, std::move(w->second));
        g.reads_waiting.erase(w);
      }
      absl::Status s = g.log->StageReady(rd, &batch);
      if (!s.ok()) Fatal(StrCat("group ", id, ": staging Ready"), s);
      if (!rd.snapshot.IsEmpty() && g.applied() < rd.snapshot.metadata.index) {
        // Snapshots are written by FinishSnapshotInstall before Raft sees them.
        Fatal(StrCat("group ", id, ": snapshot at ", rd.snapshot.metadata.index),
              absl::InternalError(StrCat("state machine image is at ", g.applied())));
      }
      // Activity wakes a quiesced group and restarts a leader's idle count: new entries, a
      // snapshot, an election, any message other than a heartbeat or its response. A follower
      // learning its leader or commit index from a quiesce heartbeat is not activity.
      bool active = !rd.entries.empty() || !rd.snapshot.IsEmpty() ||
                    (rd.soft_state && rd.soft_state->role != raft::Role::kFollower);
      for (const raft::Message& m : rd.messages) {
        active = active || (m.type != raft::MessageType::kHeartbeat &&
                            m.type != raft::MessageType::kHeartbeatResp);
      }
      if (active) Wake(g);
      // What this pass writes replaces the log from `keep` + 1 on (a snapshot, a follower's
      // conflicting suffix, or plain appends): nothing above `keep` is durable until this
      // pass's fsync, whatever earlier passes wrote there.
      uint64_t written = 0;
      uint64_t keep = UINT64_MAX;
      if (!rd.snapshot.IsEmpty()) {
        written = rd.snapshot.metadata.index;
        keep = written;
      }
      if (!rd.entries.empty()) {
        keep = std::min(keep, rd.entries.front().index - 1);
        written = rd.entries.back().index;
      }
      if (keep != UINT64_MAX) {
        g.durable = std::min(g.durable, keep);
        for (Outgoing& o : outgoing_) {
          for (auto& [wg, wi] : o.written) {
            if (wg == id) wi = std::min(wi, keep);
          }
        }
      }
      if (written != 0) {
        if (pipelined) {
          out.written.emplace_back(id, written);
        } else {
          g.durable = std::max(g.durable, written);  // written in this pass's synchronous batch
        }
      }
      if (!rd.committed_entries.empty()) {
        // The entries move to the stash; Advance() only needs the last one's position.
        raft::Entry last;
        last.index = rd.committed_entries.back().index;
        last.term = rd.committed_entries.back().term;
        for (raft::Entry& e : rd.committed_entries) g.stash.push_back(std::move(e));
        rd.committed_entries.clear();
        rd.committed_entries.push_back(std::move(last));
      }
    }
    // Apply the committed entries whose log entry is durable here (the others wait, in order).
    size_t n = 0;
    while (!g.stash.empty() && g.stash.front().index <= g.durable) {
      const raft::Entry& e = g.stash.front();
      ++n;
      if (e.type == raft::EntryType::kConfChange) {
        ApplyConfEntry(g, e, &batch);
        applied.push_back(Applied{&g, e.index, e.term, {}});
      } else if (g.meta) {
        if (!e.data.empty()) {
          absl::Status ms = g.meta->Apply(e.index, e.data, &batch);
          if (!ms.ok()) Fatal(StrCat("metadata group: applying entry ", e.index), ms);
        } else {
          g.meta->ApplyOther(e.index, &batch);
        }
        applied.push_back(Applied{&g, e.index, e.term, {}});
      } else if (!e.data.empty()) {
        auto r = g.sm->Apply(e.index, e.data, &batch);
        if (!r.ok()) Fatal(StrCat("group ", id, ": applying entry ", e.index), r.status());
        uint64_t through = r->compact_log_through;
        if (through > 0 && through >= g.conf_index && through > g.log->FirstIndex() &&
            through < e.index) {
          // Every replica applies this at the same log position and discards the same prefix;
          // the membership at `through` is the applied one (no change since conf_index).
          absl::Status cs =
              g.log->CreateSnapshot(through, g.applied_conf, "log-compaction", &batch);
          if (!cs.ok()) Fatal(StrCat("group ", id, ": compacting the log"), cs);
        }
        if (through >= g.compaction_proposed) g.compaction_proposed = 0;
        applied.push_back(Applied{&g, e.index, e.term, std::move(*r)});
      } else {
        g.sm->ApplyOther(e.index);
        applied.push_back(Applied{&g, e.index, e.term, {}});
      }
      g.stash.pop_front();
    }
    if (n > 0 && g.sm) g.sm->StageApplied(&batch);
    readies.push_back(Collected{&g, std::move(rd), has_ready, n});
  }
  stats_.passes.fetch_add(1, std::memory_order_relaxed);
  if (readies.empty()) return;
  auto write_start = std::chrono::steady_clock::now();
  last_batch_bytes_ = batch.GetDataSize();
  absl::Status s = pipelined ? engine_.WriteBuffered(&batch) : engine_.Write(&batch);
  if (!s.ok()) Fatal("group commit write", s);
  stats_.write_batches.fetch_add(1, std::memory_order_relaxed);
  stats_.write_nanos.fetch_add(
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::steady_clock::now() - write_start)
                                .count()),
      std::memory_order_relaxed);
  stats_.entries_applied.fetch_add(applied.size(), std::memory_order_relaxed);

  for (Collected& c : readies) {
    if (c.group->meta) {
      // Before any message leaves: the transport must know nodes this entry added.
      if (metadata_listener_ && c.applied > 0) metadata_listener_(c.group->meta->state());
      continue;
    }
    c.group->sm->Flushed();
  }
  bool sent_early = false;
  for (Collected& c : readies) {
    Group* g = c.group;
    bool held = false;
    for (raft::Message& m : c.rd.messages) {
      if (pipelined &&
          (m.type == raft::MessageType::kAppend || m.type == raft::MessageType::kHeartbeat)) {
        // A leader's appends and heartbeats depend on nothing unsynced: its term is durable,
        // its commit index counts itself only for durable entries (self_ack_on_persist), and
        // followers acknowledge only what they made durable. Sending them now overlaps this
        // node's fsync with the followers' (Raft dissertation §10.2.1).
        stats_.messages_sent.fetch_add(1, std::memory_order_relaxed);
        transport_.Send(g->id, std::move(m));
        sent_early = true;
        continue;
      }
      held = true;
      if (m.type == raft::MessageType::kSnapshot) {
        std::shared_ptr<SnapshotSource> source = g->outgoing;
        if (source && m.snapshot && source->index == m.snapshot->metadata.index) {
          out.snapshots.emplace_back(g->id, std::move(m), std::move(source));
        }
        continue;
      }
      out.messages.emplace_back(g->id, std::move(m));
    }
    if (held) {
      ++g->unsent;
      out.senders.push_back(g->id);
    }
    g->outgoing.reset();
  }
  if (sent_early) transport_.Flush();
  // A pass that wrote no log entries and holds no messages (a leader applying what its
  // followers acknowledged, say) needs no fsync of its own: what it wrote is applied state,
  // which a restart rebuilds from the durable log (the applied index is in the same batch, and
  // the WAL is recovered as a prefix). A later fsync covers it anyway.
  const bool depends_on_sync = !out.written.empty() || !out.senders.empty();
  if (!pipelined || depends_on_sync) {
    out.seq = ++write_seq_;
    outgoing_.push_back(std::move(out));
    buffered_seq_.store(write_seq_, std::memory_order_release);
  }
  if (!pipelined) {
    Release(write_seq_);
  } else if (depends_on_sync && !sync_in_flight_) {
    sync_in_flight_ = true;
    {
      std::lock_guard<std::mutex> l(sync_mu_);
      sync_requested_ = write_seq_;
    }
    sync_cv_.notify_one();
  }

  // Every applied entry is durable here, so answers need not wait for this pass's fsync.
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
      for (Collected& c : readies) {
        if (c.applied == 0 && !c.rd.soft_state) continue;
        auto it = watchers_.find(c.group->id);
        if (it == watchers_.end()) continue;
        for (auto& [wid, fn] : it->second) fn();
      }
    }
  }
  for (Collected& c : readies) {
    Group* g = c.group;
    if (c.rd.soft_state && c.rd.soft_state->leader != g->last_leader) {
      g->last_leader = c.rd.soft_state->leader;
      stats_.leader_changes.fetch_add(1, std::memory_order_relaxed);
    }
    bool leader = g->node->role() == raft::Role::kLeader;
    if (leader != g->was_leader) {
      // Debug: a node starting up leads or follows every group, which is not news.
      spdlog::debug("raft group {}: {} in term {}", g->id,
                   leader ? std::string("leading") : StrCat("no longer leading, leader ",
                                                            g->node->leader()),
                   g->node->term());
    }
    if (g->was_leader && !leader) {
      FailPending(*g, absl::UnavailableError("leadership lost; outcome unknown"));
      g->compaction_proposed = 0;
      g->retention_proposed = 0;
    }
    // Not (or no longer) the leader: its reads are refused with a hint.
    if (!leader && g->reads_pending()) AnswerReads(*g, /*gone=*/false);
    if (leader && !g->installing) ServeReads(*g);
    g->was_leader = leader;
    if (c.has_ready) g->node->Advance(c.rd);
    if (leader) MaybeProposeCompaction(*g);
  }
}

void RaftHost::Release(uint64_t synced) {
  bool sent = false;
  while (!outgoing_.empty() && outgoing_.front().seq <= synced) {
    Outgoing& o = outgoing_.front();
    for (const auto& [id, index] : o.written) {
      auto it = groups_.find(id);
      if (it == groups_.end()) continue;
      it->second->durable = std::max(it->second->durable, index);
      it->second->node->LocalPersisted(index);  // a leader may now count itself
    }
    for (GroupId id : o.senders) {
      auto it = groups_.find(id);
      if (it != groups_.end()) --it->second->unsent;
    }
    stats_.messages_sent.fetch_add(o.messages.size() + o.snapshots.size(),
                                   std::memory_order_relaxed);
    for (auto& [id, m] : o.messages) transport_.Send(id, std::move(m));
    for (auto& [id, m, source] : o.snapshots) {
      transport_.SendSnapshot(id, std::move(m), std::move(source));
    }
    sent = sent || !o.messages.empty();
    outgoing_.pop_front();
  }
  if (sent) transport_.Flush();
  if (!outgoing_.empty() && engine_.syncs() && !sync_in_flight_) {
    // Passes written while that fsync ran: one more fsync covers them all.
    sync_in_flight_ = true;
    {
      std::lock_guard<std::mutex> l(sync_mu_);
      sync_requested_ = write_seq_;
    }
    sync_cv_.notify_one();
  }
}

void RaftHost::ApplyConfEntry(Group& g, const raft::Entry& e, rocksdb::WriteBatch* batch) {
  if (e.index <= g.applied()) return;
  auto cc = raft::DecodeConfChange(e.data);
  if (cc.ok()) {
    absl::Status s = raft::ApplyConfChange(*cc, &g.applied_conf);
    if (!s.ok()) spdlog::warn("raft group {}: membership entry {}: {}", g.id, e.index, s);
  }
  g.conf_index = e.index;
  if (g.meta) {
    g.meta->ApplyConf(e.index, g.applied_conf.voters, g.applied_conf.learners, batch);
  } else {
    g.sm->ApplyConf(e.index, g.applied_conf.voters, g.applied_conf.learners);
  }
  spdlog::info("raft group {}: membership now voters [{}] learners [{}]", g.id,
               fmt::join(g.applied_conf.voters, ","), fmt::join(g.applied_conf.learners, ","));
}

std::optional<GroupStatus> RaftHost::MetadataStatus() {
  std::optional<GroupStatus> out;
  absl::Status s = RunOnHost([&] {
    auto it = groups_.find(kMetadataGroup);
    if (it != groups_.end()) out = StatusOf(*it->second);
    return absl::OkStatus();
  });
  if (!s.ok()) return std::nullopt;
  return out;
}

void RaftHost::Wake(Group& g) {
  g.quiesced = false;
  g.idle_ticks = 0;
}

void RaftHost::Quiesce(Group& g) {
  raft::Node& node = *g.node;
  const raft::ConfState& cs = node.conf_state();
  for (const auto* list : {&cs.voters, &cs.learners}) {
    for (raft::NodeId m : *list) {
      if (m == options_.node_id) continue;
      raft::Message hb;
      hb.type = raft::MessageType::kHeartbeat;
      hb.to = m;
      hb.from = options_.node_id;
      hb.term = node.term();
      // As Node::BroadcastHeartbeat: never past what the member is known to hold (every
      // member's match is the last index here, checked by TickQuiescence).
      const raft::Progress* pr = node.progress(m);
      hb.commit = std::min(pr != nullptr ? pr->match : 0, node.committed());
      transport_.SendQuiesce(g.id, std::move(hb));
      stats_.messages_sent.fetch_add(1, std::memory_order_relaxed);
    }
  }
  g.quiesced = true;
}

void RaftHost::TickQuiescence(int ticks) {
  // A leader quiesces after this many idle ticks in a row.
  constexpr int kIdleTicksBeforeQuiesce = 3;
  bool sent = false;
  for (auto& [id, gp] : groups_) {
    Group& g = *gp;
    if (g.installing) continue;
    raft::Node& node = *g.node;
    const raft::ConfState& cs = node.conf_state();
    std::vector<raft::NodeId> members = cs.voters;
    members.insert(members.end(), cs.learners.begin(), cs.learners.end());
    if (g.quiesced) {
      for (raft::NodeId m : members) {
        if (PeerAlive(m)) continue;
        Wake(g);
        if (m == node.leader() && node.role() != raft::Role::kLeader) {
          // The leader's node went silent: campaign within one randomized timeout (not two).
          RunDownElectionTimer(node);
        }
        break;
      }
      continue;
    }
    bool idle = node.role() == raft::Role::kLeader && g.pending.empty() && g.stash.empty() &&
                !g.reads_pending() &&
                g.unsent == 0 &&
                g.compaction_proposed == 0 && node.transferee() == raft::kNoNode &&
                node.committed() == node.last_index() && node.applied() == node.committed() &&
                !node.HasReady();
    for (raft::NodeId m : members) {
      if (!idle) break;
      if (m == options_.node_id) continue;
      const raft::Progress* pr = node.progress(m);
      idle = pr != nullptr && pr->match == node.last_index() &&
             pr->state == raft::Progress::State::kReplicate && PeerAlive(m);
    }
    if (!idle) {
      g.idle_ticks = 0;
      continue;
    }
    g.idle_ticks += ticks;
    if (g.idle_ticks >= kIdleTicksBeforeQuiesce) {
      Quiesce(g);
      sent = sent || members.size() > 1;
    }
  }
  if (sent) transport_.Flush();
}

bool RaftHost::MaybeProposeRetention(Group& g, Clock::MonotonicTime now_mono) {
  if (g.meta || !g.sm || g.installing || g.node->role() != raft::Role::kLeader) return false;
  if (g.retention_proposed != 0) {
    if (g.sm->applied_index() < g.retention_proposed) return false;  // still under way
    g.retention_proposed = 0;
  }
  if (now_mono < g.next_retention_check) return false;
  g.next_retention_check = now_mono + options_.retention_check_interval;
  const int64_t now =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_.WallNow().time_since_epoch())
          .count();
  // Reads what every earlier pass wrote: the state machine and the database agree here.
  auto plan = g.sm->PlanRetention(now, options_.retention_max_age.count(),
                                  options_.retention_max_bytes);
  if (!plan.ok()) {
    spdlog::warn("raft group {}: planning retention: {}", g.id, plan.status().ToString());
    return true;
  }
  if (!plan->has_value()) return true;
  v1::PartitionCommand cmd;
  cmd.set_proposed_at_unix_ms(now);
  *cmd.mutable_trim() = std::move(**plan);
  if (g.node->Propose(cmd.SerializeAsString()).ok()) {
    g.retention_proposed = g.node->last_index();
    // A plan stops at a bound: once this one is applied, plan the rest without waiting.
    g.next_retention_check = now_mono;
  }
  return true;
}

void RaftHost::MaybeProposeCompaction(Group& g) {
  if (options_.log_compact_threshold == 0 || g.meta || g.compaction_proposed != 0) return;
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
  if (through < g.conf_index) return;
  v1::PartitionCommand cmd;
  cmd.set_proposed_at_unix_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_.WallNow().time_since_epoch())
          .count());
  cmd.mutable_compact_log()->set_through_index(through);
  if (g.node->Propose(cmd.SerializeAsString()).ok()) g.compaction_proposed = through;
}

}  // namespace herald::cluster
