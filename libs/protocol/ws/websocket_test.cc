#include "libs/protocol/ws/websocket.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace herald::ws {
namespace {

constexpr uint32_t kKey = 0x37fa213d;  // the masking key of RFC 6455 §5.7's examples

std::string Bytes(std::initializer_list<int> bytes) {
  std::string s;
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

// A frame header written by hand, for frames the encoder would write differently (reserved
// bits, reserved opcodes, long length encodings).
std::string MaskedFrame(uint8_t first_byte, std::string_view payload) {
  std::string f = EncodeFrame(Opcode::kBinary, payload, true, kKey);
  f[0] = static_cast<char>(first_byte);
  return f;
}

struct ReadResult {
  std::vector<Event> events;
  std::optional<Error> error;
};

ReadResult ReadAll(std::string_view bytes, ReaderOptions options = {}) {
  MessageReader reader(options);
  ReadResult r;
  r.error = reader.Feed(bytes, &r.events);
  return r;
}

ReadResult ReadByteAtATime(std::string_view bytes, ReaderOptions options = {}) {
  MessageReader reader(options);
  ReadResult r;
  for (char c : bytes) {
    r.error = reader.Feed(std::string_view(&c, 1), &r.events);
    if (r.error) break;
  }
  return r;
}

Event Text(std::string s) { return Event{.type = Event::Type::kText, .payload = std::move(s)}; }
Event Binary(std::string s) { return Event{.type = Event::Type::kBinary, .payload = std::move(s)}; }
Event Ping(std::string s) { return Event{.type = Event::Type::kPing, .payload = std::move(s)}; }
Event Pong(std::string s) { return Event{.type = Event::Type::kPong, .payload = std::move(s)}; }
Event Close(uint16_t code, std::string reason) {
  return Event{.type = Event::Type::kClose, .payload = std::move(reason), .close_code = code};
}

uint16_t ErrorCode(std::string_view bytes, ReaderOptions options = {}) {
  ReadResult r = ReadAll(bytes, options);
  if (!r.error) return 0;
  // Every error is found the same way when the bytes come one at a time.
  ReadResult slow = ReadByteAtATime(bytes, options);
  EXPECT_EQ(slow.error, r.error);
  return r.error->close_code;
}

const ReaderOptions kClientSide{.role = Role::kClient};

// ---- RFC 6455 §5.7 examples ----

TEST(MessageReaderTest, ReadsRfcSingleFrameUnmaskedText) {
  ReadResult r = ReadAll(Bytes({0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}), kClientSide);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Text("Hello")});
}

TEST(MessageReaderTest, ReadsRfcSingleFrameMaskedText) {
  std::string wire = Bytes({0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58});
  ReadResult r = ReadAll(wire);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Text("Hello")});
}

TEST(MessageReaderTest, ReassemblesRfcFragmentedText) {
  std::string wire = Bytes({0x01, 0x03, 0x48, 0x65, 0x6c}) + Bytes({0x80, 0x02, 0x6c, 0x6f});
  ReadResult r = ReadAll(wire, kClientSide);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Text("Hello")});
}

TEST(MessageReaderTest, ReadsRfcPingAndMaskedPong) {
  ReadResult ping = ReadAll(Bytes({0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}), kClientSide);
  ASSERT_FALSE(ping.error);
  EXPECT_EQ(ping.events, std::vector<Event>{Ping("Hello")});
  ReadResult pong =
      ReadAll(Bytes({0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}));
  ASSERT_FALSE(pong.error);
  EXPECT_EQ(pong.events, std::vector<Event>{Pong("Hello")});
}

TEST(MessageReaderTest, ReadsRfc256ByteBinaryWith16BitLength) {
  std::string payload(256, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i);
  std::string wire = Bytes({0x82, 0x7E, 0x01, 0x00}) + payload;
  EXPECT_EQ(EncodeFrame(Opcode::kBinary, payload), wire);
  ReadResult r = ReadAll(wire, kClientSide);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Binary(payload)});
}

TEST(MessageReaderTest, ReadsRfc64KiBBinaryWith64BitLength) {
  std::string payload(65536, 'x');
  std::string wire = Bytes({0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0}) + payload;
  EXPECT_EQ(EncodeFrame(Opcode::kBinary, payload), wire);
  ReadResult r = ReadAll(wire, kClientSide);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Binary(payload)});
}

// ---- Incremental reading ----

TEST(MessageReaderTest, ByteAtATimeGivesTheSameEventsAsOneFeed) {
  std::string big(70000, 'b');
  std::string wire = EncodeFrame(Opcode::kText, "héllo", true, kKey) +
                     EncodeFrame(Opcode::kBinary, std::string(300, 'z'), true, 0x01020304) +
                     EncodeFrame(Opcode::kText, "frag", false, kKey) +
                     EncodeFrame(Opcode::kPing, "p", true, kKey) +
                     EncodeFrame(Opcode::kContinuation, "ment", true, kKey) +
                     EncodeFrame(Opcode::kBinary, big, true, 0xdeadbeef) +
                     EncodeFrame(Opcode::kBinary, "", true, kKey) + EncodeClose(1000, "done", kKey);
  std::vector<Event> expected = {
      Text("héllo"), Binary(std::string(300, 'z')), Ping("p"), Text("fragment"), Binary(big),
      Binary(""),    Close(1000, "done"),
  };
  ReadResult whole = ReadAll(wire);
  ASSERT_FALSE(whole.error);
  EXPECT_EQ(whole.events, expected);
  ReadResult slow = ReadByteAtATime(wire);
  ASSERT_FALSE(slow.error);
  EXPECT_EQ(slow.events, expected);
}

TEST(MessageReaderTest, ControlFrameBetweenFragmentsComesOutFirst) {
  std::string wire = EncodeFrame(Opcode::kBinary, "ab", false, kKey) +
                     EncodeFrame(Opcode::kPong, "x", true, kKey) +
                     EncodeFrame(Opcode::kContinuation, "cd", true, kKey);
  ReadResult r = ReadAll(wire);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, (std::vector<Event>{Pong("x"), Binary("abcd")}));
}

TEST(MessageReaderTest, PartialFrameIsHeldUntilItCompletes) {
  std::string wire = EncodeFrame(Opcode::kText, "hello world", true, kKey);
  MessageReader reader;
  std::vector<Event> out;
  ASSERT_FALSE(reader.Feed(std::string_view(wire).substr(0, 9), &out));
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(reader.buffered_bytes(), 3u);
  ASSERT_FALSE(reader.Feed(std::string_view(wire).substr(9), &out));
  EXPECT_EQ(out, std::vector<Event>{Text("hello world")});
  EXPECT_EQ(reader.buffered_bytes(), 0u);
}

TEST(MessageReaderTest, NonMinimalLengthEncodingsAreAccepted) {
  // RFC 6455 §5.2 asks senders for the minimal encoding but receivers need not enforce it.
  std::string len16 = Bytes({0x82, 0xFE, 0x00, 0x03, 0, 0, 0, 0}) + "abc";
  std::string len64 = Bytes({0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0}) + "xyz";
  ReadResult r = ReadAll(len16 + len64);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, (std::vector<Event>{Binary("abc"), Binary("xyz")}));
}

TEST(MessageReaderTest, ClientSideReaderAcceptsUnmaskedFrames) {
  ReadResult r = ReadAll(EncodeFrame(Opcode::kText, "hi"), kClientSide);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Text("hi")});
}

TEST(MessageReaderTest, MessageExactlyAtTheLimitIsAccepted) {
  ReaderOptions o{.max_message_bytes = 10};
  std::string wire = EncodeFrame(Opcode::kBinary, "12345", false, kKey) +
                     EncodeFrame(Opcode::kContinuation, "67890", true, kKey);
  ReadResult r = ReadAll(wire, o);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Binary("1234567890")});
}

// ---- Close frames ----

TEST(MessageReaderTest, CloseCarriesCodeAndReason) {
  ReadResult r = ReadAll(EncodeClose(4001, "bye ✓", kKey));
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Close(4001, "bye ✓")});
}

TEST(MessageReaderTest, EmptyCloseIsReportedAsNoStatus) {
  ReadResult r = ReadAll(EncodeFrame(Opcode::kClose, "", true, kKey));
  ASSERT_FALSE(r.error);
  ASSERT_EQ(r.events.size(), 1u);
  EXPECT_EQ(r.events[0].type, Event::Type::kClose);
  EXPECT_EQ(r.events[0].close_code, kCloseNoStatus);
}

TEST(MessageReaderTest, BytesAfterCloseAreIgnored) {
  std::string wire = EncodeClose(1000, "", kKey) + EncodeFrame(Opcode::kText, "late", true, kKey) +
                     "\xff\xff garbage";
  MessageReader reader;
  std::vector<Event> out;
  EXPECT_FALSE(reader.Feed(wire, &out));
  EXPECT_TRUE(reader.close_received());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, Event::Type::kClose);
  EXPECT_FALSE(reader.Feed("more", &out));
  EXPECT_EQ(out.size(), 1u);
}

TEST(MessageReaderTest, EveryCloseCodeTheRfcAllowsIsAccepted) {
  for (uint16_t code :
       {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999}) {
    SCOPED_TRACE(code);
    EXPECT_TRUE(IsValidCloseCode(code));
    EXPECT_EQ(ErrorCode(EncodeClose(code, "", kKey)), 0);
  }
}

TEST(MessageReaderTest, CloseCodesTheRfcForbidsFailWithProtocolError) {
  for (uint16_t code :
       {0, 999, 1004, 1005, 1006, 1012, 1014, 1015, 1016, 2000, 2999, 5000, 65535}) {
    SCOPED_TRACE(code);
    EXPECT_FALSE(IsValidCloseCode(code));
    std::string body = Bytes({code >> 8, code & 0xFF});
    EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kClose, body, true, kKey)), kCloseProtocolError);
  }
}

TEST(MessageReaderTest, OneByteClosePayloadFailsWithProtocolError) {
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kClose, "\x03", true, kKey)), kCloseProtocolError);
}

TEST(MessageReaderTest, CloseReasonThatIsNotUtf8FailsWithInvalidPayload) {
  std::string body = Bytes({0x03, 0xE8, 0xC0, 0xAF});  // 1000 + overlong '/'
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kClose, body, true, kKey)), kCloseInvalidPayload);
}

// ---- Protocol errors (1002) ----

TEST(MessageReaderTest, UnmaskedClientFrameFailsWithProtocolError) {
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kText, "hi")), kCloseProtocolError);
}

TEST(MessageReaderTest, MaskedServerFrameFailsOnClientSide) {
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kText, "hi", true, kKey), kClientSide),
            kCloseProtocolError);
}

TEST(MessageReaderTest, ReservedBitsFailWithProtocolError) {
  for (uint8_t rsv : {0x40, 0x20, 0x10}) {
    SCOPED_TRACE(rsv);
    EXPECT_EQ(ErrorCode(MaskedFrame(0x81 | rsv, "x")), kCloseProtocolError);
  }
}

TEST(MessageReaderTest, ReservedOpcodesFailWithProtocolError) {
  for (uint8_t op : {0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF}) {
    SCOPED_TRACE(op);
    EXPECT_EQ(ErrorCode(MaskedFrame(0x80 | op, "")), kCloseProtocolError);
  }
}

TEST(MessageReaderTest, ControlFrameLongerThan125BytesFailsWithProtocolError) {
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kPing, std::string(125, 'p'), true, kKey)), 0);
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kPing, std::string(126, 'p'), true, kKey)),
            kCloseProtocolError);
  // The 7-bit length 126 announces a 16-bit length: refused before reading it.
  EXPECT_EQ(ErrorCode(Bytes({0x89, 0xFE})), kCloseProtocolError);
}

TEST(MessageReaderTest, FragmentedControlFrameFailsWithProtocolError) {
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kPing, "a", false, kKey)), kCloseProtocolError);
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kClose, "", false, kKey)), kCloseProtocolError);
}

TEST(MessageReaderTest, ContinuationWithoutAStartedMessageFailsWithProtocolError) {
  EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kContinuation, "x", true, kKey)), kCloseProtocolError);
  // Also right after a message that ended.
  std::string wire = EncodeFrame(Opcode::kText, "done", true, kKey) +
                     EncodeFrame(Opcode::kContinuation, "x", true, kKey);
  ReadResult r = ReadAll(wire);
  EXPECT_EQ(r.events, std::vector<Event>{Text("done")});
  ASSERT_TRUE(r.error);
  EXPECT_EQ(r.error->close_code, kCloseProtocolError);
}

TEST(MessageReaderTest, NewDataFrameInsideAFragmentedMessageFailsWithProtocolError) {
  std::string wire =
      EncodeFrame(Opcode::kText, "a", false, kKey) + EncodeFrame(Opcode::kBinary, "b", true, kKey);
  EXPECT_EQ(ErrorCode(wire), kCloseProtocolError);
}

TEST(MessageReaderTest, SixtyFourBitLengthWithMostSignificantBitSetFailsWithProtocolError) {
  std::string wire = Bytes({0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0x01, 1, 2, 3, 4});
  EXPECT_EQ(ErrorCode(wire, {.max_message_bytes = SIZE_MAX}), kCloseProtocolError);
}

// ---- Limits (1009) ----

TEST(MessageReaderTest, FrameAboveTheLimitFailsWithMessageTooBigBeforeItsPayload) {
  ReaderOptions o{.max_message_bytes = 100};
  // Only the header is sent: the limit is enforced before any payload arrives.
  std::string header = EncodeFrame(Opcode::kBinary, std::string(101, 'x'), true, kKey).substr(0, 8);
  EXPECT_EQ(ErrorCode(header, o), kCloseMessageTooBig);
}

TEST(MessageReaderTest, FragmentsAddingUpAboveTheLimitFailWithMessageTooBig) {
  ReaderOptions o{.max_message_bytes = 10};
  std::string wire = EncodeFrame(Opcode::kText, "123456", false, kKey) +
                     EncodeFrame(Opcode::kContinuation, "7890", false, kKey) +
                     EncodeFrame(Opcode::kContinuation, "!", true, kKey);
  EXPECT_EQ(ErrorCode(wire, o), kCloseMessageTooBig);
}

TEST(MessageReaderTest, HugeSixtyFourBitLengthFailsWithMessageTooBig) {
  std::string wire =
      Bytes({0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4});
  EXPECT_EQ(ErrorCode(wire), kCloseMessageTooBig);
}

// ---- UTF-8 (1007) ----

TEST(MessageReaderTest, Utf8SequenceSplitAcrossFragmentsIsAccepted) {
  // "€" is E2 82 AC and "😀" is F0 9F 98 80; both are cut between fragments.
  std::string wire = EncodeFrame(Opcode::kText, "a\xE2", false, kKey) +
                     EncodeFrame(Opcode::kContinuation, "\x82", false, kKey) +
                     EncodeFrame(Opcode::kContinuation, "\xAC\xF0\x9F\x98", false, kKey) +
                     EncodeFrame(Opcode::kContinuation, "\x80z", true, kKey);
  ReadResult r = ReadAll(wire);
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Text("a€😀z")});
  ReadResult slow = ReadByteAtATime(wire);
  EXPECT_EQ(slow.events, r.events);
}

TEST(MessageReaderTest, InvalidUtf8InTextFailsWithInvalidPayload) {
  const std::vector<std::string> invalid = {
      "\x80",              // stray continuation
      "\xC0\xAF",          // overlong '/'
      "\xC1\xBF",          // overlong
      "\xE0\x80\xAF",      // overlong 3-byte
      "\xED\xA0\x80",      // U+D800, a surrogate
      "\xED\xBF\xBF",      // U+DFFF
      "\xF0\x80\x80\xAF",  // overlong 4-byte
      "\xF4\x90\x80\x80",  // U+110000
      "\xF5\x80\x80\x80",  // lead byte above F4
      "\xFF",
      "\xE2\x82",        // truncated at the end of the message
      "ok\xE2\x28\xA1",  // bad continuation
  };
  for (const std::string& s : invalid) {
    SCOPED_TRACE(testing::PrintToString(s));
    EXPECT_FALSE(IsValidUtf8(s));
    EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kText, s, true, kKey)), kCloseInvalidPayload);
  }
}

TEST(MessageReaderTest, BoundaryCodePointsAreValidUtf8) {
  for (const std::string& s :
       {std::string("\x7F"), std::string("\xC2\x80"), std::string("\xDF\xBF"),
        std::string("\xE0\xA0\x80"), std::string("\xED\x9F\xBF"), std::string("\xEE\x80\x80"),
        std::string("\xEF\xBF\xBF"), std::string("\xF0\x90\x80\x80"),
        std::string("\xF4\x8F\xBF\xBF"), std::string(1, '\0')}) {
    SCOPED_TRACE(testing::PrintToString(s));
    EXPECT_TRUE(IsValidUtf8(s));
    EXPECT_EQ(ErrorCode(EncodeFrame(Opcode::kText, s, true, kKey)), 0);
  }
}

TEST(MessageReaderTest, InvalidUtf8IsDetectedBeforeTheMessageEnds) {
  // RFC 6455 §8.1: fail as soon as the data is known to be invalid.
  std::string wire = EncodeFrame(Opcode::kText, "ab\xFF", false, kKey);
  EXPECT_EQ(ErrorCode(wire), kCloseInvalidPayload);
}

TEST(MessageReaderTest, BinaryMessagesAreNotCheckedForUtf8) {
  ReadResult r = ReadAll(EncodeFrame(Opcode::kBinary, "\xFF\xC0", true, kKey));
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Binary("\xFF\xC0")});
}

// ---- Error stickiness ----

TEST(MessageReaderTest, ReaderStaysFailedAfterAnError) {
  MessageReader reader;
  std::vector<Event> out;
  std::optional<Error> e = reader.Feed(EncodeFrame(Opcode::kText, "x"), &out);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->close_code, kCloseProtocolError);
  EXPECT_EQ(e->ToStatus().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reader.Feed(EncodeFrame(Opcode::kText, "ok", true, kKey), &out), e);
  EXPECT_TRUE(out.empty());
}

// ---- Encoder ----

TEST(EncoderTest, ServerFramesAreUnmaskedWithShortestLength) {
  EXPECT_EQ(EncodeFrame(Opcode::kText, "Hello"), Bytes({0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}));
  EXPECT_EQ(EncodeFrame(Opcode::kText, "Hel", false), Bytes({0x01, 0x03, 0x48, 0x65, 0x6c}));
  EXPECT_EQ(EncodeFrame(Opcode::kContinuation, "lo"), Bytes({0x80, 0x02, 0x6c, 0x6f}));
  EXPECT_EQ(EncodeFrame(Opcode::kBinary, std::string(125, 'a')).size(), 127u);
  EXPECT_EQ(EncodeFrame(Opcode::kBinary, std::string(126, 'a')).substr(0, 4),
            Bytes({0x82, 0x7E, 0x00, 0x7E}));
  EXPECT_EQ(EncodeFrame(Opcode::kBinary, std::string(65535, 'a')).size(), 65539u);
  EXPECT_EQ(EncodeFrame(Opcode::kBinary, std::string(65536, 'a')).size(), 65546u);
  EXPECT_EQ(FrameSize(65536, true), 65550u);
}

TEST(EncoderTest, MaskedFrameMatchesRfcExample) {
  EXPECT_EQ(EncodeFrame(Opcode::kText, "Hello", true, kKey),
            Bytes({0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}));
  EXPECT_EQ(EncodeFrame(Opcode::kPong, "Hello", true, kKey),
            Bytes({0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}));
}

TEST(EncoderTest, MaskedLongPayloadReadsBackAtEveryLength) {
  // Lengths around the 8-byte masking stride and the length-encoding boundaries.
  for (size_t n : {0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 125, 126, 127, 1000, 65535, 65536, 70001}) {
    SCOPED_TRACE(n);
    std::string payload(n, '\0');
    for (size_t i = 0; i < n; ++i) payload[i] = static_cast<char>(i * 31 + 7);
    ReadResult r = ReadAll(EncodeFrame(Opcode::kBinary, payload, true, 0xa1b2c3d4));
    ASSERT_FALSE(r.error);
    EXPECT_EQ(r.events, std::vector<Event>{Binary(payload)});
  }
}

TEST(EncoderTest, AppendFrameAppendsAfterExistingBytes) {
  std::string out = "xx";
  AppendFrame(&out, Opcode::kPing, "p");
  EXPECT_EQ(out, "xx" + Bytes({0x89, 0x01, 'p'}));
}

TEST(EncoderTest, CloseCarriesCodeBigEndianThenReason) {
  EXPECT_EQ(EncodeClose(1000, "bye"), Bytes({0x88, 0x05, 0x03, 0xE8, 'b', 'y', 'e'}));
  EXPECT_EQ(EncodeClose(kCloseNoStatus, "dropped"), Bytes({0x88, 0x00}));
}

TEST(EncoderTest, LongCloseReasonIsCutAtACharacterBoundary) {
  std::string reason = std::string(122, 'r') + "é and more";  // é straddles byte 123
  std::string frame = EncodeClose(1011, reason);
  ASSERT_LE(frame.size(), 2 + kMaxControlPayload);
  ReadResult r = ReadAll(frame, kClientSide);
  ASSERT_FALSE(r.error);
  ASSERT_EQ(r.events.size(), 1u);
  EXPECT_EQ(r.events[0].payload, std::string(122, 'r'));
  EXPECT_EQ(r.events[0].close_code, 1011);
}

// ---- Handshake ----

http::Request UpgradeRequest() {
  http::Request r;
  r.method = "GET";
  r.target = r.path = "/chat";
  r.headers = {{"Host", "server.example.com"},   {"Upgrade", "websocket"},
               {"Connection", "Upgrade"},        {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
               {"Origin", "http://example.com"}, {"Sec-WebSocket-Version", "13"}};
  r.upgrade = true;
  return r;
}

void SetHeader(http::Request* r, std::string_view name, std::string value) {
  for (auto& [k, v] : r->headers) {
    if (k == name) {
      v = std::move(value);
      return;
    }
  }
  r->headers.emplace_back(std::string(name), std::move(value));
}

void RemoveHeader(http::Request* r, std::string_view name) {
  std::erase_if(r->headers, [&](const auto& h) { return h.first == name; });
}

TEST(HandshakeTest, AcceptKeyMatchesRfcExample) {
  // RFC 6455 §1.3 and §4.2.2.
  EXPECT_EQ(ComputeAcceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST(HandshakeTest, ValidUpgradeGetsSwitchingProtocols) {
  HandshakeResult h = AcceptHandshake(UpgradeRequest(), {});
  ASSERT_TRUE(h.ok()) << h.status;
  EXPECT_EQ(h.http_status, 101);
  EXPECT_EQ(h.response,
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            "\r\n");
  EXPECT_FALSE(h.subprotocol);
  EXPECT_FALSE(h.subprotocol_offered);
}

TEST(HandshakeTest, HeaderTokensAreCaseInsensitiveAndMayBeInLists) {
  http::Request r = UpgradeRequest();
  SetHeader(&r, "Upgrade", "WebSocket");
  SetHeader(&r, "Connection", "keep-alive, UPGRADE");
  SetHeader(&r, "Sec-WebSocket-Key", "  dGhlIHNhbXBsZSBub25jZQ== ");
  r.headers.emplace_back("HOST", "ignored-second-host");
  HandshakeResult h = AcceptHandshake(r, {});
  ASSERT_TRUE(h.ok()) << h.status;
  EXPECT_NE(h.response.find("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            std::string::npos);
}

TEST(HandshakeTest, ConnectionUpgradeInASecondHeaderIsFound) {
  http::Request r = UpgradeRequest();
  SetHeader(&r, "Connection", "keep-alive");
  r.headers.emplace_back("connection", "Upgrade");
  EXPECT_TRUE(AcceptHandshake(r, {}).ok());
}

TEST(HandshakeTest, LaterHttpVersionIsAccepted) {
  http::Request r = UpgradeRequest();
  r.version_minor = 2;
  EXPECT_TRUE(AcceptHandshake(r, {}).ok());
}

void ExpectRefused(const http::Request& r, int status) {
  HandshakeResult h = AcceptHandshake(r, {"mqtt"});
  EXPECT_FALSE(h.ok());
  EXPECT_EQ(h.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.http_status, status);
  std::string status_line = "HTTP/1.1 " + std::to_string(status) + " ";
  EXPECT_EQ(h.response.rfind(status_line, 0), 0u) << h.response;
  EXPECT_NE(h.response.find("Connection: close\r\n"), std::string::npos);
  EXPECT_EQ(h.response.find("Sec-WebSocket-Accept"), std::string::npos);
}

TEST(HandshakeTest, NonGetMethodIsRefusedWith400) {
  http::Request r = UpgradeRequest();
  r.method = "POST";
  ExpectRefused(r, 400);
}

TEST(HandshakeTest, Http10IsRefusedWith400) {
  http::Request r = UpgradeRequest();
  r.version_minor = 0;
  ExpectRefused(r, 400);
}

TEST(HandshakeTest, MissingHostIsRefusedWith400) {
  http::Request r = UpgradeRequest();
  RemoveHeader(&r, "Host");
  ExpectRefused(r, 400);
}

TEST(HandshakeTest, MissingOrWrongUpgradeIsRefusedWith400) {
  http::Request r = UpgradeRequest();
  SetHeader(&r, "Upgrade", "h2c");
  ExpectRefused(r, 400);
  RemoveHeader(&r, "Upgrade");
  ExpectRefused(r, 400);
}

TEST(HandshakeTest, ConnectionWithoutUpgradeTokenIsRefusedWith400) {
  http::Request r = UpgradeRequest();
  SetHeader(&r, "Connection", "keep-alive");
  ExpectRefused(r, 400);
  SetHeader(&r, "Connection", "Upgraded");  // a token, not a substring
  ExpectRefused(r, 400);
}

TEST(HandshakeTest, WrongOrMissingVersionIsRefusedWith426AndTheSupportedVersion) {
  http::Request r = UpgradeRequest();
  SetHeader(&r, "Sec-WebSocket-Version", "8");
  ExpectRefused(r, 426);
  HandshakeResult h = AcceptHandshake(r, {});
  EXPECT_EQ(h.response.rfind("HTTP/1.1 426 Upgrade Required\r\n", 0), 0u);
  EXPECT_NE(h.response.find("\r\nSec-WebSocket-Version: 13\r\n"), std::string::npos);
  RemoveHeader(&r, "Sec-WebSocket-Version");
  ExpectRefused(r, 426);
}

TEST(HandshakeTest, BadKeysAreRefusedWith400) {
  for (const char* key : {"", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=",
                          "dGhlIHNhbXBsZSBub25jZQ===", "dGhlIHNhbXBsZSBub25j",  // 15 bytes
                          "dGhlIHNhbXBsZSBub25jZSE=",                           // 17 bytes
                          "dGhlIHNhbXBsZSBub25j*Q==", "not base64 at all!!!!!=="}) {
    SCOPED_TRACE(key);
    http::Request r = UpgradeRequest();
    SetHeader(&r, "Sec-WebSocket-Key", key);
    ExpectRefused(r, 400);
  }
  http::Request missing = UpgradeRequest();
  RemoveHeader(&missing, "Sec-WebSocket-Key");
  ExpectRefused(missing, 400);
  http::Request twice = UpgradeRequest();
  twice.headers.emplace_back("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==");
  ExpectRefused(twice, 400);
}

TEST(HandshakeTest, FirstClientPreferredSupportedSubprotocolIsChosen) {
  http::Request r = UpgradeRequest();
  r.headers.emplace_back("Sec-WebSocket-Protocol", "chat.v2, mqtt");
  r.headers.emplace_back("Sec-WebSocket-Protocol", "herald.v1");
  HandshakeResult h = AcceptHandshake(r, {"herald.v1", "mqtt"});
  ASSERT_TRUE(h.ok()) << h.status;
  EXPECT_TRUE(h.subprotocol_offered);
  EXPECT_EQ(h.subprotocol, "mqtt");
  EXPECT_NE(h.response.find("\r\nSec-WebSocket-Protocol: mqtt\r\n"), std::string::npos);
}

TEST(HandshakeTest, SubprotocolInASecondHeaderIsFound) {
  http::Request r = UpgradeRequest();
  r.headers.emplace_back("Sec-WebSocket-Protocol", "chat");
  r.headers.emplace_back("sec-websocket-protocol", " herald.v1 ");
  HandshakeResult h = AcceptHandshake(r, {"herald.v1"});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h.subprotocol, "herald.v1");
}

TEST(HandshakeTest, UnsupportedSubprotocolsStillAcceptWithoutOne) {
  http::Request r = UpgradeRequest();
  r.headers.emplace_back("Sec-WebSocket-Protocol", "chat, MQTT");
  HandshakeResult h = AcceptHandshake(r, {"mqtt"});  // names compare byte for byte
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h.subprotocol_offered);
  EXPECT_FALSE(h.subprotocol);
  EXPECT_EQ(h.response.find("Sec-WebSocket-Protocol"), std::string::npos);
}

TEST(HandshakeTest, ExtensionsOfferedAreNotAccepted) {
  http::Request r = UpgradeRequest();
  r.headers.emplace_back("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits");
  HandshakeResult h = AcceptHandshake(r, {});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h.response.find("Sec-WebSocket-Extensions"), std::string::npos);
}

TEST(HandshakeTest, HandshakeParsedFromBytesIsAccepted) {
  http::RequestParser parser;
  std::vector<http::Request> requests;
  std::string bytes =
      "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";
  std::string frame = EncodeFrame(Opcode::kText, "first", true, kKey);
  size_t consumed = 0;
  ASSERT_TRUE(parser.Feed(bytes + frame, &requests, &consumed).ok());
  ASSERT_EQ(requests.size(), 1u);
  ASSERT_EQ(consumed, bytes.size());
  HandshakeResult h = AcceptHandshake(requests[0], {"superchat"});
  ASSERT_TRUE(h.ok()) << h.status;
  EXPECT_EQ(h.subprotocol, "superchat");
  ReadResult r = ReadAll(std::string_view(bytes + frame).substr(consumed));
  ASSERT_FALSE(r.error);
  EXPECT_EQ(r.events, std::vector<Event>{Text("first")});
}

// ---- Fuzz corpus ----

TEST(CorpusTest, EverySeedIsAValidStream) {
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(WS_CORPUS_DIR)) {
    SCOPED_TRACE(entry.path().filename().string());
    std::ifstream in(entry.path(), std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_GE(data.size(), 3u);
    // Same header as ws_fuzz.cc: byte 0 the setup, byte 1 the split size.
    auto mode = static_cast<uint8_t>(data[0]);
    ReaderOptions o{.role = (mode & 0x01) ? Role::kClient : Role::kServer,
                    .max_message_bytes = size_t{64} << ((mode >> 1) & 0x07)};
    std::string_view stream = std::string_view(data).substr(2);
    ReadResult whole = ReadAll(stream, o);
    EXPECT_FALSE(whole.error) << whole.error->message;
    EXPECT_FALSE(whole.events.empty());
    ReadResult slow = ReadByteAtATime(stream, o);
    EXPECT_EQ(slow.events, whole.events);
    ++seeds;
  }
  EXPECT_GE(seeds, 7);
}

}  // namespace
}  // namespace herald::ws
