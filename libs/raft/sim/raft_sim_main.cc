// raft_sim: runs the Raft simulation for any number of seeds, or replays one seed with a trace.
//
//   raft_sim --seeds=100000 --start=1      # run seeds 1..100000, stop at the first failure
//   raft_sim --seed=1234 --trace           # replay one seed, printing every event
//
// Flags: --voters=3|5 (default: chosen by the seed), --chaos_ms, --liveness_ms,
// --catchup_ms, --new_leader_fault_chance, --break_vote_log_check,
// --commit_previous_term_by_counting, --send_before_sync (test-only rule breakers),
// --keep_going (do not stop at the first failure).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "libs/raft/fatal.h"
#include "libs/raft/sim/sim.h"

namespace {

std::string g_replay;  // printed if Raft aborts on an invariant violation mid-seed

void PrintReplayOnFatal(const std::string&) {
  std::fprintf(stderr, "replay: %s\n", g_replay.c_str());
}

bool Flag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0) return false;
  if (arg[n] == '\0') {
    *value = "1";
    return true;
  }
  if (arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using herald::raft::sim::Options;
  Options base;
  uint64_t start = 1, seeds = 1;
  bool single = false, keep_going = false;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (Flag(argv[i], "--seed", &v)) {
      start = std::strtoull(v.c_str(), nullptr, 10);
      seeds = 1;
      single = true;
    } else if (Flag(argv[i], "--seeds", &v)) {
      seeds = std::strtoull(v.c_str(), nullptr, 10);
    } else if (Flag(argv[i], "--start", &v)) {
      start = std::strtoull(v.c_str(), nullptr, 10);
    } else if (Flag(argv[i], "--voters", &v)) {
      base.voters = std::atoi(v.c_str());
    } else if (Flag(argv[i], "--chaos_ms", &v)) {
      base.chaos_ms = std::atoll(v.c_str());
    } else if (Flag(argv[i], "--catchup_ms", &v)) {
      base.catchup_ms = std::atoll(v.c_str());
    } else if (Flag(argv[i], "--liveness_ms", &v)) {
      base.liveness_ms = std::atoll(v.c_str());
    } else if (Flag(argv[i], "--new_leader_fault_chance", &v)) {
      base.new_leader_fault_chance = std::atof(v.c_str());
    } else if (Flag(argv[i], "--send_before_sync", &v)) {
      base.send_before_sync = true;
    } else if (Flag(argv[i], "--break_vote_log_check", &v)) {
      base.break_vote_log_check = true;
    } else if (Flag(argv[i], "--commit_previous_term_by_counting", &v)) {
      base.commit_previous_term_by_counting = true;
    } else if (Flag(argv[i], "--trace", &v)) {
      base.trace = true;
    } else if (Flag(argv[i], "--keep_going", &v)) {
      keep_going = true;
    } else {
      std::fprintf(stderr, "unknown flag %s (see the comment at the top of raft_sim_main.cc)\n",
                   argv[i]);
      return 2;
    }
  }
  herald::raft::SetFatalHook(&PrintReplayOnFatal);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t max_liveness = 0, max_catchup = 0;
  uint64_t max_liveness_seed = 0, max_catchup_seed = 0;
  uint64_t failures = 0, events = 0, committed = 0, crashes = 0, conf_changes = 0, reads = 0;
  for (uint64_t s = start; s < start + seeds; ++s) {
    Options o = base;
    o.seed = s;
    o.trace = base.trace;
    g_replay = herald::raft::sim::ReplayCommand(o);
    const herald::raft::sim::Result r = herald::raft::sim::Simulate(o);
    events += r.events;
    if (r.ok && r.liveness_ms > max_liveness) {
      max_liveness = r.liveness_ms;
      max_liveness_seed = s;
    }
    if (r.ok && r.catchup_ms > max_catchup) {
      max_catchup = r.catchup_ms;
      max_catchup_seed = s;
    }
    committed += r.committed;
    crashes += r.crashes;
    conf_changes += r.conf_changes;
    reads += r.reads;
    if (single) {
      std::printf(
          "seed %llu: %s events=%llu messages=%llu max_term=%llu committed=%llu "
          "crashes=%llu conf_changes=%llu reads=%llu snapshots=%llu liveness=%lldms "
          "catchup=%lldms\n",
          static_cast<unsigned long long>(s), r.ok ? "ok" : "FAILED",
          static_cast<unsigned long long>(r.events), static_cast<unsigned long long>(r.messages),
          static_cast<unsigned long long>(r.max_term), static_cast<unsigned long long>(r.committed),
          static_cast<unsigned long long>(r.crashes),
          static_cast<unsigned long long>(r.conf_changes), static_cast<unsigned long long>(r.reads),
          static_cast<unsigned long long>(r.snapshots), static_cast<long long>(r.liveness_ms),
          static_cast<long long>(r.catchup_ms));
    }
    if (!r.ok) {
      ++failures;
      std::printf("seed %llu FAILED: %s\nreplay: %s\n", static_cast<unsigned long long>(s),
                  r.failure.c_str(), g_replay.c_str());
      std::fflush(stdout);
      if (!keep_going) break;
    }
    if (!single && (s - start + 1) % 1000 == 0) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("%llu seeds, %llu failures, %.1fs\n",
                  static_cast<unsigned long long>(s - start + 1),
                  static_cast<unsigned long long>(failures), secs);
      std::fflush(stdout);
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "done: seeds %llu..%llu, %llu failures, %.1fs, events=%llu committed=%llu "
      "crashes=%llu conf_changes=%llu reads=%llu slowest_commit=%lldms (seed %llu) "
      "slowest_catchup=%lldms (seed %llu)\n",
      static_cast<unsigned long long>(start), static_cast<unsigned long long>(start + seeds - 1),
      static_cast<unsigned long long>(failures), secs, static_cast<unsigned long long>(events),
      static_cast<unsigned long long>(committed), static_cast<unsigned long long>(crashes),
      static_cast<unsigned long long>(conf_changes), static_cast<unsigned long long>(reads),
      static_cast<long long>(max_liveness), static_cast<unsigned long long>(max_liveness_seed),
      static_cast<long long>(max_catchup), static_cast<unsigned long long>(max_catchup_seed));
  return failures == 0 ? 0 : 1;
}
