#include "libs/common/clock.h"

#include <gtest/gtest.h>

namespace herald {
namespace {

TEST(ClockTest, ManualClockMovesOnlyWhenAdvanced) {
  ManualClock c;
  auto t0 = c.Now();
  auto w0 = c.WallNow();
  EXPECT_EQ(c.Now(), t0);
  c.Advance(std::chrono::milliseconds(1500));
  EXPECT_EQ(c.Now() - t0, std::chrono::milliseconds(1500));
  EXPECT_EQ(c.WallNow() - w0, std::chrono::milliseconds(1500));
}

TEST(ClockTest, RealClockIsMonotonic) {
  auto a = Clock::Real().Now();
  auto b = Clock::Real().Now();
  EXPECT_LE(a, b);
  EXPECT_GT(Clock::Real().WallNow().time_since_epoch(), std::chrono::hours(24 * 365 * 50));
}

}  // namespace
}  // namespace herald
