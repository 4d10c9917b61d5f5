// libFuzzer target for the WebSocket reader. Input: byte 0 chooses the reader's setup, byte 1
// the split size, the rest is the byte stream, fed to a MessageReader in pieces of that size.
//
//   byte 0: bit 0      role: 0 server (frames must be masked), 1 client (must not be)
//           bits 1-3   max_message_bytes = 64 << value (64 .. 8192)
//
// Properties checked: the reader never crashes or reads out of bounds (ASan/UBSan); the split
// does not change what is read (same events, same error as one Feed of the whole stream); every
// message respects the size limit, text and close reasons are valid UTF-8, close codes are
// valid; and the events, encoded again as frames, read back to the same events.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "libs/protocol/ws/websocket.h"

namespace {

using herald::ws::Event;
using herald::ws::MessageReader;
using herald::ws::ReaderOptions;
using herald::ws::Role;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "ws_fuzz: %s\n", what);
  std::abort();
}

herald::ws::Opcode OpcodeOf(Event::Type t) {
  switch (t) {
    case Event::Type::kText:
      return herald::ws::Opcode::kText;
    case Event::Type::kBinary:
      return herald::ws::Opcode::kBinary;
    case Event::Type::kPing:
      return herald::ws::Opcode::kPing;
    case Event::Type::kPong:
      return herald::ws::Opcode::kPong;
    case Event::Type::kClose:
      return herald::ws::Opcode::kClose;
  }
  Die("unknown event type");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint8_t mode = data[0];
  ReaderOptions options;
  options.role = (mode & 0x01) ? Role::kClient : Role::kServer;
  options.max_message_bytes = size_t{64} << ((mode >> 1) & 0x07);
  size_t step = 1 + data[1] % 64;
  std::string_view stream(reinterpret_cast<const char*>(data + 2), size - 2);

  MessageReader split_reader(options);
  std::vector<Event> events;
  std::optional<herald::ws::Error> error;
  std::string_view rest = stream;
  while (!rest.empty() && !error) {
    size_t n = std::min(step, rest.size());
    error = split_reader.Feed(rest.substr(0, n), &events);
    rest.remove_prefix(n);
  }

  MessageReader whole_reader(options);
  std::vector<Event> whole_events;
  std::optional<herald::ws::Error> whole_error = whole_reader.Feed(stream, &whole_events);
  if (whole_events != events) Die("the split changed the events");
  if (whole_error != error) Die("the split changed the error");
  if (error && split_reader.Feed("x", &events) != error) Die("error is not sticky");

  std::string again;
  for (const Event& e : events) {
    switch (e.type) {
      case Event::Type::kText:
        if (!herald::ws::IsValidUtf8(e.payload)) Die("text message is not UTF-8");
        [[fallthrough]];
      case Event::Type::kBinary:
        if (e.payload.size() > options.max_message_bytes) Die("message above the limit");
        break;
      case Event::Type::kPing:
      case Event::Type::kPong:
        if (e.payload.size() > herald::ws::kMaxControlPayload) Die("control payload too long");
        break;
      case Event::Type::kClose:
        if (e.close_code != herald::ws::kCloseNoStatus &&
            !herald::ws::IsValidCloseCode(e.close_code)) {
          Die("invalid close code accepted");
        }
        if (e.close_code == herald::ws::kCloseNoStatus && !e.payload.empty()) {
          Die("close reason without a code");
        }
        if (!herald::ws::IsValidUtf8(e.payload)) Die("close reason is not UTF-8");
        break;
    }
    std::optional<uint32_t> key;
    if (options.role == Role::kServer) key = 0x9e3779b9u;
    if (e.type == Event::Type::kClose) {
      again += herald::ws::EncodeClose(e.close_code, e.payload, key);
    } else {
      herald::ws::AppendFrame(&again, OpcodeOf(e.type), e.payload, true, key);
    }
  }
  MessageReader round_trip(options);
  std::vector<Event> reread;
  if (round_trip.Feed(again, &reread)) Die("re-encoded events do not read back");
  if (reread != events) Die("round trip changed the events");
  return 0;
}
