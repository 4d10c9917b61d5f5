#include "tests/support/partition_reader.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "libs/broker/partition_state_machine.h"
#include "libs/storage/engine.h"

namespace herald::testing {

using namespace std::chrono_literals;

History ByTopic(const std::vector<v1::Message>& messages) {
  History h;
  for (const auto& m : messages) h[m.topic()].push_back(m.payload());
  return h;
}

std::vector<v1::Message> FetchWholePartition(
    uint32_t partition, const std::function<v1::Broker::Stub*()>& stub,
    const std::function<void(const v1::ErrorInfo&)>& failed) {
  std::vector<v1::Message> out;
  uint64_t after = 0;
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    v1::FetchRequest req;
    req.add_filters()->push_back('#');  // (GCC 12 -Wrestrict false positive on add_filters("#"))
    v1::FetchRange* r = req.add_ranges();
    r->set_partition(partition);
    r->set_after_offset(after);
    req.set_max_messages(1000);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 2s);
    v1::FetchResponse resp;
    grpc::Status st = stub()->Fetch(&ctx, req, &resp);
    if (!st.ok() || resp.results_size() == 0 || resp.results(0).has_error()) {
      failed(resp.results_size() ? resp.results(0).error() : v1::ErrorInfo());
      std::this_thread::sleep_for(50ms);
      continue;
    }
    const v1::FetchResult& fr = resp.results(0);
    for (const auto& m : fr.messages()) out.push_back(m);
    after = fr.evaluated_through();
    if (after >= fr.last_offset()) return out;
  }
  ADD_FAILURE() << "could not read partition " << partition;
  return out;
}

std::map<uint32_t, std::vector<v1::Message>> ReadStoppedReplica(
    const std::string& data_dir, const std::vector<uint32_t>& partitions) {
  std::map<uint32_t, std::vector<v1::Message>> out;
  auto engine = storage::Engine::Open({.path = data_dir + "/db", .sync = false});
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return out;
  for (uint32_t p : partitions) {
    auto sm = broker::PartitionStateMachine::Open(**engine, p);
    EXPECT_TRUE(sm.ok());
    if (!sm.ok()) continue;
    // A Fetch looks at a bounded number of messages; go on from where it stopped.
    uint64_t after = 0;
    while (true) {
      auto f = (*sm)->Fetch(
          after, 0, {"#"}, 0,
          {.max_messages = 1u << 30, .max_bytes = 1ull << 40, .max_scanned = 1u << 30});
      EXPECT_TRUE(f.ok()) << f.status();
      if (!f.ok() || f->evaluated_through <= after) break;
      after = f->evaluated_through;
      for (auto& m : f->messages) out[p].push_back(std::move(m));
    }
  }
  return out;
}

std::vector<v1::Message> ReadStoppedReplicaAll(const std::string& data_dir,
                                               uint32_t partition_count) {
  std::vector<uint32_t> all;
  for (uint32_t p = 0; p < partition_count; ++p) all.push_back(p);
  std::vector<v1::Message> out;
  for (auto& [p, msgs] : ReadStoppedReplica(data_dir, all)) {
    for (auto& m : msgs) out.push_back(std::move(m));
  }
  return out;
}

}  // namespace herald::testing
