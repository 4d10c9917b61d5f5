// Raft messages between core nodes over gRPC (proto/herald/v1/raft.proto): one outbound stream
// per peer node carries every group's messages, batched per Raft host pass.
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
#include <thread>

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
  void Flush() override;

  // Batches dropped because a peer's queue was full or its stream failed.
  uint64_t dropped_batches() const;

 private:
  class PeerSender;
  raft::NodeId self_;
  std::map<raft::NodeId, std::unique_ptr<PeerSender>> senders_;
  std::map<raft::NodeId, v1::RaftBatch> pending_;  // host thread
};

// Receives streams from peers and hands their messages to the local host.
class RaftTransportService final : public v1::RaftTransport::Service {
 public:
  using DeliverFn = std::function<void(GroupId, raft::Message)>;
  RaftTransportService(std::string cluster_id, raft::NodeId self, DeliverFn deliver);

  grpc::Status Stream(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<v1::RaftFrame, v1::RaftFrame>* stream) override;
  grpc::Status InstallSnapshot(grpc::ServerContext* ctx,
                               grpc::ServerReader<v1::SnapshotChunk>* reader,
                               v1::InstallSnapshotResponse* response) override;

 private:
  const std::string cluster_id_;
  const raft::NodeId self_;
  DeliverFn deliver_;
};

}  // namespace herald::cluster
