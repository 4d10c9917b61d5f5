#include "libs/auth/acl_file.h"

#include <utility>

#include "libs/auth/text_file.h"
#include "libs/common/strings.h"
#include "libs/protocol/mqtt/topic.h"

namespace herald::auth {
namespace {

constexpr std::string_view kClientIdToken = "%c";
constexpr std::string_view kUsernameToken = "%u";

bool IsBlank(char c) { return c == ' ' || c == '\t'; }

// Splits the first blank-separated word off `s` (already trimmed); `*rest` is the trimmed
// remainder.
std::string_view FirstWord(std::string_view s, std::string_view* rest) {
  size_t i = 0;
  while (i < s.size() && !IsBlank(s[i])) ++i;
  *rest = TrimBlanks(s.substr(i));
  return s.substr(0, i);
}

// `s` up to a comment: a '#' that follows a blank.
std::string_view StripComment(std::string_view s) {
  for (size_t i = 1; i < s.size(); ++i) {
    if (s[i] == '#' && IsBlank(s[i - 1])) return TrimBlanks(s.substr(0, i));
  }
  return s;
}

std::optional<AclFile::Access> ParseAccess(std::string_view word) {
  if (word == "read") return AclFile::Access::kRead;
  if (word == "write") return AclFile::Access::kWrite;
  if (word == "readwrite") return AclFile::Access::kReadWrite;
  if (word == "deny") return AclFile::Access::kDeny;
  return std::nullopt;
}

// Replaces every occurrence of `token` in `*s` with `value`.
void ReplaceAll(std::string* s, std::string_view token, std::string_view value) {
  for (size_t at = s->find(token); at != std::string::npos; at = s->find(token, at)) {
    s->replace(at, token.size(), value);
    at += value.size();
  }
}

// Whether `value` may stand in for %c or %u: it must be exactly one non-empty level.
bool IsSubstitutable(std::string_view value) {
  return !value.empty() && value.find_first_of("+#/") == std::string_view::npos;
}

bool IsValidTopicName(std::string_view topic) {
  return !topic.empty() && topic.find_first_of("+#") == std::string_view::npos;
}

}  // namespace

bool FilterCovers(std::string_view rule, std::string_view filter) {
  // §4.7.2: a rule starting with a wildcard does not reach topics starting with '$'.
  if (!filter.empty() && filter[0] == '$' && !rule.empty() && (rule[0] == '+' || rule[0] == '#')) {
    return false;
  }
  size_t r = 0, f = 0;
  bool filter_done = false;  // every level of `filter` has been compared
  while (true) {
    size_t r_end = rule.find('/', r);
    if (r_end == std::string_view::npos) r_end = rule.size();
    std::string_view r_level = rule.substr(r, r_end - r);
    // '#' matches the parent level and everything below: whatever `filter` has left.
    if (r_level == "#") return true;
    // `filter` matches a topic that ends here; `rule` needs another level.
    if (filter_done) return false;
    size_t f_end = filter.find('/', f);
    if (f_end == std::string_view::npos) f_end = filter.size();
    std::string_view f_level = filter.substr(f, f_end - f);
    if (f_level == "#") return false;  // only a '#' rule level covers '#'
    if (f_level == "+") {
      if (r_level != "+") return false;
    } else if (r_level != "+" && r_level != f_level) {
      return false;
    }
    bool r_last = r_end == rule.size();
    bool f_last = f_end == filter.size();
    if (r_last && f_last) return true;
    if (r_last) return false;  // `filter` has more levels than `rule` matches
    r = r_end + 1;
    if (f_last) {
      filter_done = true;
    } else {
      f = f_end + 1;
    }
  }
}

absl::StatusOr<AclFile> AclFile::Parse(std::string_view text, std::string_view name_for_errors) {
  AclFile acl;
  // The `user` section being read; none before the first `user` line (anonymous clients).
  std::optional<std::string> section;
  std::vector<std::string_view> lines = SplitLines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = TrimBlanks(lines[i]);
    if (line.empty() || line[0] == '#') continue;
    auto fail = [&](std::string_view why) {
      return absl::InvalidArgumentError(StrCat(name_for_errors, ":", i + 1, ": ", why));
    };
    std::string_view rest;
    std::string_view keyword = FirstWord(line, &rest);
    if (keyword == "user") {
      std::string_view name = StripComment(rest);
      if (name.empty() || name[0] == '#') return fail("missing user name after 'user'");
      section = std::string(name);
      acl.users_.try_emplace(*section);
      continue;
    }
    if (keyword != "topic" && keyword != "pattern") {
      return fail(StrCat("unknown keyword '", keyword, "' (expected topic, pattern or user)"));
    }
    std::string_view filter;
    std::string_view access_word = FirstWord(rest, &filter);
    if (access_word.empty() || access_word[0] == '#') {
      return fail(
          StrCat("missing access type after '", keyword, "' (read, write, readwrite or deny)"));
    }
    std::optional<Access> access = ParseAccess(access_word);
    if (!access.has_value()) {
      return fail(StrCat("unknown access type '", access_word,
                         "' (expected read, write, readwrite or deny)"));
    }
    filter = StripComment(filter);
    if (filter.empty()) return fail(StrCat("missing topic filter after '", access_word, "'"));
    Rule rule{.access = *access, .filter = std::string(filter)};
    std::string checked = rule.filter;
    if (keyword == "pattern") {
      rule.uses_client_id = filter.find(kClientIdToken) != std::string_view::npos;
      rule.uses_username = filter.find(kUsernameToken) != std::string_view::npos;
      // Validated with a one-level stand-in for the values.
      ReplaceAll(&checked, kClientIdToken, "c");
      ReplaceAll(&checked, kUsernameToken, "u");
    }
    if (mqtt::IsSharedSubscription(checked)) {
      return fail("a rule names topics, not a $share/ subscription: write the inner filter");
    }
    if (std::optional<mqtt::Error> e = mqtt::ValidateTopicFilter(checked); e.has_value()) {
      return fail(StrCat("invalid topic filter: ", e->message));
    }
    if (keyword == "pattern") {
      acl.patterns_.push_back(std::move(rule));
    } else if (section.has_value()) {
      acl.users_[*section].push_back(std::move(rule));
    } else {
      acl.anonymous_.push_back(std::move(rule));
    }
  }
  return acl;
}

absl::StatusOr<AclFile> AclFile::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

AclFile AclFile::AllowAll() {
  AclFile acl;
  acl.allow_all_ = true;
  return acl;
}

template <typename Fn>
void AclFile::ForEachRule(const ClientInfo& client, Fn&& fn) const {
  const std::vector<Rule>* topic_rules = &anonymous_;
  if (client.username.has_value()) {
    auto it = users_.find(AsAbsl(*client.username));
    topic_rules = it == users_.end() ? nullptr : &it->second;
  }
  if (topic_rules != nullptr) {
    for (const Rule& rule : *topic_rules) {
      if (!fn(rule.access, std::string_view(rule.filter))) return;
    }
  }
  std::string substituted;
  for (const Rule& rule : patterns_) {
    if (rule.uses_client_id && !IsSubstitutable(client.client_id)) continue;
    if (rule.uses_username &&
        (!client.username.has_value() || !IsSubstitutable(*client.username))) {
      continue;
    }
    substituted = rule.filter;
    if (rule.uses_client_id) ReplaceAll(&substituted, kClientIdToken, client.client_id);
    if (rule.uses_username) ReplaceAll(&substituted, kUsernameToken, *client.username);
    // A value starting with '$' at the front would move the rule into the '$' topics.
    if (substituted[0] == '$' && rule.filter[0] != '$') continue;
    if (!fn(rule.access, std::string_view(substituted))) return;
  }
}

// Whether a topic name is allowed: some applicable rule other than `excluded` (read for a
// publish, write for a delivery) matches it and no applicable deny rule does.
bool AclFile::TopicAllowed(const ClientInfo& client, std::string_view topic,
                           Access excluded) const {
  if (allow_all_) return true;
  if (!IsValidTopicName(topic)) return false;
  bool allowed = false, denied = false;
  ForEachRule(client, [&](Access access, std::string_view filter) {
    if (access == excluded || !mqtt::TopicMatches(filter, topic)) return true;
    if (access == Access::kDeny) {
      denied = true;
      return false;
    }
    allowed = true;
    return true;
  });
  return allowed && !denied;
}

bool AclFile::CanPublish(const ClientInfo& client, std::string_view topic) const {
  return TopicAllowed(client, topic, /*excluded=*/Access::kRead);
}

bool AclFile::CanReceive(const ClientInfo& client, std::string_view topic) const {
  return TopicAllowed(client, topic, /*excluded=*/Access::kWrite);
}

bool AclFile::CanSubscribe(const ClientInfo& client, std::string_view filter) const {
  if (allow_all_) return true;
  if (mqtt::IsSharedSubscription(filter)) {
    mqtt::SharedSubscription shared;
    if (mqtt::ParseSharedSubscription(filter, &shared).has_value()) return false;
    filter = shared.topic_filter;
  }
  if (mqtt::ValidateTopicFilter(filter).has_value()) return false;
  bool allowed = false, denied = false;
  ForEachRule(client, [&](Access access, std::string_view rule) {
    if (access == Access::kWrite) return true;
    if (access == Access::kDeny) {
      if (FilterCovers(rule, filter) || mqtt::TopicMatches(rule, filter)) {
        denied = true;
        return false;
      }
      return true;
    }
    allowed = allowed || FilterCovers(rule, filter);
    return true;
  });
  return allowed && !denied;
}

}  // namespace herald::auth
