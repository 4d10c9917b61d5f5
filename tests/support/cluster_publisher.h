// A publisher for cluster tests: follows partition leaders (hints, else the next node) and
// retries with the same producer id and sequences until acknowledged, so that every message it
// reports acknowledged is in the partition exactly once.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "herald/v1/broker.grpc.pb.h"

namespace herald::testing {

class ClusterPublisher {
 public:
  ClusterPublisher(const std::vector<std::string>& addresses, uint32_t partitions);

  // Publishes `msgs` (one partition's, in order) until acknowledged; false if `give_up` passes
  // first. Each attempt has a deadline of `attempt_timeout`.
  bool PublishPartition(uint32_t partition, const std::vector<v1::Message>& msgs,
                        std::chrono::milliseconds give_up = std::chrono::seconds(60),
                        std::chrono::milliseconds attempt_timeout = std::chrono::seconds(2));

  // The node (0-based) that acknowledged the partition's last publish.
  int LeaderOf(uint32_t partition) const { return last_leader_of_.at(partition); }
  v1::Broker::Stub* stub(int node) { return stubs_[node].get(); }

  // Reads a partition completely from its leader.
  std::vector<v1::Message> ReadPartition(uint32_t partition);

 private:
  std::vector<std::unique_ptr<v1::Broker::Stub>> stubs_;
  uint64_t producer_id_;
  std::vector<int> leader_;
  std::vector<uint64_t> seq_;
  std::map<uint32_t, int> last_leader_of_;
};

}  // namespace herald::testing
