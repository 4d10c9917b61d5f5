#include "libs/common/status.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace herald {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Quarter(int x, int* out) {
  HERALD_ASSIGN_OR_RETURN(int h, Half(x));
  HERALD_ASSIGN_OR_RETURN(*out, Half(h));
  return absl::OkStatus();
}

absl::Status FailIfNegative(int x) {
  HERALD_RETURN_IF_ERROR(x < 0 ? absl::OutOfRangeError("negative") : absl::OkStatus());
  return absl::OkStatus();
}

TEST(StatusTest, AssignOrReturnPropagatesTheFirstError) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  EXPECT_EQ(Quarter(6, &out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FailIfNegative(-1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(FailIfNegative(1).ok());
}

TEST(StatusTest, ErrnoMapsToCodesAndKeepsContext) {
  absl::Status s = ErrnoToStatus(ENOENT, "open /x");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("open /x"), std::string::npos);
  EXPECT_EQ(ErrnoToStatus(EADDRINUSE, "bind").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoToStatus(EMFILE, "accept").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(ECONNRESET, "read").code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(ErrnoToStatus(0, "x").ok());
}

}  // namespace
}  // namespace herald
