// TopicTrie<T>: a subscription index from topic filters to values (session ids, subscription
// records...), answering "which values subscribe to this topic name?" in time proportional to
// the matching paths, not to the number of filters.
//
// One node per filter level; each node has exact-level children plus at most one '+' and one '#'
// child. Matching a name of L levels visits, per level, the exact child, the '+' child and the
// '#' child, honouring the '$' rule of MQTT 5.0 §4.7.2. Filters must be valid
// (ValidateTopicFilter) and shared subscriptions split beforehand (ParseSharedSubscription); the
// trie does not validate.
//
// Not thread-safe: one owner (for example one event loop) uses it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace herald::mqtt {

template <typename T>
class TopicTrie {
 public:
  TopicTrie() = default;
  TopicTrie(const TopicTrie&) = delete;
  TopicTrie& operator=(const TopicTrie&) = delete;
  TopicTrie(TopicTrie&&) = default;
  TopicTrie& operator=(TopicTrie&&) = default;

  // Adds `value` under `filter`. The same (filter, value) may be inserted twice; it is then
  // visited twice and must be removed twice.
  void Insert(std::string_view filter, T value) {
    Node* node = &root_;
    ForEachLevel(filter, [&](std::string_view level) {
      std::unique_ptr<Node>* child;
      if (level == "+") {
        child = &node->plus;
      } else if (level == "#") {
        child = &node->hash;
      } else {
        auto it = node->children.find(level);
        if (it == node->children.end()) it = node->children.emplace(level, nullptr).first;
        child = &it->second;
      }
      if (!*child) *child = std::make_unique<Node>();
      node = child->get();
    });
    node->values.push_back(std::move(value));
    ++size_;
  }

  // Removes one (filter, value) pair (compared with ==; linear in the number of values under
  // that filter). Returns whether it was present. Nodes left without values or children are
  // freed.
  bool Remove(std::string_view filter, const T& value) {
    std::vector<std::string_view> levels;
    ForEachLevel(filter, [&](std::string_view level) { levels.push_back(level); });
    bool removed = RemoveAt(&root_, levels, 0, value);
    if (removed) --size_;
    return removed;
  }

  // Calls `visit(const T&)` for every value whose filter matches topic name `name` (which must
  // be a valid topic name). A value inserted under several matching filters is visited once per
  // filter. Order is unspecified. `visit` must not modify the trie.
  template <typename Visitor>
  void Match(std::string_view name, Visitor&& visit) const {
    MatchAt(&root_, name, 0, /*done=*/false, visit);
  }

  // Whether some filter matches `name`.
  bool MatchesAny(std::string_view name) const {
    bool any = false;
    Match(name, [&](const T&) { any = true; });
    return any;
  }

  size_t size() const { return size_; }  // (filter, value) pairs
  bool empty() const { return size_ == 0; }

 private:
  struct Node {
    std::map<std::string, std::unique_ptr<Node>, std::less<>> children;
    std::unique_ptr<Node> plus;
    std::unique_ptr<Node> hash;
    std::vector<T> values;

    bool prunable() const { return values.empty() && children.empty() && !plus && !hash; }
  };

  // Splits on '/', keeping empty levels ("/a/" has levels "", "a", "").
  template <typename F>
  static void ForEachLevel(std::string_view s, F&& f) {
    size_t start = 0;
    while (true) {
      size_t slash = s.find('/', start);
      if (slash == std::string_view::npos) {
        f(s.substr(start));
        return;
      }
      f(s.substr(start, slash - start));
      start = slash + 1;
    }
  }

  template <typename Visitor>
  static void VisitAll(const Node* node, Visitor& visit) {
    for (const T& v : node->values) visit(v);
  }

  // Visits the values under `node` that match the levels of `name` from `pos` on (`done`: no
  // level left). Allocation-free: levels are views into `name`.
  template <typename Visitor>
  static void MatchAt(const Node* node, std::string_view name, size_t pos, bool done,
                      Visitor& visit) {
    // §4.7.2: names starting with '$' do not match '+' or '#' at the first level.
    bool wildcards_allowed = !(pos == 0 && !done && !name.empty() && name[0] == '$');
    // '#' matches the parent level and any number of child levels, including none: at this
    // node, it matches whatever remains of the name (§4.7.1.2).
    if (node->hash && wildcards_allowed) VisitAll(node->hash.get(), visit);
    if (done) {
      VisitAll(node, visit);
      return;
    }
    size_t slash = name.find('/', pos);
    bool last = slash == std::string_view::npos;
    std::string_view level = name.substr(pos, last ? std::string_view::npos : slash - pos);
    size_t next = last ? name.size() : slash + 1;
    if (auto it = node->children.find(level); it != node->children.end()) {
      MatchAt(it->second.get(), name, next, last, visit);
    }
    if (node->plus && wildcards_allowed) MatchAt(node->plus.get(), name, next, last, visit);
  }

  static bool RemoveAt(Node* node, const std::vector<std::string_view>& levels, size_t i,
                       const T& value) {
    if (i == levels.size()) {
      auto it = std::find(node->values.begin(), node->values.end(), value);
      if (it == node->values.end()) return false;
      node->values.erase(it);
      return true;
    }
    std::string_view level = levels[i];
    if (level == "+" || level == "#") {
      std::unique_ptr<Node>& child = level == "+" ? node->plus : node->hash;
      if (!child || !RemoveAt(child.get(), levels, i + 1, value)) return false;
      if (child->prunable()) child.reset();
      return true;
    }
    auto it = node->children.find(level);
    if (it == node->children.end() || !RemoveAt(it->second.get(), levels, i + 1, value)) {
      return false;
    }
    if (it->second->prunable()) node->children.erase(it);
    return true;
  }

  Node root_;
  size_t size_ = 0;
};

}  // namespace herald::mqtt
