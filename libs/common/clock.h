// Time as an interface, so that tests and simulations can drive it (CONVENTIONS: an Env-like seam).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace herald {

// Source of time. Implementations are thread-safe.
class Clock {
 public:
  using Duration = std::chrono::nanoseconds;
  using MonotonicTime = std::chrono::time_point<std::chrono::steady_clock, Duration>;
  using WallTime = std::chrono::time_point<std::chrono::system_clock, Duration>;

  virtual ~Clock() = default;
  // Monotonic time, for timeouts and latencies. Never goes backwards.
  virtual MonotonicTime Now() const = 0;
  // Wall-clock time, for timestamps shown to users and message publish times. May jump.
  virtual WallTime WallNow() const = 0;

  // The process-wide real clock.
  static Clock& Real();
};

// A clock that moves only when told to; for tests.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(WallTime wall_start = WallTime(std::chrono::seconds(1'700'000'000)))
      : wall_start_(wall_start) {}

  MonotonicTime Now() const override { return MonotonicTime(Duration(elapsed_.load())); }
  WallTime WallNow() const override { return wall_start_ + Duration(elapsed_.load()); }
  void Advance(Duration d) { elapsed_.fetch_add(d.count()); }

 private:
  const WallTime wall_start_;
  std::atomic<int64_t> elapsed_{0};
};

}  // namespace herald
