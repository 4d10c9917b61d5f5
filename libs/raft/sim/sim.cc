#include "libs/raft/sim/sim.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "libs/raft/node.h"
#include "libs/raft/storage.h"
#include "libs/raft/testing_knobs.h"

namespace herald::raft::sim {
namespace {

// ---------------------------------------------------------------------------------------------
// Deterministic randomness and hashing

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x2545F4914F6CDD1DULL + 0x9E3779B97F4A7C15ULL) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t Uniform(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  int64_t Range(int64_t lo, int64_t hi) {  // inclusive
    return lo + static_cast<int64_t>(Uniform(static_cast<uint64_t>(hi - lo + 1)));
  }
  bool Chance(double p) { return static_cast<double>(Next() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Uniform(v.size())];
  }

 private:
  uint64_t state_;
};

class NodeRandom : public RandomSource {
 public:
  explicit NodeRandom(uint64_t seed) : rng_(seed) {}
  uint64_t Uniform(uint64_t n) override { return rng_.Uniform(n); }

 private:
  Rng rng_;
};

uint64_t Mix(uint64_t h, uint64_t v) {
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t HashBytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

uint64_t EntryHash(const Entry& e) {
  return Mix(Mix(e.term, static_cast<uint64_t>(e.type)), HashBytes(e.data));
}

constexpr uint64_t kBootHash = 0x5eed;

std::string EncodeSm(uint64_t index, uint64_t hash) { return absl::StrCat(index, ":", hash); }

bool DecodeSm(const std::string& s, uint64_t* index, uint64_t* hash) {
  unsigned long long i = 0, h = 0;
  if (std::sscanf(s.c_str(), "%llu:%llu", &i, &h) != 2) return false;
  *index = i;
  *hash = h;
  return true;
}

// ---------------------------------------------------------------------------------------------
// The randomized environment of one seed.

struct Profile {
  int voters = 3;
  int nodes = 5;  // universe of ids; ids above `voters` start as non-members
  double drop = 0;
  double dup = 0;
  double long_delay = 0;
  int64_t max_delay = 10;
  int64_t max_disk = 2;
  bool pre_vote = true;
  bool check_quorum = true;
  bool membership = true;
  bool transfers = true;
  bool crashes = true;
  uint64_t max_size_per_msg = 1 << 20;
  size_t max_inflight = 256;
  uint64_t compact_every = 0;  // 0: never compact
  uint64_t max_uncommitted = 0;
  bool broadcast_commit = true;

  std::string Describe() const {
    return absl::StrCat("voters=", voters, " nodes=", nodes, " drop=", drop, " dup=", dup,
                        " long_delay=", long_delay, " disk<=", max_disk, "ms pre_vote=", pre_vote,
                        " check_quorum=", check_quorum, " membership=", membership,
                        " transfers=", transfers, " crashes=", crashes,
                        " max_size=", max_size_per_msg, " inflight=", max_inflight,
                        " compact_every=", compact_every, " max_uncommitted=", max_uncommitted,
                        " broadcast_commit=", broadcast_commit);
  }
};

Profile MakeProfile(const Options& o, Rng& rng) {
  Profile p;
  p.voters = o.voters > 0 ? o.voters : (rng.Chance(0.5) ? 3 : 5);
  p.nodes = p.voters + 2;
  p.drop = rng.Pick(std::vector<double>{0, 0.01, 0.05, 0.1, 0.2});
  p.dup = rng.Pick(std::vector<double>{0, 0.02, 0.1});
  p.long_delay = rng.Pick(std::vector<double>{0, 0.02, 0.1});
  p.max_delay = rng.Pick(std::vector<int64_t>{3, 10, 30});
  p.max_disk = rng.Pick(std::vector<int64_t>{0, 2, 10});
  p.pre_vote = rng.Chance(0.8);
  p.check_quorum = rng.Chance(0.8);
  // A removed node that does not know it was removed can only be kept from disrupting the
  // group by the check-quorum lease (dissertation §4.2.3).
  p.membership = p.check_quorum && rng.Chance(0.7);
  p.transfers = rng.Chance(0.7);
  p.crashes = rng.Chance(0.8);
  p.max_size_per_msg = rng.Pick(std::vector<uint64_t>{1, 200, 1 << 20});  // 1: one entry each
  p.max_inflight = rng.Pick(std::vector<size_t>{1, 4, 256});
  // One entry per message and one message in flight replicates a backlog at one entry per round
  // trip, too slow for the liveness bound; not a configuration anyone runs.
  if (p.max_size_per_msg == 1 && p.max_inflight == 1) p.max_inflight = 4;
  p.compact_every = rng.Pick(std::vector<uint64_t>{0, 5, 20, 100});
  p.max_uncommitted = rng.Pick(std::vector<uint64_t>{16, 64, 128});
  // From the seed, not the generator: the draws above (and so the recorded regression seeds)
  // stay as they were.
  p.broadcast_commit = Mix(o.seed, 0xbc) % 2 == 0;
  return p;
}

// ---------------------------------------------------------------------------------------------

struct SimNode {
  NodeId id = kNoNode;
  bool up = false;
  uint64_t incarnation = 0;
  int64_t tick_interval = 10;
  MemoryStorage durable;                 // what survives a crash (synced)
  std::unique_ptr<MemoryStorage> store;  // what the node reads: durable + written, unsynced
  std::unique_ptr<NodeRandom> random;
  std::unique_ptr<Node> node;
  std::optional<Ready> pending;  // written to `store`, waiting for the sync to complete
  // State machine (volatile; rebuilt from the durable snapshot on restart).
  uint64_t sm_index = 0;
  uint64_t sm_hash = 0;
  ConfState sm_conf;
  bool applied_live = false;
  // Prefix hashes of `store`'s log: chain[i - chain_base] for i in [chain_base, last].
  uint64_t chain_base = 0;
  std::vector<uint64_t> chain;
  uint64_t last_commit = 0;
  // Leader Append-Only: the end of the log as last seen while leading `lead_term`.
  uint64_t lead_term = 0;
  uint64_t lead_last = 0;
  uint64_t lead_last_term = 0;
};

class Simulation {
 public:
  explicit Simulation(const Options& o) : opt_(o), rng_(o.seed) {}
  Result Run();

 private:
  enum class Ev : uint8_t {
    kDeliver,
    kTick,
    kSync,
    kNemesis,
    kClient,
    kRestart,
    kHeal,
    kCrash,
    kIsolate
  };
  struct Event {
    int64_t time;
    uint64_t seq;
    Ev kind;
    NodeId node;
    uint64_t incarnation;
    size_t slot;
    bool operator>(const Event& o) const { return time != o.time ? time > o.time : seq > o.seq; }
  };

  void Schedule(int64_t at, Ev kind, NodeId node = kNoNode, uint64_t inc = 0, size_t slot = 0) {
    q_.push(Event{at, seq_++, kind, node, inc, slot});
  }
  void Fail(std::string what) {
    if (failed_) return;
    failed_ = true;
    res_.ok = false;
    res_.failure = absl::StrCat("t=", now_, "ms: ", what, " [", profile_.Describe(), "]");
    res_.failure_time_ms = now_;
  }
  template <typename... Args>
  void Trace(const Args&... args) {
    if (opt_.trace) std::fprintf(stderr, "%s\n", absl::StrCat("t=", now_, " ", args...).c_str());
  }

  SimNode& N(NodeId id) { return nodes_[id - 1]; }
  void Start(SimNode& n);
  void Crash(SimNode& n);
  void Pump(SimNode& n);
  void CompleteSync(SimNode& n);
  void WriteSnapshot(SimNode& n, const Snapshot& snap, MemoryStorage* to, bool volatile_view);
  void WriteEntries(SimNode& n, const std::vector<Entry>& ents);
  void ResetChain(SimNode& n);
  void Apply(SimNode& n, const Entry& e);
  void InstallSnapshot(SimNode& n, const Snapshot& snap);
  void MaybeCompact(SimNode& n);
  void Send(Message m);
  void Deliver(size_t slot);
  void Nemesis();
  void Isolate(NodeId id);
  void Client();
  void Heal();
  void Check();
  SimNode* Leader();
  std::string DescribeNodes();

  const Options opt_;
  Rng rng_;
  Profile profile_;
  Result res_;
  bool failed_ = false;
  int64_t now_ = 0;
  uint64_t seq_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> q_;
  std::vector<Message> slots_;
  std::vector<size_t> free_slots_;
  std::vector<SimNode> nodes_;
  std::vector<std::vector<bool>> blocked_;  // blocked_[from-1][to-1]
  std::vector<int64_t> link_last_;          // last in-order delivery time per link
  bool healed_ = false;
  int64_t heal_time_ = 0;
  bool committed_live_ = false;
  bool live_ = false;
  uint64_t client_seq_ = 0;

  // Checker state.
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, uint64_t> prefix_hash_;  // (index, term)
  std::map<uint64_t, NodeId> leader_of_term_;
  // Cluster term at observation -> highest commit index seen then, and that entry's term.
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> commit_obs_;
  std::vector<std::pair<uint64_t, uint64_t>> applied_;  // index -> (term, sm hash); (0,0) unknown
  absl::flat_hash_map<std::string, uint64_t> read_bound_;
  uint64_t max_commit_ = 0;       // highest index applied anywhere
  uint64_t max_commit_seen_ = 0;  // highest commit index any node has had
};

std::string Simulation::DescribeNodes() {
  std::string state;
  for (SimNode& n : nodes_) {
    if (!n.up) continue;
    absl::StrAppend(&state, " {", n.id, " ", RoleName(n.node->role()), " term=", n.node->term(),
                    " commit=", n.node->committed(), " applied=", n.sm_index,
                    " last=", n.node->last_index(), " live=", n.applied_live, "}");
  }
  return state;
}

Result Simulation::Run() {
  profile_ = MakeProfile(opt_, rng_);
  nodes_.resize(profile_.nodes);
  blocked_.assign(profile_.nodes, std::vector<bool>(profile_.nodes, false));
  link_last_.assign(profile_.nodes * profile_.nodes, 0);
  ConfState initial;
  for (int i = 1; i <= profile_.voters; ++i) initial.voters.push_back(i);
  prefix_hash_[{1, 1}] = kBootHash;
  applied_.resize(2);
  applied_[1] = {1, kBootHash};
  Trace("profile ", profile_.Describe());
  for (int i = 0; i < profile_.nodes; ++i) {
    SimNode& n = nodes_[i];
    n.id = i + 1;
    n.tick_interval = rng_.Range(9, 11);
    if (n.id <= static_cast<NodeId>(profile_.voters)) {
      Snapshot boot = MemoryStorage::BootstrapSnapshot(initial);
      boot.data = EncodeSm(1, kBootHash);
      (void)n.durable.ApplySnapshot(boot);
    }
    Start(n);
  }
  Schedule(rng_.Range(50, 300), Ev::kNemesis);
  Schedule(rng_.Range(1, 20), Ev::kClient);
  Schedule(opt_.chaos_ms, Ev::kHeal);
  const int64_t deadline = opt_.chaos_ms + std::max(opt_.liveness_ms, opt_.catchup_ms);
  while (!q_.empty() && !failed_ && !live_) {
    Event ev = q_.top();
    q_.pop();
    now_ = ev.time;
    if (now_ > deadline) break;
    ++res_.events;
    switch (ev.kind) {
      case Ev::kDeliver:
        Deliver(ev.slot);
        break;
      case Ev::kTick: {
        SimNode& n = N(ev.node);
        if (!n.up || n.incarnation != ev.incarnation) break;
        n.node->Tick();
        Pump(n);
        Schedule(now_ + n.tick_interval, Ev::kTick, n.id, n.incarnation);
        break;
      }
      case Ev::kSync: {
        SimNode& n = N(ev.node);
        if (!n.up || n.incarnation != ev.incarnation || !n.pending) break;
        CompleteSync(n);
        Pump(n);
        break;
      }
      case Ev::kNemesis:
        if (healed_) break;
        Nemesis();
        Schedule(now_ + rng_.Range(30, 300), Ev::kNemesis);
        break;
      case Ev::kClient:
        Client();
        Schedule(now_ + rng_.Range(5, 40), Ev::kClient);
        break;
      case Ev::kRestart: {
        SimNode& n = N(ev.node);
        if (!n.up && n.incarnation == ev.incarnation && !healed_) Start(n);
        break;
      }
      case Ev::kHeal:
        Heal();
        break;
      case Ev::kIsolate: {
        SimNode& n = N(ev.node);
        if (n.up && n.incarnation == ev.incarnation && !healed_) Isolate(n.id);
        break;
      }
      case Ev::kCrash: {
        SimNode& n = N(ev.node);
        if (n.up && n.incarnation == ev.incarnation && !healed_) {
          Crash(n);
          Schedule(now_ + rng_.Range(20, 1500), Ev::kRestart, n.id, n.incarnation);
        }
        break;
      }
    }
    if (!failed_) Check();
  }
  if (!failed_ && !live_) {
    Fail(absl::StrCat("liveness: not every member caught up within ", opt_.catchup_ms,
                      "ms after healing;", DescribeNodes()));
  }
  for (const SimNode& n : nodes_) {
    if (n.node) res_.max_term = std::max(res_.max_term, n.node->term());
  }
  res_.committed = max_commit_;
  return res_;
}

// ---------------------------------------------------------------------------------------------
// Hosts

void Simulation::Start(SimNode& n) {
  ++n.incarnation;
  n.up = true;
  n.pending.reset();
  n.store = std::make_unique<MemoryStorage>(n.durable);  // a restart sees only synced state
  n.random = std::make_unique<NodeRandom>(Mix(opt_.seed, n.id * 1000 + n.incarnation));
  Config c;
  c.id = n.id;
  c.storage = n.store.get();
  c.election_tick = 10;
  c.heartbeat_tick = 2;
  c.pre_vote = profile_.pre_vote;
  c.check_quorum = profile_.check_quorum;
  c.max_size_per_msg = profile_.max_size_per_msg;
  c.max_inflight_msgs = profile_.max_inflight;
  c.max_uncommitted_entries = profile_.max_uncommitted;
  c.broadcast_commit = profile_.broadcast_commit;
  c.random = n.random.get();
  if (opt_.break_vote_log_check) TestingKnobsAccess::BreakVoteLogCheck(&c.testing);
  if (opt_.commit_previous_term_by_counting) {
    TestingKnobsAccess::CommitPreviousTermByCounting(&c.testing);
  }
  auto node = Node::Create(c);
  if (!node.ok()) {
    Fail(absl::StrCat("node ", n.id, " failed to start: ", node.status().ToString()));
    n.up = false;
    return;
  }
  n.node = std::move(*node);
  // The state machine restarts from the durable snapshot; Raft re-delivers what follows.
  const Snapshot snap = *n.durable.GetSnapshot();
  n.sm_index = 0;
  n.sm_hash = 0;
  if (!snap.IsEmpty() && !DecodeSm(snap.data, &n.sm_index, &n.sm_hash)) {
    Fail(absl::StrCat("node ", n.id, ": bad snapshot data"));
  }
  n.sm_conf = snap.metadata.conf_state;
  n.applied_live = false;
  n.last_commit = n.node->committed();
  n.lead_term = 0;
  ResetChain(n);
  Trace("start node ", n.id, " term=", n.node->term(), " commit=", n.node->committed(),
        " last=", n.node->last_index());
  Schedule(now_ + rng_.Range(1, n.tick_interval), Ev::kTick, n.id, n.incarnation);
  Pump(n);
}

void Simulation::Crash(SimNode& n) {
  Trace("crash node ", n.id, n.pending ? " (losing an unsynced write)" : "");
  n.up = false;
  ++n.incarnation;
  n.node.reset();
  n.store.reset();
  n.pending.reset();
  ++res_.crashes;
}

void Simulation::ResetChain(SimNode& n) {
  const uint64_t first = n.store->FirstIndex();
  n.chain_base = first - 1;
  n.chain.clear();
  if (n.chain_base == 0) {
    n.chain.push_back(0);
  } else {
    auto it = prefix_hash_.find({n.chain_base, *n.store->Term(n.chain_base)});
    if (it == prefix_hash_.end()) {
      Fail(absl::StrCat("node ", n.id, ": snapshot at ", n.chain_base, " matches no known log"));
      n.chain.push_back(0);
      return;
    }
    n.chain.push_back(it->second);
  }
  std::vector<Entry> ents;
  if (n.store->LastIndex() >= first) {
    (void)n.store->Entries(first, n.store->LastIndex() + 1, kNoLimit, &ents);
  }
  for (const Entry& e : ents) n.chain.push_back(Mix(n.chain.back(), EntryHash(e)));
}

void Simulation::WriteEntries(SimNode& n, const std::vector<Entry>& ents) {
  if (ents.empty()) return;
  absl::Status s = n.store->Append(ents);
  if (!s.ok()) {
    Fail(absl::StrCat("node ", n.id, ": storage append failed: ", s.ToString()));
    return;
  }
  // Log Matching (Raft §5.3): an (index, term) pair identifies the whole prefix, in every log
  // that ever held it.
  for (const Entry& e : ents) {
    if (e.index <= n.chain_base) continue;
    n.chain.resize(e.index - n.chain_base);
    const uint64_t h = Mix(n.chain.back(), EntryHash(e));
    n.chain.push_back(h);
    auto [it, inserted] = prefix_hash_.try_emplace({e.index, e.term}, h);
    if (!inserted && it->second != h) {
      Fail(absl::StrCat("log matching: node ", n.id, " holds entry (index ", e.index, ", term ",
                        e.term, ") with a different prefix than another log did"));
      return;
    }
  }
}

void Simulation::WriteSnapshot(SimNode& n, const Snapshot& snap, MemoryStorage* to,
                               bool volatile_view) {
  absl::Status s = to->ApplySnapshot(snap);
  if (!s.ok()) Fail(absl::StrCat("node ", n.id, ": apply snapshot: ", s.ToString()));
  if (volatile_view) ResetChain(n);
}

void Simulation::Pump(SimNode& n) {
  if (failed_ || !n.up || n.pending || !n.node->HasReady()) return;
  Ready rd = n.node->GetReady();
  // Host contract step 1, first half: write (not yet durable).
  if (!rd.snapshot.IsEmpty()) WriteSnapshot(n, rd.snapshot, n.store.get(), true);
  WriteEntries(n, rd.entries);
  if (rd.hard_state) n.store->SetHardState(*rd.hard_state);
  if (opt_.send_before_sync) {
    for (Message& m : rd.messages) Send(std::move(m));
    rd.messages.clear();
  }
  n.pending = std::move(rd);
  if (n.pending->MustSync()) {
    Schedule(now_ + rng_.Range(0, profile_.max_disk), Ev::kSync, n.id, n.incarnation);
  } else {
    CompleteSync(n);
    Pump(n);
  }
}

void Simulation::CompleteSync(SimNode& n) {
  Ready rd = std::move(*n.pending);
  n.pending.reset();
  // Step 1, second half: the write is now durable.
  if (!rd.snapshot.IsEmpty()) WriteSnapshot(n, rd.snapshot, &n.durable, false);
  (void)n.durable.Append(rd.entries);
  if (rd.hard_state) n.durable.SetHardState(*rd.hard_state);
  // Step 2: send.
  for (Message& m : rd.messages) Send(std::move(m));
  // Step 3: apply.
  if (!rd.snapshot.IsEmpty()) InstallSnapshot(n, rd.snapshot);
  for (const Entry& e : rd.committed_entries) {
    Apply(n, e);
    if (failed_) return;
  }
  // Step 4: reads. Linearizability: the read index covers everything committed before the
  // request was issued.
  for (const ReadState& r : rd.read_states) {
    auto it = read_bound_.find(r.context);
    if (it == read_bound_.end()) {
      Fail(absl::StrCat("node ", n.id, ": read state for unknown context ", r.context));
      return;
    }
    if (r.index < it->second) {
      Fail(absl::StrCat("linearizability: read ", r.context, " on node ", n.id, " got index ",
                        r.index, " but ", it->second, " was committed before it was issued"));
      return;
    }
    ++res_.reads;
  }
  n.node->Advance(rd);
  MaybeCompact(n);
}

void Simulation::Apply(SimNode& n, const Entry& e) {
  if (e.index != n.sm_index + 1) {
    Fail(absl::StrCat("node ", n.id, " applied index ", e.index, " after ", n.sm_index));
    return;
  }
  n.sm_index = e.index;
  n.sm_hash = Mix(n.sm_hash, EntryHash(e));
  if (applied_.size() <= e.index) applied_.resize(e.index + 1);
  auto& slot = applied_[e.index];
  if (slot.first == 0) {
    slot = {e.term, n.sm_hash};
    max_commit_ = std::max(max_commit_, e.index);
    if (e.type == EntryType::kConfChange) ++res_.conf_changes;
  } else if (slot.first != e.term || slot.second != n.sm_hash) {
    Fail(absl::StrCat("state machine safety: node ", n.id, " applied a different entry at ",
                      e.index, " (term ", e.term, " vs ", slot.first, ")"));
    return;
  }
  if (e.type == EntryType::kConfChange) {
    auto cc = DecodeConfChange(e.data);
    if (cc.ok()) (void)ApplyConfChange(*cc, &n.sm_conf);
  }
  if (healed_ && e.data.rfind("live-", 0) == 0) n.applied_live = true;
}

void Simulation::InstallSnapshot(SimNode& n, const Snapshot& snap) {
  uint64_t index = 0, hash = 0;
  if (!DecodeSm(snap.data, &index, &hash) || index != snap.metadata.index) {
    Fail(absl::StrCat("node ", n.id, ": snapshot data does not match its metadata"));
    return;
  }
  if (index < n.sm_index) {
    Fail(absl::StrCat("node ", n.id, ": snapshot at ", index, " rolls back applied ", n.sm_index));
    return;
  }
  if (applied_.size() > index && applied_[index].first != 0 &&
      (applied_[index].first != snap.metadata.term || applied_[index].second != hash)) {
    Fail(absl::StrCat("state machine safety: node ", n.id, " installed a snapshot at ", index,
                      " that differs from what others applied"));
    return;
  }
  n.sm_index = index;
  n.sm_hash = hash;
  n.sm_conf = snap.metadata.conf_state;
  ++res_.snapshots;
  Trace("node ", n.id, " installed snapshot at ", index);
}

void Simulation::MaybeCompact(SimNode& n) {
  if (profile_.compact_every == 0) return;
  if (n.sm_index < n.store->FirstIndex() + profile_.compact_every) return;
  const std::string data = EncodeSm(n.sm_index, n.sm_hash);
  absl::Status s = n.store->CreateSnapshot(n.sm_index, n.sm_conf, data);
  if (s.ok()) s = n.durable.CreateSnapshot(n.sm_index, n.sm_conf, data);
  if (!s.ok()) {
    Fail(absl::StrCat("node ", n.id, ": compaction failed: ", s.ToString()));
    return;
  }
  const size_t drop = n.sm_index - n.chain_base;
  n.chain.erase(n.chain.begin(), n.chain.begin() + drop);
  n.chain_base = n.sm_index;
}

// ---------------------------------------------------------------------------------------------
// Network

void Simulation::Send(Message m) {
  ++res_.messages;
  if (m.to == kNoNode || m.to > nodes_.size()) return;
  if (rng_.Chance(profile_.drop)) return;
  const int copies = rng_.Chance(profile_.dup) ? 2 : 1;
  for (int i = 0; i < copies; ++i) {
    // Links are FIFO (like the TCP/gRPC streams hosts use) except for messages that take a
    // long detour, which are delivered out of order.
    int64_t at = now_ + rng_.Range(1, profile_.max_delay);
    if (rng_.Chance(profile_.long_delay)) {
      at = now_ + rng_.Range(20, 300);
    } else {
      int64_t& last = link_last_[(m.from - 1) * nodes_.size() + (m.to - 1)];
      at = std::max(at, last);
      last = at;
    }
    size_t slot;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = slots_.size();
      slots_.emplace_back();
    }
    slots_[slot] = (i + 1 == copies) ? std::move(m) : m;
    Schedule(at, Ev::kDeliver, kNoNode, 0, slot);
  }
}

void Simulation::Deliver(size_t slot) {
  Message m = std::move(slots_[slot]);
  free_slots_.push_back(slot);
  SimNode& n = N(m.to);
  if (!n.up || blocked_[m.from - 1][m.to - 1]) return;
  Trace("deliver ", MessageTypeName(m.type), " ", m.from, "->", m.to, " term=", m.term,
        " index=", m.index, " log_term=", m.log_term, " commit=", m.commit, " n=", m.entries.size(),
        m.reject ? " reject" : "");
  (void)n.node->Step(std::move(m));
  Pump(n);
}

// ---------------------------------------------------------------------------------------------
// Nemesis and clients

SimNode* Simulation::Leader() {
  SimNode* best = nullptr;
  for (SimNode& n : nodes_) {
    if (n.up && n.node->role() == Role::kLeader &&
        (best == nullptr || n.node->term() > best->node->term())) {
      best = &n;
    }
  }
  return best;
}

void Simulation::Isolate(NodeId id) {
  for (size_t b = 0; b < nodes_.size(); ++b) {
    blocked_[id - 1][b] = blocked_[b][id - 1] = b != id - 1;
  }
  Trace("nemesis: isolate node ", id);
}

void Simulation::Nemesis() {
  const int k = static_cast<int>(rng_.Uniform(100));
  const int count = profile_.nodes;
  if (k < 12) {
    // Symmetric partition into two random groups.
    std::vector<int> side(count);
    for (int& s : side) s = static_cast<int>(rng_.Uniform(2));
    for (int a = 0; a < count; ++a) {
      for (int b = 0; b < count; ++b) blocked_[a][b] = side[a] != side[b];
    }
    Trace("nemesis: symmetric partition");
  } else if (k < 20) {
    for (int a = 0; a < count; ++a) {
      for (int b = 0; b < count; ++b) blocked_[a][b] = a != b && rng_.Chance(0.3);
    }
    Trace("nemesis: asymmetric partition");
  } else if (k < 28) {
    if (SimNode* l = Leader()) Isolate(l->id);
  } else if (k < 42) {
    for (auto& row : blocked_) std::fill(row.begin(), row.end(), false);
    Trace("nemesis: heal network");
  } else if (k < 56) {
    if (!profile_.crashes) return;
    std::vector<NodeId> up;
    int down = 0;
    for (SimNode& n : nodes_) (n.up ? up.push_back(n.id) : void(++down));
    if (up.empty() || down >= (profile_.voters + 1) / 2) return;
    SimNode& n = N(rng_.Pick(up));
    Crash(n);
    Schedule(now_ + rng_.Range(20, 1500), Ev::kRestart, n.id, n.incarnation);
  } else if (k < 64) {
    for (SimNode& n : nodes_) {
      if (!n.up) {
        Start(n);
        break;
      }
    }
  } else if (k < 82) {
    if (!profile_.membership) return;
    SimNode* l = Leader();
    if (l == nullptr) return;
    const ConfState& cs = l->node->conf_state();
    std::vector<ConfChange> options;
    for (SimNode& n : nodes_) {
      if (!cs.IsMember(n.id) && cs.voters.size() + cs.learners.size() < 6) {
        options.push_back({ConfChangeType::kAddLearner, n.id});
      }
    }
    for (NodeId id : cs.learners) {
      options.push_back({ConfChangeType::kAddVoter, id});
      options.push_back({ConfChangeType::kRemoveNode, id});
    }
    if (cs.voters.size() > 3) {
      for (NodeId id : cs.voters) options.push_back({ConfChangeType::kRemoveNode, id});
    }
    if (options.empty()) return;
    const ConfChange cc = rng_.Pick(options);
    absl::Status s = l->node->ProposeConfChange(cc);
    Trace("nemesis: conf change type=", static_cast<int>(cc.type), " node=", cc.node_id,
          " on leader ", l->id, ": ", s.ToString());
    Pump(*l);
  } else {
    if (!profile_.transfers) return;
    SimNode* l = Leader();
    if (l == nullptr) return;
    const auto& voters = l->node->conf_state().voters;
    if (voters.empty()) return;
    const NodeId to = rng_.Pick(voters);
    absl::Status s = l->node->TransferLeadership(to);
    Trace("nemesis: transfer leadership ", l->id, " -> ", to, ": ", s.ToString());
    Pump(*l);
  }
}

void Simulation::Client() {
  std::vector<NodeId> up;
  for (SimNode& n : nodes_) {
    if (n.up) up.push_back(n.id);
  }
  if (up.empty()) return;
  if (!healed_ && rng_.Chance(0.25)) {
    SimNode& n = N(rng_.Pick(up));
    std::string ctx = absl::StrCat("r", ++client_seq_);
    if (n.node->ReadIndex(ctx).ok()) {
      read_bound_[ctx] = max_commit_seen_;
      Pump(n);
    }
    return;
  }
  // Clients talk to whoever they believe leads, including deposed leaders that do not know yet.
  SimNode* l = Leader();
  if (l == nullptr) return;
  if (!healed_ && rng_.Chance(0.3)) {
    std::vector<NodeId> leaders;
    for (SimNode& n : nodes_) {
      if (n.up && n.node->role() == Role::kLeader) leaders.push_back(n.id);
    }
    l = &N(rng_.Pick(leaders));
  }
  const int burst = healed_ ? 1 : static_cast<int>(rng_.Range(1, 8));
  for (int i = 0; i < burst; ++i) {
    (void)l->node->Propose(absl::StrCat(healed_ ? "live-" : "c", ++client_seq_));
  }
  Pump(*l);
}

void Simulation::Heal() {
  Trace("heal: network healed, all nodes restarted");
  healed_ = true;
  heal_time_ = now_;
  for (auto& row : blocked_) std::fill(row.begin(), row.end(), false);
  profile_.drop = 0;
  profile_.dup = 0;
  profile_.long_delay = 0;
  for (SimNode& n : nodes_) {
    if (!n.up) Start(n);
  }
}

// ---------------------------------------------------------------------------------------------
// Invariants

void Simulation::Check() {
  for (SimNode& n : nodes_) {
    if (!n.up) continue;
    const Node& node = *n.node;
    const uint64_t term = node.term();
    if (node.role() == Role::kLeader) {
      // Election Safety (Raft §5.2): at most one leader per term, ever.
      auto [it, inserted] = leader_of_term_.try_emplace(term, n.id);
      if (!inserted && it->second != n.id) {
        Fail(absl::StrCat("election safety: nodes ", it->second, " and ", n.id, " both led term ",
                          term));
        return;
      }
      // Leader Append-Only (Raft §5.3): a leader never overwrites or deletes its entries.
      if (n.lead_term == term) {
        auto t = node.LogTerm(n.lead_last);
        if (node.last_index() < n.lead_last ||
            (t.ok() ? *t != n.lead_last_term : !IsCompacted(t.status()))) {
          Fail(absl::StrCat("leader append-only: leader ", n.id, " of term ", term,
                            " lost or rewrote entry ", n.lead_last));
          return;
        }
      }
      n.lead_term = term;
      n.lead_last = node.last_index();
      n.lead_last_term = *node.LogTerm(n.lead_last);
      // Nemesis: sometimes kill a new leader while it is still replicating its predecessors'
      // entries (the Figure 8 window of Raft §5.4.2).
      if (inserted && !healed_ && rng_.Chance(opt_.new_leader_fault_chance)) {
        if (profile_.crashes && rng_.Chance(0.5)) {
          Schedule(now_ + rng_.Range(1, 30), Ev::kCrash, n.id, n.incarnation);
        } else {
          Schedule(now_ + rng_.Range(1, 30), Ev::kIsolate, n.id, n.incarnation);
        }
      }
    }
    const uint64_t commit = node.committed();
    if (commit < n.last_commit) {
      Fail(absl::StrCat("node ", n.id, " commit index went back from ", n.last_commit, " to ",
                        commit));
      return;
    }
    n.last_commit = commit;
    max_commit_seen_ = std::max(max_commit_seen_, commit);
    auto ct = node.LogTerm(commit);
    if (!ct.ok()) {
      Fail(absl::StrCat("node ", n.id, " cannot find the term of its commit index ", commit));
      return;
    }
    auto& obs = commit_obs_[term];
    if (commit > obs.first) obs = {commit, *ct};
  }
  // Leader Completeness (Raft §5.4): whatever was committed while the cluster was at term t is
  // in the log of every leader of a term > t. A node at term t with commit index c proves that
  // c was committed by a leader of a term <= t.
  for (SimNode& n : nodes_) {
    if (!n.up || n.node->role() != Role::kLeader) continue;
    const Node& node = *n.node;
    for (auto it = commit_obs_.begin(); it != commit_obs_.end() && it->first < node.term(); ++it) {
      const auto [c, ct] = it->second;
      if (c == 0) continue;
      auto lt = node.LogTerm(c);
      if (lt.ok() ? *lt != ct : !IsCompacted(lt.status())) {
        Fail(absl::StrCat("leader completeness: leader ", n.id, " of term ", node.term(),
                          " lacks entry ", c, " (term ", ct, ") committed by term ", it->first));
        return;
      }
    }
  }
  if (healed_ && !live_) {
    // Liveness: a leader commits a new proposal (applied by a majority of its voters) within
    // liveness_ms, and every member has applied it within catchup_ms.
    SimNode* l = Leader();
    if (l != nullptr && l->applied_live) {
      const ConfState& cs = l->node->conf_state();
      size_t voters_live = 0;
      bool all = true;
      for (NodeId id : cs.voters) {
        if (N(id).applied_live) {
          ++voters_live;
        } else {
          all = false;
        }
      }
      for (NodeId id : cs.learners) all = all && N(id).applied_live;
      if (!committed_live_ && voters_live >= cs.voters.size() / 2 + 1) {
        committed_live_ = true;
        res_.liveness_ms = now_ - heal_time_;
      }
      if (committed_live_ && all) {
        live_ = true;
        res_.catchup_ms = now_ - heal_time_;
        return;
      }
    }
    if (!committed_live_ && now_ > heal_time_ + opt_.liveness_ms) {
      Fail(absl::StrCat("liveness: no proposal committed within ", opt_.liveness_ms,
                        "ms after healing;", DescribeNodes()));
    }
  }
}

}  // namespace

Result Simulate(const Options& options) { return Simulation(options).Run(); }

std::string ReplayCommand(const Options& o) {
  std::string cmd = absl::StrCat("raft_sim --seed=", o.seed);
  if (o.voters > 0) absl::StrAppend(&cmd, " --voters=", o.voters);
  if (o.chaos_ms != Options().chaos_ms) absl::StrAppend(&cmd, " --chaos_ms=", o.chaos_ms);
  if (o.catchup_ms != Options().catchup_ms) absl::StrAppend(&cmd, " --catchup_ms=", o.catchup_ms);
  if (o.liveness_ms != Options().liveness_ms) {
    absl::StrAppend(&cmd, " --liveness_ms=", o.liveness_ms);
  }
  if (o.new_leader_fault_chance != Options().new_leader_fault_chance) {
    absl::StrAppend(&cmd, " --new_leader_fault_chance=", o.new_leader_fault_chance);
  }
  if (o.send_before_sync) absl::StrAppend(&cmd, " --send_before_sync");
  if (o.break_vote_log_check) absl::StrAppend(&cmd, " --break_vote_log_check");
  if (o.commit_previous_term_by_counting) {
    absl::StrAppend(&cmd, " --commit_previous_term_by_counting");
  }
  absl::StrAppend(&cmd, " --trace");
  return cmd;
}

}  // namespace herald::raft::sim
