// MQTT 3.1.1 and 5.0 wire codec, pure: bytes in, packets out (Decoder), packets in, bytes out
// (Encode). No sockets, no clocks, no session state (packet identifier tracking, topic alias
// resolution, Receive Maximum accounting and keep-alive belong to the connection that owns the
// Decoder). See docs/mqtt_codec.md for the list of rules enforced.
//
// Threading: a Decoder belongs to one connection and is used from one thread; the free functions
// are thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "libs/protocol/mqtt/packet.h"

namespace herald::mqtt {

// The largest Remaining Length a Variable Byte Integer can hold (§1.5.5, §2.1.4).
inline constexpr uint32_t kMaxRemainingLength = 268'435'455;
// The largest packet that can exist: 1-byte header, 4-byte length, maximum remaining length.
inline constexpr uint32_t kMaxPacketSize = kMaxRemainingLength + 5;

// Which side of the connection the decoder sits on; it decides which packet types may arrive.
enum class Role : uint8_t {
  kServer,  // decodes what clients send: CONNECT first, then never CONNACK/SUBACK/UNSUBACK/PINGRESP
  kClient,  // decodes what servers send: never CONNECT/SUBSCRIBE/UNSUBSCRIBE/PINGREQ
  kAny,     // both directions (tools, tests, fuzzing)
};

struct DecoderOptions {
  Role role = Role::kServer;
  // The protocol version, when already known (always for kClient). When unset the first packet
  // must be a CONNECT, whose protocol level sets it.
  std::optional<Version> version{};
  // The largest packet accepted, in bytes, fixed header included (the unit of MQTT 5.0's
  // Maximum Packet Size, §3.1.2.11.4). A larger packet fails with Packet too large (0x95) as
  // soon as its fixed header is read, before its body is buffered. At most kMaxPacketSize.
  uint32_t maximum_packet_size = 1 << 20;
  // Refuse U+0001..U+001F and U+007F..U+009F in UTF-8 strings (§1.5.4 allows refusing them).
  bool reject_control_characters = false;
  // Check that a PUBLISH payload (or Will payload) with Payload Format Indicator 1 is valid
  // UTF-8, failing with Payload format invalid (0x99) (§3.3.2.3.2; optional in the spec).
  bool validate_utf8_payloads = false;
};

// Incremental decoder for one connection's byte stream. Bytes may be split anywhere; complete
// packets come out in order.
class Decoder {
 public:
  explicit Decoder(DecoderOptions options = {});

  // Consumes all of `data` and appends every packet it completes to `out` (packets completed
  // before an error are appended too, and precede it on the wire). Returns the error that must
  // end the connection, if any; after an error the decoder is finished and every later call
  // returns the same error without reading.
  [[nodiscard]] std::optional<Error> Feed(std::string_view data, std::vector<Packet>* out);

  // The protocol version: from the options, or from the protocol level of the CONNECT as soon
  // as it is read (even when the rest of that CONNECT then fails to decode, so the answer can
  // be a CONNACK of the right version). nullopt before, and when the level is not 4 or 5.
  std::optional<Version> version() const { return version_; }

  // Bytes held for an incomplete packet.
  size_t buffered_bytes() const { return buffer_.size(); }

 private:
  // Decodes the complete packets at the front of `input`; returns how many bytes they used.
  size_t DecodeFrom(std::string_view input, std::vector<Packet>* out);

  DecoderOptions options_;
  std::optional<Version> version_;
  bool connect_seen_ = false;
  std::string buffer_;
  std::optional<Error> error_;
};

// Decodes one complete packet (fixed header included) that must span all of `bytes`, with
// the same rules as Decoder (options.version must be set unless the packet is a CONNECT).
std::optional<Error> DecodePacket(std::string_view bytes, const DecoderOptions& options,
                                  Packet* out);

// Appends the encoding of `packet` for protocol `version` to `*out`. In 3.1.1, properties,
// reason codes of acknowledgements and DISCONNECT, and 5.0-only subscription options are
// dropped; CONNACK's reason code is written as its 3.1.1 return code and SUBACK failure codes as
// 0x80. The encoder checks only what it needs to produce a well-formed packet (it does not
// re-validate topics or property values): it fails, appending nothing, for a string or binary
// field longer than 65,535 bytes, a Remaining Length above 268,435,455, a property not allowed
// in the packet (§2.2.2.2), a Subscription Identifier outside 1..268,435,455, an empty SUBSCRIBE
// or UNSUBSCRIBE, an AUTH in 3.1.1, a 3.1.1 CONNACK code that has no return code, or a 3.1.1
// password without a username.
absl::Status Encode(const Packet& packet, Version version, std::string* out);

// The number of bytes Encode would append (fixed header included), without encoding: compare
// it with the peer's Maximum Packet Size (§3.1.2.11.4, §3.2.2.3.6) before sending. Meaningless
// when Encode would fail.
size_t EncodedSize(const Packet& packet, Version version);

}  // namespace herald::mqtt
