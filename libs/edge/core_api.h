// The core as the edge's client protocols see it: publish, and keep a topic filter delivered.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "herald/v1/common.pb.h"

namespace herald::edge {

// What the MQTT server needs from the core (CoreClient implements it; tests fake it). Every
// method is thread-safe; callbacks may run on any thread and must not block.
class CoreApi {
 public:
  virtual ~CoreApi() = default;
  // Publishes `messages`; `done` runs once with OK when every one is committed.
  virtual void Publish(std::vector<v1::Message> messages,
                       std::function<void(const absl::Status&)> done) = 0;
  // Adds a reference to a topic filter; `applied` runs once messages committed from then on
  // are delivered for it.
  virtual void AddFilter(const std::string& filter, std::function<void()> applied) = 0;
  virtual void RemoveFilter(const std::string& filter) = 0;
};

}  // namespace herald::edge
