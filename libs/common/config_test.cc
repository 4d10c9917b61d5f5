#include "libs/common/config.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace herald {
namespace {

struct TestConfig {
  std::string listen = "127.0.0.1:1883";
  bool tls = false;
  int loops = 0;
  uint64_t max = 10;
  absl::Duration timeout = absl::Seconds(5);
  ByteSize queue{1 << 20};
  std::vector<std::string> peers;
};

class ConfigTest : public ::testing::Test {
 protected:
  ConfigTest() {
    schema_.Add("mqtt.listen", &cfg_.listen, "MQTT listen address");
    schema_.Add("mqtt.tls", &cfg_.tls, "TLS on");
    schema_.Add("loops", &cfg_.loops, "event loops");
    schema_.Add("max", &cfg_.max, "max");
    schema_.Add("net.timeout", &cfg_.timeout, "timeout");
    schema_.Add("net.queue", &cfg_.queue, "queue bound");
    schema_.Add("peers", &cfg_.peers, "peers");
  }
  TestConfig cfg_;
  ConfigSchema schema_;
};

TEST_F(ConfigTest, DefaultsStayWhenNothingIsSet) {
  ASSERT_TRUE(schema_.ApplyFlags({}).ok());
  EXPECT_EQ(cfg_.listen, "127.0.0.1:1883");
  EXPECT_EQ(cfg_.queue.bytes, 1u << 20);
  EXPECT_NE(schema_.Dump().find("mqtt.listen = 127.0.0.1:1883  (default)"), std::string::npos);
}

TEST_F(ConfigTest, YamlNestedMapsBecomeDottedKeys) {
  ASSERT_TRUE(schema_
                  .LoadYamlString("mqtt:\n  listen: 0.0.0.0:1884\n  tls: yes\nloops: 4\n"
                                  "net: {timeout: 250ms, queue: 64KiB}\npeers: [a, b]\n",
                                  "test.yaml")
                  .ok());
  EXPECT_EQ(cfg_.listen, "0.0.0.0:1884");
  EXPECT_TRUE(cfg_.tls);
  EXPECT_EQ(cfg_.loops, 4);
  EXPECT_EQ(cfg_.timeout, absl::Milliseconds(250));
  EXPECT_EQ(cfg_.queue.bytes, 64u * 1024);
  EXPECT_EQ(cfg_.peers, (std::vector<std::string>{"a", "b"}));
}

TEST_F(ConfigTest, UnknownKeyInFileIsAnErrorNamingTheFileAndKey) {
  absl::Status s = schema_.LoadYamlString("mqtt:\n  lisen: x\n", "herald.yaml");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("herald.yaml"), std::string::npos);
  EXPECT_NE(s.message().find("mqtt.lisen"), std::string::npos);
}

TEST_F(ConfigTest, MalformedYamlIsAnError) {
  EXPECT_FALSE(schema_.LoadYamlString("mqtt: [unclosed\n", "bad.yaml").ok());
  EXPECT_FALSE(schema_.LoadYamlString("- a\n- b\n", "list.yaml").ok());
}

TEST_F(ConfigTest, BadValuesAreRejectedWithTheOptionName) {
  absl::Status s = schema_.Set("loops", "many", "test");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("loops"), std::string::npos);
  EXPECT_FALSE(schema_.Set("loops", "99999999999", "test").ok());
  EXPECT_FALSE(schema_.Set("net.timeout", "5 parsecs", "test").ok());
  EXPECT_FALSE(schema_.Set("net.timeout", "-5s", "test").ok());
  EXPECT_FALSE(schema_.Set("net.queue", "12XB", "test").ok());
  EXPECT_FALSE(schema_.Set("mqtt.tls", "maybe", "test").ok());
  EXPECT_FALSE(schema_.Set("max", "-1", "test").ok());
  EXPECT_EQ(cfg_.loops, 0);
}

TEST_F(ConfigTest, FlagsOverrideEnvironmentWhichOverridesFile) {
  ASSERT_TRUE(schema_.LoadYamlString("loops: 1\nmax: 1\nmqtt: {listen: file}\n", "f").ok());
  std::string e1 = "HERALD_LOOPS=2", e2 = "HERALD_MQTT_LISTEN=env", e3 = "HERALD_UNRELATED=x",
              e4 = "PATH=/bin";
  char* envp[] = {e1.data(), e2.data(), e3.data(), e4.data(), nullptr};
  ASSERT_TRUE(schema_.ApplyEnvironment(envp).ok());
  ASSERT_TRUE(schema_.ApplyFlags({"--loops=3", "--mqtt.tls"}).ok());
  EXPECT_EQ(cfg_.loops, 3);
  EXPECT_EQ(cfg_.listen, "env");
  EXPECT_EQ(cfg_.max, 1u);
  EXPECT_TRUE(cfg_.tls);
  EXPECT_NE(schema_.Dump().find("mqtt.listen = env  (environment HERALD_MQTT_LISTEN)"),
            std::string::npos);
}

TEST_F(ConfigTest, FlagsAcceptSeparateValueAndRejectUnknown) {
  ASSERT_TRUE(schema_.ApplyFlags({"--mqtt.listen", "[::1]:1", "--mqtt.tls", "false"}).ok());
  EXPECT_EQ(cfg_.listen, "[::1]:1");
  EXPECT_FALSE(cfg_.tls);
  EXPECT_FALSE(schema_.ApplyFlags({"--nope=1"}).ok());
  EXPECT_FALSE(schema_.ApplyFlags({"positional"}).ok());
  EXPECT_FALSE(schema_.ApplyFlags({"--loops"}).ok());
}

TEST_F(ConfigTest, MarkdownListsEveryOptionWithItsDefault) {
  std::string md = schema_.Markdown();
  for (const auto& o : schema_.options()) {
    EXPECT_NE(md.find("`" + o.key + "`"), std::string::npos) << o.key;
    EXPECT_NE(md.find(schema_.EnvName(o.key)), std::string::npos) << o.key;
  }
  EXPECT_NE(md.find("`1MiB`"), std::string::npos);
  EXPECT_NE(md.find("`5s`"), std::string::npos);
}

TEST(ByteSizeTest, ParsesBinaryAndDecimalUnits) {
  EXPECT_EQ(ParseByteSize("4096").value(), 4096u);
  EXPECT_EQ(ParseByteSize("64KiB").value(), 65536u);
  EXPECT_EQ(ParseByteSize("2 MiB").value(), 2u << 20);
  EXPECT_EQ(ParseByteSize("1GiB").value(), 1u << 30);
  EXPECT_EQ(ParseByteSize("10MB").value(), 10'000'000u);
  EXPECT_FALSE(ParseByteSize("").ok());
  EXPECT_FALSE(ParseByteSize("MiB").ok());
  EXPECT_FALSE(ParseByteSize("99999999999999999999GiB").ok());
  EXPECT_FALSE(ParseByteSize("18446744073709551615GiB").ok());
}

}  // namespace
}  // namespace herald
