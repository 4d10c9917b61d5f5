// Reading partitions back in cluster tests: through Fetch from a partition's leader, and
// straight from a stopped node's database.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "herald/v1/broker.grpc.pb.h"

namespace herald::testing {

// Payloads per topic, in order.
using History = std::map<std::string, std::vector<std::string>>;
History ByTopic(const std::vector<v1::Message>& messages);

// Reads `partition` completely with Fetch, from the stub `stub()` returns at each attempt;
// after a failed attempt `failed(error)` is called (to follow a leader hint or try another
// node) and the read goes on after a pause. Gives up (with a test failure) after 30 s.
std::vector<v1::Message> FetchWholePartition(
    uint32_t partition, const std::function<v1::Broker::Stub*()>& stub,
    const std::function<void(const v1::ErrorInfo&)>& failed);

// Reads `partitions` straight from the database of a stopped node (its data directory).
std::map<uint32_t, std::vector<v1::Message>> ReadStoppedReplica(
    const std::string& data_dir, const std::vector<uint32_t>& partitions);

// Every message of partitions 0 .. partition_count-1 of a stopped node, partition by partition.
std::vector<v1::Message> ReadStoppedReplicaAll(const std::string& data_dir,
                                               uint32_t partition_count);

}  // namespace herald::testing
