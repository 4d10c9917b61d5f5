// Randomness as an interface, so tests and simulations can make it deterministic.
#pragma once

#include <cstdint>
#include <memory>

namespace herald {

// A source of random numbers. Not thread-safe: each owner (loop, Raft group) holds its own.
class Random {
 public:
  virtual ~Random() = default;
  virtual uint64_t Next() = 0;
  // Uniform in [0, n); n must be > 0.
  uint64_t Uniform(uint64_t n);
  // Uniform in [lo, hi]; lo <= hi.
  int64_t Range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Uniform(hi - lo + 1)); }
  // True with probability p in [0, 1].
  bool Bernoulli(double p);
};

// xoshiro256** (Blackman & Vigna) seeded through splitmix64: fast, reproducible from one seed.
class SeededRandom final : public Random {
 public:
  explicit SeededRandom(uint64_t seed);
  uint64_t Next() override;

 private:
  uint64_t s_[4];
};

// A SeededRandom seeded from the operating system's entropy.
std::unique_ptr<Random> NewSystemSeededRandom();

}  // namespace herald
