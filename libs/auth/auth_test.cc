#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "libs/auth/acl_file.h"
#include "libs/auth/password_file.h"
#include "libs/common/strings.h"

namespace herald::auth {
namespace {

using ::testing::HasSubstr;

// Low iteration count: tests check the format and the logic, not the cost.
constexpr int kTestIterations = 1000;

std::string Line(std::string_view user, std::string_view password,
                 int iterations = kTestIterations) {
  absl::StatusOr<std::string> hash = HashPassword(password, iterations);
  EXPECT_TRUE(hash.ok()) << hash.status();
  return StrCat(user, ":", hash.value_or(""), "\n");
}

PasswordFile ParsePasswords(std::string_view text, size_t cache_entries = 16) {
  absl::StatusOr<PasswordFile> file = PasswordFile::Parse(text, "passwd", cache_entries);
  EXPECT_TRUE(file.ok()) << file.status();
  return std::move(file).value();
}

std::string ParseError(std::string_view text) {
  absl::StatusOr<PasswordFile> file = PasswordFile::Parse(text, "passwd");
  EXPECT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(file.status().message());
}

// ---------------------------------------------------------------------------------------------
// Password file

TEST(PasswordFileTest, HashedPasswordVerifiesAndOthersDoNot) {
  PasswordFile file = ParsePasswords(Line("alice", "s3cret") + Line("bob", "hunter2"));
  EXPECT_EQ(file.size(), 2u);
  EXPECT_TRUE(file.Verify("alice", "s3cret"));
  EXPECT_TRUE(file.Verify("bob", "hunter2"));
  EXPECT_FALSE(file.Verify("alice", "hunter2"));
  EXPECT_FALSE(file.Verify("alice", "s3cret "));
  EXPECT_FALSE(file.Verify("alice", ""));
  EXPECT_FALSE(file.Verify("bob", "s3cret"));
}

TEST(PasswordFileTest, UnknownUserIsRefused) {
  PasswordFile file = ParsePasswords(Line("alice", "s3cret"));
  EXPECT_FALSE(file.HasUser("mallory"));
  EXPECT_FALSE(file.Verify("mallory", "s3cret"));
  EXPECT_FALSE(file.Verify("", "s3cret"));
  EXPECT_TRUE(file.HasUser("alice"));
}

TEST(PasswordFileTest, DefaultIterationCountRoundTrips) {
  absl::StatusOr<std::string> hash = HashPassword("correct horse");
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_THAT(*hash, ::testing::StartsWith("$pbkdf2-sha512$210000$"));
  PasswordFile file = ParsePasswords(StrCat("carol:", *hash, "\n"));
  EXPECT_TRUE(file.Verify("carol", "correct horse"));
  EXPECT_FALSE(file.Verify("carol", "correct horse battery"));
}

TEST(PasswordFileTest, HashIsPbkdf2HmacSha512OfThePasswordAndSalt) {
  // Known answer from Python's hashlib.pbkdf2_hmac("sha512", b"password", b"saltsalt", 1): lines
  // can be produced and checked by other tools.
  absl::StatusOr<std::string> hash = HashPasswordWithSalt("password", "saltsalt", 1);
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(
      *hash,
      "$pbkdf2-sha512$1$c2FsdHNhbHQ=$"
      "y99Aqyh+xt2ovbJvGRltovGpWf8SfKJATk5ELfdRhStwvGAd6YSOUD0tNyMyqMpAiaYf7puolRhDkqtkfsdXOA==");
}

TEST(PasswordFileTest, IterationCountIsReadFromEachLine) {
  // The same password and salt give different hashes at different counts, and each line
  // verifies with its own count.
  absl::StatusOr<std::string> at_1000 = HashPasswordWithSalt("pw", "0123456789abcdef", 1000);
  absl::StatusOr<std::string> at_1001 = HashPasswordWithSalt("pw", "0123456789abcdef", 1001);
  ASSERT_TRUE(at_1000.ok() && at_1001.ok());
  EXPECT_THAT(*at_1001, ::testing::StartsWith("$pbkdf2-sha512$1001$"));
  EXPECT_NE(at_1000->substr(at_1000->rfind('$')), at_1001->substr(at_1001->rfind('$')));
  PasswordFile file = ParsePasswords(StrCat("a:", *at_1000, "\nb:", *at_1001, "\n"));
  EXPECT_TRUE(file.Verify("a", "pw"));
  EXPECT_TRUE(file.Verify("b", "pw"));

  // A line whose count was edited no longer verifies: the count is an input of the hash.
  std::string edited = *at_1000;
  edited.replace(edited.find("$1000$"), 6, "$1001$");
  PasswordFile tampered = ParsePasswords(StrCat("a:", edited, "\n"));
  EXPECT_FALSE(tampered.Verify("a", "pw"));
}

TEST(PasswordFileTest, CommentsBlankLinesAndCrlfAreIgnored) {
  std::string text = StrCat("# Herald users\n\n   \n  # indented comment\r\n",
                            Line("alice", "pw").insert(0, "  "), "\r\n", Line("bob", "pw2"));
  PasswordFile file = ParsePasswords(text);
  EXPECT_EQ(file.size(), 2u);
  EXPECT_TRUE(file.Verify("alice", "pw"));
  EXPECT_TRUE(file.Verify("bob", "pw2"));
}

TEST(PasswordFileTest, MalformedLinesAreReportedWithTheirLineNumber) {
  std::string good = Line("alice", "pw");
  std::string salt = absl::Base64Escape("0123456789abcdef");
  std::string hash = absl::Base64Escape(std::string(64, 'h'));
  EXPECT_THAT(ParseError("# c\n\nnocolon\n"), HasSubstr("passwd:3: expected user:"));
  EXPECT_THAT(ParseError(good + ":$pbkdf2-sha512$1000$" + salt + "$" + hash),
              HasSubstr("passwd:2: the user name is empty"));
  EXPECT_THAT(ParseError(good + "bob:$bcrypt$10$abc"), HasSubstr("passwd:2: unknown hash scheme"));
  EXPECT_THAT(ParseError(StrCat("bob:$pbkdf2-sha512$abc$", salt, "$", hash)),
              HasSubstr("passwd:1: iterations must be a number"));
  EXPECT_THAT(ParseError(StrCat("bob:$pbkdf2-sha512$0$", salt, "$", hash)),
              HasSubstr("passwd:1: iterations"));
  EXPECT_THAT(ParseError(StrCat("bob:$pbkdf2-sha512$99999999$", salt, "$", hash)),
              HasSubstr("passwd:1: iterations"));
  EXPECT_THAT(ParseError(StrCat("bob:$pbkdf2-sha512$1000$", salt)),
              HasSubstr("passwd:1: expected $pbkdf2-sha512$<iterations>$<salt>$<hash>"));
  EXPECT_THAT(ParseError(StrCat("bob:$pbkdf2-sha512$1000$", salt, "$", hash, "$x")),
              HasSubstr("passwd:1: expected $pbkdf2-sha512$"));
  EXPECT_THAT(ParseError(StrCat("bob:$pbkdf2-sha512$1000$!!!$", hash)),
              HasSubstr("passwd:1: the salt must be base64"));
  EXPECT_THAT(ParseError(StrCat("bob:$pbkdf2-sha512$1000$", salt, "$",
                                absl::Base64Escape(std::string(32, 'h')))),
              HasSubstr("passwd:1: the hash must be base64 of 64 bytes"));
  EXPECT_THAT(ParseError(good + "\n" + good), HasSubstr("passwd:3: user 'alice' appears twice"));
}

TEST(PasswordFileTest, LoadReportsTheFileName) {
  absl::StatusOr<PasswordFile> missing = PasswordFile::Load("/nonexistent/herald/passwd");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/herald/passwd"));

  char path[] = "/tmp/herald-auth-test-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  std::ofstream(path) << Line("alice", "pw") << "garbage\n";
  absl::StatusOr<PasswordFile> bad = PasswordFile::Load(path);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(StrCat(path, ":2:")));
  std::ofstream(path) << Line("alice", "pw");
  absl::StatusOr<PasswordFile> good = PasswordFile::Load(path);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_TRUE(good->Verify("alice", "pw"));
  std::remove(path);
}

TEST(PasswordFileTest, CachedAcceptanceDoesNotAcceptAWrongPassword) {
  PasswordFile file = ParsePasswords(Line("alice", "right"));
  EXPECT_TRUE(file.Verify("alice", "right"));
  EXPECT_TRUE(file.Verify("alice", "right"));
  EXPECT_EQ(file.cache_stats().hits, 1u);
  EXPECT_FALSE(file.Verify("alice", "wrong"));
  EXPECT_FALSE(file.Verify("alice", "wrong"));
  EXPECT_FALSE(file.Verify("alice", "righ"));
  EXPECT_FALSE(file.Verify("alice", "Right"));
  EXPECT_TRUE(file.Verify("alice", "right"));
  EXPECT_EQ(file.cache_stats().hits, 3u);
}

TEST(PasswordFileTest, CacheStaysWithinItsBound) {
  PasswordFile file = ParsePasswords(Line("alice", "right"), /*cache_entries=*/3);
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(file.Verify("alice", StrCat("guess", i)));
  EXPECT_EQ(file.cache_stats().entries, 3u);
  EXPECT_TRUE(file.Verify("alice", "right"));
  EXPECT_EQ(file.cache_stats().entries, 3u);

  PasswordFile uncached = ParsePasswords(Line("alice", "right"), /*cache_entries=*/0);
  EXPECT_TRUE(uncached.Verify("alice", "right"));
  EXPECT_TRUE(uncached.Verify("alice", "right"));
  EXPECT_EQ(uncached.cache_stats().entries, 0u);
  EXPECT_EQ(uncached.cache_stats().hits, 0u);
}

TEST(PasswordFileTest, VerifyMayRunOnManyThreadsAtOnce) {
  PasswordFile file = ParsePasswords(Line("alice", "right") + Line("bob", "other"), 4);
  std::vector<std::thread> threads;
  std::atomic<int> wrong_answers{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        if (!file.Verify("alice", "right")) ++wrong_answers;
        if (file.Verify("bob", StrCat("x", (t + i) % 6))) ++wrong_answers;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong_answers.load(), 0);
}

TEST(PasswordFileTest, HashPasswordRefusesBadArguments) {
  EXPECT_EQ(HashPassword("", kTestIterations).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HashPassword("pw", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HashPasswordWithSalt("pw", "short", 1000).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Two hashes of one password differ: the salt is random.
  EXPECT_NE(*HashPassword("pw", kTestIterations), *HashPassword("pw", kTestIterations));
}

TEST(PasswordFileTest, UserNamesThatCannotBeWrittenAreRefused) {
  EXPECT_TRUE(ValidatePasswordFileUser("alice").ok());
  EXPECT_TRUE(ValidatePasswordFileUser("device 42").ok());
  EXPECT_TRUE(ValidatePasswordFileUser("jörg").ok());
  for (const char* bad : {"", "a:b", "#alice", " alice", "alice\t", "a\nb", "\xff"}) {
    EXPECT_FALSE(ValidatePasswordFileUser(bad).ok()) << bad;
  }
}

TEST(PasswordFileEditTest, SettingAUserReplacesItsLineAndKeepsTheRest) {
  std::string text = "# users\nalice:$old-a\n\n# bob below\nbob:$old-b\r\n";
  EXPECT_EQ(SetPasswordFileEntry(text, "alice", "$new-a"),
            "# users\nalice:$new-a\n\n# bob below\nbob:$old-b\n");
  EXPECT_EQ(SetPasswordFileEntry(text, "carol", "$c"),
            "# users\nalice:$old-a\n\n# bob below\nbob:$old-b\ncarol:$c\n");
  EXPECT_EQ(SetPasswordFileEntry("", "carol", "$c"), "carol:$c\n");
  EXPECT_EQ(SetPasswordFileEntry("alice:$x", "al", "$c"), "alice:$x\nal:$c\n");
  // A commented-out line of the user is a comment, not the user's line.
  EXPECT_EQ(SetPasswordFileEntry("#alice:$x\n", "alice", "$c"), "#alice:$x\nalice:$c\n");
}

TEST(PasswordFileEditTest, RemovingAUserDropsOnlyItsLine) {
  bool removed = false;
  EXPECT_EQ(RemovePasswordFileEntry("# u\nalice:$a\nbob:$b\n", "alice", &removed), "# u\nbob:$b\n");
  EXPECT_TRUE(removed);
  EXPECT_EQ(RemovePasswordFileEntry("# u\nbob:$b\n", "alice", &removed), "# u\nbob:$b\n");
  EXPECT_FALSE(removed);
}

TEST(PasswordFileEditTest, EditedFileParsesAndVerifies) {
  std::string text = "# users\n" + Line("bob", "b");
  text = SetPasswordFileEntry(text, "alice", *HashPassword("a1", kTestIterations));
  text = SetPasswordFileEntry(text, "alice", *HashPassword("a2", kTestIterations));
  PasswordFile file = ParsePasswords(text);
  EXPECT_EQ(file.size(), 2u);
  EXPECT_FALSE(file.Verify("alice", "a1"));
  EXPECT_TRUE(file.Verify("alice", "a2"));
  EXPECT_TRUE(file.Verify("bob", "b"));
}

// ---------------------------------------------------------------------------------------------
// ACL file

AclFile ParseAcl(std::string_view text) {
  absl::StatusOr<AclFile> acl = AclFile::Parse(text, "acl");
  EXPECT_TRUE(acl.ok()) << acl.status();
  return std::move(acl).value();
}

std::string AclError(std::string_view text) {
  absl::StatusOr<AclFile> acl = AclFile::Parse(text, "acl");
  EXPECT_FALSE(acl.ok());
  EXPECT_EQ(acl.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(acl.status().message());
}

const ClientInfo kAnonymous{.client_id = "anon-1", .username = std::nullopt};
const ClientInfo kAlice{.client_id = "alice-phone", .username = "alice"};
const ClientInfo kBob{.client_id = "bob-laptop", .username = "bob"};

constexpr std::string_view kExampleAcl = R"(
# applies to every client (anonymous included) until the first `user` line
topic read $SYS/#
topic read public/#
pattern readwrite devices/%c/#      # %c = client id, %u = username (apply to all users)
pattern read users/%u/inbox
user alice
topic readwrite alice/#
topic write sensors/+/temp
topic deny secret/#                 # explicit deny wins
topic read secret/#
topic read #
)";

TEST(AclFileTest, TopicLinesBeforeAnyUserApplyOnlyToAnonymousClients) {
  AclFile acl = ParseAcl(kExampleAcl);
  EXPECT_TRUE(acl.CanSubscribe(kAnonymous, "$SYS/#"));
  EXPECT_TRUE(acl.CanReceive(kAnonymous, "$SYS/broker/uptime"));
  EXPECT_TRUE(acl.CanReceive(kAnonymous, "public/news"));
  EXPECT_FALSE(acl.CanPublish(kAnonymous, "public/news"));  // read only
  EXPECT_FALSE(acl.CanReceive(kAnonymous, "alice/x"));
  // Not to users: bob has no section and reads nothing but his pattern topics.
  EXPECT_FALSE(acl.CanReceive(kBob, "public/news"));
  EXPECT_FALSE(acl.CanSubscribe(kBob, "$SYS/#"));
  // An empty username is a username, not anonymous.
  ClientInfo empty_user{.client_id = "c", .username = ""};
  EXPECT_FALSE(acl.CanReceive(empty_user, "public/news"));
}

TEST(AclFileTest, TopicLinesAfterUserApplyOnlyToThatUser) {
  AclFile acl = ParseAcl(kExampleAcl);
  EXPECT_TRUE(acl.CanPublish(kAlice, "alice/notes"));
  EXPECT_TRUE(acl.CanReceive(kAlice, "alice/notes"));
  EXPECT_TRUE(acl.CanPublish(kAlice, "sensors/kitchen/temp"));
  EXPECT_FALSE(acl.CanPublish(kAlice, "sensors/kitchen/humidity"));
  EXPECT_FALSE(acl.CanPublish(kBob, "alice/notes"));
  EXPECT_FALSE(acl.CanPublish(kAnonymous, "alice/notes"));
  // Alice's section does not include the anonymous rules.
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "$SYS/#"));
}

TEST(AclFileTest, PatternsApplyToEveryClientWithItsIdAndName) {
  AclFile acl = ParseAcl(kExampleAcl);
  for (const ClientInfo& c : {kAnonymous, kAlice, kBob}) {
    std::string own = StrCat("devices/", c.client_id, "/state");
    EXPECT_TRUE(acl.CanPublish(c, own)) << c.client_id;
    EXPECT_TRUE(acl.CanReceive(c, own)) << c.client_id;
    EXPECT_TRUE(acl.CanSubscribe(c, StrCat("devices/", c.client_id, "/#"))) << c.client_id;
    EXPECT_FALSE(acl.CanPublish(c, "devices/someone-else/state")) << c.client_id;
  }
  EXPECT_TRUE(acl.CanReceive(kBob, "users/bob/inbox"));
  EXPECT_FALSE(acl.CanReceive(kBob, "users/alice/inbox"));
  // %u never applies to a client without a username.
  EXPECT_FALSE(acl.CanReceive(kAnonymous, "users//inbox"));
  EXPECT_FALSE(acl.CanReceive(kAnonymous, "users/%u/inbox"));
}

TEST(AclFileTest, PatternLinesApplyWhereverTheyAppear) {
  AclFile acl = ParseAcl("user alice\ntopic read a/#\npattern write out/%u\n");
  EXPECT_TRUE(acl.CanPublish(kBob, "out/bob"));
  EXPECT_TRUE(acl.CanPublish(kAlice, "out/alice"));
  EXPECT_FALSE(acl.CanReceive(kBob, "a/b"));
}

TEST(AclFileTest, ExplicitDenyWins) {
  AclFile acl = ParseAcl(kExampleAcl);
  // Alice has `topic read #` and `topic read secret/#`, but also `topic deny secret/#`.
  EXPECT_TRUE(acl.CanReceive(kAlice, "weather/today"));
  EXPECT_FALSE(acl.CanReceive(kAlice, "secret/plans"));
  EXPECT_FALSE(acl.CanReceive(kAlice, "secret"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "secret/#"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "secret/+/x"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "$share/g/secret/plans"));
  // Overlapping a deny is accepted at SUBSCRIBE; CanReceive withholds the denied topics.
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "#"));

  AclFile writes = ParseAcl("user alice\ntopic readwrite a/#\ntopic deny a/private/+\n");
  EXPECT_TRUE(writes.CanPublish(kAlice, "a/public/x"));
  EXPECT_FALSE(writes.CanPublish(kAlice, "a/private/x"));
  EXPECT_TRUE(writes.CanPublish(kAlice, "a/private/x/y"));  // deny `+` is one level
  // A deny filter that matches the requested filter read as a topic refuses it.
  EXPECT_FALSE(writes.CanSubscribe(kAlice, "a/private/#"));
  EXPECT_FALSE(writes.CanSubscribe(kAlice, "a/private/+"));
  EXPECT_TRUE(writes.CanSubscribe(kAlice, "a/public/#"));
}

TEST(AclFileTest, SubscriptionMustBeCoveredByAReadRule) {
  AclFile acl = ParseAcl("user alice\ntopic read a/#\ntopic read b/+\ntopic readwrite c\n");
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "a/#"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "a/b/+"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "a/+/c/#"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "a"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "b/x"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "b/+"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "b/#"));  // `b/+` does not cover `b/#`
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "b/x/y"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "b"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "+/x"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "#"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "c"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "c/#"));
  // Invalid filters are refused whatever the rules.
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "a/b#"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, ""));
  // Write-only rules grant no subscription.
  AclFile write_only = ParseAcl("user alice\ntopic write a/#\n");
  EXPECT_FALSE(write_only.CanSubscribe(kAlice, "a/b"));
}

TEST(AclFileTest, FilterCoverageFollowsTopicMatching) {
  struct Case {
    const char* rule;
    const char* filter;
    bool covers;
  } cases[] = {
      {"a/#", "a/b/+", true},  {"a/+", "a/#", false},    {"a/#", "a", true},
      {"a/+", "a", false},     {"#", "a/+/#", true},     {"+/+", "a/+", true},
      {"+/+", "a/#", false},   {"a/+/c", "a/+/c", true}, {"a/+/c", "a/b/+", false},
      {"#", "$SYS/#", false},  {"+/x", "$SYS/x", false}, {"$SYS/#", "$SYS/+/y", true},
      {"a/b", "a/b/", false},  {"a/+", "a/", true},      {"a/#", "a/", true},
      {"a/+/#", "a/#", false}, {"a/+/#", "a/b", true},   {"a/b/c", "a/b", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(FilterCovers(c.rule, c.filter), c.covers) << c.rule << " covers " << c.filter;
  }
}

TEST(AclFileTest, SharedSubscriptionIsCheckedByItsInnerFilter) {
  AclFile acl = ParseAcl("user alice\ntopic read a/b\n");
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "$share/g/a/b"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "$share/g/a/c"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "$share/g/a/#"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "$share/g"));     // malformed
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "$share//a/b"));  // empty ShareName
}

TEST(AclFileTest, WildcardsOrSlashesInIdsCannotWidenAPattern) {
  AclFile acl = ParseAcl("pattern readwrite devices/%c/#\npattern read home/%u/+\n");
  for (const char* id : {"#", "+", "x/../y", "a/b", "a+", "x#", ""}) {
    ClientInfo c{.client_id = id, .username = std::nullopt};
    EXPECT_FALSE(acl.CanPublish(c, "devices/other/state")) << id;
    EXPECT_FALSE(acl.CanSubscribe(c, "devices/#")) << id;
    EXPECT_FALSE(acl.CanSubscribe(c, StrCat("devices/", id, "/#"))) << id;
    EXPECT_FALSE(acl.CanReceive(c, "devices/a/b/c")) << id;
  }
  ClientInfo plus_user{.client_id = "ok", .username = "+"};
  EXPECT_FALSE(acl.CanReceive(plus_user, "home/bob/x"));
  EXPECT_FALSE(acl.CanSubscribe(plus_user, "home/+/+"));
  ClientInfo slash_user{.client_id = "ok", .username = "bob/x"};
  EXPECT_FALSE(acl.CanReceive(slash_user, "home/bob/x/y"));
  // The same client id without wildcards still gets its own topics.
  ClientInfo fine{.client_id = "dev-7", .username = std::nullopt};
  EXPECT_TRUE(acl.CanPublish(fine, "devices/dev-7/state"));
}

TEST(AclFileTest, DollarClientIdCannotReachDollarTopicsThroughAPattern) {
  AclFile acl = ParseAcl("pattern read %c/#\npattern read $SYS/clients/%c\n");
  ClientInfo sys{.client_id = "$SYS", .username = std::nullopt};
  EXPECT_FALSE(acl.CanReceive(sys, "$SYS/broker/load"));
  EXPECT_FALSE(acl.CanSubscribe(sys, "$SYS/#"));
  ClientInfo dev{.client_id = "dev", .username = std::nullopt};
  EXPECT_TRUE(acl.CanReceive(dev, "dev/x"));
  // A pattern that itself starts with '$' keeps working.
  EXPECT_TRUE(acl.CanReceive(dev, "$SYS/clients/dev"));
}

TEST(AclFileTest, WildcardRulesDoNotReachDollarTopics) {
  // MQTT 5.0 §4.7.2: '#' and '+' at the first level do not match topics starting with '$'.
  AclFile acl = ParseAcl("user alice\ntopic readwrite #\ntopic read +/monitor\n");
  EXPECT_TRUE(acl.CanReceive(kAlice, "anything/at/all"));
  EXPECT_FALSE(acl.CanReceive(kAlice, "$SYS/broker/uptime"));
  EXPECT_FALSE(acl.CanReceive(kAlice, "$SYS/monitor"));
  EXPECT_FALSE(acl.CanPublish(kAlice, "$SYS/fake"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "$SYS/#"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "#"));
}

TEST(AclFileTest, PublishToAnInvalidTopicNameIsRefused) {
  AclFile acl = ParseAcl("user alice\ntopic readwrite #\n");
  EXPECT_TRUE(acl.CanPublish(kAlice, "a/b"));
  EXPECT_FALSE(acl.CanPublish(kAlice, "a/+"));
  EXPECT_FALSE(acl.CanPublish(kAlice, "#"));
  EXPECT_FALSE(acl.CanPublish(kAlice, ""));
}

TEST(AclFileTest, ClientWithoutRulesMayDoNothing) {
  AclFile acl = ParseAcl("# nothing granted\n");
  EXPECT_FALSE(acl.CanPublish(kAnonymous, "a"));
  EXPECT_FALSE(acl.CanSubscribe(kAlice, "a"));
  EXPECT_FALSE(acl.CanReceive(kBob, "a"));
}

TEST(AclFileTest, AllowAllAllowsEverything) {
  AclFile acl = AclFile::AllowAll();
  EXPECT_TRUE(acl.allows_all());
  EXPECT_TRUE(acl.CanPublish(kAnonymous, "$SYS/x"));
  EXPECT_TRUE(acl.CanSubscribe(kAlice, "#"));
  EXPECT_TRUE(acl.CanReceive(kBob, "secret/x"));
  EXPECT_FALSE(ParseAcl("").allows_all());
}

TEST(AclFileTest, UserSectionsAddUpAndCommentsMayFollowRules) {
  AclFile acl = ParseAcl(
      "user alice   # first section\n"
      "topic read a\n"
      "user bob\n"
      "topic read b\n"
      "user alice\n"
      "topic read #  # everything\n"
      "topic read my topic/+\n");
  EXPECT_TRUE(acl.CanReceive(kAlice, "a"));
  EXPECT_TRUE(acl.CanReceive(kAlice, "z/y"));
  EXPECT_TRUE(acl.CanReceive(kAlice, "my topic/x"));
  EXPECT_TRUE(acl.CanReceive(kBob, "b"));
  EXPECT_FALSE(acl.CanReceive(kBob, "a"));
}

TEST(AclFileTest, MalformedLinesAreReportedWithTheirLineNumber) {
  EXPECT_THAT(AclError("# ok\ntopic read a\ntopic rw a/b\n"),
              HasSubstr("acl:3: unknown access type 'rw'"));
  EXPECT_THAT(AclError("topic\n"), HasSubstr("acl:1: missing access type"));
  EXPECT_THAT(AclError("\npattern read\n"), HasSubstr("acl:2: missing topic filter"));
  EXPECT_THAT(AclError("topic read # # all\nuser\n"), HasSubstr("acl:2: missing user name"));
  EXPECT_THAT(AclError("topic read a/#/b\n"), HasSubstr("acl:1: invalid topic filter"));
  EXPECT_THAT(AclError("topic write a+\n"), HasSubstr("acl:1: invalid topic filter"));
  EXPECT_THAT(AclError("pattern read devices/%c#\n"), HasSubstr("acl:1: invalid topic filter"));
  EXPECT_THAT(AclError("topic read $share/g/a\n"), HasSubstr("acl:1: a rule names topics"));
  EXPECT_THAT(AclError("topics read a\n"), HasSubstr("acl:1: unknown keyword 'topics'"));
  absl::StatusOr<AclFile> missing = AclFile::Load("/nonexistent/herald/acl");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace herald::auth
