#include "libs/protocol/mqtt/codec.h"

#include <algorithm>
#include <utility>

#include "libs/common/strings.h"
#include "libs/protocol/mqtt/topic.h"

namespace herald::mqtt {
namespace {

constexpr size_t kMaxStringBytes = 65535;

size_t VarIntSize(uint32_t v) {
  if (v < 128) return 1;
  if (v < 16'384) return 2;
  if (v < 2'097'152) return 3;
  return 4;
}

// The fixed flags of every packet type but PUBLISH, §2.1.3 Table 2-2.
uint8_t RequiredFlags(PacketType t) {
  switch (t) {
    case PacketType::kPubrel:
    case PacketType::kSubscribe:
    case PacketType::kUnsubscribe:
      return 0x2;
    default:
      return 0x0;
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding

class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}

  size_t remaining() const { return data_.size() - pos_; }
  bool at_end() const { return pos_ == data_.size(); }

  bool Byte(uint8_t* v) {
    if (remaining() < 1) return false;
    *v = static_cast<uint8_t>(data_[pos_++]);
    return true;
  }
  bool U16(uint16_t* v) {
    if (remaining() < 2) return false;
    *v = static_cast<uint16_t>((At(0) << 8) | At(1));
    pos_ += 2;
    return true;
  }
  bool U32(uint32_t* v) {
    if (remaining() < 4) return false;
    *v = (uint32_t{At(0)} << 24) | (uint32_t{At(1)} << 16) | (uint32_t{At(2)} << 8) | At(3);
    pos_ += 4;
    return true;
  }
  bool Take(size_t n, std::string_view* v) {
    if (remaining() < n) return false;
    *v = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  std::string_view Peek() const { return data_.substr(pos_); }
  void Skip(size_t n) { pos_ += std::min(n, remaining()); }
  std::string_view Rest() {
    std::string_view rest = data_.substr(pos_);
    pos_ = data_.size();
    return rest;
  }

 private:
  uint8_t At(size_t i) const { return static_cast<uint8_t>(data_[pos_ + i]); }

  std::string_view data_;
  size_t pos_ = 0;
};

enum class VarIntStatus { kOk, kNeedMore, kInvalid };

// §1.5.5: at most 4 bytes, and the minimum number of bytes [MQTT-1.5.5-1].
VarIntStatus ParseVarInt(std::string_view data, uint32_t* value, size_t* used) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) {
    if (i >= data.size()) return VarIntStatus::kNeedMore;
    uint8_t b = static_cast<uint8_t>(data[i]);
    v |= uint32_t{b & 0x7Fu} << (7 * i);
    if ((b & 0x80) == 0) {
      if (i > 0 && b == 0) return VarIntStatus::kInvalid;  // not the shortest encoding
      *value = v;
      *used = i + 1;
      return VarIntStatus::kOk;
    }
  }
  return VarIntStatus::kInvalid;
}

// Decodes the variable header and payload of one packet whose fixed header has been checked
// (ReadFixedHeader).
class BodyParser {
 public:
  BodyParser(const DecoderOptions& options, std::optional<Version>* version, PacketType type,
             uint8_t flags, std::string_view body)
      : options_(options), version_(version), type_(type), flags_(flags), r_(body) {}

  std::optional<Error> Parse(Packet* out) {
    bool ok = ParseAny(out);
    if (!ok && !error_) Fail(ReasonCode::kMalformedPacket, "invalid packet");
    return std::move(error_);
  }

 private:
  bool v5() const { return *version_ == Version::kV5; }

  bool Fail(ReasonCode code, std::string_view message) {
    if (!error_) {
      error_ = Error{.reason_code = code,
                     .message = StrCat(PacketTypeName(type_), ": ", message),
                     .packet_type = type_};
    }
    return false;
  }
  bool Malformed(std::string_view message) { return Fail(ReasonCode::kMalformedPacket, message); }
  bool ProtocolError(std::string_view message) { return Fail(ReasonCode::kProtocolError, message); }
  bool FailWith(std::optional<Error> e) {
    if (!error_) {
      error_ = std::move(e);
      error_->message = StrCat(PacketTypeName(type_), ": ", error_->message);
      error_->packet_type = type_;
    }
    return false;
  }

  bool ReadByte(uint8_t* v, std::string_view what) {
    return r_.Byte(v) || Malformed(StrCat("truncated ", what));
  }
  bool ReadU16(uint16_t* v, std::string_view what) {
    return r_.U16(v) || Malformed(StrCat("truncated ", what));
  }
  bool ReadU32(uint32_t* v, std::string_view what) {
    return r_.U32(v) || Malformed(StrCat("truncated ", what));
  }
  bool ReadVarInt(uint32_t* v, std::string_view what) {
    size_t used = 0;
    switch (ParseVarInt(r_.Peek(), v, &used)) {
      case VarIntStatus::kOk:
        r_.Skip(used);
        return true;
      case VarIntStatus::kNeedMore:
        return Malformed(StrCat("truncated ", what));
      case VarIntStatus::kInvalid:
        return Malformed(StrCat("invalid variable byte integer in ", what));
    }
    return false;
  }
  // §1.5.6 Binary Data: two-byte length, then bytes.
  bool ReadBinary(std::string* out, std::string_view what) {
    uint16_t len = 0;
    std::string_view bytes;
    if (!r_.U16(&len) || !r_.Take(len, &bytes)) return Malformed(StrCat("truncated ", what));
    out->assign(bytes);
    return true;
  }
  // §1.5.4 UTF-8 Encoded String: a malformed string is a Malformed Packet [MQTT-1.5.4-1].
  bool ReadString(std::string* out, std::string_view what) {
    if (!ReadBinary(out, what)) return false;
    if (!IsValidMqttUtf8(*out, options_.reject_control_characters)) {
      return Malformed(StrCat(what, " is not valid UTF-8"));
    }
    return true;
  }
  bool ReadPacketId(uint16_t* id) {
    if (!ReadU16(id, "packet identifier")) return false;
    // [MQTT-2.2.1-3]: SUBSCRIBE, UNSUBSCRIBE, PUBLISH (QoS > 0) and their acknowledgements carry
    // a non-zero Packet Identifier.
    if (*id == 0) return ProtocolError("packet identifier 0");
    return true;
  }
  bool ExpectEnd() {
    return r_.at_end() || Malformed(StrCat(r_.remaining(), " unexpected bytes at the end"));
  }
  bool ReadReasonCode(ReasonCode* code) {
    uint8_t b = 0;
    if (!ReadByte(&b, "reason code")) return false;
    *code = static_cast<ReasonCode>(b);
    if (!ReasonCodeAllowedIn(*code, type_)) {
      return ProtocolError(StrCat("reason code ", int{b}, " is not valid here"));
    }
    return true;
  }

  bool ReadProperties(PropertyScope scope, Properties* p);
  bool ReadProperty(PropertyScope scope, uint64_t* seen, Properties* p);
  bool ValidatePayload(const Properties& p, std::string_view payload) {
    if (options_.validate_utf8_payloads && p.payload_format_indicator == 1 &&
        !IsValidMqttUtf8(payload)) {
      return Fail(ReasonCode::kPayloadFormatInvalid, "payload is not valid UTF-8");
    }
    return true;
  }
  // A topic filter of SUBSCRIBE or UNSUBSCRIBE. Sets *shared when it is a shared subscription.
  bool ReadTopicFilter(std::string* filter, bool* shared) {
    if (!ReadString(filter, "topic filter")) return false;
    std::string_view plain = *filter;
    *shared = false;
    // Shared subscriptions exist in 5.0 only (§4.8.2); in 3.1.1 "$share/..." is a plain filter.
    if (v5() && IsSharedSubscription(*filter)) {
      SharedSubscription s;
      if (auto e = ParseSharedSubscription(*filter, &s)) return FailWith(std::move(e));
      plain = s.topic_filter;
      *shared = true;
    }
    if (auto e = ValidateTopicFilter(plain, options_.reject_control_characters)) {
      return FailWith(std::move(e));
    }
    return true;
  }

  bool ParseAny(Packet* out);
  bool ParseConnect(Connect* c);
  bool ParseConnack(Connack* c);
  bool ParsePublish(Publish* p);
  template <PacketType kType>
  bool ParsePublishResponse(PublishResponse<kType>* p);
  bool ParseSubscribe(Subscribe* s);
  bool ParseSuback(Suback* s);
  bool ParseUnsubscribe(Unsubscribe* u);
  bool ParseUnsuback(Unsuback* u);
  template <typename T>
  bool ParseReasonAndProperties(T* p);

  const DecoderOptions& options_;
  std::optional<Version>* version_;
  PacketType type_;
  uint8_t flags_;
  Reader r_;
  std::optional<Error> error_;
};

bool BodyParser::ReadProperties(PropertyScope scope, Properties* p) {
  uint32_t len = 0;
  if (!ReadVarInt(&len, "property length")) return false;
  std::string_view bytes;
  // §2.2.2.1: the properties must fit in the packet.
  if (!r_.Take(len, &bytes)) return Malformed("property length exceeds the packet");
  // The property reads use the member reader: point it at the property list meanwhile.
  Reader after_properties = r_;
  r_ = Reader(bytes);
  uint64_t seen = 0;
  while (!r_.at_end()) {
    if (!ReadProperty(scope, &seen, p)) return false;
  }
  r_ = after_properties;
  return true;
}

bool BodyParser::ReadProperty(PropertyScope scope, uint64_t* seen, Properties* p) {
  uint32_t raw_id = 0;
  if (!ReadVarInt(&raw_id, "property identifier")) return false;  // §2.2.2.2: a VBI
  auto id = static_cast<PropertyId>(raw_id);
  // §2.2.2.2: an identifier not valid for the packet type is a Malformed Packet.
  if (raw_id > 0x2A || !PropertyAllowedIn(id, scope)) {
    return Malformed(StrCat("property ", raw_id, " is not allowed here"));
  }
  uint64_t bit = uint64_t{1} << raw_id;
  // It is a Protocol Error to include a property more than once, except User Property and
  // Subscription Identifier in PUBLISH (§2.2.2.2, §3.3.2.3.8).
  if ((*seen & bit) && !PropertyMayRepeat(id, scope)) {
    return ProtocolError(StrCat("property ", raw_id, " appears more than once"));
  }
  *seen |= bit;

  auto read_bool = [&](std::optional<bool>* field, std::string_view what) {
    uint8_t b = 0;
    if (!ReadByte(&b, what)) return false;
    if (b > 1) return ProtocolError(StrCat(what, " must be 0 or 1"));
    *field = b == 1;
    return true;
  };
  auto read_u16 = [&](std::optional<uint16_t>* field, std::string_view what, bool nonzero) {
    uint16_t v = 0;
    if (!ReadU16(&v, what)) return false;
    if (nonzero && v == 0) return ProtocolError(StrCat(what, " of 0"));
    *field = v;
    return true;
  };
  auto read_u32 = [&](std::optional<uint32_t>* field, std::string_view what, bool nonzero) {
    uint32_t v = 0;
    if (!ReadU32(&v, what)) return false;
    if (nonzero && v == 0) return ProtocolError(StrCat(what, " of 0"));
    *field = v;
    return true;
  };
  auto read_string = [&](std::optional<std::string>* field, std::string_view what) {
    field->emplace();
    return ReadString(&**field, what);
  };
  auto read_binary = [&](std::optional<std::string>* field, std::string_view what) {
    field->emplace();
    return ReadBinary(&**field, what);
  };

  switch (id) {
    case PropertyId::kPayloadFormatIndicator: {  // §3.3.2.3.2
      uint8_t b = 0;
      if (!ReadByte(&b, "payload format indicator")) return false;
      if (b > 1) return ProtocolError("payload format indicator must be 0 or 1");
      p->payload_format_indicator = b;
      return true;
    }
    case PropertyId::kMessageExpiryInterval:  // §3.3.2.3.3
      return read_u32(&p->message_expiry_interval, "message expiry interval", false);
    case PropertyId::kContentType:  // §3.3.2.3.9
      return read_string(&p->content_type, "content type");
    case PropertyId::kResponseTopic: {  // §3.3.2.3.5: a Topic Name [MQTT-3.3.2-14]
      if (!read_string(&p->response_topic, "response topic")) return false;
      if (auto e = ValidateTopicName(*p->response_topic)) return FailWith(std::move(e));
      return true;
    }
    case PropertyId::kCorrelationData:  // §3.3.2.3.6
      return read_binary(&p->correlation_data, "correlation data");
    case PropertyId::kSubscriptionIdentifier: {  // §3.3.2.3.8, §3.8.2.1.2
      uint32_t v = 0;
      if (!ReadVarInt(&v, "subscription identifier")) return false;
      if (v == 0) return ProtocolError("subscription identifier of 0");
      p->subscription_identifiers.push_back(v);
      return true;
    }
    case PropertyId::kSessionExpiryInterval:  // §3.1.2.11.2
      return read_u32(&p->session_expiry_interval, "session expiry interval", false);
    case PropertyId::kAssignedClientIdentifier:  // §3.2.2.3.7
      return read_string(&p->assigned_client_identifier, "assigned client identifier");
    case PropertyId::kServerKeepAlive:  // §3.2.2.3.14
      return read_u16(&p->server_keep_alive, "server keep alive", false);
    case PropertyId::kAuthenticationMethod:  // §3.1.2.11.9
      return read_string(&p->authentication_method, "authentication method");
    case PropertyId::kAuthenticationData:  // §3.1.2.11.10
      return read_binary(&p->authentication_data, "authentication data");
    case PropertyId::kRequestProblemInformation:  // §3.1.2.11.7
      return read_bool(&p->request_problem_information, "request problem information");
    case PropertyId::kWillDelayInterval:  // §3.1.3.2.2
      return read_u32(&p->will_delay_interval, "will delay interval", false);
    case PropertyId::kRequestResponseInformation:  // §3.1.2.11.6
      return read_bool(&p->request_response_information, "request response information");
    case PropertyId::kResponseInformation:  // §3.2.2.3.15
      return read_string(&p->response_information, "response information");
    case PropertyId::kServerReference:  // §3.2.2.3.16
      return read_string(&p->server_reference, "server reference");
    case PropertyId::kReasonString:  // §3.2.2.3.9
      return read_string(&p->reason_string, "reason string");
    case PropertyId::kReceiveMaximum:  // §3.1.2.11.3: 0 is a Protocol Error
      return read_u16(&p->receive_maximum, "receive maximum", true);
    case PropertyId::kTopicAliasMaximum:  // §3.1.2.11.5
      return read_u16(&p->topic_alias_maximum, "topic alias maximum", false);
    case PropertyId::kTopicAlias:  // §3.3.2.3.4: 0 is a Protocol Error
      return read_u16(&p->topic_alias, "topic alias", true);
    case PropertyId::kMaximumQoS: {  // §3.2.2.3.4
      uint8_t b = 0;
      if (!ReadByte(&b, "maximum QoS")) return false;
      if (b > 1) return ProtocolError("maximum QoS must be 0 or 1");
      p->maximum_qos = b;
      return true;
    }
    case PropertyId::kRetainAvailable:  // §3.2.2.3.5
      return read_bool(&p->retain_available, "retain available");
    case PropertyId::kUserProperty: {  // §3.1.2.11.8: a UTF-8 String Pair
      UserProperty up;
      if (!ReadString(&up.name, "user property name") ||
          !ReadString(&up.value, "user property value")) {
        return false;
      }
      p->user_properties.push_back(std::move(up));
      return true;
    }
    case PropertyId::kMaximumPacketSize:  // §3.1.2.11.4: 0 is a Protocol Error
      return read_u32(&p->maximum_packet_size, "maximum packet size", true);
    case PropertyId::kWildcardSubscriptionAvailable:  // §3.2.2.3.11
      return read_bool(&p->wildcard_subscription_available, "wildcard subscription available");
    case PropertyId::kSubscriptionIdentifierAvailable:  // §3.2.2.3.12
      return read_bool(&p->subscription_identifiers_available, "subscription identifier available");
    case PropertyId::kSharedSubscriptionAvailable:  // §3.2.2.3.13
      return read_bool(&p->shared_subscription_available, "shared subscription available");
  }
  return Malformed(StrCat("unknown property ", raw_id));
}

bool BodyParser::ParseAny(Packet* out) {
  switch (type_) {
    case PacketType::kConnect:
      return ParseConnect(&out->emplace<Connect>());
    case PacketType::kConnack:
      return ParseConnack(&out->emplace<Connack>());
    case PacketType::kPublish:
      return ParsePublish(&out->emplace<Publish>());
    case PacketType::kPuback:
      return ParsePublishResponse(&out->emplace<Puback>());
    case PacketType::kPubrec:
      return ParsePublishResponse(&out->emplace<Pubrec>());
    case PacketType::kPubrel:
      return ParsePublishResponse(&out->emplace<Pubrel>());
    case PacketType::kPubcomp:
      return ParsePublishResponse(&out->emplace<Pubcomp>());
    case PacketType::kSubscribe:
      return ParseSubscribe(&out->emplace<Subscribe>());
    case PacketType::kSuback:
      return ParseSuback(&out->emplace<Suback>());
    case PacketType::kUnsubscribe:
      return ParseUnsubscribe(&out->emplace<Unsubscribe>());
    case PacketType::kUnsuback:
      return ParseUnsuback(&out->emplace<Unsuback>());
    case PacketType::kPingreq:  // §3.12: no variable header, no payload
      out->emplace<Pingreq>();
      return ExpectEnd();
    case PacketType::kPingresp:  // §3.13
      out->emplace<Pingresp>();
      return ExpectEnd();
    case PacketType::kDisconnect:
      if (!v5()) {  // 3.1.1 §3.14: no variable header
        out->emplace<Disconnect>();
        return ExpectEnd();
      }
      return ParseReasonAndProperties(&out->emplace<Disconnect>());
    case PacketType::kAuth: {
      auto& auth = out->emplace<Auth>();
      if (!ParseReasonAndProperties(&auth)) return false;
      // §3.15.2.2.2: it is a Protocol Error to omit the Authentication Method.
      if (!auth.properties.authentication_method) {
        return ProtocolError("AUTH without an authentication method");
      }
      return true;
    }
  }
  return Malformed("reserved packet type");
}

// §3.1
bool BodyParser::ParseConnect(Connect* c) {
  // §3.1.2.1 Protocol Name, §3.1.2.2 Protocol Version.
  std::string name;
  uint8_t level = 0;
  if (!ReadBinary(&name, "protocol name") || !ReadByte(&level, "protocol level")) return false;
  if (name == "MQTT" && (level == 4 || level == 5)) {
    *version_ = static_cast<Version>(level);
  } else if (name == "MQTT" || (name == "MQIsdp" && level == 3)) {
    // [MQTT-3.1.2-2]: an unsupported level is answered with CONNACK 0x84 (0x01 in 3.1.1).
    // MQTT 3.1 ("MQIsdp", level 3) is deliberately not supported.
    *version_ = std::nullopt;
    return Fail(ReasonCode::kUnsupportedProtocolVersion,
                StrCat("unsupported protocol level ", int{level}));
  } else {
    // [MQTT-3.1.2-1]: not MQTT at all; close the connection.
    *version_ = std::nullopt;
    return ProtocolError("protocol name is not MQTT");
  }

  // §3.1.2.3 Connect Flags.
  uint8_t flags = 0;
  if (!ReadByte(&flags, "connect flags")) return false;
  if (flags & 0x01) return Malformed("reserved connect flag is set");  // [MQTT-3.1.2-3]
  c->clean_start = flags & 0x02;
  bool will = flags & 0x04;
  uint8_t will_qos = (flags >> 3) & 0x03;
  bool will_retain = flags & 0x20;
  bool password = flags & 0x40;
  bool username = flags & 0x80;
  if (will_qos == 3) return Malformed("will QoS 3");  // [MQTT-3.1.2-12]
  if (!will && (will_qos != 0 || will_retain)) {
    // [MQTT-3.1.2-11], [MQTT-3.1.2-13]
    return Malformed("will QoS or will retain set without the will flag");
  }
  if (!v5() && password && !username) {
    // 3.1.1 [MQTT-3.1.2-22]; 5.0 allows a password without a user name (§3.1.2.9).
    return Malformed("password flag set without the user name flag");
  }
  if (!ReadU16(&c->keep_alive, "keep alive")) return false;  // §3.1.2.10
  if (v5()) {
    if (!ReadProperties(PropertyScope::kConnect, &c->properties)) return false;
    // §3.1.2.11.10: Authentication Data without an Authentication Method is a Protocol Error.
    if (c->properties.authentication_data && !c->properties.authentication_method) {
      return ProtocolError("authentication data without an authentication method");
    }
  }

  // §3.1.3 Payload.
  if (!ReadString(&c->client_id, "client identifier")) return false;
  if (!v5() && c->client_id.empty() && !c->clean_start) {
    // 3.1.1 [MQTT-3.1.3-8]: answered with CONNACK return code 0x02.
    return Fail(ReasonCode::kClientIdentifierNotValid,
                "empty client identifier without clean session");
  }
  if (will) {
    Will& w = c->will.emplace();
    w.qos = static_cast<QoS>(will_qos);
    w.retain = will_retain;
    if (v5() && !ReadProperties(PropertyScope::kWill, &w.properties)) return false;
    if (!ReadString(&w.topic, "will topic")) return false;
    if (auto e = ValidateTopicName(w.topic, options_.reject_control_characters)) {
      return FailWith(std::move(e));
    }
    if (!ReadBinary(&w.payload, "will payload")) return false;
    if (!ValidatePayload(w.properties, w.payload)) return false;
  }
  if (username && !ReadString(&c->username.emplace(), "user name")) return false;
  if (password && !ReadBinary(&c->password.emplace(), "password")) return false;
  return ExpectEnd();
}

// §3.2
bool BodyParser::ParseConnack(Connack* c) {
  uint8_t ack_flags = 0;
  if (!ReadByte(&ack_flags, "connect acknowledge flags")) return false;
  if (ack_flags & 0xFE) return Malformed("reserved CONNACK flags are set");  // [MQTT-3.2.2-1]
  c->session_present = ack_flags & 0x01;
  if (v5()) {
    if (!ReadReasonCode(&c->reason_code)) return false;
    if (!ReadProperties(PropertyScope::kConnack, &c->properties)) return false;
  } else {
    uint8_t code = 0;
    if (!ReadByte(&code, "return code")) return false;
    // 3.1.1 §3.2.2.3 Table 3.1: 0..5, mapped to the 5.0 reason codes.
    static constexpr ReasonCode kV311Codes[] = {ReasonCode::kSuccess,
                                                ReasonCode::kUnsupportedProtocolVersion,
                                                ReasonCode::kClientIdentifierNotValid,
                                                ReasonCode::kServerUnavailable,
                                                ReasonCode::kBadUserNameOrPassword,
                                                ReasonCode::kNotAuthorized};
    if (code > 5) return Malformed(StrCat("reserved CONNACK return code ", int{code}));
    c->reason_code = kV311Codes[code];
  }
  // [MQTT-3.2.2-6] (5.0), [MQTT-3.2.2-4] (3.1.1): a refusal has Session Present 0.
  if (c->session_present && c->reason_code != ReasonCode::kSuccess) {
    return ProtocolError("session present with a failure reason code");
  }
  return ExpectEnd();
}

// §3.3
bool BodyParser::ParsePublish(Publish* p) {
  p->retain = flags_ & 0x01;
  p->qos = static_cast<QoS>((flags_ >> 1) & 0x03);  // 3 was refused with the fixed header
  p->dup = flags_ & 0x08;
  if (!ReadString(&p->topic, "topic name")) return false;
  if (!p->topic.empty()) {
    if (auto e = ValidateTopicName(p->topic, options_.reject_control_characters)) {
      return FailWith(std::move(e));
    }
  } else if (!v5()) {
    return Malformed("empty topic name");  // 3.1.1 [MQTT-4.7.3-1]
  }
  if (p->qos != QoS::kAtMostOnce && !ReadPacketId(&p->packet_id)) return false;
  if (v5()) {
    if (!ReadProperties(PropertyScope::kPublish, &p->properties)) return false;
    // §3.3.2.3.4: an empty Topic Name needs a Topic Alias.
    if (p->topic.empty() && !p->properties.topic_alias) {
      return ProtocolError("empty topic name without a topic alias");
    }
    // [MQTT-3.3.4-6]: a client does not send Subscription Identifiers.
    if (options_.role == Role::kServer && !p->properties.subscription_identifiers.empty()) {
      return ProtocolError("subscription identifier in a PUBLISH from a client");
    }
  }
  p->payload.assign(r_.Rest());  // §3.3.3: the rest of the packet, may be empty
  return ValidatePayload(p->properties, p->payload);
}

// §3.4.2, §3.5.2, §3.6.2, §3.7.2
template <PacketType kType>
bool BodyParser::ParsePublishResponse(PublishResponse<kType>* p) {
  if (!ReadPacketId(&p->packet_id)) return false;
  if (!v5()) return ExpectEnd();  // 3.1.1: Remaining Length is exactly 2
  return ParseReasonAndProperties(p);
}

// The optional Reason Code and Properties of PUBACK/PUBREC/PUBREL/PUBCOMP (§3.4.2.1: both may
// be omitted when the Remaining Length ends before them), DISCONNECT (§3.14.2.1) and AUTH
// (§3.15.2.1).
template <typename T>
bool BodyParser::ParseReasonAndProperties(T* p) {
  if (r_.at_end()) return true;  // Success, no properties
  if (!ReadReasonCode(&p->reason_code)) return false;
  if (r_.at_end()) return true;  // no Property Length
  if (!ReadProperties(ScopeOf(type_), &p->properties)) return false;
  return ExpectEnd();
}

// §3.8
bool BodyParser::ParseSubscribe(Subscribe* s) {
  if (!ReadPacketId(&s->packet_id)) return false;
  if (v5() && !ReadProperties(PropertyScope::kSubscribe, &s->properties)) return false;
  // [MQTT-3.8.3-2] (5.0), [MQTT-3.8.3-3] (3.1.1): at least one Topic Filter.
  if (r_.at_end()) return ProtocolError("no topic filter");
  while (!r_.at_end()) {
    Subscription& sub = s->subscriptions.emplace_back();
    bool shared;
    if (!ReadTopicFilter(&sub.topic_filter, &shared)) return false;
    uint8_t options = 0;
    if (!ReadByte(&options, "subscription options")) return false;
    uint8_t qos = options & 0x03;
    if (v5()) {
      // §3.8.3.1: reserved bits 6-7 [MQTT-3.8.3-5] make a Malformed Packet; QoS 3 and Retain
      // Handling 3 are Protocol Errors; No Local on a shared subscription [MQTT-3.8.3-4] too.
      if (options & 0xC0) return Malformed("reserved subscription option bits are set");
      if (qos == 3) return ProtocolError("maximum QoS 3");
      uint8_t retain_handling = (options >> 4) & 0x03;
      if (retain_handling == 3) return ProtocolError("retain handling 3");
      sub.no_local = options & 0x04;
      sub.retain_as_published = options & 0x08;
      sub.retain_handling = static_cast<RetainHandling>(retain_handling);
      if (shared && sub.no_local) return ProtocolError("no local on a shared subscription");
    } else {
      // 3.1.1 [MQTT-3-8.3-4]: the upper 6 bits are reserved, and QoS 3 is malformed.
      if (options & 0xFC) return Malformed("reserved requested QoS bits are set");
      if (qos == 3) return Malformed("requested QoS 3");
    }
    sub.max_qos = static_cast<QoS>(qos);
  }
  return true;
}

// §3.9
bool BodyParser::ParseSuback(Suback* s) {
  if (!ReadPacketId(&s->packet_id)) return false;
  if (v5() && !ReadProperties(PropertyScope::kSuback, &s->properties)) return false;
  if (r_.at_end()) return ProtocolError("no reason code");
  while (!r_.at_end()) {
    if (v5()) {
      if (!ReadReasonCode(&s->reason_codes.emplace_back())) return false;
    } else {
      uint8_t code = 0;
      if (!ReadByte(&code, "return code")) return false;
      // 3.1.1 §3.9.3: 0x00, 0x01, 0x02, 0x80.
      if (code > 2 && code != 0x80) return Malformed(StrCat("SUBACK return code ", int{code}));
      s->reason_codes.push_back(static_cast<ReasonCode>(code));
    }
  }
  return true;
}

// §3.10
bool BodyParser::ParseUnsubscribe(Unsubscribe* u) {
  if (!ReadPacketId(&u->packet_id)) return false;
  if (v5() && !ReadProperties(PropertyScope::kUnsubscribe, &u->properties)) return false;
  // [MQTT-3.10.3-2]: at least one Topic Filter.
  if (r_.at_end()) return ProtocolError("no topic filter");
  while (!r_.at_end()) {
    bool shared;
    if (!ReadTopicFilter(&u->topic_filters.emplace_back(), &shared)) return false;
  }
  return true;
}

// §3.11
bool BodyParser::ParseUnsuback(Unsuback* u) {
  if (!ReadPacketId(&u->packet_id)) return false;
  if (!v5()) return ExpectEnd();  // 3.1.1 §3.11: no payload
  if (!ReadProperties(PropertyScope::kUnsuback, &u->properties)) return false;
  if (r_.at_end()) return ProtocolError("no reason code");
  while (!r_.at_end()) {
    if (!ReadReasonCode(&u->reason_codes.emplace_back())) return false;
  }
  return true;
}

Error HeaderError(ReasonCode code, std::optional<PacketType> type, std::string message) {
  return Error{.reason_code = code, .message = std::move(message), .packet_type = type};
}

// Checks the first byte of a packet against the spec and the connection's state.
std::optional<Error> CheckFirstByte(uint8_t b, const DecoderOptions& options,
                                    std::optional<Version> version, bool connect_seen) {
  uint8_t raw_type = b >> 4;
  uint8_t flags = b & 0x0F;
  // §2.1.2: type 0 is reserved; 15 is reserved in 3.1.1 (AUTH is 5.0 only).
  if (raw_type == 0 || (raw_type == 15 && version == Version::kV311)) {
    return HeaderError(ReasonCode::kMalformedPacket, std::nullopt,
                       StrCat("reserved packet type ", int{raw_type}));
  }
  auto type = static_cast<PacketType>(raw_type);
  std::string_view name = PacketTypeName(type);
  if (type == PacketType::kPublish) {
    uint8_t qos = (flags >> 1) & 0x03;
    // §3.3.1.2 [MQTT-3.3.1-4]: QoS 3 is a Malformed Packet.
    if (qos == 3) return HeaderError(ReasonCode::kMalformedPacket, type, "PUBLISH: QoS 3");
    // §3.3.1.1 [MQTT-3.3.1-2]: DUP is 0 for QoS 0; invalid fixed header flags are a Malformed
    // Packet (§2.1.3).
    if ((flags & 0x08) && qos == 0) {
      return HeaderError(ReasonCode::kMalformedPacket, type, "PUBLISH: DUP set with QoS 0");
    }
  } else if (flags != RequiredFlags(type)) {
    // §2.1.3 [MQTT-2.1.3-1]: reserved flags must have the listed values.
    return HeaderError(ReasonCode::kMalformedPacket, type,
                       StrCat(name, ": invalid fixed header flags ", int{flags}));
  }
  if (type == PacketType::kConnect) {
    // [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error.
    if (connect_seen) {
      return HeaderError(ReasonCode::kProtocolError, type, "CONNECT: second CONNECT");
    }
  } else if (!version) {
    // [MQTT-3.1.0-1]: the first packet from the client must be CONNECT.
    return HeaderError(ReasonCode::kProtocolError, type, StrCat(name, ": received before CONNECT"));
  }
  bool from_server_only = type == PacketType::kConnack || type == PacketType::kSuback ||
                          type == PacketType::kUnsuback || type == PacketType::kPingresp;
  bool from_client_only = type == PacketType::kConnect || type == PacketType::kSubscribe ||
                          type == PacketType::kUnsubscribe || type == PacketType::kPingreq;
  if ((options.role == Role::kServer && from_server_only) ||
      (options.role == Role::kClient && from_client_only)) {
    return HeaderError(ReasonCode::kProtocolError, type,
                       StrCat(name, ": not sent in this direction"));
  }
  return std::nullopt;
}

enum class HeaderStatus { kOk, kNeedMore, kError };

// Reads and checks the fixed header at the front of `data`.
HeaderStatus ReadFixedHeader(std::string_view data, const DecoderOptions& options,
                             std::optional<Version> version, bool connect_seen, size_t* header_len,
                             uint32_t* remaining, std::optional<Error>* error) {
  if (data.empty()) return HeaderStatus::kNeedMore;
  uint8_t b = static_cast<uint8_t>(data[0]);
  if ((*error = CheckFirstByte(b, options, version, connect_seen))) return HeaderStatus::kError;
  auto type = static_cast<PacketType>(b >> 4);
  size_t used = 0;
  switch (ParseVarInt(data.substr(1), remaining, &used)) {
    case VarIntStatus::kNeedMore:
      return HeaderStatus::kNeedMore;
    case VarIntStatus::kInvalid:
      // §1.5.5, §2.1.4: at most 4 bytes, shortest form.
      *error = HeaderError(ReasonCode::kMalformedPacket, type,
                           StrCat(PacketTypeName(type), ": invalid remaining length"));
      return HeaderStatus::kError;
    case VarIntStatus::kOk:
      break;
  }
  *header_len = 1 + used;
  uint64_t total = uint64_t{*header_len} + *remaining;
  uint32_t limit = std::min(options.maximum_packet_size, kMaxPacketSize);
  if (total > limit) {
    // §3.1.2.11.4 / §4.13: Packet too large, decided before buffering the body.
    *error = HeaderError(ReasonCode::kPacketTooLarge, type,
                         StrCat(PacketTypeName(type), ": packet of ", total,
                                " bytes exceeds the maximum of ", limit));
    return HeaderStatus::kError;
  }
  return HeaderStatus::kOk;
}

// ---------------------------------------------------------------------------------------------
// Encoding

// Counts bytes, and appends them when given a string. Remembers the first failure.
class Sink {
 public:
  explicit Sink(std::string* out) : out_(out) {}

  void Byte(uint8_t b) {
    ++size_;
    if (out_) out_->push_back(static_cast<char>(b));
  }
  void U16(uint16_t v) {
    Byte(static_cast<uint8_t>(v >> 8));
    Byte(static_cast<uint8_t>(v));
  }
  void U32(uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) Byte(static_cast<uint8_t>(v >> shift));
  }
  void VarInt(uint32_t v) {  // §1.5.5
    if (v > kMaxRemainingLength) {
      Fail(StrCat("variable byte integer ", v, " out of range"));
      v = kMaxRemainingLength;
    }
    do {
      uint8_t b = v & 0x7F;
      v >>= 7;
      if (v) b |= 0x80;
      Byte(b);
    } while (v);
  }
  void Raw(std::string_view s) {
    size_ += s.size();
    if (out_) out_->append(s);
  }
  void String(std::string_view s, std::string_view what) {  // §1.5.4, §1.5.6
    if (s.size() > kMaxStringBytes) {
      Fail(StrCat(what, " longer than 65,535 bytes"));
      s = s.substr(0, kMaxStringBytes);
    }
    U16(static_cast<uint16_t>(s.size()));
    Raw(s);
  }
  void Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
  }

  size_t size() const { return size_; }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

 private:
  std::string* out_;
  size_t size_ = 0;
  std::string error_;
};

void WritePropertyItems(const Properties& p, PropertyScope scope, Sink& s) {
  auto id = [&](PropertyId pid) {
    if (!PropertyAllowedIn(pid, scope)) {
      s.Fail(StrCat("property ", int{static_cast<uint8_t>(pid)}, " is not allowed in ",
                    scope == PropertyScope::kWill
                        ? std::string_view("will properties")
                        : PacketTypeName(static_cast<PacketType>(scope))));
    }
    s.Byte(static_cast<uint8_t>(pid));  // identifiers < 128: a one-byte VBI
  };
  auto byte = [&](PropertyId pid, const auto& v) {
    if (!v) return;
    id(pid);
    s.Byte(static_cast<uint8_t>(*v));
  };
  auto u16 = [&](PropertyId pid, const std::optional<uint16_t>& v) {
    if (!v) return;
    id(pid);
    s.U16(*v);
  };
  auto u32 = [&](PropertyId pid, const std::optional<uint32_t>& v) {
    if (!v) return;
    id(pid);
    s.U32(*v);
  };
  auto str = [&](PropertyId pid, const std::optional<std::string>& v, std::string_view what) {
    if (!v) return;
    id(pid);
    s.String(*v, what);
  };
  byte(PropertyId::kPayloadFormatIndicator, p.payload_format_indicator);
  u32(PropertyId::kMessageExpiryInterval, p.message_expiry_interval);
  str(PropertyId::kContentType, p.content_type, "content type");
  str(PropertyId::kResponseTopic, p.response_topic, "response topic");
  str(PropertyId::kCorrelationData, p.correlation_data, "correlation data");
  for (uint32_t sub_id : p.subscription_identifiers) {
    if (sub_id == 0) s.Fail("subscription identifier 0");
    id(PropertyId::kSubscriptionIdentifier);
    s.VarInt(sub_id);
  }
  if (p.subscription_identifiers.size() > 1 &&
      !PropertyMayRepeat(PropertyId::kSubscriptionIdentifier, scope)) {
    s.Fail("more than one subscription identifier");
  }
  u32(PropertyId::kSessionExpiryInterval, p.session_expiry_interval);
  str(PropertyId::kAssignedClientIdentifier, p.assigned_client_identifier,
      "assigned client identifier");
  u16(PropertyId::kServerKeepAlive, p.server_keep_alive);
  str(PropertyId::kAuthenticationMethod, p.authentication_method, "authentication method");
  str(PropertyId::kAuthenticationData, p.authentication_data, "authentication data");
  byte(PropertyId::kRequestProblemInformation, p.request_problem_information);
  u32(PropertyId::kWillDelayInterval, p.will_delay_interval);
  byte(PropertyId::kRequestResponseInformation, p.request_response_information);
  str(PropertyId::kResponseInformation, p.response_information, "response information");
  str(PropertyId::kServerReference, p.server_reference, "server reference");
  str(PropertyId::kReasonString, p.reason_string, "reason string");
  u16(PropertyId::kReceiveMaximum, p.receive_maximum);
  u16(PropertyId::kTopicAliasMaximum, p.topic_alias_maximum);
  u16(PropertyId::kTopicAlias, p.topic_alias);
  byte(PropertyId::kMaximumQoS, p.maximum_qos);
  byte(PropertyId::kRetainAvailable, p.retain_available);
  for (const UserProperty& up : p.user_properties) {
    id(PropertyId::kUserProperty);
    s.String(up.name, "user property name");
    s.String(up.value, "user property value");
  }
  u32(PropertyId::kMaximumPacketSize, p.maximum_packet_size);
  byte(PropertyId::kWildcardSubscriptionAvailable, p.wildcard_subscription_available);
  byte(PropertyId::kSubscriptionIdentifierAvailable, p.subscription_identifiers_available);
  byte(PropertyId::kSharedSubscriptionAvailable, p.shared_subscription_available);
}

// §2.2.2: Property Length, then the properties.
void WriteProperties(const Properties& p, PropertyScope scope, Sink& s) {
  Sink counter(nullptr);
  WritePropertyItems(p, scope, counter);
  if (!counter.ok()) s.Fail(counter.error());
  s.VarInt(static_cast<uint32_t>(std::min<size_t>(counter.size(), kMaxPacketSize)));
  WritePropertyItems(p, scope, s);
}

void WriteQoS(QoS qos, Sink& s) {
  if (static_cast<uint8_t>(qos) > 2) s.Fail("QoS 3");
}

uint8_t FirstByte(const Packet& packet) {
  PacketType type = TypeOf(packet);
  uint8_t flags = RequiredFlags(type);
  if (const auto* p = std::get_if<Publish>(&packet)) {
    // §3.3.1: DUP only with QoS > 0 [MQTT-3.3.1-2].
    bool dup = p->dup && p->qos != QoS::kAtMostOnce;
    flags = static_cast<uint8_t>((dup ? 0x08 : 0) | ((static_cast<uint8_t>(p->qos) & 3) << 1) |
                                 (p->retain ? 0x01 : 0));
  }
  return static_cast<uint8_t>((static_cast<uint8_t>(type) << 4) | flags);
}

class BodyWriter {
 public:
  BodyWriter(Version version, Sink& s) : v5_(version == Version::kV5), s_(s) {}

  void operator()(const Connect& c) {
    // §3.1.2.1, §3.1.2.2
    s_.String("MQTT", "protocol name");
    s_.Byte(v5_ ? 5 : 4);
    uint8_t flags = c.clean_start ? 0x02 : 0;
    if (c.will) {
      WriteQoS(c.will->qos, s_);
      flags |= 0x04 | ((static_cast<uint8_t>(c.will->qos) & 3) << 3) | (c.will->retain ? 0x20 : 0);
    }
    if (c.password) flags |= 0x40;
    if (c.username) flags |= 0x80;
    if (!v5_ && c.password && !c.username) s_.Fail("3.1.1 CONNECT: password without user name");
    s_.Byte(flags);
    s_.U16(c.keep_alive);
    if (v5_) WriteProperties(c.properties, PropertyScope::kConnect, s_);
    s_.String(c.client_id, "client identifier");
    if (c.will) {
      if (v5_) WriteProperties(c.will->properties, PropertyScope::kWill, s_);
      s_.String(c.will->topic, "will topic");
      s_.String(c.will->payload, "will payload");
    }
    if (c.username) s_.String(*c.username, "user name");
    if (c.password) s_.String(*c.password, "password");
  }

  void operator()(const Connack& c) {
    s_.Byte(c.session_present ? 1 : 0);
    if (v5_) {
      s_.Byte(static_cast<uint8_t>(c.reason_code));
      WriteProperties(c.properties, PropertyScope::kConnack, s_);
    } else {
      std::optional<uint8_t> code = ConnackReturnCodeV311(c.reason_code);
      if (!code)
        s_.Fail(StrCat("no 3.1.1 CONNACK return code for ", ReasonCodeName(c.reason_code)));
      s_.Byte(code.value_or(0));
    }
  }

  void operator()(const Publish& p) {
    WriteQoS(p.qos, s_);
    s_.String(p.topic, "topic name");
    if (p.qos != QoS::kAtMostOnce) s_.U16(p.packet_id);
    if (v5_) WriteProperties(p.properties, PropertyScope::kPublish, s_);
    s_.Raw(p.payload);
  }

  template <PacketType kType>
  void operator()(const PublishResponse<kType>& p) {
    s_.U16(p.packet_id);
    if (v5_) WriteReasonAndProperties(p.reason_code, p.properties, ScopeOf(kType));
  }

  void operator()(const Subscribe& sub) {
    s_.U16(sub.packet_id);
    if (v5_) WriteProperties(sub.properties, PropertyScope::kSubscribe, s_);
    if (sub.subscriptions.empty()) s_.Fail("SUBSCRIBE without a topic filter");
    for (const Subscription& e : sub.subscriptions) {
      WriteQoS(e.max_qos, s_);
      s_.String(e.topic_filter, "topic filter");
      uint8_t options = static_cast<uint8_t>(e.max_qos) & 3;
      if (v5_) {
        options |= (e.no_local ? 0x04 : 0) | (e.retain_as_published ? 0x08 : 0) |
                   ((static_cast<uint8_t>(e.retain_handling) & 3) << 4);
      }
      s_.Byte(options);
    }
  }

  void operator()(const Suback& a) {
    s_.U16(a.packet_id);
    if (v5_) WriteProperties(a.properties, PropertyScope::kSuback, s_);
    for (ReasonCode code : a.reason_codes) {
      auto b = static_cast<uint8_t>(code);
      if (!v5_ && b >= 0x80) b = 0x80;  // 3.1.1 §3.9.3: 0x80 Failure
      s_.Byte(b);
    }
  }

  void operator()(const Unsubscribe& u) {
    s_.U16(u.packet_id);
    if (v5_) WriteProperties(u.properties, PropertyScope::kUnsubscribe, s_);
    if (u.topic_filters.empty()) s_.Fail("UNSUBSCRIBE without a topic filter");
    for (const std::string& f : u.topic_filters) s_.String(f, "topic filter");
  }

  void operator()(const Unsuback& a) {
    s_.U16(a.packet_id);
    if (!v5_) return;
    WriteProperties(a.properties, PropertyScope::kUnsuback, s_);
    for (ReasonCode code : a.reason_codes) s_.Byte(static_cast<uint8_t>(code));
  }

  void operator()(const Pingreq&) {}
  void operator()(const Pingresp&) {}

  void operator()(const Disconnect& d) {
    if (v5_) WriteReasonAndProperties(d.reason_code, d.properties, PropertyScope::kDisconnect);
  }

  void operator()(const Auth& a) {
    if (!v5_) s_.Fail("AUTH does not exist in MQTT 3.1.1");
    WriteReasonAndProperties(a.reason_code, a.properties, PropertyScope::kAuth);
  }

 private:
  // §3.4.2.1, §3.14.2.1, §3.15.2.1: the shortest form that carries the reason and properties.
  void WriteReasonAndProperties(ReasonCode code, const Properties& p, PropertyScope scope) {
    bool no_properties = p.empty();
    if (code == ReasonCode::kSuccess && no_properties) return;
    s_.Byte(static_cast<uint8_t>(code));
    if (!no_properties) WriteProperties(p, scope, s_);
  }

  bool v5_;
  Sink& s_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

Decoder::Decoder(DecoderOptions options)
    : options_(std::move(options)), version_(options_.version) {}

std::optional<Error> Decoder::Feed(std::string_view data, std::vector<Packet>* out) {
  if (error_) return error_;
  if (buffer_.empty()) {
    // Fast path: decode straight from the caller's bytes and keep only an incomplete tail.
    size_t used = DecodeFrom(data, out);
    if (!error_) buffer_.assign(data.substr(used));
  } else {
    buffer_.append(data);
    size_t used = DecodeFrom(buffer_, out);
    buffer_.erase(0, used);
  }
  if (error_) {
    buffer_.clear();
    buffer_.shrink_to_fit();
  }
  return error_;
}

size_t Decoder::DecodeFrom(std::string_view input, std::vector<Packet>* out) {
  size_t consumed = 0;
  while (consumed < input.size()) {
    std::string_view rest = input.substr(consumed);
    size_t header_len = 0;
    uint32_t remaining = 0;
    switch (ReadFixedHeader(rest, options_, version_, connect_seen_, &header_len, &remaining,
                            &error_)) {
      case HeaderStatus::kNeedMore:
        return consumed;
      case HeaderStatus::kError:
        return consumed;
      case HeaderStatus::kOk:
        break;
    }
    if (rest.size() - header_len < remaining) return consumed;
    auto type = static_cast<PacketType>(static_cast<uint8_t>(rest[0]) >> 4);
    uint8_t flags = static_cast<uint8_t>(rest[0]) & 0x0F;
    if (type == PacketType::kConnect) connect_seen_ = true;
    Packet packet;
    BodyParser parser(options_, &version_, type, flags, rest.substr(header_len, remaining));
    if ((error_ = parser.Parse(&packet))) return consumed;
    out->push_back(std::move(packet));
    consumed += header_len + remaining;
  }
  return consumed;
}

std::optional<Error> DecodePacket(std::string_view bytes, const DecoderOptions& options,
                                  Packet* out) {
  std::optional<Version> version = options.version;
  size_t header_len = 0;
  uint32_t remaining = 0;
  std::optional<Error> error;
  switch (ReadFixedHeader(bytes, options, version, false, &header_len, &remaining, &error)) {
    case HeaderStatus::kError:
      return error;
    case HeaderStatus::kNeedMore:
      return HeaderError(ReasonCode::kMalformedPacket, std::nullopt, "truncated fixed header");
    case HeaderStatus::kOk:
      break;
  }
  auto type = static_cast<PacketType>(static_cast<uint8_t>(bytes[0]) >> 4);
  if (bytes.size() - header_len != remaining) {
    return HeaderError(ReasonCode::kMalformedPacket, type,
                       StrCat(PacketTypeName(type), ": remaining length ", remaining, " but ",
                              bytes.size() - header_len, " bytes follow the fixed header"));
  }
  BodyParser parser(options, &version, type, static_cast<uint8_t>(bytes[0]) & 0x0F,
                    bytes.substr(header_len));
  return parser.Parse(out);
}

absl::Status Encode(const Packet& packet, Version version, std::string* out) {
  Sink counter(nullptr);
  std::visit(BodyWriter(version, counter), packet);
  if (!counter.ok()) return absl::InvalidArgumentError(counter.error());
  if (counter.size() > kMaxRemainingLength) {
    return absl::InvalidArgumentError(StrCat(PacketTypeName(TypeOf(packet)), ": remaining length ",
                                             counter.size(), " exceeds 268,435,455"));
  }
  auto remaining = static_cast<uint32_t>(counter.size());
  out->reserve(out->size() + 1 + VarIntSize(remaining) + remaining);
  Sink writer(out);
  writer.Byte(FirstByte(packet));
  writer.VarInt(remaining);
  std::visit(BodyWriter(version, writer), packet);
  return absl::OkStatus();
}

size_t EncodedSize(const Packet& packet, Version version) {
  Sink counter(nullptr);
  std::visit(BodyWriter(version, counter), packet);
  size_t body = counter.size();
  return 1 + VarIntSize(static_cast<uint32_t>(std::min<size_t>(body, kMaxRemainingLength))) + body;
}

}  // namespace herald::mqtt
