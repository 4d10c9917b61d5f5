// A deterministic, fault-injecting simulation of a Raft group (in the spirit of ScyllaDB's
// randomized_nemesis_test and FoundationDB's simulation): every node is a raft::Node driven by a
// simulated host on one virtual clock, connected by a simulated network. A seed determines
// everything, so any failure replays exactly.
//
// Faults: message loss, delay, reordering and duplication; symmetric and asymmetric partitions;
// crashes that lose whatever the host wrote but had not yet synced, and restarts; membership
// changes, leadership transfers, proposals and reads during the chaos.
//
// Checked after every event: election safety (at most one leader per term, over all history),
// leader append-only, log matching (same index and term => same prefix, over every log ever
// written), leader completeness (an entry committed when the cluster was at term t is in the log of
// every leader of a later term), state machine safety (no two nodes apply different entries at one
// index) and ReadIndex linearizability (a read returns an index >= everything committed before it
// was issued). After the chaos the network heals and crashed nodes restart; then a leader must
// emerge and a proposal must be applied by every member within a bound of virtual time (liveness).
#ifndef HERALD_LIBS_RAFT_SIM_SIM_H_
#define HERALD_LIBS_RAFT_SIM_SIM_H_

#include <cstdint>
#include <string>

namespace herald::raft::sim {

struct Options {
  uint64_t seed = 1;
  // 0: derived from the seed (3 or 5).
  int voters = 0;
  // Virtual milliseconds of chaos. After healing, a proposal must commit within liveness_ms and
  // every member must have applied it within catchup_ms (a lagging learner may have hundreds of
  // entries to fetch).
  int64_t chaos_ms = 4000;
  int64_t liveness_ms = 5000;
  int64_t catchup_ms = 10000;
  // Chance that a newly elected leader crashes or is isolated within 30ms, while it replicates
  // its predecessors' entries (the window of Raft §5.4.2's Figure 8).
  double new_leader_fault_chance = 0.15;
  // Break one Raft rule (see raft::TestingKnobs) to show that the checks catch it.
  bool break_vote_log_check = false;
  bool commit_previous_term_by_counting = false;
  // Break the host contract: send a Ready's messages before its writes are synced.
  bool send_before_sync = false;
  // Print every event to stderr.
  bool trace = false;
};

struct Result {
  bool ok = true;
  std::string failure;  // empty when ok
  int64_t failure_time_ms = 0;
  // Statistics.
  uint64_t events = 0;
  uint64_t messages = 0;
  uint64_t max_term = 0;
  uint64_t committed = 0;  // highest index applied anywhere
  uint64_t crashes = 0;
  uint64_t conf_changes = 0;  // committed membership changes
  uint64_t reads = 0;         // ReadIndex requests answered
  uint64_t snapshots = 0;     // snapshots installed by followers
  int64_t liveness_ms = 0;    // time from healing to a new proposal being committed
  int64_t catchup_ms = 0;     // time from healing until every member applied it
};

Result Simulate(const Options& options);

// The one-line command that replays `options` with the raft_sim binary.
std::string ReplayCommand(const Options& options);

}  // namespace herald::raft::sim

#endif  // HERALD_LIBS_RAFT_SIM_SIM_H_
