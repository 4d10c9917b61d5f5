// The MQTT edge's ACL file: which topics a client may publish to, subscribe to and receive
// (like mosquitto's acl_file, in Herald's own format; docs/configuration.md "Authentication and
// ACL files").
//
//   # applies to every client (anonymous included) until the first `user` line
//   topic read $SYS/#
//   pattern readwrite devices/%c/#      # %c = client id, %u = username (every client)
//   user alice
//   topic readwrite alice/#
//   topic write sensors/+/temp
//   topic deny secret/#                 # an explicit deny wins
//
// Lines: `topic ACCESS FILTER`, `pattern ACCESS FILTER`, `user NAME`; ACCESS is read, write,
// readwrite or deny. Blank lines and '#' comments are ignored; a comment may also follow a rule
// after a blank (a '#' that starts a word). The FILTER and NAME are the rest of the line, so
// they may contain inner spaces but cannot end with one.
//
// Which rules apply to a client:
//   - every `pattern` line, wherever it appears, with %c replaced by the client id and %u by
//     the username. A pattern using %c (%u) does not apply when the value is empty or contains
//     '+', '#' or '/' (it would widen the filter or climb levels), when %u is used and the
//     client has no username, or when the substitution makes the filter start with '$' while
//     the pattern did not (a client called "$SYS" must not reach $SYS topics);
//   - `topic` lines before the first `user` line: only to anonymous clients (no username);
//   - `topic` lines after `user X` (up to the next `user` line): only to the client whose
//     username is X. A user may have several sections; they add up.
// A client with no applicable rule may do nothing. Filters are matched with MQTT's rules
// (libs/protocol/mqtt/topic.h), so a rule starting with '+' or '#' never reaches '$' topics
// (MQTT 5.0 §4.7.2): grant $SYS/# explicitly.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace herald::auth {

// Who is asking. Views must outlive the call.
struct ClientInfo {
  std::string_view client_id;
  // nullopt for an anonymous client (CONNECT without User Name). An empty username is a
  // username: such a client gets no anonymous `topic` rules.
  std::optional<std::string_view> username;
};

// A parsed ACL file, or AllowAll(). Immutable: every method may be called from any thread at
// the same time. The edge calls CanPublish on PUBLISH, CanSubscribe on each SUBSCRIBE filter and
// CanReceive before delivering each message (retained ones included), because a subscription
// that only overlaps a deny rule is accepted (see CanSubscribe).
class AclFile {
 public:
  enum class Access { kRead, kWrite, kReadWrite, kDeny };

  // Parses `text`. Errors: InvalidArgument "<name_for_errors>:<line>: <reason>" for the first
  // bad line (unknown keyword or access type, missing argument, invalid topic filter, a
  // `$share/` filter).
  static absl::StatusOr<AclFile> Parse(std::string_view text, std::string_view name_for_errors);
  // Reads and parses the file at `path` (errors name the path).
  static absl::StatusOr<AclFile> Load(const std::string& path);
  // The ACL used when no file is configured: every check answers true.
  static AclFile AllowAll();

  // PUBLISH to topic name `topic`: some applicable write/readwrite rule matches it and no
  // applicable deny rule does. An invalid topic name (empty, wildcards) is refused.
  bool CanPublish(const ClientInfo& client, std::string_view topic) const;

  // SUBSCRIBE to `filter` ("$share/{group}/{f}" is checked as `f`): some applicable
  // read/readwrite rule's filter covers it (every topic it can match, the rule matches too: `a/#`
  // covers `a/b/+` and `a`, `a/+` does not cover `a/#`), and no applicable deny rule's filter
  // covers it or matches it read as a topic name (deny `a/+` refuses `a/#`). A filter that only
  // overlaps a deny rule (`#` against deny `secret/#`) is accepted: CanReceive then withholds the
  // denied topics. An invalid filter is refused.
  bool CanSubscribe(const ClientInfo& client, std::string_view filter) const;

  // Delivery of a message on topic name `topic`: some applicable read/readwrite rule matches it
  // and no applicable deny rule does.
  bool CanReceive(const ClientInfo& client, std::string_view topic) const;

  bool allows_all() const { return allow_all_; }

 private:
  struct Rule {
    Access access;
    std::string filter;  // for patterns: with %c / %u still in it
    bool uses_client_id = false;
    bool uses_username = false;
  };

  AclFile() = default;

  // Calls fn(Access, std::string_view filter) for each rule that applies to `client`, patterns
  // substituted, until fn returns false.
  template <typename Fn>
  void ForEachRule(const ClientInfo& client, Fn&& fn) const;
  // CanPublish / CanReceive: rules of access `excluded` do not apply.
  bool TopicAllowed(const ClientInfo& client, std::string_view topic, Access excluded) const;

  bool allow_all_ = false;
  std::vector<Rule> patterns_;
  std::vector<Rule> anonymous_;
  absl::flat_hash_map<std::string, std::vector<Rule>> users_;
};

// Whether every topic name matched by topic filter `filter` is also matched by topic filter
// `rule` (MQTT 5.0 §4.7, §4.7.2 included). Both must be valid filters, not shared subscriptions.
// Decided level by level, so it errs towards false in one corner: `+/#` is not found to cover
// `#` although both match every topic not starting with '$'.
bool FilterCovers(std::string_view rule, std::string_view filter);

}  // namespace herald::auth
