#include "tests/support/cluster_publisher.h"

#include <random>
#include <thread>

#include "tests/support/partition_reader.h"

namespace herald::testing {

using namespace std::chrono_literals;

ClusterPublisher::ClusterPublisher(const std::vector<std::string>& addresses, uint32_t partitions) {
  for (const std::string& a : addresses) {
    stubs_.push_back(
        v1::Broker::NewStub(grpc::CreateChannel(a, grpc::InsecureChannelCredentials())));
  }
  producer_id_ = std::random_device{}() | 1;
  leader_.assign(partitions, 0);
  seq_.assign(partitions, 0);
}

bool ClusterPublisher::PublishPartition(uint32_t partition, const std::vector<v1::Message>& msgs,
                                        std::chrono::milliseconds give_up,
                                        std::chrono::milliseconds attempt_timeout) {
  const int nodes = static_cast<int>(stubs_.size());
  v1::PublishRequest req;
  for (const auto& m : msgs) {
    v1::Message* pm = req.add_messages();
    *pm = m;
    pm->set_producer_id(producer_id_);
    pm->set_sequence(++seq_[partition]);
  }
  auto deadline = std::chrono::steady_clock::now() + give_up;
  while (std::chrono::steady_clock::now() < deadline) {
    int node = leader_[partition];
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + attempt_timeout);
    v1::PublishResponse resp;
    grpc::Status st = stubs_[node]->Publish(&ctx, req, &resp);
    if (!st.ok()) {
      leader_[partition] = (node + 1) % nodes;
      std::this_thread::sleep_for(50ms);
      continue;
    }
    bool all_ok = true;
    for (const auto& r : resp.results()) {
      if (r.has_error() && r.error().code() != v1::ERROR_CODE_DUPLICATE) {
        all_ok = false;
        uint64_t hint = r.error().leader_hint().node_id();
        leader_[partition] = r.error().code() == v1::ERROR_CODE_NOT_LEADER && hint != 0 &&
                                     hint <= static_cast<uint64_t>(nodes)
                                 ? static_cast<int>(hint - 1)
                                 : (node + 1) % nodes;
        break;
      }
    }
    if (all_ok) {
      last_leader_of_[partition] = node;
      return true;
    }
    std::this_thread::sleep_for(30ms);
  }
  return false;
}

std::vector<v1::Message> ClusterPublisher::ReadPartition(uint32_t partition) {
  const int nodes = static_cast<int>(stubs_.size());
  return FetchWholePartition(
      partition, [&] { return stubs_[leader_[partition]].get(); },
      [&](const v1::ErrorInfo& e) {
        int node = leader_[partition];
        uint64_t hint = e.leader_hint().node_id();
        leader_[partition] = hint != 0 && hint <= static_cast<uint64_t>(nodes)
                                 ? static_cast<int>(hint - 1)
                                 : (node + 1) % nodes;
      });
}

}  // namespace herald::testing
