#include "libs/protocol/mqtt/packet.h"

#include <algorithm>
#include <initializer_list>

namespace herald::mqtt {
namespace {

constexpr uint32_t Bit(PropertyScope s) { return 1u << static_cast<unsigned>(s); }

constexpr uint32_t kWillScope = Bit(PropertyScope::kWill);
constexpr uint32_t kAckScopes = Bit(PropertyScope::kPuback) | Bit(PropertyScope::kPubrec) |
                                Bit(PropertyScope::kPubrel) | Bit(PropertyScope::kPubcomp);

// §2.2.2.2 Table 2-4: the scopes each property is allowed in.
uint32_t AllowedScopes(PropertyId id) {
  using S = PropertyScope;
  switch (id) {
    case PropertyId::kPayloadFormatIndicator:
    case PropertyId::kMessageExpiryInterval:
    case PropertyId::kContentType:
    case PropertyId::kResponseTopic:
    case PropertyId::kCorrelationData:
      return Bit(S::kPublish) | kWillScope;
    case PropertyId::kSubscriptionIdentifier:
      return Bit(S::kPublish) | Bit(S::kSubscribe);
    case PropertyId::kSessionExpiryInterval:
      return Bit(S::kConnect) | Bit(S::kConnack) | Bit(S::kDisconnect);
    case PropertyId::kAssignedClientIdentifier:
    case PropertyId::kServerKeepAlive:
    case PropertyId::kResponseInformation:
    case PropertyId::kMaximumQoS:
    case PropertyId::kRetainAvailable:
    case PropertyId::kWildcardSubscriptionAvailable:
    case PropertyId::kSubscriptionIdentifierAvailable:
    case PropertyId::kSharedSubscriptionAvailable:
      return Bit(S::kConnack);
    case PropertyId::kAuthenticationMethod:
    case PropertyId::kAuthenticationData:
      return Bit(S::kConnect) | Bit(S::kConnack) | Bit(S::kAuth);
    case PropertyId::kRequestProblemInformation:
    case PropertyId::kRequestResponseInformation:
      return Bit(S::kConnect);
    case PropertyId::kWillDelayInterval:
      return kWillScope;
    case PropertyId::kServerReference:
      return Bit(S::kConnack) | Bit(S::kDisconnect);
    case PropertyId::kReasonString:
      return Bit(S::kConnack) | kAckScopes | Bit(S::kSuback) | Bit(S::kUnsuback) |
             Bit(S::kDisconnect) | Bit(S::kAuth);
    case PropertyId::kReceiveMaximum:
    case PropertyId::kTopicAliasMaximum:
    case PropertyId::kMaximumPacketSize:
      return Bit(S::kConnect) | Bit(S::kConnack);
    case PropertyId::kTopicAlias:
      return Bit(S::kPublish);
    case PropertyId::kUserProperty:
      // Every packet that has properties (PINGREQ and PINGRESP have none).
      return Bit(S::kConnect) | Bit(S::kConnack) | Bit(S::kPublish) | kWillScope | kAckScopes |
             Bit(S::kSubscribe) | Bit(S::kSuback) | Bit(S::kUnsubscribe) | Bit(S::kUnsuback) |
             Bit(S::kDisconnect) | Bit(S::kAuth);
  }
  return 0;
}

bool OneOf(ReasonCode code, std::initializer_list<uint8_t> codes) {
  return std::find(codes.begin(), codes.end(), static_cast<uint8_t>(code)) != codes.end();
}

}  // namespace

std::string_view PacketTypeName(PacketType type) {
  switch (type) {
    case PacketType::kConnect:
      return "CONNECT";
    case PacketType::kConnack:
      return "CONNACK";
    case PacketType::kPublish:
      return "PUBLISH";
    case PacketType::kPuback:
      return "PUBACK";
    case PacketType::kPubrec:
      return "PUBREC";
    case PacketType::kPubrel:
      return "PUBREL";
    case PacketType::kPubcomp:
      return "PUBCOMP";
    case PacketType::kSubscribe:
      return "SUBSCRIBE";
    case PacketType::kSuback:
      return "SUBACK";
    case PacketType::kUnsubscribe:
      return "UNSUBSCRIBE";
    case PacketType::kUnsuback:
      return "UNSUBACK";
    case PacketType::kPingreq:
      return "PINGREQ";
    case PacketType::kPingresp:
      return "PINGRESP";
    case PacketType::kDisconnect:
      return "DISCONNECT";
    case PacketType::kAuth:
      return "AUTH";
  }
  return "RESERVED";
}

std::string_view ReasonCodeName(ReasonCode code) {
  switch (code) {
    case ReasonCode::kSuccess:
      return "Success";
    case ReasonCode::kGrantedQoS1:
      return "Granted QoS 1";
    case ReasonCode::kGrantedQoS2:
      return "Granted QoS 2";
    case ReasonCode::kDisconnectWithWillMessage:
      return "Disconnect with Will Message";
    case ReasonCode::kNoMatchingSubscribers:
      return "No matching subscribers";
    case ReasonCode::kNoSubscriptionExisted:
      return "No subscription existed";
    case ReasonCode::kContinueAuthentication:
      return "Continue authentication";
    case ReasonCode::kReAuthenticate:
      return "Re-authenticate";
    case ReasonCode::kUnspecifiedError:
      return "Unspecified error";
    case ReasonCode::kMalformedPacket:
      return "Malformed Packet";
    case ReasonCode::kProtocolError:
      return "Protocol Error";
    case ReasonCode::kImplementationSpecificError:
      return "Implementation specific error";
    case ReasonCode::kUnsupportedProtocolVersion:
      return "Unsupported Protocol Version";
    case ReasonCode::kClientIdentifierNotValid:
      return "Client Identifier not valid";
    case ReasonCode::kBadUserNameOrPassword:
      return "Bad User Name or Password";
    case ReasonCode::kNotAuthorized:
      return "Not authorized";
    case ReasonCode::kServerUnavailable:
      return "Server unavailable";
    case ReasonCode::kServerBusy:
      return "Server busy";
    case ReasonCode::kBanned:
      return "Banned";
    case ReasonCode::kServerShuttingDown:
      return "Server shutting down";
    case ReasonCode::kBadAuthenticationMethod:
      return "Bad authentication method";
    case ReasonCode::kKeepAliveTimeout:
      return "Keep Alive timeout";
    case ReasonCode::kSessionTakenOver:
      return "Session taken over";
    case ReasonCode::kTopicFilterInvalid:
      return "Topic Filter invalid";
    case ReasonCode::kTopicNameInvalid:
      return "Topic Name invalid";
    case ReasonCode::kPacketIdentifierInUse:
      return "Packet Identifier in use";
    case ReasonCode::kPacketIdentifierNotFound:
      return "Packet Identifier not found";
    case ReasonCode::kReceiveMaximumExceeded:
      return "Receive Maximum exceeded";
    case ReasonCode::kTopicAliasInvalid:
      return "Topic Alias invalid";
    case ReasonCode::kPacketTooLarge:
      return "Packet too large";
    case ReasonCode::kMessageRateTooHigh:
      return "Message rate too high";
    case ReasonCode::kQuotaExceeded:
      return "Quota exceeded";
    case ReasonCode::kAdministrativeAction:
      return "Administrative action";
    case ReasonCode::kPayloadFormatInvalid:
      return "Payload format invalid";
    case ReasonCode::kRetainNotSupported:
      return "Retain not supported";
    case ReasonCode::kQoSNotSupported:
      return "QoS not supported";
    case ReasonCode::kUseAnotherServer:
      return "Use another server";
    case ReasonCode::kServerMoved:
      return "Server moved";
    case ReasonCode::kSharedSubscriptionsNotSupported:
      return "Shared Subscriptions not supported";
    case ReasonCode::kConnectionRateExceeded:
      return "Connection rate exceeded";
    case ReasonCode::kMaximumConnectTime:
      return "Maximum connect time";
    case ReasonCode::kSubscriptionIdentifiersNotSupported:
      return "Subscription Identifiers not supported";
    case ReasonCode::kWildcardSubscriptionsNotSupported:
      return "Wildcard Subscriptions not supported";
  }
  return "unknown reason code";
}

bool ReasonCodeAllowedIn(ReasonCode code, PacketType type) {
  switch (type) {
    case PacketType::kConnack:  // §3.2.2.2
      return OneOf(code, {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
                          0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F});
    case PacketType::kPuback:  // §3.4.2.1
    case PacketType::kPubrec:  // §3.5.2.1
      return OneOf(code, {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99});
    case PacketType::kPubrel:   // §3.6.2.1
    case PacketType::kPubcomp:  // §3.7.2.1
      return OneOf(code, {0x00, 0x92});
    case PacketType::kSuback:  // §3.9.3
      return OneOf(code, {0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2});
    case PacketType::kUnsuback:  // §3.11.3
      return OneOf(code, {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91});
    case PacketType::kDisconnect:  // §3.14.2.1
      return OneOf(code, {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8C,
                          0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98,
                          0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2});
    case PacketType::kAuth:  // §3.15.2.1
      return OneOf(code, {0x00, 0x18, 0x19});
    default:
      return false;
  }
}

std::optional<uint8_t> ConnackReturnCodeV311(ReasonCode code) {
  switch (code) {
    case ReasonCode::kSuccess:
      return 0x00;
    case ReasonCode::kUnsupportedProtocolVersion:
      return 0x01;
    case ReasonCode::kClientIdentifierNotValid:
      return 0x02;
    case ReasonCode::kServerUnavailable:
    case ReasonCode::kServerBusy:
      return 0x03;
    case ReasonCode::kBadUserNameOrPassword:
      return 0x04;
    case ReasonCode::kNotAuthorized:
      return 0x05;
    default:
      return std::nullopt;
  }
}

absl::Status Error::ToStatus() const {
  std::string text(ReasonCodeName(reason_code));
  text += ": ";
  text += message;
  if (reason_code == ReasonCode::kPacketTooLarge) return absl::ResourceExhaustedError(text);
  return absl::InvalidArgumentError(text);
}

bool PropertyAllowedIn(PropertyId id, PropertyScope scope) {
  return (AllowedScopes(id) & Bit(scope)) != 0;
}

bool PropertyMayRepeat(PropertyId id, PropertyScope scope) {
  if (id == PropertyId::kUserProperty) return true;
  return id == PropertyId::kSubscriptionIdentifier && scope == PropertyScope::kPublish;
}

}  // namespace herald::mqtt
