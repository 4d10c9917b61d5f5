// MQTT 3.1.1 and 5.0 control packets as plain values: what the codec (codec.h) decodes into and
// encodes from. One set of types serves both versions; fields that only exist in 5.0 (properties,
// most reason codes) are left empty when a 3.1.1 packet is decoded and are not written when one
// is encoded.
//
// References: MQTT Version 5.0 OASIS Standard (7 March 2019), MQTT Version 3.1.1 OASIS Standard
// (29 October 2014). Section numbers below are 5.0's unless marked 3.1.1.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"

namespace herald::mqtt {

// The protocol level byte of CONNECT (§3.1.2.2). MQTT 3.1 ("MQIsdp", level 3) is not supported:
// the decoder answers it with Unsupported Protocol Version (see docs/mqtt_codec.md).
enum class Version : uint8_t { kV311 = 4, kV5 = 5 };

// §2.1.2 Table 2-1. 0 is reserved; 15 (AUTH) exists only in 5.0.
enum class PacketType : uint8_t {
  kConnect = 1,
  kConnack = 2,
  kPublish = 3,
  kPuback = 4,
  kPubrec = 5,
  kPubrel = 6,
  kPubcomp = 7,
  kSubscribe = 8,
  kSuback = 9,
  kUnsubscribe = 10,
  kUnsuback = 11,
  kPingreq = 12,
  kPingresp = 13,
  kDisconnect = 14,
  kAuth = 15,
};

std::string_view PacketTypeName(PacketType type);

enum class QoS : uint8_t { kAtMostOnce = 0, kAtLeastOnce = 1, kExactlyOnce = 2 };

// MQTT 5.0 reason codes, §2.4 Table 2-6. Packets of both versions carry these values: 3.1.1's
// CONNACK return codes and SUBACK return codes are mapped to and from them by the codec (see
// ConnackReturnCodeV311).
enum class ReasonCode : uint8_t {
  kSuccess = 0x00,  // also Normal disconnection, Granted QoS 0
  kGrantedQoS1 = 0x01,
  kGrantedQoS2 = 0x02,
  kDisconnectWithWillMessage = 0x04,
  kNoMatchingSubscribers = 0x10,
  kNoSubscriptionExisted = 0x11,
  kContinueAuthentication = 0x18,
  kReAuthenticate = 0x19,
  kUnspecifiedError = 0x80,
  kMalformedPacket = 0x81,
  kProtocolError = 0x82,
  kImplementationSpecificError = 0x83,
  kUnsupportedProtocolVersion = 0x84,
  kClientIdentifierNotValid = 0x85,
  kBadUserNameOrPassword = 0x86,
  kNotAuthorized = 0x87,
  kServerUnavailable = 0x88,
  kServerBusy = 0x89,
  kBanned = 0x8A,
  kServerShuttingDown = 0x8B,
  kBadAuthenticationMethod = 0x8C,
  kKeepAliveTimeout = 0x8D,
  kSessionTakenOver = 0x8E,
  kTopicFilterInvalid = 0x8F,
  kTopicNameInvalid = 0x90,
  kPacketIdentifierInUse = 0x91,
  kPacketIdentifierNotFound = 0x92,
  kReceiveMaximumExceeded = 0x93,
  kTopicAliasInvalid = 0x94,
  kPacketTooLarge = 0x95,
  kMessageRateTooHigh = 0x96,
  kQuotaExceeded = 0x97,
  kAdministrativeAction = 0x98,
  kPayloadFormatInvalid = 0x99,
  kRetainNotSupported = 0x9A,
  kQoSNotSupported = 0x9B,
  kUseAnotherServer = 0x9C,
  kServerMoved = 0x9D,
  kSharedSubscriptionsNotSupported = 0x9E,
  kConnectionRateExceeded = 0x9F,
  kMaximumConnectTime = 0xA0,
  kSubscriptionIdentifiersNotSupported = 0xA1,
  kWildcardSubscriptionsNotSupported = 0xA2,
};

// The spec's name of a reason code ("Malformed Packet"); "unknown reason code" otherwise.
std::string_view ReasonCodeName(ReasonCode code);

// Whether `code` is one the spec lets `type` carry (§3.2.2.2, §3.4.2.1, §3.5.2.1, §3.6.2.1,
// §3.7.2.1, §3.9.3, §3.11.3, §3.14.2.1, §3.15.2.1).
bool ReasonCodeAllowedIn(ReasonCode code, PacketType type);

// MQTT 3.1.1 §3.2.2.3: the CONNACK return code that stands for `code`, or nullopt when 3.1.1 has
// none (the server then closes the connection without a CONNACK, 3.1.1 §3.2.2.3).
// kSuccess→0, kUnsupportedProtocolVersion→1, kClientIdentifierNotValid→2,
// kServerUnavailable/kServerBusy→3, kBadUserNameOrPassword→4, kNotAuthorized→5.
std::optional<uint8_t> ConnackReturnCodeV311(ReasonCode code);

// A decoding failure: the reason code the receiver answers with (a DISCONNECT in 5.0, or a
// CONNACK when the failure is in the CONNECT; in 3.1.1 the connection is closed, or a CONNACK
// sent when ConnackReturnCodeV311 maps the code) and a message for logs.
struct Error {
  ReasonCode reason_code = ReasonCode::kMalformedPacket;
  std::string message{};
  // The type of the packet being decoded; nullopt when its first byte names a reserved type,
  // and for errors of the topic functions (topic.h), which know no packet.
  std::optional<PacketType> packet_type{};

  absl::Status ToStatus() const;  // InvalidArgument (ResourceExhausted for Packet too large)
  bool operator==(const Error&) const = default;
};

// MQTT 5.0 property identifiers, §2.2.2.2 Table 2-4.
enum class PropertyId : uint8_t {
  kPayloadFormatIndicator = 0x01,
  kMessageExpiryInterval = 0x02,
  kContentType = 0x03,
  kResponseTopic = 0x08,
  kCorrelationData = 0x09,
  kSubscriptionIdentifier = 0x0B,
  kSessionExpiryInterval = 0x11,
  kAssignedClientIdentifier = 0x12,
  kServerKeepAlive = 0x13,
  kAuthenticationMethod = 0x15,
  kAuthenticationData = 0x16,
  kRequestProblemInformation = 0x17,
  kWillDelayInterval = 0x18,
  kRequestResponseInformation = 0x19,
  kResponseInformation = 0x1A,
  kServerReference = 0x1C,
  kReasonString = 0x1F,
  kReceiveMaximum = 0x21,
  kTopicAliasMaximum = 0x22,
  kTopicAlias = 0x23,
  kMaximumQoS = 0x24,
  kRetainAvailable = 0x25,
  kUserProperty = 0x26,
  kMaximumPacketSize = 0x27,
  kWildcardSubscriptionAvailable = 0x28,
  kSubscriptionIdentifierAvailable = 0x29,
  kSharedSubscriptionAvailable = 0x2A,
};

// Where a property may appear (§2.2.2.2 Table 2-4): a packet type, or the Will Properties of a
// CONNECT (§3.1.3.2), which have their own set.
enum class PropertyScope : uint8_t {
  kConnect = 1,
  kConnack,
  kPublish,
  kPuback,
  kPubrec,
  kPubrel,
  kPubcomp,
  kSubscribe,
  kSuback,
  kUnsubscribe,
  kUnsuback,
  kPingreq,
  kPingresp,
  kDisconnect,
  kAuth,
  kWill = 16,
};
inline PropertyScope ScopeOf(PacketType t) { return static_cast<PropertyScope>(t); }

// Table 2-4: whether property `id` may appear in `scope`. Unknown identifiers are never allowed.
bool PropertyAllowedIn(PropertyId id, PropertyScope scope);
// Whether `id` may appear more than once in one property list of `scope`: only User Property
// (everywhere) and Subscription Identifier in PUBLISH (§3.3.2.3.8); any other repetition is a
// Protocol Error (§2.2.2.2).
bool PropertyMayRepeat(PropertyId id, PropertyScope scope);

struct UserProperty {
  std::string name{};
  std::string value{};
  bool operator==(const UserProperty&) const = default;
};

// The property list of one packet (or of a Will). An unset optional / empty vector means the
// property is absent. Decoding keeps the order of repeated properties; the encoder writes
// properties in identifier order.
struct Properties {
  std::optional<uint8_t> payload_format_indicator{};         // 0x01: 0 bytes, 1 UTF-8
  std::optional<uint32_t> message_expiry_interval{};         // 0x02 seconds
  std::optional<std::string> content_type{};                 // 0x03
  std::optional<std::string> response_topic{};               // 0x08
  std::optional<std::string> correlation_data{};             // 0x09 binary
  std::vector<uint32_t> subscription_identifiers{};          // 0x0B 1..268,435,455
  std::optional<uint32_t> session_expiry_interval{};         // 0x11 seconds
  std::optional<std::string> assigned_client_identifier{};   // 0x12
  std::optional<uint16_t> server_keep_alive{};               // 0x13 seconds
  std::optional<std::string> authentication_method{};        // 0x15
  std::optional<std::string> authentication_data{};          // 0x16 binary
  std::optional<bool> request_problem_information{};         // 0x17
  std::optional<uint32_t> will_delay_interval{};             // 0x18 seconds
  std::optional<bool> request_response_information{};        // 0x19
  std::optional<std::string> response_information{};         // 0x1A
  std::optional<std::string> server_reference{};             // 0x1C
  std::optional<std::string> reason_string{};                // 0x1F
  std::optional<uint16_t> receive_maximum{};                 // 0x21 non-zero
  std::optional<uint16_t> topic_alias_maximum{};             // 0x22
  std::optional<uint16_t> topic_alias{};                     // 0x23 non-zero
  std::optional<uint8_t> maximum_qos{};                      // 0x24 0 or 1
  std::optional<bool> retain_available{};                    // 0x25
  std::vector<UserProperty> user_properties{};               // 0x26
  std::optional<uint32_t> maximum_packet_size{};             // 0x27 non-zero
  std::optional<bool> wildcard_subscription_available{};     // 0x28
  std::optional<bool> subscription_identifiers_available{};  // 0x29
  std::optional<bool> shared_subscription_available{};       // 0x2A

  bool empty() const { return *this == Properties{}; }
  bool operator==(const Properties&) const = default;
};

// §3.1.3.2–§3.1.3.4
struct Will {
  QoS qos = QoS::kAtMostOnce;
  bool retain = false;
  Properties properties{};  // 5.0 only
  std::string topic{};
  std::string payload{};  // binary
  bool operator==(const Will&) const = default;
};

// §3.1. The protocol version is not a field: it is the `version` given to Encode, and the
// decoder reports it with Decoder::version().
struct Connect {
  bool clean_start = true;  // "Clean Session" in 3.1.1
  uint16_t keep_alive = 0;  // seconds, 0 = off
  Properties properties{};
  std::string client_id{};  // may be empty (§3.1.3.1)
  std::optional<Will> will{};
  std::optional<std::string> username{};
  std::optional<std::string> password{};  // binary; 3.1.1 requires a username with it
  bool operator==(const Connect&) const = default;
};

// §3.2. In 3.1.1 the reason code travels as a CONNACK return code (ConnackReturnCodeV311).
struct Connack {
  bool session_present = false;
  ReasonCode reason_code = ReasonCode::kSuccess;
  Properties properties{};
  bool operator==(const Connack&) const = default;
};

// §3.3
struct Publish {
  bool dup = false;
  QoS qos = QoS::kAtMostOnce;
  bool retain = false;
  std::string topic{};     // empty only in 5.0 with a Topic Alias (§3.3.2.3.4)
  uint16_t packet_id = 0;  // non-zero iff qos > 0; ignored by the encoder for QoS 0
  Properties properties{};
  std::string payload{};
  bool operator==(const Publish&) const = default;
};

// §3.4–§3.7: the four acknowledgements of the QoS 1/2 flows share one shape (a template, so
// they stay distinct types and designated initializers work: `Puback{.packet_id = 7}`).
template <PacketType kType>
struct PublishResponse {
  uint16_t packet_id = 0;
  ReasonCode reason_code = ReasonCode::kSuccess;  // 5.0 only
  Properties properties{};                        // 5.0 only
  bool operator==(const PublishResponse&) const = default;
};
using Puback = PublishResponse<PacketType::kPuback>;
using Pubrec = PublishResponse<PacketType::kPubrec>;
using Pubrel = PublishResponse<PacketType::kPubrel>;
using Pubcomp = PublishResponse<PacketType::kPubcomp>;

// §3.8.3.1 Retain Handling
enum class RetainHandling : uint8_t {
  kSendOnSubscribe = 0,
  kSendOnNewSubscribe = 1,
  kDoNotSend = 2,
};

// One Topic Filter and its Subscription Options (§3.8.3.1); 3.1.1 carries only the QoS.
struct Subscription {
  std::string topic_filter{};
  QoS max_qos = QoS::kAtMostOnce;
  bool no_local = false;                                              // 5.0
  bool retain_as_published = false;                                   // 5.0
  RetainHandling retain_handling = RetainHandling::kSendOnSubscribe;  // 5.0
  bool operator==(const Subscription&) const = default;
};

// §3.8
struct Subscribe {
  uint16_t packet_id = 0;
  Properties properties{};
  std::vector<Subscription> subscriptions{};  // at least one
  bool operator==(const Subscribe&) const = default;
};

// §3.9. One reason code per subscription; in 3.1.1 any failure code is written as 0x80.
struct Suback {
  uint16_t packet_id = 0;
  Properties properties{};
  std::vector<ReasonCode> reason_codes{};
  bool operator==(const Suback&) const = default;
};

// §3.10
struct Unsubscribe {
  uint16_t packet_id = 0;
  Properties properties{};
  std::vector<std::string> topic_filters{};  // at least one
  bool operator==(const Unsubscribe&) const = default;
};

// §3.11. 3.1.1's UNSUBACK has no payload: reason_codes is empty when decoded and not written.
struct Unsuback {
  uint16_t packet_id = 0;
  Properties properties{};
  std::vector<ReasonCode> reason_codes{};
  bool operator==(const Unsuback&) const = default;
};

struct Pingreq {
  bool operator==(const Pingreq&) const = default;
};
struct Pingresp {
  bool operator==(const Pingresp&) const = default;
};

// §3.14. 3.1.1's DISCONNECT has no variable header.
struct Disconnect {
  ReasonCode reason_code = ReasonCode::kSuccess;  // Normal disconnection
  Properties properties{};
  bool operator==(const Disconnect&) const = default;
};

// §3.15 (5.0 only)
struct Auth {
  ReasonCode reason_code = ReasonCode::kSuccess;
  Properties properties{};
  bool operator==(const Auth&) const = default;
};

using Packet = std::variant<Connect, Connack, Publish, Puback, Pubrec, Pubrel, Pubcomp, Subscribe,
                            Suback, Unsubscribe, Unsuback, Pingreq, Pingresp, Disconnect, Auth>;

// The variant's alternatives are in packet type order, so the type is the index plus one.
inline PacketType TypeOf(const Packet& p) { return static_cast<PacketType>(p.index() + 1); }

}  // namespace herald::mqtt
