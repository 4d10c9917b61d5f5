#include "libs/protocol/ws/websocket.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "libs/common/strings.h"

namespace herald::ws {
namespace {

// RFC 6455 §1.3, §4.2.2: appended to the key before hashing.
constexpr std::string_view kHandshakeGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

bool IsControl(Opcode op) { return (static_cast<uint8_t>(op) & 0x08) != 0; }

// Validates `n` bytes of UTF-8 that continue a sequence described by (need, lo, hi): the number
// of continuation bytes still expected and the range allowed for the next one (RFC 3629 §4; the
// narrowed ranges after E0, ED, F0 and F4 exclude overlongs, surrogates and > U+10FFFF).
// Returns false at the first invalid byte.
bool ValidateUtf8(const uint8_t* p, size_t n, uint8_t& need, uint8_t& lo, uint8_t& hi) {
  size_t i = 0;
  while (i < n) {
    if (need == 0) {
      // ASCII runs, 8 bytes at a time.
      while (i + 8 <= n) {
        uint64_t v;
        std::memcpy(&v, p + i, 8);
        if (v & 0x8080808080808080ULL) break;
        i += 8;
      }
      if (i == n) break;
      uint8_t c = p[i++];
      if (c < 0x80) continue;
      if (c < 0xC2) return false;  // stray continuation byte, or overlong C0/C1 lead
      lo = 0x80;
      hi = 0xBF;
      if (c < 0xE0) {
        need = 1;
      } else if (c < 0xF0) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;  // overlong
        if (c == 0xED) hi = 0x9F;  // surrogates
      } else if (c < 0xF5) {
        need = 3;
        if (c == 0xF0) lo = 0x90;  // overlong
        if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
      } else {
        return false;
      }
    } else {
      uint8_t c = p[i++];
      if (c < lo || c > hi) return false;
      --need;
      lo = 0x80;
      hi = 0xBF;
    }
  }
  return true;
}

// XORs `n` bytes at `p` with the masking key, starting at key position `offset` (RFC 6455
// §5.3: octet i is XORed with key octet i MOD 4), 8 bytes at a time.
void ApplyMask(char* p, size_t n, const uint8_t key[4], uint64_t offset) {
  uint8_t k[8];
  for (size_t j = 0; j < 8; ++j) k[j] = key[(offset + j) & 3];
  uint64_t k64;
  std::memcpy(&k64, k, 8);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    v ^= k64;
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<char>(p[i] ^ k[i & 7]);
}

char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (AsciiLower(a[i]) != AsciiLower(b[i])) return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Calls f(element) for every non-empty element of the comma-separated lists in every header
// named `name` (RFC 9110 §5.3, §5.6.1: repeated list headers concatenate).
template <typename F>
void ForEachListElement(const http::Request& r, std::string_view name, F&& f) {
  for (const auto& [k, v] : r.headers) {
    if (!EqualsIgnoreCase(k, name)) continue;
    std::string_view rest = v;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view element = TrimOws(rest.substr(0, comma));
      if (!element.empty()) f(element);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
}

bool ListHasToken(const http::Request& r, std::string_view name, std::string_view token) {
  bool found = false;
  ForEachListElement(r, name,
                     [&](std::string_view e) { found = found || EqualsIgnoreCase(e, token); });
  return found;
}

// The headers named `name`, in order.
std::vector<std::string_view> HeaderValues(const http::Request& r, std::string_view name) {
  std::vector<std::string_view> values;
  for (const auto& [k, v] : r.headers) {
    if (EqualsIgnoreCase(k, name)) values.emplace_back(v);
  }
  return values;
}

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

// RFC 6455 §4.2.1 item 5 (§11.3.1): a base64 value that decodes to 16 bytes, which is exactly
// 22 base64 characters followed by "==".
bool IsValidKey(std::string_view key) {
  if (key.size() != 24 || key.substr(22) != "==") return false;
  return std::all_of(key.begin(), key.begin() + 22, IsBase64Char);
}

std::string_view ReasonPhrase(int status) {
  if (status == 426) return "Upgrade Required";  // RFC 9110 §15.5.22 (not in http::StatusText)
  return http::StatusText(status);
}

HandshakeResult Refuse(int status, std::string message) {
  HandshakeResult r;
  r.http_status = status;
  r.response = RejectHandshake(status, message);
  r.status = absl::InvalidArgumentError(StrCat("WebSocket handshake refused: ", message));
  return r;
}

void PutBigEndian(char* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xFF);
    v >>= 8;
  }
}

}  // namespace

bool IsValidCloseCode(uint16_t code) {
  // RFC 6455 §7.4.1 (defined codes that may be sent), §7.4.2 (3000-4999 for libraries and
  // applications); 1004, 1005, 1006, 1015 and the unassigned rest of 1000-2999 may not.
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
         (code >= 3000 && code <= 4999);
}

bool IsValidUtf8(std::string_view s) {
  uint8_t need = 0, lo = 0x80, hi = 0xBF;
  return ValidateUtf8(reinterpret_cast<const uint8_t*>(s.data()), s.size(), need, lo, hi) &&
         need == 0;
}

// ---- Handshake ----

std::string ComputeAcceptKey(std::string_view key) {
  // RFC 6455 §4.2.2 item 5.4 (and §1.3): base64(SHA-1(key + GUID)).
  std::string input = StrCat(key, kHandshakeGuid);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (EVP_Digest(input.data(), input.size(), digest, &digest_size, EVP_sha1(), nullptr) != 1) {
    return {};  // only when OpenSSL cannot provide SHA-1 at all
  }
  unsigned char encoded[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  int n = EVP_EncodeBlock(encoded, digest, static_cast<int>(digest_size));
  return std::string(reinterpret_cast<const char*>(encoded), static_cast<size_t>(n));
}

std::string RejectHandshake(int status, std::string_view body) {
  std::string out = StrCat("HTTP/1.1 ", status, " ", ReasonPhrase(status), "\r\n");
  // RFC 6455 §4.2.2 item 4 / §4.4: tell the client which version the server speaks.
  if (status == 426) StrAppend(&out, "Sec-WebSocket-Version: 13\r\n");
  StrAppend(&out, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: ", body.size() + 1,
            "\r\nConnection: close\r\n\r\n", body, "\n");
  return out;
}

HandshakeResult AcceptHandshake(const http::Request& request,
                                const std::vector<std::string>& supported_subprotocols) {
  // RFC 6455 §4.2.1: the client's opening handshake. Any fault: stop and answer with an HTTP
  // error (400 Bad Request, or 426 for the version, §4.2.2 item 4 and §4.4).
  if (request.method != "GET") return Refuse(400, "method must be GET");  // item 1
  if (request.version_major < 1 || (request.version_major == 1 && request.version_minor < 1)) {
    return Refuse(400, "HTTP/1.1 or later is required");  // item 1
  }
  if (request.Header("Host") == nullptr) return Refuse(400, "Host header missing");  // item 2
  if (!ListHasToken(request, "Upgrade", "websocket")) {                              // item 3
    return Refuse(400, "Upgrade header must name websocket");
  }
  if (!ListHasToken(request, "Connection", "Upgrade")) {  // item 4
    return Refuse(400, "Connection header must contain Upgrade");
  }
  // Item 6; §11.3.5.
  std::vector<std::string_view> versions = HeaderValues(request, "Sec-WebSocket-Version");
  if (versions.size() != 1 || TrimOws(versions[0]) != "13") {
    return Refuse(426, "Sec-WebSocket-Version must be 13");
  }
  // Item 5; §11.3.1: the header must not appear more than once.
  std::vector<std::string_view> keys = HeaderValues(request, "Sec-WebSocket-Key");
  if (keys.size() != 1) return Refuse(400, "exactly one Sec-WebSocket-Key is required");
  std::string_view key = TrimOws(keys[0]);
  if (!IsValidKey(key)) return Refuse(400, "Sec-WebSocket-Key must be base64 of 16 bytes");

  HandshakeResult r;
  r.http_status = 101;
  // Item 8 and §4.2.2 item 5.4: the first of the client's protocols (its order of preference)
  // that the server speaks.
  ForEachListElement(request, "Sec-WebSocket-Protocol", [&](std::string_view offered) {
    r.subprotocol_offered = true;
    if (r.subprotocol) return;
    for (const std::string& s : supported_subprotocols) {
      if (s == offered) {
        r.subprotocol = s;
        return;
      }
    }
  });

  // §4.2.2 item 5: the server's opening handshake. No Sec-WebSocket-Extensions: none accepted.
  r.response = StrCat(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Accept: ",
      ComputeAcceptKey(key), "\r\n");
  if (r.subprotocol) StrAppend(&r.response, "Sec-WebSocket-Protocol: ", *r.subprotocol, "\r\n");
  r.response += "\r\n";
  return r;
}

// ---- Reader ----

absl::Status Error::ToStatus() const {
  if (close_code == kCloseMessageTooBig) return absl::ResourceExhaustedError(message);
  return absl::InvalidArgumentError(message);
}

MessageReader::MessageReader(ReaderOptions options) : options_(options) {
  control_.reserve(kMaxControlPayload);
}

std::optional<Error> MessageReader::Fail(uint16_t close_code, std::string message) {
  error_ = Error{.close_code = close_code, .message = std::move(message)};
  message_.clear();
  control_.clear();
  return error_;
}

std::optional<Error> MessageReader::ParseFirstTwoBytes() {
  // RFC 6455 §5.2: FIN, RSV1-3, opcode; MASK, payload length (7 bits).
  uint8_t b0 = header_[0], b1 = header_[1];
  fin_ = (b0 & 0x80) != 0;
  if (b0 & 0x70) {
    // §5.2: RSV bits must be 0 unless an extension gives them a meaning; none is negotiated.
    return Fail(kCloseProtocolError, "reserved bits set without a negotiated extension");
  }
  uint8_t op = b0 & 0x0F;
  switch (op) {
    case 0x0:
    case 0x1:
    case 0x2:
    case 0x8:
    case 0x9:
    case 0xA:
      opcode_ = static_cast<Opcode>(op);
      break;
    default:
      // §5.2: reserved opcodes 0x3-0x7 and 0xB-0xF fail the connection.
      return Fail(kCloseProtocolError, StrCat("reserved opcode ", static_cast<int>(op)));
  }
  masked_ = (b1 & 0x80) != 0;
  // §5.1: a server fails on an unmasked client frame; a client fails on a masked server frame.
  if (options_.role == Role::kServer && !masked_) {
    return Fail(kCloseProtocolError, "client frame is not masked");
  }
  if (options_.role == Role::kClient && masked_) {
    return Fail(kCloseProtocolError, "server frame is masked");
  }
  uint8_t len7 = b1 & 0x7F;
  if (IsControl(opcode_)) {
    // §5.5: control frames carry at most 125 bytes and are never fragmented.
    if (!fin_) return Fail(kCloseProtocolError, "fragmented control frame");
    if (len7 > kMaxControlPayload) {
      return Fail(kCloseProtocolError, "control frame payload longer than 125 bytes");
    }
  } else if (opcode_ == Opcode::kContinuation) {
    // §5.4: a continuation frame continues a started message.
    if (!in_message_) return Fail(kCloseProtocolError, "continuation frame without a message");
  } else if (in_message_) {
    // §5.4: the fragments of one message are not interleaved with another message.
    return Fail(kCloseProtocolError, "new data frame before the fragmented message ended");
  }
  header_need_ = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked_ ? 4 : 0);
  return std::nullopt;
}

std::optional<Error> MessageReader::StartFrame() {
  // §5.2: payload length is 7 bits, or 126 + 16 bits, or 127 + 64 bits (most significant bit
  // 0). A longer encoding than necessary is allowed by the RFC and accepted.
  uint8_t len7 = header_[1] & 0x7F;
  size_t pos = 2;
  uint64_t length = len7;
  if (len7 == 126) {
    length = (uint64_t{header_[2]} << 8) | header_[3];
    pos = 4;
  } else if (len7 == 127) {
    length = 0;
    for (size_t i = 2; i < 10; ++i) length = (length << 8) | header_[i];
    if (length >> 63) return Fail(kCloseProtocolError, "64-bit payload length has its MSB set");
    pos = 10;
  }
  if (masked_) std::memcpy(mask_, header_ + pos, 4);
  remaining_ = length;
  payload_seen_ = 0;

  if (IsControl(opcode_)) {
    control_.clear();
    return std::nullopt;
  }
  size_t held = opcode_ == Opcode::kContinuation ? message_.size() : 0;
  // §10.4: an implementation-specific limit on message size, answered with 1009 (§7.4.1).
  if (length > options_.max_message_bytes - held) {
    return Fail(kCloseMessageTooBig,
                StrCat("message exceeds the limit of ", options_.max_message_bytes, " bytes"));
  }
  if (opcode_ != Opcode::kContinuation) {
    in_message_ = true;
    message_is_text_ = opcode_ == Opcode::kText;
    message_.clear();
    if (fin_) message_.reserve(static_cast<size_t>(length));  // a whole message: exact size
    utf8_need_ = 0;
    utf8_lo_ = 0x80;
    utf8_hi_ = 0xBF;
  }
  return std::nullopt;
}

std::optional<Error> MessageReader::FinishFrame(std::vector<Event>* out) {
  in_payload_ = false;
  header_have_ = 0;
  header_need_ = 2;
  switch (opcode_) {
    case Opcode::kPing:
      out->push_back(Event{.type = Event::Type::kPing, .payload = control_});
      return std::nullopt;
    case Opcode::kPong:
      out->push_back(Event{.type = Event::Type::kPong, .payload = control_});
      return std::nullopt;
    case Opcode::kClose: {
      // §5.5.1: an empty body, or a 2-byte status code followed by a UTF-8 reason.
      Event e{.type = Event::Type::kClose, .close_code = kCloseNoStatus};
      if (control_.size() == 1) return Fail(kCloseProtocolError, "close payload of 1 byte");
      if (control_.size() >= 2) {
        e.close_code = static_cast<uint16_t>((static_cast<uint8_t>(control_[0]) << 8) |
                                             static_cast<uint8_t>(control_[1]));
        if (!IsValidCloseCode(e.close_code)) {  // §7.4.1, §7.4.2
          return Fail(kCloseProtocolError, StrCat("invalid close code ", e.close_code));
        }
        std::string_view reason = std::string_view(control_).substr(2);
        if (!IsValidUtf8(reason)) {  // §5.5.1, §8.1
          return Fail(kCloseInvalidPayload, "close reason is not valid UTF-8");
        }
        e.payload.assign(reason);
      }
      out->push_back(std::move(e));
      close_received_ = true;
      message_.clear();
      in_message_ = false;
      return std::nullopt;
    }
    default:
      break;
  }
  if (!fin_) return std::nullopt;
  // §5.6, §8.1: a text message ends on a character boundary.
  if (message_is_text_ && utf8_need_ != 0) {
    return Fail(kCloseInvalidPayload, "text message ends inside a UTF-8 sequence");
  }
  out->push_back(Event{.type = message_is_text_ ? Event::Type::kText : Event::Type::kBinary,
                       .payload = std::move(message_)});
  message_ = std::string();
  in_message_ = false;
  return std::nullopt;
}

std::optional<Error> MessageReader::Feed(std::string_view data, std::vector<Event>* out) {
  if (error_) return error_;
  const char* p = data.data();
  const char* end = p + data.size();
  while (p < end && !close_received_) {
    if (!in_payload_) {
      size_t take = std::min(header_need_ - header_have_, static_cast<size_t>(end - p));
      std::memcpy(header_ + header_have_, p, take);
      header_have_ += take;
      p += take;
      if (header_have_ < header_need_) break;
      if (header_have_ == 2) {
        if (auto e = ParseFirstTwoBytes()) return e;
        if (header_need_ > 2) continue;
      }
      if (auto e = StartFrame()) return e;
      in_payload_ = true;
      if (remaining_ == 0) {
        if (auto e = FinishFrame(out)) return e;
      }
      continue;
    }
    size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, end - p));
    bool control = IsControl(opcode_);
    std::string& dst = control ? control_ : message_;
    size_t old_size = dst.size();
    dst.append(p, take);
    if (masked_) ApplyMask(dst.data() + old_size, take, mask_, payload_seen_);
    p += take;
    remaining_ -= take;
    payload_seen_ += take;
    // §8.1: invalid UTF-8 in a text message fails the connection as soon as it is seen.
    if (!control && message_is_text_ &&
        !ValidateUtf8(reinterpret_cast<const uint8_t*>(dst.data() + old_size), take, utf8_need_,
                      utf8_lo_, utf8_hi_)) {
      return Fail(kCloseInvalidPayload, "text message is not valid UTF-8");
    }
    if (remaining_ == 0) {
      if (auto e = FinishFrame(out)) return e;
    }
  }
  return std::nullopt;
}

// ---- Writer ----

size_t FrameSize(size_t payload_size, bool masked) {
  size_t header = payload_size < 126 ? 2 : payload_size <= 0xFFFF ? 4 : 10;
  return header + (masked ? 4 : 0) + payload_size;
}

void AppendFrame(std::string* out, Opcode opcode, std::string_view payload, bool fin,
                 std::optional<uint32_t> mask_key) {
  // RFC 6455 §5.2, with the minimal length encoding.
  size_t start = out->size();
  size_t n = payload.size();
  out->resize(start + FrameSize(n, mask_key.has_value()));
  char* w = out->data() + start;
  *w++ = static_cast<char>((fin ? 0x80 : 0x00) | static_cast<uint8_t>(opcode));
  char mask_bit = mask_key ? static_cast<char>(0x80) : 0;
  if (n < 126) {
    *w++ = static_cast<char>(mask_bit | static_cast<char>(n));
  } else if (n <= 0xFFFF) {
    *w++ = static_cast<char>(mask_bit | 126);
    PutBigEndian(w, n, 2);
    w += 2;
  } else {
    *w++ = static_cast<char>(mask_bit | 127);
    PutBigEndian(w, n, 8);
    w += 8;
  }
  if (n > 0) std::memcpy(w + (mask_key ? 4 : 0), payload.data(), n);
  if (mask_key) {
    // §5.3: the key goes on the wire, then the payload XORed with it.
    uint8_t key[4];
    PutBigEndian(reinterpret_cast<char*>(key), *mask_key, 4);
    std::memcpy(w, key, 4);
    ApplyMask(w + 4, n, key, 0);
  }
}

std::string EncodeFrame(Opcode opcode, std::string_view payload, bool fin,
                        std::optional<uint32_t> mask_key) {
  std::string out;
  out.reserve(FrameSize(payload.size(), mask_key.has_value()));
  AppendFrame(&out, opcode, payload, fin, mask_key);
  return out;
}

std::string EncodeClose(uint16_t code, std::string_view reason, std::optional<uint32_t> mask_key) {
  if (code == kCloseNoStatus) return EncodeFrame(Opcode::kClose, {}, true, mask_key);
  if (reason.size() > kMaxCloseReason) {
    size_t cut = kMaxCloseReason;
    // Back up over continuation bytes so the cut falls on a character boundary.
    while (cut > 0 && (static_cast<uint8_t>(reason[cut]) & 0xC0) == 0x80) --cut;
    reason = reason.substr(0, cut);
  }
  char body[2 + kMaxCloseReason];
  PutBigEndian(body, code, 2);
  std::memcpy(body + 2, reason.data(), reason.size());
  return EncodeFrame(Opcode::kClose, std::string_view(body, 2 + reason.size()), true, mask_key);
}

}  // namespace herald::ws
