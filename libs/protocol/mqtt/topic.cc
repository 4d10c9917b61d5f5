#include "libs/protocol/mqtt/topic.h"

#include <algorithm>

#include <cstdint>
#include <string>

#include "libs/common/strings.h"

namespace herald::mqtt {
namespace {

constexpr size_t kMaxStringBytes = 65535;

Error Fail(ReasonCode code, std::string message) {
  return Error{.reason_code = code, .message = std::move(message), .packet_type = std::nullopt};
}

}  // namespace

bool IsValidMqttUtf8(std::string_view s, bool reject_control_characters) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    uint32_t c = *p;
    if (c < 0x80) {
      // U+0000 is forbidden [MQTT-1.5.4-2]; U+0001..U+001F, U+007F may be refused (§1.5.4).
      if (c == 0) return false;
      if (reject_control_characters && (c < 0x20 || c == 0x7F)) return false;
      ++p;
      continue;
    }
    size_t len;
    uint32_t min;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80, c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800, c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, c &= 0x07;
    } else {
      return false;  // continuation byte or 0xF8..0xFF as a lead byte
    }
    if (static_cast<size_t>(end - p) < len) return false;
    for (size_t i = 1; i < len; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      c = (c << 6) | (p[i] & 0x3F);
    }
    if (c < min) return false;                     // overlong form (RFC 3629 §3)
    if (c >= 0xD800 && c <= 0xDFFF) return false;  // surrogates [MQTT-1.5.4-1]
    if (c > 0x10FFFF) return false;
    if (reject_control_characters && c >= 0x80 && c <= 0x9F) return false;
    p += len;
  }
  return true;
}

std::optional<Error> ValidateTopicName(std::string_view name, bool reject_control_characters) {
  // All Topic Names and Topic Filters MUST be at least one character long [MQTT-4.7.3-1].
  if (name.empty()) return Fail(ReasonCode::kMalformedPacket, "empty topic name");
  if (name.size() > kMaxStringBytes) return Fail(ReasonCode::kMalformedPacket, "topic too long");
  if (!IsValidMqttUtf8(name, reject_control_characters)) {
    return Fail(ReasonCode::kMalformedPacket, "topic name is not valid UTF-8");
  }
  // The Topic Name in the PUBLISH packet MUST NOT contain wildcard characters [MQTT-3.3.2-2].
  if (name.find_first_of("+#") != std::string_view::npos) {
    return Fail(ReasonCode::kTopicNameInvalid,
                StrCat("topic name contains a wildcard: ", name.substr(0, 128)));
  }
  return std::nullopt;
}

std::optional<Error> ValidateTopicFilter(std::string_view filter, bool reject_control_characters) {
  if (filter.empty()) return Fail(ReasonCode::kMalformedPacket, "empty topic filter");
  if (filter.size() > kMaxStringBytes) {
    return Fail(ReasonCode::kMalformedPacket, "topic filter too long");
  }
  if (!IsValidMqttUtf8(filter, reject_control_characters)) {
    return Fail(ReasonCode::kMalformedPacket, "topic filter is not valid UTF-8");
  }
  // §4.7.1.2: '#' MUST be the last character and either alone or after a '/' [MQTT-4.7.1-1].
  // §4.7.1.3: '+' MUST occupy an entire level [MQTT-4.7.1-2].
  size_t level_start = 0;
  for (size_t i = 0; i <= filter.size(); ++i) {
    if (i != filter.size() && filter[i] != '/') continue;
    std::string_view level = filter.substr(level_start, i - level_start);
    bool has_hash = level.find('#') != std::string_view::npos;
    bool has_plus = level.find('+') != std::string_view::npos;
    if (has_hash && (level.size() != 1 || i != filter.size())) {
      return Fail(ReasonCode::kTopicFilterInvalid,
                  StrCat("'#' must be the whole last level: ", filter.substr(0, 128)));
    }
    if (has_plus && level.size() != 1) {
      return Fail(ReasonCode::kTopicFilterInvalid,
                  StrCat("'+' must be a whole level: ", filter.substr(0, 128)));
    }
    level_start = i + 1;
  }
  return std::nullopt;
}

bool IsSharedSubscription(std::string_view topic_filter) {
  return topic_filter.starts_with("$share/");
}

std::optional<Error> ParseSharedSubscription(std::string_view topic_filter,
                                             SharedSubscription* out) {
  constexpr std::string_view kPrefix = "$share/";
  if (!topic_filter.starts_with(kPrefix)) {
    return Fail(ReasonCode::kProtocolError, "not a shared subscription");
  }
  std::string_view rest = topic_filter.substr(kPrefix.size());
  size_t slash = rest.find('/');
  std::string_view share_name = rest.substr(0, slash);
  // The ShareName MUST be at least one character long and MUST NOT contain "/", "+" or "#"
  // [MQTT-4.8.2-1], [MQTT-4.8.2-2].
  if (share_name.empty()) {
    return Fail(ReasonCode::kProtocolError, "shared subscription with an empty ShareName");
  }
  if (share_name.find_first_of("+#") != std::string_view::npos) {
    return Fail(ReasonCode::kProtocolError,
                StrCat("ShareName contains a wildcard: ", share_name.substr(0, 128)));
  }
  if (slash == std::string_view::npos || slash + 1 == rest.size()) {
    return Fail(ReasonCode::kProtocolError, "shared subscription without a topic filter");
  }
  out->share_name = share_name;
  out->topic_filter = rest.substr(slash + 1);
  return std::nullopt;
}

bool TopicMatches(std::string_view filter, std::string_view name) {
  // §4.7.2: a Topic Name starting with '$' is not matched by a filter starting with a wildcard.
  if (!name.empty() && name[0] == '$' && !filter.empty() &&
      (filter[0] == '+' || filter[0] == '#')) {
    return false;
  }
  size_t f = 0, n = 0;
  while (true) {
    size_t f_end = filter.find('/', f);
    if (f_end == std::string_view::npos) f_end = filter.size();
    std::string_view f_level = filter.substr(f, f_end - f);
    if (f_level == "#") return true;  // matches this level and everything below, or nothing
    if (n > name.size()) {
      // The name has no more levels. "sport/#" matches "sport" (§4.7.1.2): only a remaining
      // "/#" can still match, and that was handled above.
      return false;
    }
    size_t n_end = name.find('/', n);
    if (n_end == std::string_view::npos) n_end = name.size();
    std::string_view n_level = name.substr(n, n_end - n);
    if (f_level != "+" && f_level != n_level) return false;
    bool f_last = f_end == filter.size();
    bool n_last = n_end == name.size();
    if (f_last && n_last) return true;
    if (f_last) return false;
    f = f_end + 1;
    // When the name is exhausted, the next filter level must be "#" to match.
    n = n_last ? name.size() + 1 : n_end + 1;
  }
}

TopicFilterSet::TopicFilterSet(const std::vector<std::string>& filters) {
  for (const auto& f : filters) Add(f);
}

TopicFilterSet::TopicFilterSet(std::initializer_list<std::string> filters) {
  for (const auto& f : filters) Add(f);
}

void TopicFilterSet::Add(std::string_view filter) {
  if (filter.find_first_of("+#") == std::string_view::npos) {
    exact_.emplace(filter);
  } else if (std::find(wildcard_.begin(), wildcard_.end(), filter) == wildcard_.end()) {
    wildcard_.emplace_back(filter);
  }
}

bool TopicFilterSet::Remove(std::string_view filter) {
  if (auto it = exact_.find(filter); it != exact_.end()) {
    exact_.erase(it);
    return true;
  }
  auto it = std::find(wildcard_.begin(), wildcard_.end(), filter);
  if (it == wildcard_.end()) return false;
  wildcard_.erase(it);
  return true;
}

bool TopicFilterSet::Matches(std::string_view topic) const {
  if (exact_.find(topic) != exact_.end()) return true;
  for (const auto& f : wildcard_) {
    if (TopicMatches(f, topic)) return true;
  }
  return false;
}

std::vector<std::string> TopicFilterSet::ToVector() const {
  std::vector<std::string> out(exact_.begin(), exact_.end());
  out.insert(out.end(), wildcard_.begin(), wildcard_.end());
  return out;
}

}  // namespace herald::mqtt
