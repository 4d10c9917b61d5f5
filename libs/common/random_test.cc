#include "libs/common/random.h"

#include <gtest/gtest.h>

#include <vector>

namespace herald {
namespace {

TEST(SeededRandomTest, SameSeedGivesSameSequence) {
  SeededRandom a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    uint64_t x = a.Next();
    EXPECT_EQ(x, b.Next());
    differs |= (x != c.Next());
  }
  EXPECT_TRUE(differs);
}

TEST(SeededRandomTest, UniformStaysInRangeAndCoversIt) {
  SeededRandom r(7);
  std::vector<int> counts(10, 0);
  for (int i = 0; i < 100000; ++i) {
    uint64_t v = r.Uniform(10);
    ASSERT_LT(v, 10u);
    ++counts[v];
  }
  for (int c : counts) {
    EXPECT_GT(c, 9000);
    EXPECT_LT(c, 11000);
  }
}

TEST(SeededRandomTest, RangeIsInclusiveAndBernoulliHasItsProbability) {
  SeededRandom r(9);
  bool saw_lo = false, saw_hi = false;
  int heads = 0;
  for (int i = 0; i < 10000; ++i) {
    int64_t v = r.Range(-2, 2);
    ASSERT_GE(v, -2);
    ASSERT_LE(v, 2);
    saw_lo |= v == -2;
    saw_hi |= v == 2;
    heads += r.Bernoulli(0.25) ? 1 : 0;
  }
  EXPECT_TRUE(saw_lo && saw_hi);
  EXPECT_NEAR(heads, 2500, 300);
  EXPECT_FALSE(r.Bernoulli(0));
  EXPECT_TRUE(r.Bernoulli(1));
}

}  // namespace
}  // namespace herald
