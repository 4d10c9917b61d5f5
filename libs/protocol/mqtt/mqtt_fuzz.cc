// libFuzzer target for the MQTT codec. Input: byte 0 chooses the decoder's setup, byte 1 the
// split size, the rest is the byte stream, fed to a Decoder in pieces of that size.
//
//   byte 0: bit 0  version when preset (1 = 5.0, 0 = 3.1.1)
//           bit 1  preset the version (else the CONNECT sets it)
//           bits 2-3  role: 0 server, 1 client, 2/3 any
//           bit 4  reject control characters
//           bit 5  validate UTF-8 payloads
//
// Properties checked: the decoder never crashes or reads out of bounds (ASan/UBSan); every
// decoded packet respects the size limit, encodes without error to exactly EncodedSize bytes,
// and decodes again to an equal packet.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "libs/protocol/mqtt/codec.h"
#include "libs/protocol/mqtt/topic.h"
#include "libs/protocol/mqtt/topic_trie.h"

namespace {

using herald::mqtt::Connect;
using herald::mqtt::Decoder;
using herald::mqtt::DecoderOptions;
using herald::mqtt::Packet;
using herald::mqtt::Publish;
using herald::mqtt::Role;
using herald::mqtt::Subscribe;
using herald::mqtt::Version;

[[noreturn]] void Die(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "mqtt_fuzz: %s %.*s\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

void CheckRoundTrip(const Packet& packet, Version version, const DecoderOptions& options) {
  std::string bytes;
  absl::Status s = herald::mqtt::Encode(packet, version, &bytes);
  if (!s.ok()) {
    Die("decoded packet does not encode:",
        std::string_view(s.message().data(), s.message().size()));
  }
  if (bytes.size() != herald::mqtt::EncodedSize(packet, version)) Die("EncodedSize mismatch");
  if (bytes.size() > options.maximum_packet_size) Die("re-encoded packet grew past the limit");
  DecoderOptions again = options;
  again.version = version;
  Packet decoded;
  if (auto e = herald::mqtt::DecodePacket(bytes, again, &decoded)) {
    Die("re-encoded packet does not decode:", e->message);
  }
  if (!(decoded == packet)) Die("round trip changed the packet");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  uint8_t mode = data[0];
  DecoderOptions options;
  if (mode & 0x02) options.version = (mode & 0x01) ? Version::kV5 : Version::kV311;
  switch ((mode >> 2) & 0x03) {
    case 0:
      options.role = Role::kServer;
      break;
    case 1:
      options.role = Role::kClient;
      break;
    default:
      options.role = Role::kAny;
      break;
  }
  options.reject_control_characters = mode & 0x10;
  options.validate_utf8_payloads = mode & 0x20;
  options.maximum_packet_size = 4096;
  size_t step = 1 + data[1] % 64;

  Decoder decoder(options);
  std::vector<Packet> packets;
  std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);
  while (!rest.empty()) {
    size_t n = std::min(step, rest.size());
    if (decoder.Feed(rest.substr(0, n), &packets)) break;
    rest.remove_prefix(n);
  }

  // Packets before the (only) CONNECT were decoded with the preset version, the CONNECT and
  // those after it with the version it set.
  bool after_connect = false;
  std::vector<std::string> filters;
  std::vector<std::string> names;
  for (const Packet& p : packets) {
    if (std::holds_alternative<Connect>(p)) after_connect = true;
    std::optional<Version> v = after_connect ? decoder.version() : options.version;
    if (!v) Die("packet decoded without a version");
    CheckRoundTrip(p, *v, options);
    if (const auto* sub = std::get_if<Subscribe>(&p)) {
      for (const auto& s : sub->subscriptions) {
        std::string_view filter = s.topic_filter;
        herald::mqtt::SharedSubscription shared;
        if (*v == Version::kV5 && herald::mqtt::IsSharedSubscription(filter)) {
          if (herald::mqtt::ParseSharedSubscription(filter, &shared)) Die("bad shared filter");
          filter = shared.topic_filter;
        }
        if (herald::mqtt::ValidateTopicFilter(filter)) Die("invalid filter decoded");
        filters.emplace_back(filter);
      }
    }
    if (const auto* pub = std::get_if<Publish>(&p); pub && !pub->topic.empty()) {
      if (herald::mqtt::ValidateTopicName(pub->topic)) Die("invalid topic name decoded");
      names.push_back(pub->topic);
    }
  }

  // The subscription index agrees with TopicMatches on whatever topics the input carried.
  herald::mqtt::TopicTrie<size_t> trie;
  for (size_t i = 0; i < filters.size(); ++i) trie.Insert(filters[i], i);
  for (const std::string& name : names) {
    std::vector<size_t> expected, got;
    for (size_t i = 0; i < filters.size(); ++i) {
      if (herald::mqtt::TopicMatches(filters[i], name)) expected.push_back(i);
    }
    trie.Match(name, [&](size_t i) { got.push_back(i); });
    std::sort(got.begin(), got.end());
    if (got != expected) Die("TopicTrie and TopicMatches disagree on", name);
  }
  for (size_t i = 0; i < filters.size(); ++i) {
    if (!trie.Remove(filters[i], i)) Die("TopicTrie lost a filter:", filters[i]);
  }
  if (!trie.empty()) Die("TopicTrie not empty after removing everything");
  return 0;
}
