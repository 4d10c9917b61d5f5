#include "libs/common/partitioning.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace herald {
namespace {

TEST(PartitioningTest, HashIsTheDocumentedFnv1a) {
  // Reference values of 64-bit FNV-1a: they must never change.
  EXPECT_EQ(StableHash64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(StableHash64("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(StableHash64("foobar"), 0x85944171f73967e8ULL);
}

TEST(PartitioningTest, TopicsSpreadOverPartitions) {
  std::vector<int> counts(8, 0);
  for (int i = 0; i < 8000; ++i) ++counts[PartitionFor("sensors/" + std::to_string(i), 8)];
  for (int c : counts) {
    EXPECT_GT(c, 800);
    EXPECT_LT(c, 1200);
  }
}

}  // namespace
}  // namespace herald
