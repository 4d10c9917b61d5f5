#include "libs/net/socket_address.h"

#include <gtest/gtest.h>

namespace herald::net {
namespace {

TEST(SocketAddressTest, ParsesIpv4Ipv6AndEmptyHost) {
  EXPECT_EQ(SocketAddress::Parse("127.0.0.1:1883")->ToString(), "127.0.0.1:1883");
  EXPECT_EQ(SocketAddress::Parse("[::1]:8081")->ToString(), "[::1]:8081");
  EXPECT_EQ(SocketAddress::Parse(":9000")->ToString(), "0.0.0.0:9000");
  EXPECT_EQ(SocketAddress::Parse("10.1.2.3:0")->port(), 0);
  EXPECT_EQ(SocketAddress::Parse("10.1.2.3:0")->WithPort(42).ToString(), "10.1.2.3:42");
}

TEST(SocketAddressTest, RejectsBadAddressesWithAReason) {
  for (const char* bad : {"127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
                          "localhost:80", "[::1:80", "1.2.3.4:80x", "[zz]:1"}) {
    auto a = SocketAddress::Parse(bad);
    EXPECT_FALSE(a.ok()) << bad;
    if (!a.ok()) {
      EXPECT_NE(a.status().message().find(bad), std::string::npos) << bad;
    }
  }
}

}  // namespace
}  // namespace herald::net
