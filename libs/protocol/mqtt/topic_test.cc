#include "libs/protocol/mqtt/topic.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "libs/protocol/mqtt/topic_trie.h"

namespace herald::mqtt {
namespace {

TEST(TopicMatchesTest, FollowsTheSpecTable) {
  struct Case {
    const char* filter;
    const char* name;
    bool matches;
  } cases[] = {
      // §4.7.1.2 multi-level wildcard
      {"sport/tennis/player1/#", "sport/tennis/player1", true},
      {"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
      {"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
      {"sport/tennis/player1/#", "sport/tennis/player2", false},
      {"sport/#", "sport", true},
      {"sport/#", "sports", false},
      {"#", "sport/tennis", true},
      {"#", "/", true},
      // §4.7.1.3 single-level wildcard
      {"sport/tennis/+", "sport/tennis/player1", true},
      {"sport/tennis/+", "sport/tennis/player2", true},
      {"sport/tennis/+", "sport/tennis/player1/ranking", false},
      {"sport/+", "sport", false},
      {"sport/+", "sport/", true},
      {"+", "sport", true},
      {"+", "/finance", false},
      {"+/+", "/finance", true},
      {"/+", "/finance", true},
      {"+/tennis/#", "sport/tennis/player1", true},
      {"+/tennis/#", "sport/tennis", true},
      {"a/+/#", "a/b", true},
      {"a/+/#", "a", false},
      // exact levels, empty levels and case
      {"a/b", "a/b", true},
      {"a/b", "a/b/", false},
      {"a/b/", "a/b/", true},
      {"A", "a", false},
      {"/", "/", true},
      {"//", "/", false},
      {"+/+", "/", true},
      // §4.7.2 topics beginning with $
      {"#", "$SYS/monitor", false},
      {"+/monitor/Clients", "$SYS/monitor/Clients", false},
      {"$SYS/#", "$SYS/monitor/Clients", true},
      {"$SYS/#", "$SYS", true},
      {"$SYS/monitor/+", "$SYS/monitor/Clients", true},
      {"+", "$SYS", false},
      {"a/#", "a/$b", true},
      {"a/+", "a/$b", true},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(TopicMatches(c.filter, c.name), c.matches) << c.filter << " vs " << c.name;
  }
}

TEST(ValidateTopicTest, AcceptsAndRefusesTopicNames) {
  for (const char* ok : {"a", "/", "a/b", "sport/tennis/player1", "$SYS/x", "ü/中", " ", "a//b"}) {
    EXPECT_FALSE(ValidateTopicName(ok).has_value()) << ok;
  }
  EXPECT_EQ(ValidateTopicName("")->reason_code, ReasonCode::kMalformedPacket);
  EXPECT_EQ(ValidateTopicName("a/+")->reason_code, ReasonCode::kTopicNameInvalid);
  EXPECT_EQ(ValidateTopicName("#")->reason_code, ReasonCode::kTopicNameInvalid);
  EXPECT_EQ(ValidateTopicName("a\xFF")->reason_code, ReasonCode::kMalformedPacket);
  EXPECT_EQ(ValidateTopicName(std::string(65536, 'a'))->reason_code, ReasonCode::kMalformedPacket);
  EXPECT_FALSE(ValidateTopicName(std::string(65535, 'a')).has_value());
}

TEST(ValidateTopicTest, AcceptsAndRefusesTopicFilters) {
  for (const char* ok : {"#", "+", "+/+", "/+", "a/#", "a/+/b", "+/#", "/", "$SYS/#", "a//#"}) {
    EXPECT_FALSE(ValidateTopicFilter(ok).has_value()) << ok;
  }
  for (const char* bad : {"a#", "a/#/b", "#/", "#/a", "a+", "+a", "a/b+", "++", "a/#b"}) {
    auto e = ValidateTopicFilter(bad);
    ASSERT_TRUE(e.has_value()) << bad;
    EXPECT_EQ(e->reason_code, ReasonCode::kTopicFilterInvalid) << bad;
  }
  EXPECT_EQ(ValidateTopicFilter("")->reason_code, ReasonCode::kMalformedPacket);
}

TEST(SharedSubscriptionTest, SplitsShareNameAndFilter) {
  SharedSubscription s;
  ASSERT_TRUE(IsSharedSubscription("$share/group/a/+"));
  ASSERT_FALSE(ParseSharedSubscription("$share/group/a/+", &s).has_value());
  EXPECT_EQ(s.share_name, "group");
  EXPECT_EQ(s.topic_filter, "a/+");
  ASSERT_FALSE(ParseSharedSubscription("$share/g/#", &s).has_value());
  EXPECT_EQ(s.topic_filter, "#");
  EXPECT_FALSE(IsSharedSubscription("$share"));
  EXPECT_FALSE(IsSharedSubscription("$SHARE/g/a"));
  EXPECT_FALSE(IsSharedSubscription("a/$share/g/a"));
  for (const char* bad : {"$share//a", "$share/+/a", "$share/g#/a", "$share/g", "$share/g/"}) {
    auto e = ParseSharedSubscription(bad, &s);
    ASSERT_TRUE(e.has_value()) << bad;
    EXPECT_EQ(e->reason_code, ReasonCode::kProtocolError) << bad;
  }
}

TEST(Utf8Test, AcceptsWellFormedAndRefusesMalformedText) {
  EXPECT_TRUE(IsValidMqttUtf8(""));
  EXPECT_TRUE(IsValidMqttUtf8("plain ascii"));
  EXPECT_TRUE(IsValidMqttUtf8("\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80"));  // é 中 😀
  EXPECT_TRUE(IsValidMqttUtf8("\xEF\xBB\xBF"));      // U+FEFF is kept as is [MQTT-1.5.4-3]
  EXPECT_TRUE(IsValidMqttUtf8("\xF4\x8F\xBF\xBF"));  // U+10FFFF
  EXPECT_FALSE(IsValidMqttUtf8(std::string("a\0b", 3)));
  EXPECT_FALSE(IsValidMqttUtf8("\xC0\x80"));          // overlong U+0000
  EXPECT_FALSE(IsValidMqttUtf8("\xE0\x80\xAF"));      // overlong '/'
  EXPECT_FALSE(IsValidMqttUtf8("\xED\xBF\xBF"));      // surrogate U+DFFF
  EXPECT_FALSE(IsValidMqttUtf8("\xF4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(IsValidMqttUtf8("\x80"));              // lone continuation byte
  EXPECT_FALSE(IsValidMqttUtf8("\xE4\xB8"));          // truncated
  EXPECT_FALSE(IsValidMqttUtf8("\xF8\x88\x80\x80\x80"));
  // Control characters: allowed, refused on request.
  EXPECT_TRUE(IsValidMqttUtf8("\x01\x1F\x7F\xC2\x80\xC2\x9F"));
  EXPECT_FALSE(IsValidMqttUtf8("\x01", true));
  EXPECT_FALSE(IsValidMqttUtf8("\x7F", true));
  EXPECT_FALSE(IsValidMqttUtf8("\xC2\x9F", true));
  EXPECT_TRUE(IsValidMqttUtf8("\xC2\xA0", true));  // U+00A0 is not a control character
}

TEST(TopicTrieTest, MatchesValuesUnderWildcardsAndExactLevels) {
  TopicTrie<int> trie;
  trie.Insert("sport/tennis/player1/#", 1);
  trie.Insert("sport/#", 2);
  trie.Insert("sport/tennis/+", 3);
  trie.Insert("#", 4);
  trie.Insert("$SYS/#", 5);
  trie.Insert("+/+", 6);
  auto match = [&](std::string_view name) {
    std::vector<int> out;
    trie.Match(name, [&](int v) { out.push_back(v); });
    std::sort(out.begin(), out.end());
    return out;
  };
  EXPECT_EQ(match("sport"), (std::vector<int>{2, 4}));
  EXPECT_EQ(match("sport/tennis/player1"), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(match("/finance"), (std::vector<int>{4, 6}));
  EXPECT_EQ(match("$SYS/uptime"), (std::vector<int>{5}));
  EXPECT_EQ(match("$SYS"), (std::vector<int>{5}));
  EXPECT_EQ(trie.size(), 6u);
  EXPECT_TRUE(trie.Remove("#", 4));
  EXPECT_FALSE(trie.Remove("#", 4));
  EXPECT_FALSE(trie.Remove("no/such", 1));
  EXPECT_FALSE(trie.Remove("sport/#", 99));
  EXPECT_EQ(match("sport"), (std::vector<int>{2}));
  EXPECT_TRUE(trie.MatchesAny("sport/x"));
  EXPECT_FALSE(trie.MatchesAny("other"));
}

TEST(TopicTrieTest, RemovingEverythingLeavesAnEmptyTrie) {
  TopicTrie<std::string> trie;
  trie.Insert("a/b", "x");
  trie.Insert("a/b", "x");  // duplicates are kept
  trie.Insert("a/+", "y");
  EXPECT_EQ(trie.size(), 3u);
  int visits = 0;
  trie.Match("a/b", [&](const std::string&) { ++visits; });
  EXPECT_EQ(visits, 3);
  EXPECT_TRUE(trie.Remove("a/b", "x"));
  EXPECT_TRUE(trie.Remove("a/b", "x"));
  EXPECT_TRUE(trie.Remove("a/+", "y"));
  EXPECT_TRUE(trie.empty());
  EXPECT_FALSE(trie.MatchesAny("a/b"));
}

// Random filters and names over a small alphabet, so that matches are frequent, compared with
// TopicMatches one filter at a time.
TEST(TopicTrieTest, AgreesWithTopicMatchesOnRandomFiltersAndTopics) {
  std::mt19937 rng(20260127);
  const std::vector<std::string> name_levels = {"a", "b", "c", "", "$SYS", "$x"};
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  auto random_name = [&] {
    std::string s;
    size_t levels = 1 + pick(5);
    for (size_t i = 0; i < levels; ++i) {
      if (i) s += '/';
      s += name_levels[pick(name_levels.size())];
    }
    return s.empty() ? std::string("/") : s;  // a name has at least one character
  };
  auto random_filter = [&] {
    std::string s;
    size_t levels = 1 + pick(5);
    for (size_t i = 0; i < levels; ++i) {
      if (i) s += '/';
      size_t r = pick(10);
      if (r < 3) {
        s += '+';
      } else if (r == 3 && i + 1 == levels) {
        s += '#';
      } else {
        s += name_levels[pick(name_levels.size())];
      }
    }
    return s.empty() ? std::string("/") : s;
  };

  TopicTrie<int> trie;
  std::vector<std::pair<std::string, int>> filters;
  for (int i = 0; i < 3000; ++i) {
    std::string f = random_filter();
    ASSERT_FALSE(ValidateTopicFilter(f).has_value()) << f;
    filters.emplace_back(f, i);
    trie.Insert(f, i);
  }
  auto check = [&] {
    for (int i = 0; i < 2000; ++i) {
      std::string name = random_name();
      std::vector<int> expected;
      for (const auto& [f, v] : filters) {
        if (TopicMatches(f, name)) expected.push_back(v);
      }
      std::vector<int> got;
      trie.Match(name, [&](int v) { got.push_back(v); });
      std::sort(got.begin(), got.end());
      ASSERT_EQ(got, expected) << name;
    }
  };
  check();
  // Remove every other filter and compare again.
  std::vector<std::pair<std::string, int>> kept;
  for (size_t i = 0; i < filters.size(); ++i) {
    if (i % 2) {
      ASSERT_TRUE(trie.Remove(filters[i].first, filters[i].second));
    } else {
      kept.push_back(filters[i]);
    }
  }
  filters = kept;
  EXPECT_EQ(trie.size(), filters.size());
  check();
}

}  // namespace
}  // namespace herald::mqtt
