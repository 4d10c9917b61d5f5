// Raft messages between core nodes over gRPC (proto/herald/v1/raft.proto): one outbound stream
// per peer node carries every group's messages, batched per Raft host pass. Heartbeats and their
// responses travel coalesced: one compact entry per group (GroupHeartbeat: group, term, commit)
// in the pass's batch instead of a full message, and a batch goes to every peer at least once
// per tick (an empty one when there is nothing else), which is how peers know this node is alive
// while its groups are quiesced.
//
// Delivery is best effort, as Raft expects of its network: a batch that cannot be written (peer
// down, stream broken, sender queue full) is dropped, and the stream reconnects with backoff.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <set>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "herald/v1/raft.grpc.pb.h"
#include "libs/cluster/raft_host.h"

namespace herald::cluster {

// Sends through gRPC. Send/Flush are called on the Raft host's thread; each peer has a sender
// thread that owns its stream.
class GrpcRaftTransport final : public Transport {
 public:
  // `peers` maps node ids to "host:port" of their Raft endpoint; it may include `self`.
  // `credentials` secure every peer channel (insecure when null).
  GrpcRaftTransport(raft::NodeId self, std::string cluster_id,
                    const std::map<raft::NodeId, std::string>& peers,
                    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
                    size_t max_queued_batches = 1024);
  ~GrpcRaftTransport() override;

  void Send(GroupId group, raft::Message message) override;
  void SendQuiesce(GroupId group, raft::Message heartbeat) override;
  void Flush() override;
  void Tick() override;
  void SendSnapshot(GroupId group, raft::Message message,
                    std::shared_ptr<SnapshotSource> source) override;

  // Adds peers and follows changed addresses (host thread: the metadata listener). Peers are
  // never dropped: a node leaving the metadata may still host replicas being moved away.
  void UpdatePeers(const std::map<raft::NodeId, std::string>& peers);

  // Batches dropped because a peer's queue was full or its stream failed.
  uint64_t dropped_batches() const;

 private:
  class PeerSender;
  void RunSnapshotTransfer(GroupId group, raft::Message message,
                           std::shared_ptr<SnapshotSource> source, std::string address);

  raft::NodeId self_;
  const std::string cluster_id_;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const size_t max_queued_batches_;
  mutable std::mutex senders_mu_;  // writers: host thread; readers elsewhere lock
  std::map<raft::NodeId, std::unique_ptr<PeerSender>> senders_;
  std::map<raft::NodeId, std::string> addresses_;  // host thread
  std::map<raft::NodeId, v1::RaftBatch> pending_;  // host thread
  std::set<raft::NodeId> sent_since_tick_;           // host thread

  // Snapshot transfers in flight, one per (group, receiver).
  std::mutex transfers_mu_;
  std::condition_variable transfers_cv_;
  std::set<std::pair<GroupId, raft::NodeId>> transfers_ ABSL_GUARDED_BY(transfers_mu_);
  bool stopping_ ABSL_GUARDED_BY(transfers_mu_) = false;
  std::vector<std::thread> transfer_threads_ ABSL_GUARDED_BY(transfers_mu_);
  std::set<grpc::ClientContext*> transfer_contexts_ ABSL_GUARDED_BY(transfers_mu_);
};

// Receives streams from peers and hands their messages to the local host.
// Stream uses gRPC's callback API; InstallSnapshot, which blocks on the host, a thread per call.
class RaftTransportService final
    : public v1::RaftTransport::WithCallbackMethod_Stream<v1::RaftTransport::Service> {
 public:
  // Everything one received batch carried, for the local host, in order.
  using DeliverFn = std::function<void(std::vector<RaftHost::Inbound>)>;
  // Called for every batch received from a peer (empty ones included).
  using HeardFn = std::function<void(raft::NodeId)>;
  RaftTransportService(std::string cluster_id, raft::NodeId self, DeliverFn deliver,
                       HeardFn heard = nullptr);
  // Where InstallSnapshot writes (set before serving); without it snapshots are refused.
  void set_host(RaftHost* host) { host_ = host; }

  grpc::ServerBidiReactor<v1::RaftFrame, v1::RaftFrame>* Stream(
      grpc::CallbackServerContext* ctx) override;
  grpc::Status InstallSnapshot(grpc::ServerContext* ctx,
                               grpc::ServerReader<v1::SnapshotChunk>* reader,
                               v1::InstallSnapshotResponse* response) override;

 private:
  class StreamReactor;
  // The first frame of a stream: a hello for this cluster and node; sets *from.
  grpc::Status CheckHello(const v1::RaftFrame& frame, raft::NodeId* from) const;
  // A batch from node `from`: hands its messages to the host (moving their data out of it).
  void HandleBatch(raft::NodeId from, v1::RaftFrame* frame);

  const std::string cluster_id_;
  const raft::NodeId self_;
  DeliverFn deliver_;
  HeardFn heard_;
  RaftHost* host_ = nullptr;
  std::mutex installs_mu_;
  std::set<GroupId> installs_ ABSL_GUARDED_BY(installs_mu_);
};

// CRC-32C (Castagnoli) of `data`, continuing from `crc` (0 to start).
uint32_t Crc32c(uint32_t crc, std::string_view data);

}  // namespace herald::cluster
