// Seeds that once found a bug. Each one is replayed by RaftSimTest.RegressionSeeds on every test
// run, so a fixed bug stays fixed. To add one: append {seed, voters, knob flags...} with a note
// saying what it caught (and the commit that fixed it). See docs/raft.md "Replaying a seed".
#ifndef HERALD_LIBS_RAFT_SIM_REGRESSION_SEEDS_H_
#define HERALD_LIBS_RAFT_SIM_REGRESSION_SEEDS_H_

#include <cstdint>

namespace herald::raft::sim {

struct RegressionSeed {
  uint64_t seed;
  int voters;  // 0: chosen by the seed, as in a normal run
  const char* note;
};

inline constexpr RegressionSeed kRegressionSeeds[] = {
    // {seed, voters, "what it caught"},
    {0, 0, nullptr},  // sentinel so the array is never empty; skipped
};

}  // namespace herald::raft::sim

#endif  // HERALD_LIBS_RAFT_SIM_REGRESSION_SEEDS_H_
