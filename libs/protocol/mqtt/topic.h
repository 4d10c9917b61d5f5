// MQTT topic names, topic filters and shared subscriptions (MQTT 5.0 §4.7, §4.8.2; 3.1.1 §4.7),
// and the UTF-8 rules every MQTT string follows (§1.5.4). Pure functions, safe on any thread.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "libs/protocol/mqtt/packet.h"

namespace herald::mqtt {

// MQTT 5.0 §1.5.4 / 3.1.1 §1.5.3: well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates
// U+D800..U+DFFF, nothing above U+10FFFF) and no U+0000. The control characters U+0001..U+001F
// and U+007F..U+009F are allowed by the spec ("SHOULD NOT" be sent); pass
// `reject_control_characters` to refuse them as well. Non-characters (U+FFFF...) are accepted.
bool IsValidMqttUtf8(std::string_view s, bool reject_control_characters = false);

// A Topic Name as carried in PUBLISH (§4.7, §3.3.2.1): valid UTF-8, 1..65,535 bytes, no '+' or
// '#'. Errors: Malformed Packet for bad UTF-8 or an empty/too long name, Topic Name invalid (0x90)
// for a wildcard.
std::optional<Error> ValidateTopicName(std::string_view name,
                                       bool reject_control_characters = false);

// A Topic Filter (§4.7.1): valid UTF-8, 1..65,535 bytes; '#' only as the whole last level; '+'
// only as a whole level. A shared subscription's `$share/{group}/` prefix is NOT understood
// here: split it with ParseSharedSubscription first. Errors: Malformed Packet for bad UTF-8 or
// empty, Topic Filter invalid (0x8F) for misplaced wildcards.
std::optional<Error> ValidateTopicFilter(std::string_view filter,
                                         bool reject_control_characters = false);

// Whether a topic filter names a shared subscription: it starts with "$share/" (§4.8.2).
bool IsSharedSubscription(std::string_view topic_filter);

// The parts of `$share/{ShareName}/{filter}`; views into the string that was parsed.
struct SharedSubscription {
  std::string_view share_name;
  std::string_view topic_filter;
};

// Splits a shared subscription (IsSharedSubscription must be true). Fails with Protocol Error
// when ShareName is empty or contains '+' or '#' (it cannot contain '/': the first '/' after
// "$share/" ends it), or when no Topic Filter follows it (§4.8.2). The filter part is validated
// with ValidateTopicFilter.
std::optional<Error> ParseSharedSubscription(std::string_view topic_filter,
                                             SharedSubscription* out);

// Whether topic name `name` matches topic filter `filter` (§4.7): '+' matches exactly one level
// (possibly empty), '#' matches its parent level and any number of levels below, and a topic
// name starting with '$' is never matched by a filter whose first level is '+' or '#'
// (§4.7.2). Both arguments are assumed valid (ValidateTopicName / ValidateTopicFilter); shared
// subscriptions must be split first.
bool TopicMatches(std::string_view filter, std::string_view name);

// A set of valid topic filters (shared-subscription prefixes stripped) matched against topic
// names: filters without wildcards by one hash lookup, the others one by one with TopicMatches.
// Not thread-safe for writes; const methods may be called concurrently.
class TopicFilterSet {
 public:
  TopicFilterSet() = default;
  TopicFilterSet(const std::vector<std::string>& filters);  // NOLINT: implicit on purpose
  TopicFilterSet(std::initializer_list<std::string> filters);

  void Add(std::string_view filter);
  // Returns whether it was there.
  bool Remove(std::string_view filter);
  bool Matches(std::string_view topic) const;
  bool empty() const { return exact_.empty() && wildcard_.empty(); }
  size_t size() const { return exact_.size() + wildcard_.size(); }
  std::vector<std::string> ToVector() const;

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_set<std::string, Hash, std::equal_to<>> exact_;
  std::vector<std::string> wildcard_;
};

}  // namespace herald::mqtt
