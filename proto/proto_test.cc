// The generated API code links, and the error model travels as the comments describe: an
// ErrorInfo serialized into a grpc::Status's details and read back on the other side.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "herald/v1/broker.grpc.pb.h"
#include "herald/v1/common.pb.h"
#include "herald/v1/raft.grpc.pb.h"

namespace herald {
namespace {

TEST(ProtoTest, MessageRecordRoundTripsWithOrderedDuplicateUserProperties) {
  v1::Message m;
  m.set_topic("sensors/a/temp");
  m.set_payload(std::string("\x00\x01\xff", 3));
  m.set_expiry_interval_s(0);  // "now or never" is distinct from unset
  for (const char* v : {"1", "2", "1"}) {
    auto* p = m.add_user_properties();
    p->set_key("k");
    p->set_value(v);
  }
  std::string wire = m.SerializeAsString();
  v1::Message back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.payload(), std::string("\x00\x01\xff", 3));
  EXPECT_TRUE(back.has_expiry_interval_s());
  ASSERT_EQ(back.user_properties_size(), 3);
  EXPECT_EQ(back.user_properties(2).value(), "1");
  v1::Message no_expiry;
  EXPECT_FALSE(no_expiry.has_expiry_interval_s());
}

TEST(ProtoTest, NotLeaderHintTravelsInGrpcStatusDetails) {
  v1::ErrorInfo info;
  info.set_code(v1::ERROR_CODE_NOT_LEADER);
  info.mutable_leader_hint()->set_node_id(3);
  grpc::Status status(grpc::StatusCode::UNAVAILABLE, "not leader", info.SerializeAsString());
  v1::ErrorInfo got;
  ASSERT_TRUE(got.ParseFromString(status.error_details()));
  EXPECT_EQ(got.code(), v1::ERROR_CODE_NOT_LEADER);
  EXPECT_EQ(got.leader_hint().node_id(), 3u);
}

}  // namespace
}  // namespace herald
