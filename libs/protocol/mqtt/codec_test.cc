#include "libs/protocol/mqtt/codec.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

namespace herald::mqtt {
namespace {

// ---------------------------------------------------------------------------------------------
// Helpers to assemble packets by hand.

std::string Bytes(std::initializer_list<int> bytes) {
  std::string s;
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

// A two-byte length followed by `s` (§1.5.4).
std::string Str(std::string_view s) {
  std::string out = Bytes({static_cast<int>(s.size() >> 8), static_cast<int>(s.size() & 0xFF)});
  out.append(s);
  return out;
}

std::string VarInt(uint32_t v) {
  std::string out;
  do {
    uint8_t b = v & 0x7F;
    v >>= 7;
    if (v) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (v);
  return out;
}

// A fixed header (first byte + Remaining Length) around `body`.
std::string Frame(int first_byte, std::string_view body) {
  std::string out(1, static_cast<char>(first_byte));
  out += VarInt(static_cast<uint32_t>(body.size()));
  out.append(body);
  return out;
}

// A property list with its length prefix.
std::string Props(std::string_view items) { return VarInt(items.size()) + std::string(items); }

std::string Encoded(const Packet& p, Version v) {
  std::string out;
  absl::Status s = Encode(p, v, &out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

DecoderOptions Opts(std::optional<Version> v, Role role = Role::kServer) {
  DecoderOptions o;
  o.version = v;
  o.role = role;
  return o;
}

struct Decoded {
  std::vector<Packet> packets;
  std::optional<Error> error;
};

Decoded DecodeAll(std::string_view bytes, const DecoderOptions& options) {
  Decoder d(options);
  Decoded r;
  r.error = d.Feed(bytes, &r.packets);
  return r;
}

// Decodes `bytes` and expects the decoder to fail with `code`.
void ExpectError(std::string_view bytes, const DecoderOptions& options, ReasonCode code) {
  Decoded r = DecodeAll(bytes, options);
  ASSERT_TRUE(r.error.has_value()) << "decoded without error";
  EXPECT_EQ(r.error->reason_code, code) << r.error->message;
}

void ExpectOk(std::string_view bytes, const DecoderOptions& options) {
  Decoded r = DecodeAll(bytes, options);
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_EQ(r.packets.size(), 1u);
}

// A valid 5.0 CONNECT body with the given flags, keep alive 0, no properties, client id "c",
// and optional trailing payload fields.
std::string ConnectBody(std::string_view name, int level, int flags, std::string_view props,
                        std::string_view payload) {
  std::string body = Str(name) + Bytes({level, flags, 0, 0});
  if (level == 5) body += Props(props);
  body += payload;
  return body;
}

// ---------------------------------------------------------------------------------------------
// Sample packets covering every field, for round trips.

Properties AllPublishProperties() {
  Properties p;
  p.payload_format_indicator = 1;
  p.message_expiry_interval = 3600;
  p.content_type = "text/plain";
  p.response_topic = "reply/to";
  p.correlation_data = std::string("\x00\x01\x02", 3);
  p.subscription_identifiers = {1, 268'435'455};
  p.topic_alias = 7;
  p.user_properties = {{"k", "v"}, {"k", "v2"}, {"", ""}};
  return p;
}

std::vector<Packet> SamplePackets(Version v) {
  bool v5 = v == Version::kV5;
  std::vector<Packet> out;

  Connect connect;
  connect.clean_start = false;
  connect.keep_alive = 60;
  connect.client_id = "client-1";
  connect.username = "user";
  connect.password = std::string("p\x00w", 3);
  Will will{.qos = QoS::kExactlyOnce, .retain = true, .topic = "dead/client-1", .payload = "bye"};
  if (v5) {
    connect.properties.session_expiry_interval = 120;
    connect.properties.receive_maximum = 10;
    connect.properties.maximum_packet_size = 65536;
    connect.properties.topic_alias_maximum = 5;
    connect.properties.request_response_information = true;
    connect.properties.request_problem_information = false;
    connect.properties.authentication_method = "SCRAM-SHA-1";
    connect.properties.authentication_data = "abc";
    connect.properties.user_properties = {{"a", "b"}};
    will.properties.will_delay_interval = 30;
    will.properties.payload_format_indicator = 1;
    will.properties.message_expiry_interval = 10;
    will.properties.content_type = "text/plain";
    will.properties.response_topic = "r";
    will.properties.correlation_data = "c";
    will.properties.user_properties = {{"w", "x"}};
  }
  connect.will = will;
  out.push_back(connect);
  out.push_back(Connect{.client_id = "minimal"});
  if (v5) out.push_back(Connect{.client_id = "", .password = "no-user"});

  Connack connack{.session_present = true};
  if (v5) {
    connack.properties.session_expiry_interval = 0;
    connack.properties.receive_maximum = 100;
    connack.properties.maximum_qos = 1;
    connack.properties.retain_available = true;
    connack.properties.maximum_packet_size = 1 << 20;
    connack.properties.assigned_client_identifier = "auto-1";
    connack.properties.topic_alias_maximum = 10;
    connack.properties.reason_string = "welcome";
    connack.properties.wildcard_subscription_available = true;
    connack.properties.subscription_identifiers_available = false;
    connack.properties.shared_subscription_available = true;
    connack.properties.server_keep_alive = 30;
    connack.properties.response_information = "resp/";
    connack.properties.server_reference = "other:1883";
    connack.properties.authentication_method = "m";
    connack.properties.authentication_data = "d";
    connack.properties.user_properties = {{"x", "y"}};
  }
  out.push_back(connack);
  out.push_back(Connack{.reason_code = ReasonCode::kNotAuthorized});
  out.push_back(Connack{.reason_code = ReasonCode::kServerUnavailable});

  Publish publish{.dup = true,
                  .qos = QoS::kAtLeastOnce,
                  .retain = true,
                  .topic = "sensors/ü/temp",
                  .packet_id = 65535,
                  .payload = std::string("\x00\xFF binary", 9)};
  if (v5) publish.properties = AllPublishProperties();
  out.push_back(publish);
  out.push_back(Publish{.topic = "a", .payload = ""});
  out.push_back(Publish{
      .qos = QoS::kExactlyOnce, .topic = "b/c", .packet_id = 1, .payload = std::string(300, 'x')});
  if (v5) {
    Publish aliased{.topic = "", .payload = "via alias"};
    aliased.properties.topic_alias = 3;
    out.push_back(aliased);
  }

  Properties ack_props;
  if (v5) {
    ack_props.reason_string = "why";
    ack_props.user_properties = {{"u", "v"}};
  }
  out.push_back(Puback{.packet_id = 1});
  out.push_back(Pubrec{.packet_id = 2});
  out.push_back(Pubrel{.packet_id = 3});
  out.push_back(Pubcomp{.packet_id = 4});
  if (v5) {
    out.push_back(Puback{.packet_id = 5, .reason_code = ReasonCode::kNoMatchingSubscribers});
    out.push_back(
        Pubrec{.packet_id = 6, .reason_code = ReasonCode::kQuotaExceeded, .properties = ack_props});
    out.push_back(Pubrel{.packet_id = 7, .reason_code = ReasonCode::kPacketIdentifierNotFound});
    out.push_back(Pubcomp{.packet_id = 8, .properties = ack_props});
  }

  Subscribe subscribe{.packet_id = 10};
  subscribe.subscriptions.push_back({.topic_filter = "a/+/c", .max_qos = QoS::kAtLeastOnce});
  subscribe.subscriptions.push_back({.topic_filter = "#", .max_qos = QoS::kExactlyOnce});
  if (v5) {
    subscribe.properties.subscription_identifiers = {42};
    subscribe.properties.user_properties = {{"s", "t"}};
    subscribe.subscriptions.push_back({.topic_filter = "x/#",
                                       .max_qos = QoS::kAtMostOnce,
                                       .no_local = true,
                                       .retain_as_published = true,
                                       .retain_handling = RetainHandling::kDoNotSend});
    subscribe.subscriptions.push_back({.topic_filter = "$share/group/y/+",
                                       .retain_handling = RetainHandling::kSendOnNewSubscribe});
  }
  out.push_back(subscribe);

  Suback suback{.packet_id = 10,
                .reason_codes = {ReasonCode::kSuccess, ReasonCode::kGrantedQoS1,
                                 ReasonCode::kGrantedQoS2, ReasonCode::kUnspecifiedError}};
  if (v5) {
    suback.properties = ack_props;
    suback.reason_codes.push_back(ReasonCode::kSharedSubscriptionsNotSupported);
  }
  out.push_back(suback);

  Unsubscribe unsubscribe{.packet_id = 11, .topic_filters = {"a/+/c", "#"}};
  if (v5) {
    unsubscribe.properties.user_properties = {{"u", "1"}};
    unsubscribe.topic_filters.push_back("$share/g/z");
  }
  out.push_back(unsubscribe);

  Unsuback unsuback{.packet_id = 11};
  if (v5) {
    unsuback.properties = ack_props;
    unsuback.reason_codes = {ReasonCode::kSuccess, ReasonCode::kNoSubscriptionExisted};
  }
  out.push_back(unsuback);

  out.push_back(Pingreq{});
  out.push_back(Pingresp{});
  out.push_back(Disconnect{});
  if (v5) {
    Disconnect d{.reason_code = ReasonCode::kServerMoved};
    d.properties.server_reference = "elsewhere";
    d.properties.reason_string = "moving";
    d.properties.session_expiry_interval = 5;
    out.push_back(d);
    out.push_back(Disconnect{.reason_code = ReasonCode::kDisconnectWithWillMessage});
    Auth auth{.reason_code = ReasonCode::kContinueAuthentication};
    auth.properties.authentication_method = "SCRAM-SHA-1";
    auth.properties.authentication_data = "challenge";
    auth.properties.reason_string = "more";
    out.push_back(auth);
    Auth auth_ok;
    auth_ok.properties.authentication_method = "SCRAM-SHA-1";
    out.push_back(auth_ok);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Round trips

class RoundTripTest : public ::testing::TestWithParam<Version> {};

TEST_P(RoundTripTest, EveryPacketTypeDecodesToWhatWasEncoded) {
  Version v = GetParam();
  std::vector<Packet> samples = SamplePackets(v);
  std::vector<bool> seen_type(16, false);
  for (const Packet& p : samples) {
    SCOPED_TRACE(PacketTypeName(TypeOf(p)));
    std::string bytes = Encoded(p, v);
    EXPECT_EQ(EncodedSize(p, v), bytes.size());
    Packet decoded;
    std::optional<Error> e = DecodePacket(bytes, Opts(v, Role::kAny), &decoded);
    ASSERT_FALSE(e.has_value()) << e->message;
    EXPECT_TRUE(decoded == p);
    seen_type[static_cast<int>(TypeOf(p))] = true;
  }
  int last = v == Version::kV5 ? 15 : 14;
  for (int t = 1; t <= last; ++t) EXPECT_TRUE(seen_type[t]) << "no sample of type " << t;
}

TEST_P(RoundTripTest, AStreamOfPacketsSplitAtEveryPointDecodesTheSame) {
  Version v = GetParam();
  // A client's stream: CONNECT first, then client-to-server packets.
  std::vector<Packet> stream;
  for (const Packet& p : SamplePackets(v)) {
    PacketType t = TypeOf(p);
    if (t == PacketType::kConnect && !stream.empty()) continue;
    if (t == PacketType::kConnack || t == PacketType::kSuback || t == PacketType::kUnsuback ||
        t == PacketType::kPingresp) {
      continue;
    }
    if (const auto* pub = std::get_if<Publish>(&p);
        pub && !pub->properties.subscription_identifiers.empty()) {
      continue;  // a client does not send Subscription Identifiers
    }
    stream.push_back(p);
  }
  std::string bytes;
  for (const Packet& p : stream) bytes += Encoded(p, v);

  for (size_t split = 0; split <= bytes.size(); ++split) {
    Decoder d(Opts(std::nullopt));
    std::vector<Packet> out;
    ASSERT_FALSE(d.Feed(std::string_view(bytes).substr(0, split), &out).has_value());
    ASSERT_FALSE(d.Feed(std::string_view(bytes).substr(split), &out).has_value());
    ASSERT_EQ(out.size(), stream.size()) << "split at " << split;
    EXPECT_TRUE(out == stream) << "split at " << split;
    EXPECT_EQ(d.buffered_bytes(), 0u);
    EXPECT_EQ(d.version(), v);
  }
  // One byte at a time.
  Decoder d(Opts(std::nullopt));
  std::vector<Packet> out;
  for (char c : bytes) ASSERT_FALSE(d.Feed(std::string_view(&c, 1), &out).has_value());
  EXPECT_TRUE(out == stream);
}

TEST_P(RoundTripTest, AServerStreamSplitAtEveryPointDecodesTheSame) {
  Version v = GetParam();
  std::vector<Packet> stream;
  for (const Packet& p : SamplePackets(v)) {
    PacketType t = TypeOf(p);
    if (t == PacketType::kConnect || t == PacketType::kSubscribe || t == PacketType::kUnsubscribe ||
        t == PacketType::kPingreq) {
      continue;
    }
    stream.push_back(p);
  }
  std::string bytes;
  for (const Packet& p : stream) bytes += Encoded(p, v);
  for (size_t split = 0; split <= bytes.size(); ++split) {
    Decoder d(Opts(v, Role::kClient));
    std::vector<Packet> out;
    ASSERT_FALSE(d.Feed(std::string_view(bytes).substr(0, split), &out).has_value());
    ASSERT_FALSE(d.Feed(std::string_view(bytes).substr(split), &out).has_value());
    EXPECT_TRUE(out == stream) << "split at " << split;
  }
}

INSTANTIATE_TEST_SUITE_P(BothVersions, RoundTripTest,
                         ::testing::Values(Version::kV311, Version::kV5), [](const auto& info) {
                           return info.param == Version::kV5 ? "V5" : "V311";
                         });

TEST(DecoderTest, EverySplitIntoThreeChunksDecodesTheSame) {
  std::string bytes =
      Encoded(Connect{.client_id = "c"}, Version::kV5) +
      Encoded(Publish{.qos = QoS::kAtLeastOnce, .topic = "t", .packet_id = 9, .payload = "hello"},
              Version::kV5) +
      Encoded(Pingreq{}, Version::kV5);
  for (size_t i = 0; i <= bytes.size(); ++i) {
    for (size_t j = i; j <= bytes.size(); ++j) {
      Decoder d(Opts(std::nullopt));
      std::vector<Packet> out;
      std::string_view b = bytes;
      ASSERT_FALSE(d.Feed(b.substr(0, i), &out));
      ASSERT_FALSE(d.Feed(b.substr(i, j - i), &out));
      ASSERT_FALSE(d.Feed(b.substr(j), &out));
      ASSERT_EQ(out.size(), 3u) << i << "," << j;
      EXPECT_EQ(std::get<Publish>(out[1]).payload, "hello");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Byte-exact encodings

TEST(EncodeTest, ConnectMatchesTheSpecExampleVariableHeader) {
  // MQTT 5.0 §3.1.2.12 example: "MQTT", level 5, flags 0xCE (user name, password, will QoS 1,
  // will, clean start), keep alive 10, properties: Session Expiry Interval 10.
  Connect c;
  c.clean_start = true;
  c.keep_alive = 10;
  c.properties.session_expiry_interval = 10;
  c.client_id = "c";
  c.will = Will{.qos = QoS::kAtLeastOnce, .topic = "w", .payload = "p"};
  c.username = "u";
  c.password = "pw";
  std::string variable_header =
      Bytes({0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0xCE, 0x00, 0x0A, 0x05, 0x11, 0, 0, 0, 10});
  std::string payload = Str("c") + Bytes({0x00}) + Str("w") + Str("p") + Str("u") + Str("pw");
  EXPECT_EQ(Encoded(c, Version::kV5), Frame(0x10, variable_header + payload));
}

TEST(EncodeTest, SmallPacketsMatchHandAssembledBytes) {
  EXPECT_EQ(Encoded(Pingreq{}, Version::kV311), Bytes({0xC0, 0x00}));
  EXPECT_EQ(Encoded(Pingresp{}, Version::kV5), Bytes({0xD0, 0x00}));
  EXPECT_EQ(Encoded(Disconnect{}, Version::kV311), Bytes({0xE0, 0x00}));
  EXPECT_EQ(Encoded(Disconnect{}, Version::kV5), Bytes({0xE0, 0x00}));  // §3.14.2.1 short form
  EXPECT_EQ(Encoded(Connack{}, Version::kV311), Bytes({0x20, 0x02, 0x00, 0x00}));
  EXPECT_EQ(Encoded(Connack{.reason_code = ReasonCode::kBadUserNameOrPassword}, Version::kV311),
            Bytes({0x20, 0x02, 0x00, 0x04}));
  EXPECT_EQ(Encoded(Connack{.session_present = true}, Version::kV5),
            Bytes({0x20, 0x03, 0x01, 0x00, 0x00}));
  EXPECT_EQ(
      Encoded(Publish{.qos = QoS::kAtLeastOnce, .topic = "a/b", .packet_id = 10, .payload = "hi"},
              Version::kV311),
      Bytes({0x32, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x0A, 'h', 'i'}));
  EXPECT_EQ(Encoded(Publish{.retain = true, .topic = "t", .payload = "x"}, Version::kV5),
            Bytes({0x31, 0x05, 0x00, 0x01, 't', 0x00, 'x'}));
  // §3.4.2.1: Success without properties omits the reason code; a reason code alone omits the
  // property length.
  EXPECT_EQ(Encoded(Puback{.packet_id = 1}, Version::kV5), Bytes({0x40, 0x02, 0x00, 0x01}));
  EXPECT_EQ(Encoded(Puback{.packet_id = 1, .reason_code = ReasonCode::kNoMatchingSubscribers},
                    Version::kV5),
            Bytes({0x40, 0x03, 0x00, 0x01, 0x10}));
  EXPECT_EQ(Encoded(Pubrel{.packet_id = 2}, Version::kV311), Bytes({0x62, 0x02, 0x00, 0x02}));
  Subscribe sub{.packet_id = 1};
  sub.subscriptions.push_back({.topic_filter = "a/#",
                               .max_qos = QoS::kExactlyOnce,
                               .no_local = true,
                               .retain_as_published = true,
                               .retain_handling = RetainHandling::kDoNotSend});
  EXPECT_EQ(Encoded(sub, Version::kV5),
            Bytes({0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, 'a', '/', '#', 0x2E}));
  EXPECT_EQ(Encoded(sub, Version::kV311),
            Bytes({0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 'a', '/', '#', 0x02}));
  EXPECT_EQ(Encoded(Suback{.packet_id = 1,
                           .reason_codes = {ReasonCode::kGrantedQoS1, ReasonCode::kNotAuthorized}},
                    Version::kV311),
            Bytes({0x90, 0x04, 0x00, 0x01, 0x01, 0x80}));
  EXPECT_EQ(
      Encoded(Unsuback{.packet_id = 3, .reason_codes = {ReasonCode::kSuccess}}, Version::kV311),
      Bytes({0xB0, 0x02, 0x00, 0x03}));
}

TEST(EncodeTest, VariableByteIntegersMatchTheSpecTable) {
  // §1.5.5 Table 1-1, through a Subscription Identifier (a VBI property) in a PUBLISH.
  struct Case {
    uint32_t value;
    std::string bytes;
  } cases[] = {
      {1, Bytes({0x01})},
      {127, Bytes({0x7F})},
      {128, Bytes({0x80, 0x01})},
      {16'383, Bytes({0xFF, 0x7F})},
      {16'384, Bytes({0x80, 0x80, 0x01})},
      {2'097'151, Bytes({0xFF, 0xFF, 0x7F})},
      {2'097'152, Bytes({0x80, 0x80, 0x80, 0x01})},
      {268'435'455, Bytes({0xFF, 0xFF, 0xFF, 0x7F})},
  };
  for (const Case& c : cases) {
    Publish p{.topic = "t"};
    p.properties.subscription_identifiers = {c.value};
    std::string body = Str("t") + Props(Bytes({0x0B}) + c.bytes);
    EXPECT_EQ(Encoded(p, Version::kV5), Frame(0x30, body)) << c.value;
  }
}

TEST(EncodeTest, RemainingLengthUsesTwoBytesFrom128) {
  Publish p{.topic = "t", .payload = std::string(125, 'x')};  // 3 + 125 = 128 bytes of body
  std::string bytes = Encoded(p, Version::kV311);
  EXPECT_EQ(bytes.substr(0, 3), Bytes({0x30, 0x80, 0x01}));
  EXPECT_EQ(EncodedSize(p, Version::kV311), 131u);
}

TEST(EncodeTest, Version311DropsPropertiesAndReasonCodes) {
  Puback ack{.packet_id = 1, .reason_code = ReasonCode::kQuotaExceeded};
  ack.properties.reason_string = "full";
  EXPECT_EQ(Encoded(ack, Version::kV311), Bytes({0x40, 0x02, 0x00, 0x01}));
  Disconnect d{.reason_code = ReasonCode::kServerShuttingDown};
  EXPECT_EQ(Encoded(d, Version::kV311), Bytes({0xE0, 0x00}));
}

TEST(EncodeTest, RefusesWhatCannotBeRepresented) {
  std::string out;
  EXPECT_FALSE(Encode(Auth{}, Version::kV311, &out).ok());
  EXPECT_FALSE(Encode(Connack{.reason_code = ReasonCode::kBanned}, Version::kV311, &out).ok());
  EXPECT_FALSE(Encode(Publish{.topic = std::string(70'000, 'a')}, Version::kV5, &out).ok());
  Connack with_alias;
  with_alias.properties.topic_alias = 1;  // PUBLISH only (§2.2.2.2)
  EXPECT_FALSE(Encode(with_alias, Version::kV5, &out).ok());
  Subscribe two_ids{.packet_id = 1, .subscriptions = {{.topic_filter = "a"}}};
  two_ids.properties.subscription_identifiers = {1, 2};
  EXPECT_FALSE(Encode(two_ids, Version::kV5, &out).ok());
  EXPECT_FALSE(Encode(Subscribe{.packet_id = 1}, Version::kV5, &out).ok());
  EXPECT_FALSE(Encode(Unsubscribe{.packet_id = 1}, Version::kV311, &out).ok());
  EXPECT_FALSE(Encode(Connect{.client_id = "c", .password = "p"}, Version::kV311, &out).ok());
  EXPECT_FALSE(Encode(Publish{.qos = static_cast<QoS>(3), .topic = "t", .packet_id = 1},
                      Version::kV311, &out)
                   .ok());
  EXPECT_TRUE(out.empty());
}

TEST(EncodeTest, EncodedSizeLetsTheSenderCheckMaximumPacketSize) {
  Publish p{.topic = "t", .payload = std::string(1000, 'x')};
  p.properties.user_properties = {{"a", std::string(200, 'b')}};
  std::string bytes = Encoded(p, Version::kV5);
  EXPECT_EQ(EncodedSize(p, Version::kV5), bytes.size());
  EXPECT_LT(EncodedSize(p, Version::kV311), bytes.size());
}

// ---------------------------------------------------------------------------------------------
// Validation: each malformed input and the reason code it is answered with.

const DecoderOptions kV5 = Opts(Version::kV5);
const DecoderOptions kV311 = Opts(Version::kV311);

TEST(DecoderErrorTest, RemainingLengthLongerThanFourBytesIsMalformed) {
  ExpectError(Bytes({0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}), kV5, ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, RemainingLengthNotInShortestFormIsMalformed) {
  ExpectError(Bytes({0xC0, 0x80, 0x00}), kV5, ReasonCode::kMalformedPacket);  // [MQTT-1.5.5-1]
}

TEST(DecoderErrorTest, PacketAboveTheMaximumSizeIsTooLargeBeforeItsBodyArrives) {
  DecoderOptions o = kV5;
  o.maximum_packet_size = 100;
  Decoder d(o);
  std::vector<Packet> out;
  // 1 + 1 + 98 = 100 bytes: accepted.
  std::string ok = Frame(0x30, Str("t") + Bytes({0}) + std::string(94, 'x'));
  ASSERT_EQ(ok.size(), 100u);
  EXPECT_FALSE(d.Feed(ok, &out).has_value());
  EXPECT_EQ(out.size(), 1u);
  // 1 + 1 + 99 = 101 bytes: refused from the fixed header alone.
  std::optional<Error> e = d.Feed(Bytes({0x30, 99}), &out);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->reason_code, ReasonCode::kPacketTooLarge);
  EXPECT_EQ(e->packet_type, PacketType::kPublish);
  EXPECT_EQ(e->ToStatus().code(), absl::StatusCode::kResourceExhausted);
  // Once failed, the decoder stays failed.
  EXPECT_EQ(d.Feed(Encoded(Pingreq{}, Version::kV5), &out), e);
  EXPECT_EQ(out.size(), 1u);
}

TEST(DecoderErrorTest, HugeRemainingLengthIsTooLargeNotBuffered) {
  Decoder d(kV5);
  std::vector<Packet> out;
  std::optional<Error> e = d.Feed(Bytes({0x30, 0xFF, 0xFF, 0xFF, 0x7F}), &out);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->reason_code, ReasonCode::kPacketTooLarge);
  EXPECT_EQ(d.buffered_bytes(), 0u);
}

TEST(DecoderErrorTest, ReservedPacketTypesAreMalformed) {
  ExpectError(Bytes({0x00, 0x00}), kV5, ReasonCode::kMalformedPacket);
  ExpectError(Bytes({0xF0, 0x00}), kV311, ReasonCode::kMalformedPacket);  // AUTH in 3.1.1
}

TEST(DecoderErrorTest, WrongFixedHeaderFlagsAreMalformed) {
  // §2.1.3: SUBSCRIBE, UNSUBSCRIBE and PUBREL must carry 0x2, the others 0x0.
  std::string sub_body = Bytes({0, 1, 0}) + Str("a") + Bytes({0});
  ExpectError(Frame(0x80, sub_body), kV5, ReasonCode::kMalformedPacket);
  ExpectOk(Frame(0x82, sub_body), kV5);
  std::string unsub_body = Bytes({0, 1, 0}) + Str("a");
  ExpectError(Frame(0xA0, unsub_body), kV5, ReasonCode::kMalformedPacket);
  ExpectOk(Frame(0xA2, unsub_body), kV5);
  ExpectError(Bytes({0x60, 0x02, 0x00, 0x01}), kV311, ReasonCode::kMalformedPacket);
  ExpectOk(Bytes({0x62, 0x02, 0x00, 0x01}), kV311);
  ExpectError(Bytes({0x42, 0x02, 0x00, 0x01}), kV5, ReasonCode::kMalformedPacket);
  ExpectError(Bytes({0xC1, 0x00}), kV5, ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, PublishWithQoS3IsMalformed) {
  ExpectError(Frame(0x36, Str("t") + Bytes({0, 1, 0})), kV5, ReasonCode::kMalformedPacket);
  ExpectError(Frame(0x36, Str("t") + Bytes({0, 1})), kV311, ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, DupWithQoS0IsMalformed) {
  ExpectError(Frame(0x38, Str("t") + Bytes({0})), kV5, ReasonCode::kMalformedPacket);
  ExpectOk(Frame(0x3A, Str("t") + Bytes({0, 1, 0})), kV5);  // DUP with QoS 1 is fine
}

TEST(DecoderErrorTest, BadUtf8InAStringIsMalformed) {
  for (std::string bad : {Bytes({0xC3, 0x28}),              // truncated sequence
                          Bytes({'a', 0x00}),               // U+0000 [MQTT-1.5.4-2]
                          Bytes({0xED, 0xA0, 0x80}),        // surrogate U+D800 [MQTT-1.5.4-1]
                          Bytes({0xC0, 0xAF}),              // overlong '/'
                          Bytes({0xF4, 0x90, 0x80, 0x80}),  // above U+10FFFF
                          Bytes({0xFF})}) {
    ExpectError(Frame(0x30, Str(bad) + Bytes({0})), kV5, ReasonCode::kMalformedPacket);
    ExpectError(Frame(0x30, Str(bad)), kV311, ReasonCode::kMalformedPacket);
  }
  // In a user property too.
  ExpectError(Frame(0x30, Str("t") + Props(Bytes({0x26}) + Str(Bytes({0xC3})) + Str("v"))), kV5,
              ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, ControlCharactersAreAllowedUnlessAskedToRefuse) {
  std::string packet = Frame(0x30, Str("a\x01") + Bytes({0}));
  ExpectOk(packet, kV5);
  DecoderOptions strict = kV5;
  strict.reject_control_characters = true;
  ExpectError(packet, strict, ReasonCode::kMalformedPacket);
  ExpectError(Frame(0x30, Str("a\xC2\x85") + Bytes({0})), strict, ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, WildcardInAPublishTopicIsTopicNameInvalid) {
  ExpectError(Frame(0x30, Str("a/+") + Bytes({0})), kV5, ReasonCode::kTopicNameInvalid);
  ExpectError(Frame(0x30, Str("a/#")), kV311, ReasonCode::kTopicNameInvalid);
}

TEST(DecoderErrorTest, EmptyTopicNeedsATopicAliasIn5AndIsMalformedIn311) {
  ExpectError(Frame(0x30, Str("") + Bytes({0})), kV5, ReasonCode::kProtocolError);
  ExpectOk(Frame(0x30, Str("") + Props(Bytes({0x23, 0, 1}))), kV5);
  ExpectError(Frame(0x30, Str("")), kV311, ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, ZeroPacketIdentifierIsAProtocolError) {
  ExpectError(Frame(0x32, Str("t") + Bytes({0, 0, 0})), kV5, ReasonCode::kProtocolError);
  ExpectError(Frame(0x82, Bytes({0, 0, 0}) + Str("a") + Bytes({0})), kV5,
              ReasonCode::kProtocolError);
  ExpectError(Frame(0xA2, Bytes({0, 0}) + Str("a")), kV311, ReasonCode::kProtocolError);
  ExpectError(Bytes({0x40, 0x02, 0x00, 0x00}), kV311, ReasonCode::kProtocolError);
}

TEST(DecoderErrorTest, SubscribeAndUnsubscribeWithoutTopicFiltersAreProtocolErrors) {
  ExpectError(Frame(0x82, Bytes({0, 1, 0})), kV5, ReasonCode::kProtocolError);
  ExpectError(Frame(0x82, Bytes({0, 1})), kV311, ReasonCode::kProtocolError);
  ExpectError(Frame(0xA2, Bytes({0, 1, 0})), kV5, ReasonCode::kProtocolError);
  ExpectError(Frame(0xA2, Bytes({0, 1})), kV311, ReasonCode::kProtocolError);
}

std::string SubscribeWith(std::string_view filter, int options, bool v5 = true) {
  return Frame(0x82, Bytes({0, 1}) + (v5 ? Bytes({0}) : "") + Str(filter) + Bytes({options}));
}

TEST(DecoderErrorTest, MisplacedWildcardsInATopicFilterAreTopicFilterInvalid) {
  for (std::string_view bad : {"a/#/b", "a#", "#/", "a/b#", "a+", "+a/b", "a/++"}) {
    SCOPED_TRACE(bad);
    ExpectError(SubscribeWith(bad, 0), kV5, ReasonCode::kTopicFilterInvalid);
    ExpectError(SubscribeWith(bad, 0, false), kV311, ReasonCode::kTopicFilterInvalid);
  }
  ExpectError(SubscribeWith("", 0), kV5, ReasonCode::kMalformedPacket);  // [MQTT-4.7.3-1]
  ExpectError(Frame(0xA2, Bytes({0, 1, 0}) + Str("a/#/b")), kV5, ReasonCode::kTopicFilterInvalid);
}

TEST(DecoderErrorTest, BadSharedSubscriptionsAreProtocolErrors) {
  for (std::string_view bad :
       {"$share//a", "$share/g+/a", "$share/g#/a", "$share/g", "$share/g/"}) {
    SCOPED_TRACE(bad);
    ExpectError(SubscribeWith(bad, 0), kV5, ReasonCode::kProtocolError);
  }
  ExpectError(SubscribeWith("$share/g/a/#/b", 0), kV5, ReasonCode::kTopicFilterInvalid);
  ExpectOk(SubscribeWith("$share/g/a/#", 0), kV5);
  // [MQTT-3.8.3-4]: No Local on a shared subscription.
  ExpectError(SubscribeWith("$share/g/a", 0x04), kV5, ReasonCode::kProtocolError);
  ExpectOk(SubscribeWith("a", 0x04), kV5);
  // 3.1.1 has no shared subscriptions: "$share/g" is an ordinary filter.
  ExpectOk(SubscribeWith("$share/g", 0, false), kV311);
}

TEST(DecoderErrorTest, SubscriptionOptionsAreChecked) {
  ExpectError(SubscribeWith("a", 0x40), kV5, ReasonCode::kMalformedPacket);  // [MQTT-3.8.3-5]
  ExpectError(SubscribeWith("a", 0x80), kV5, ReasonCode::kMalformedPacket);
  ExpectError(SubscribeWith("a", 0x30), kV5, ReasonCode::kProtocolError);  // Retain Handling 3
  ExpectError(SubscribeWith("a", 0x03), kV5, ReasonCode::kProtocolError);  // QoS 3
  ExpectOk(SubscribeWith("a", 0x2E), kV5);
  ExpectError(SubscribeWith("a", 0x03, false), kV311, ReasonCode::kMalformedPacket);
  ExpectError(SubscribeWith("a", 0x04, false), kV311, ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, RepeatedPropertiesAreProtocolErrorsExceptUserPropertyAndPublishIds) {
  std::string expiry = Bytes({0x02, 0, 0, 0, 1});
  ExpectError(Frame(0x30, Str("t") + Props(expiry + expiry)), kV5, ReasonCode::kProtocolError);
  std::string user = Bytes({0x26}) + Str("k") + Str("v");
  ExpectOk(Frame(0x30, Str("t") + Props(user + user)), kV5);
  std::string sub_id = Bytes({0x0B, 0x05});
  ExpectOk(Frame(0x30, Str("t") + Props(sub_id + sub_id)), Opts(Version::kV5, Role::kClient));
  ExpectError(Frame(0x82, Bytes({0, 1}) + Props(sub_id + sub_id) + Str("a") + Bytes({0})), kV5,
              ReasonCode::kProtocolError);
  ExpectError(Frame(0x10, ConnectBody("MQTT", 5, 0x02, Bytes({0x21, 0, 1, 0x21, 0, 1}), Str("c"))),
              Opts(std::nullopt), ReasonCode::kProtocolError);
}

TEST(DecoderErrorTest, PropertiesNotAllowedInThePacketAreMalformed) {
  // Session Expiry Interval (0x11) is not a PUBLISH property (§2.2.2.2).
  ExpectError(Frame(0x30, Str("t") + Props(Bytes({0x11, 0, 0, 0, 1}))), kV5,
              ReasonCode::kMalformedPacket);
  // Will Delay Interval is a Will property, not a CONNECT property.
  ExpectError(Frame(0x10, ConnectBody("MQTT", 5, 0x02, Bytes({0x18, 0, 0, 0, 1}), Str("c"))),
              Opts(std::nullopt), ReasonCode::kMalformedPacket);
  // Unknown identifier.
  ExpectError(Frame(0x30, Str("t") + Props(Bytes({0x7F, 0}))), kV5, ReasonCode::kMalformedPacket);
  // PINGREQ/PUBACK: Topic Alias is PUBLISH only.
  ExpectError(Frame(0x40, Bytes({0, 1, 0x00}) + Props(Bytes({0x23, 0, 1}))), kV5,
              ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, PropertyLengthsMustFitThePacket) {
  ExpectError(Frame(0x30, Str("t") + Bytes({0x05, 0x02, 0, 0})), kV5, ReasonCode::kMalformedPacket);
  // A four-byte property with only two bytes of value inside the property length.
  ExpectError(Frame(0x30, Str("t") + Bytes({0x03, 0x02, 0, 0}) + "xx"), kV5,
              ReasonCode::kMalformedPacket);
  // A string property whose length runs past the property list.
  ExpectError(Frame(0x30, Str("t") + Bytes({0x04, 0x03, 0x00, 0x09, 'a'}) + "payload"), kV5,
              ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, OutOfRangePropertyValuesAreProtocolErrors) {
  auto connect_with = [](std::string props) {
    return Frame(0x10, ConnectBody("MQTT", 5, 0x02, props, Str("c")));
  };
  DecoderOptions o = Opts(std::nullopt);
  ExpectError(connect_with(Bytes({0x21, 0, 0})), o, ReasonCode::kProtocolError);  // Receive Max
  ExpectError(connect_with(Bytes({0x27, 0, 0, 0, 0})), o, ReasonCode::kProtocolError);
  ExpectError(connect_with(Bytes({0x17, 2})), o, ReasonCode::kProtocolError);
  ExpectError(connect_with(Bytes({0x19, 2})), o, ReasonCode::kProtocolError);
  ExpectError(connect_with(Bytes({0x16}) + Str("data")), o, ReasonCode::kProtocolError);
  ExpectError(Frame(0x30, Str("t") + Props(Bytes({0x23, 0, 0}))), kV5,
              ReasonCode::kProtocolError);  // Topic Alias 0
  ExpectError(Frame(0x30, Str("t") + Props(Bytes({0x01, 2}))), kV5, ReasonCode::kProtocolError);
  ExpectError(Frame(0x82, Bytes({0, 1}) + Props(Bytes({0x0B, 0})) + Str("a") + Bytes({0})), kV5,
              ReasonCode::kProtocolError);  // Subscription Identifier 0
  ExpectError(Frame(0x20, Bytes({0, 0}) + Props(Bytes({0x24, 2}))),
              Opts(Version::kV5, Role::kClient), ReasonCode::kProtocolError);  // Maximum QoS 2
}

TEST(DecoderErrorTest, ClientsDoNotSendSubscriptionIdentifiers) {
  ExpectError(Frame(0x30, Str("t") + Props(Bytes({0x0B, 1}))), kV5, ReasonCode::kProtocolError);
}

TEST(DecoderErrorTest, ConnectFlagsAreChecked) {
  DecoderOptions o = Opts(std::nullopt);
  std::string will = Bytes({0}) + Str("w") + Str("p");  // 5.0 will properties, topic, payload
  ExpectError(Frame(0x10, ConnectBody("MQTT", 5, 0x03, "", Str("c"))), o,
              ReasonCode::kMalformedPacket);  // reserved bit [MQTT-3.1.2-3]
  ExpectError(Frame(0x10, ConnectBody("MQTT", 5, 0x02 | 0x04 | 0x18, "", Str("c") + will)), o,
              ReasonCode::kMalformedPacket);  // will QoS 3
  ExpectError(Frame(0x10, ConnectBody("MQTT", 5, 0x02 | 0x08, "", Str("c"))), o,
              ReasonCode::kMalformedPacket);  // will QoS without will flag
  ExpectError(Frame(0x10, ConnectBody("MQTT", 5, 0x02 | 0x20, "", Str("c"))), o,
              ReasonCode::kMalformedPacket);  // will retain without will flag
  ExpectOk(Frame(0x10, ConnectBody("MQTT", 5, 0x02 | 0x04 | 0x10 | 0x20, "", Str("c") + will)), o);
  // Password without user name: refused in 3.1.1 [MQTT-3.1.2-22], allowed in 5.0.
  ExpectError(Frame(0x10, ConnectBody("MQTT", 4, 0x02 | 0x40, "", Str("c") + Str("pw"))), o,
              ReasonCode::kMalformedPacket);
  ExpectOk(Frame(0x10, ConnectBody("MQTT", 5, 0x02 | 0x40, "", Str("c") + Str("pw"))), o);
  // Flags announce a user name the payload lacks.
  ExpectError(Frame(0x10, ConnectBody("MQTT", 5, 0x02 | 0x80, "", Str("c"))), o,
              ReasonCode::kMalformedPacket);
  // Wildcard in the will topic.
  ExpectError(
      Frame(0x10, ConnectBody("MQTT", 5, 0x06, "", Str("c") + Bytes({0}) + Str("w/#") + Str("p"))),
      o, ReasonCode::kTopicNameInvalid);
}

TEST(DecoderErrorTest, UnsupportedProtocolVersionsAreAnsweredWithTheirCode) {
  DecoderOptions o = Opts(std::nullopt);
  Decoder d(o);
  std::vector<Packet> out;
  std::optional<Error> e = d.Feed(Frame(0x10, ConnectBody("MQTT", 6, 0x02, "", Str("c"))), &out);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->reason_code, ReasonCode::kUnsupportedProtocolVersion);
  EXPECT_EQ(e->packet_type, PacketType::kConnect);
  EXPECT_EQ(ConnackReturnCodeV311(e->reason_code), 0x01);
  EXPECT_FALSE(d.version().has_value());
  // MQTT 3.1 is refused the same way.
  ExpectError(Frame(0x10, Str("MQIsdp") + Bytes({3, 0x02, 0, 0}) + Str("c")), o,
              ReasonCode::kUnsupportedProtocolVersion);
  // Not MQTT at all.
  ExpectError(Frame(0x10, Str("MQTX") + Bytes({4, 0x02, 0, 0}) + Str("c")), o,
              ReasonCode::kProtocolError);
}

TEST(DecoderErrorTest, VersionIsKnownEvenWhenTheRestOfTheConnectFails) {
  Decoder d(Opts(std::nullopt));
  std::vector<Packet> out;
  std::optional<Error> e = d.Feed(Frame(0x10, ConnectBody("MQTT", 4, 0x00, "", Str(""))), &out);
  ASSERT_TRUE(e.has_value());
  // 3.1.1 [MQTT-3.1.3-8]: empty client id without clean session → return code 0x02.
  EXPECT_EQ(e->reason_code, ReasonCode::kClientIdentifierNotValid);
  EXPECT_EQ(ConnackReturnCodeV311(e->reason_code), 0x02);
  EXPECT_EQ(d.version(), Version::kV311);
  // 5.0 allows it (the server assigns an identifier).
  ExpectOk(Frame(0x10, ConnectBody("MQTT", 5, 0x00, "", Str(""))), Opts(std::nullopt));
}

TEST(DecoderErrorTest, TheFirstPacketMustBeASingleConnect) {
  ExpectError(Encoded(Pingreq{}, Version::kV5), Opts(std::nullopt), ReasonCode::kProtocolError);
  std::string connect = Encoded(Connect{.client_id = "c"}, Version::kV5);
  Decoded r = DecodeAll(connect + connect, Opts(std::nullopt));
  EXPECT_EQ(r.packets.size(), 1u);
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->reason_code, ReasonCode::kProtocolError);
}

TEST(DecoderErrorTest, PacketsSentInTheWrongDirectionAreProtocolErrors) {
  ExpectError(Encoded(Connack{}, Version::kV5), kV5, ReasonCode::kProtocolError);
  ExpectError(Encoded(Pingresp{}, Version::kV311), kV311, ReasonCode::kProtocolError);
  ExpectError(Encoded(Pingreq{}, Version::kV5), Opts(Version::kV5, Role::kClient),
              ReasonCode::kProtocolError);
  ExpectOk(Encoded(Connack{}, Version::kV5), Opts(Version::kV5, Role::kClient));
}

TEST(DecoderErrorTest, TrailingOrMissingBytesAreMalformed) {
  ExpectError(Bytes({0xC0, 0x01, 0x00}), kV5, ReasonCode::kMalformedPacket);  // PINGREQ
  ExpectError(Bytes({0x40, 0x03, 0x00, 0x01, 0x00}), kV311, ReasonCode::kMalformedPacket);
  ExpectError(Bytes({0xE0, 0x01, 0x00}), kV311, ReasonCode::kMalformedPacket);  // DISCONNECT
  ExpectError(Frame(0x30, Bytes({0x00, 0x05, 'a'})), kV5, ReasonCode::kMalformedPacket);
  ExpectError(Bytes({0x40, 0x01, 0x00}), kV5, ReasonCode::kMalformedPacket);
  ExpectError(Bytes({0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00}), kV5, ReasonCode::kMalformedPacket);
}

TEST(DecoderErrorTest, ReasonCodesOutsideThePacketsListAreProtocolErrors) {
  ExpectError(Bytes({0x40, 0x03, 0x00, 0x01, 0x05}), kV5, ReasonCode::kProtocolError);
  ExpectError(Bytes({0xE0, 0x01, 0x01}), kV5, ReasonCode::kProtocolError);
  ExpectOk(Bytes({0xE0, 0x01, 0x04}), kV5);  // Disconnect with Will Message
  ExpectError(Bytes({0x20, 0x02, 0x00, 0x06}), Opts(Version::kV311, Role::kClient),
              ReasonCode::kMalformedPacket);  // 3.1.1 return codes stop at 5
  ExpectError(Bytes({0x20, 0x02, 0x01, 0x05}), Opts(Version::kV311, Role::kClient),
              ReasonCode::kProtocolError);  // session present with a refusal
}

TEST(DecoderErrorTest, AuthNeedsAnAuthenticationMethod) {
  ExpectError(Bytes({0xF0, 0x00}), kV5, ReasonCode::kProtocolError);
  ExpectOk(Frame(0xF0, Bytes({0x18}) + Props(Bytes({0x15}) + Str("m"))), kV5);
}

TEST(DecoderErrorTest, NonUtf8PayloadMarkedAsUtf8IsRefusedWhenAsked) {
  std::string packet = Frame(0x30, Str("t") + Props(Bytes({0x01, 0x01})) + Bytes({0xFF}));
  ExpectOk(packet, kV5);
  DecoderOptions o = kV5;
  o.validate_utf8_payloads = true;
  ExpectError(packet, o, ReasonCode::kPayloadFormatInvalid);
}

TEST(DecoderTest, OptionsCanBeGivenWithDesignatedInitializers) {
  Decoder d({.role = Role::kServer, .maximum_packet_size = 64});
  std::vector<Packet> out;
  std::optional<Error> e = d.Feed(Bytes({0x10, 0x7F}), &out);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->reason_code, ReasonCode::kPacketTooLarge);
  EXPECT_EQ(e->packet_type, PacketType::kConnect);
}

TEST(DecoderTest, PacketsBeforeAnErrorAreDelivered) {
  std::string bytes =
      Encoded(Pingreq{}, Version::kV5) + Encoded(Pingreq{}, Version::kV5) + Bytes({0x00, 0x00});
  Decoded r = DecodeAll(bytes, kV5);
  EXPECT_EQ(r.packets.size(), 2u);
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->reason_code, ReasonCode::kMalformedPacket);
}

TEST(DecoderTest, GarbageFailsAtTheFirstByteWithoutWaitingForMore) {
  Decoder d(Opts(std::nullopt));
  std::vector<Packet> out;
  std::optional<Error> e = d.Feed("G", &out);  // "GET / HTTP/1.1" is not MQTT
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->reason_code, ReasonCode::kMalformedPacket);
}

TEST(DecoderTest, DecodePacketRefusesALengthMismatch) {
  Packet p;
  std::string bytes = Encoded(Puback{.packet_id = 1}, Version::kV5);
  EXPECT_FALSE(DecodePacket(bytes, kV5, &p).has_value());
  EXPECT_TRUE(DecodePacket(bytes + "x", kV5, &p).has_value());
  EXPECT_TRUE(DecodePacket(bytes.substr(0, 3), kV5, &p).has_value());
}

TEST(ReasonCodeTest, OnlySomeCodesHaveA311ConnackReturnCode) {
  EXPECT_EQ(ConnackReturnCodeV311(ReasonCode::kSuccess), 0);
  EXPECT_EQ(ConnackReturnCodeV311(ReasonCode::kServerBusy), 3);
  EXPECT_EQ(ConnackReturnCodeV311(ReasonCode::kBadUserNameOrPassword), 4);
  EXPECT_EQ(ConnackReturnCodeV311(ReasonCode::kNotAuthorized), 5);
  EXPECT_FALSE(ConnackReturnCodeV311(ReasonCode::kMalformedPacket).has_value());
}

TEST(PropertyRulesTest, OnlyUserPropertyAndPublishSubscriptionIdentifierRepeat) {
  for (int id = 0; id <= 0x2A; ++id) {
    for (int scope = 1; scope <= 16; ++scope) {
      auto pid = static_cast<PropertyId>(id);
      auto s = static_cast<PropertyScope>(scope);
      bool expected = pid == PropertyId::kUserProperty ||
                      (pid == PropertyId::kSubscriptionIdentifier && s == PropertyScope::kPublish);
      EXPECT_EQ(PropertyMayRepeat(pid, s), expected) << id << " in " << scope;
    }
  }
  EXPECT_FALSE(PropertyAllowedIn(PropertyId::kUserProperty, PropertyScope::kPingreq));
  EXPECT_TRUE(PropertyAllowedIn(PropertyId::kWillDelayInterval, PropertyScope::kWill));
  EXPECT_FALSE(PropertyAllowedIn(PropertyId::kWillDelayInterval, PropertyScope::kConnect));
  EXPECT_FALSE(PropertyAllowedIn(static_cast<PropertyId>(0x04), PropertyScope::kPublish));
}

// The fuzz corpus (see mqtt_fuzz.cc for the layout: a mode byte, a split byte, then a stream)
// holds only valid streams, so the fuzzer starts from packets that get deep into the decoder.
TEST(FuzzCorpusTest, EverySeedIsAValidStream) {
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(MQTT_CORPUS_DIR)) {
    SCOPED_TRACE(entry.path().filename().string());
    std::ifstream in(entry.path(), std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_GE(data.size(), 3u);
    auto mode = static_cast<uint8_t>(data[0]);
    DecoderOptions o;
    if (mode & 0x02) o.version = (mode & 0x01) ? Version::kV5 : Version::kV311;
    int role = (mode >> 2) & 0x03;
    o.role = role == 0 ? Role::kServer : role == 1 ? Role::kClient : Role::kAny;
    Decoder d(o);
    std::vector<Packet> out;
    std::optional<Error> e = d.Feed(std::string_view(data).substr(2), &out);
    EXPECT_FALSE(e.has_value()) << e->message;
    EXPECT_FALSE(out.empty());
    EXPECT_EQ(d.buffered_bytes(), 0u);
    ++seeds;
  }
  EXPECT_GE(seeds, 12);
}

}  // namespace
}  // namespace herald::mqtt
