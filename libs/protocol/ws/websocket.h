// WebSocket (RFC 6455) for the server side, as a pure codec: the opening handshake answered from
// a parsed HTTP request, an incremental reader that turns bytes into messages and control
// frames, and frame encoding. No sockets, no clocks. No extension is ever negotiated
// (permessage-deflate is not supported), so every RSV bit must be 0. See
// docs/websocket_codec.md for the rules enforced.
//
// Threading: a MessageReader belongs to one connection and is used from one thread; the free
// functions are thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "libs/protocol/http/http1.h"

namespace herald::ws {

// Frame opcodes (RFC 6455 §5.2, §11.8). Other values are reserved and fail the connection.
enum class Opcode : uint8_t {
  kContinuation = 0x0,
  kText = 0x1,
  kBinary = 0x2,
  kClose = 0x8,
  kPing = 0x9,
  kPong = 0xA,
};

// Close status codes (RFC 6455 §7.4.1). Applications may also use 3000-4999 (§7.4.2).
inline constexpr uint16_t kCloseNormal = 1000;
inline constexpr uint16_t kCloseGoingAway = 1001;
inline constexpr uint16_t kCloseProtocolError = 1002;
inline constexpr uint16_t kCloseUnsupportedData = 1003;
// Never sent: reported for a Close frame that carried no status code.
inline constexpr uint16_t kCloseNoStatus = 1005;
inline constexpr uint16_t kCloseInvalidPayload = 1007;
inline constexpr uint16_t kClosePolicyViolation = 1008;
inline constexpr uint16_t kCloseMessageTooBig = 1009;
inline constexpr uint16_t kCloseMandatoryExtension = 1010;
inline constexpr uint16_t kCloseInternalError = 1011;

// The largest payload of a control frame (§5.5), and so of a Close reason (125 minus the code).
inline constexpr size_t kMaxControlPayload = 125;
inline constexpr size_t kMaxCloseReason = kMaxControlPayload - 2;

// Whether `code` may be carried by a Close frame: 1000-1003, 1007-1011 and 3000-4999 (§7.4.1,
// §7.4.2). 1004, 1005, 1006, 1015, 1012-2999 and everything below 1000 or above 4999 may not.
bool IsValidCloseCode(uint16_t code);

// Whether `s` is well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates (U+D800..DFFF),
// nothing above U+10FFFF.
bool IsValidUtf8(std::string_view s);

// ---------------------------------------------------------------------------------------------
// Opening handshake (§4.2)

// The value of Sec-WebSocket-Accept for a Sec-WebSocket-Key (§4.2.2 item 5.4): base64 of the
// SHA-1 of the key (as sent, without surrounding whitespace) followed by the protocol GUID.
std::string ComputeAcceptKey(std::string_view key);

struct HandshakeResult {
  // OK when the upgrade is accepted; otherwise why it was refused (InvalidArgument).
  absl::Status status;
  // 101 when accepted; 426 when Sec-WebSocket-Version is missing or not 13 (§4.4); 400 for
  // every other fault.
  int http_status = 101;
  // The bytes to write in every case: the 101 Switching Protocols response, or an error
  // response that says "Connection: close" (write it, then close the connection).
  std::string response;
  // The subprotocol chosen: the first one of the client's Sec-WebSocket-Protocol list (in the
  // client's order of preference, §4.2.2 item 5.4) that is in the server's list, compared byte
  // for byte. When set, the 101 response carries it.
  std::optional<std::string> subprotocol;
  // Whether the client offered any subprotocol. When it offered some and none is supported,
  // the handshake still succeeds without a subprotocol (the client then fails the connection
  // itself if it needs one, §4.1); a server that requires one should answer with
  // RejectHandshake(400, ...) instead of `response` when `subprotocol` is empty.
  bool subprotocol_offered = false;

  bool ok() const { return status.ok(); }
};

// Validates a client's opening handshake (§4.2.1) and builds the answer (§4.2.2): GET, HTTP/1.1
// or later, Host present, Upgrade listing "websocket" and Connection listing "Upgrade" (tokens
// compared case-insensitively; several headers or comma lists allowed), Sec-WebSocket-Version
// 13, and exactly one Sec-WebSocket-Key that is the base64 of 16 bytes. Sec-WebSocket-Extensions
// is ignored (no extension is accepted). `request.upgrade` (from the HTTP parser) is not
// required; the headers are checked directly.
HandshakeResult AcceptHandshake(const http::Request& request,
                                const std::vector<std::string>& supported_subprotocols);

// An HTTP error response that refuses an upgrade: `status` with its reason phrase, a plain-text
// `body`, "Connection: close", and for 426 "Sec-WebSocket-Version: 13".
std::string RejectHandshake(int status, std::string_view body);

// ---------------------------------------------------------------------------------------------
// Reading frames (§5)

// Which end of the connection the reader sits on; it decides whether frames must be masked.
enum class Role : uint8_t {
  kServer,  // reads what clients send: every frame must be masked (§5.1, §5.3)
  kClient,  // reads what servers send: no frame may be masked (§5.1)
};

struct ReaderOptions {
  Role role = Role::kServer;
  // The largest data message accepted, in payload bytes after reassembling its fragments. A
  // frame that would take the message over it fails with 1009 as soon as its header is read,
  // before its payload is buffered (§10.4).
  size_t max_message_bytes = 1 << 20;
};

// What the peer sent: a complete data message, or a control frame.
struct Event {
  enum class Type : uint8_t { kText, kBinary, kPing, kPong, kClose };

  Type type = Type::kBinary;
  // kText/kBinary: the reassembled message (text is valid UTF-8). kPing/kPong: the application
  // data (≤ 125 bytes; answer a ping with a pong carrying the same data, §5.5.2). kClose: the
  // reason (valid UTF-8, possibly empty).
  std::string payload{};
  // kClose only: the status code, or kCloseNoStatus when the Close frame had no body.
  uint16_t close_code = 0;

  bool operator==(const Event&) const = default;
};

// Why the connection must be failed (§7.1.7): send a Close with `close_code`, then close.
struct Error {
  uint16_t close_code = kCloseProtocolError;  // 1002, 1007 or 1009
  std::string message{};

  absl::Status ToStatus() const;  // InvalidArgument (ResourceExhausted for 1009)
  bool operator==(const Error&) const = default;
};

// Incremental reader for one connection's frames, after the handshake. Bytes may be split
// anywhere (one at a time is fine); payload is unmasked straight into the message being
// reassembled, so no frame is buffered whole and nothing is allocated per byte. Control frames
// may arrive between the fragments of a message (§5.4) and come out before it.
class MessageReader {
 public:
  explicit MessageReader(ReaderOptions options = {});

  // Consumes `data` and appends every event it completes to `out` (events completed before an
  // error are appended too, and precede it on the wire). Returns the error that must end the
  // connection, if any; after an error the reader is finished and every later call returns the
  // same error without reading. After a Close event the reader ignores every later byte (the
  // peer must send nothing after its Close, §5.5.1) and returns no error.
  [[nodiscard]] std::optional<Error> Feed(std::string_view data, std::vector<Event>* out);

  // Whether a Close frame has been read.
  bool close_received() const { return close_received_; }

  // Payload bytes held for a message or control frame not yet complete.
  size_t buffered_bytes() const { return message_.size() + control_.size(); }

 private:
  std::optional<Error> ParseFirstTwoBytes();
  std::optional<Error> StartFrame();
  std::optional<Error> FinishFrame(std::vector<Event>* out);
  std::optional<Error> Fail(uint16_t close_code, std::string message);

  ReaderOptions options_;

  // The frame header being read (at most 2 + 8 + 4 bytes).
  uint8_t header_[14] = {};
  size_t header_have_ = 0;
  size_t header_need_ = 2;
  bool in_payload_ = false;

  // The frame whose payload is being read.
  Opcode opcode_ = Opcode::kContinuation;
  bool fin_ = false;
  bool masked_ = false;
  uint8_t mask_[4] = {};
  uint64_t remaining_ = 0;     // payload bytes of the frame still to come
  uint64_t payload_seen_ = 0;  // payload bytes of the frame read so far (mask position)

  // The data message being reassembled.
  bool in_message_ = false;
  bool message_is_text_ = false;
  std::string message_;
  // Incremental UTF-8 validation state of a text message: continuation bytes still expected
  // and the range allowed for the next one.
  uint8_t utf8_need_ = 0;
  uint8_t utf8_lo_ = 0x80;
  uint8_t utf8_hi_ = 0xBF;

  std::string control_;  // payload of the control frame being read
  bool close_received_ = false;
  std::optional<Error> error_;
};

// ---------------------------------------------------------------------------------------------
// Writing frames (§5.2)

// The size of a frame carrying `payload_size` bytes: 2, 4 or 10 header bytes, plus 4 for a mask.
size_t FrameSize(size_t payload_size, bool masked);

// Appends one frame with the shortest length encoding. A server sends unmasked frames
// (mask_key unset); a client must mask every frame (§5.3): the key's bytes go on the wire in
// big-endian order (0x37fa213d is written 37 fa 21 3d). The encoder enforces nothing: control
// frames must have fin set and at most kMaxControlPayload bytes (§5.5), a continuation must
// follow an unfinished text or binary frame (§5.4); tests rely on being able to break the rules.
void AppendFrame(std::string* out, Opcode opcode, std::string_view payload, bool fin = true,
                 std::optional<uint32_t> mask_key = std::nullopt);

// AppendFrame into a new string of exactly FrameSize bytes.
std::string EncodeFrame(Opcode opcode, std::string_view payload, bool fin = true,
                        std::optional<uint32_t> mask_key = std::nullopt);

// A Close frame (§5.5.1): `code` then `reason`, cut to kMaxCloseReason bytes at a UTF-8
// character boundary. kCloseNoStatus gives a Close with an empty body (the reason is dropped).
std::string EncodeClose(uint16_t code, std::string_view reason = {},
                        std::optional<uint32_t> mask_key = std::nullopt);

}  // namespace herald::ws
