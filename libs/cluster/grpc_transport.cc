#include "libs/cluster/grpc_transport.h"

#include <spdlog/spdlog.h>

#include <atomic>

#include "libs/cluster/raft_wire.h"
#include "libs/common/logging.h"

namespace herald::cluster {

class GrpcRaftTransport::PeerSender {
 public:
  PeerSender(raft::NodeId self, raft::NodeId peer, std::string cluster_id, std::string address,
             const std::shared_ptr<grpc::ChannelCredentials>& credentials, size_t max_queued)
      : self_(self),
        peer_(peer),
        cluster_id_(std::move(cluster_id)),
        address_(std::move(address)),
        max_queued_(max_queued) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10'000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5'000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    args.SetMaxSendMessageSize(-1);
    channel_ = grpc::CreateCustomChannel(address_, credentials, args);
    stub_ = v1::RaftTransport::NewStub(channel_);
    thread_ = std::thread([this] { Run(); });
  }

  ~PeerSender() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      if (ctx_) ctx_->TryCancel();
    }
    cv_.notify_all();
    thread_.join();
  }

  void Enqueue(v1::RaftBatch batch) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (queue_.size() >= max_queued_) {
        queue_.pop_front();  // Raft tolerates loss; the newest state matters most
        dropped_.fetch_add(1);
      }
      queue_.push_back(std::move(batch));
    }
    cv_.notify_one();
  }

  uint64_t dropped() const { return dropped_.load(); }

 private:
  void Run() {
    int backoff_ms = 50;
    while (true) {
      auto ctx = std::make_shared<grpc::ClientContext>();
      {
        std::lock_guard<std::mutex> l(mu_);
        if (stop_) return;
        ctx_ = ctx;
      }
      auto stream = stub_->Stream(ctx.get());
      v1::RaftFrame hello;
      hello.mutable_hello()->set_cluster_id(cluster_id_);
      hello.mutable_hello()->set_node_id(self_);
      hello.mutable_hello()->set_peer_node_id(peer_);
      bool ok = stream->Write(hello);
      if (ok) backoff_ms = 50;
      while (ok) {
        v1::RaftFrame frame;
        {
          std::unique_lock<std::mutex> l(mu_);
          cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
          if (stop_) break;
          *frame.mutable_batch() = std::move(queue_.front());
          queue_.pop_front();
        }
        if (!stream->Write(frame)) {
          dropped_.fetch_add(1);
          ok = false;
        }
      }
      ctx->TryCancel();
      grpc::Status st = stream->Finish();
      {
        std::unique_lock<std::mutex> l(mu_);
        ctx_.reset();
        if (stop_) return;
        // Whatever queued while the peer was unreachable is stale; drop it.
        dropped_.fetch_add(queue_.size());
        queue_.clear();
        spdlog::debug("raft stream to node {} ({}) ended: {}; reconnecting in {} ms", peer_,
                      address_, st.error_message(), backoff_ms);
        cv_.wait_for(l, std::chrono::milliseconds(backoff_ms), [this] { return stop_; });
        if (stop_) return;
      }
      backoff_ms = std::min(backoff_ms * 2, 1000);
    }
  }

  const raft::NodeId self_, peer_;
  const std::string cluster_id_, address_;
  const size_t max_queued_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::RaftTransport::Stub> stub_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::RaftBatch> queue_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<grpc::ClientContext> ctx_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<uint64_t> dropped_{0};
};

GrpcRaftTransport::GrpcRaftTransport(raft::NodeId self, std::string cluster_id,
                                     const std::map<raft::NodeId, std::string>& peers,
                                     std::shared_ptr<grpc::ChannelCredentials> credentials,
                                     size_t max_queued_batches)
    : self_(self) {
  if (!credentials) credentials = grpc::InsecureChannelCredentials();
  for (const auto& [id, address] : peers) {
    if (id == self) continue;
    senders_[id] = std::make_unique<PeerSender>(self, id, cluster_id, address, credentials,
                                                max_queued_batches);
  }
}

GrpcRaftTransport::~GrpcRaftTransport() = default;

void GrpcRaftTransport::Send(GroupId group, raft::Message message) {
  if (senders_.count(message.to) == 0) return;  // unknown peer
  if (message.type == raft::MessageType::kSnapshot && message.snapshot &&
      !message.snapshot->data.empty()) {
    spdlog::warn(
        "raft group {}: snapshot with data for node {} dropped (snapshot streaming is "
        "not supported yet)",
        group, message.to);
    return;
  }
  v1::GroupMessage* gm = pending_[message.to].add_messages();
  gm->set_group_id(group);
  ToProto(message, gm->mutable_message());
}

void GrpcRaftTransport::Flush() {
  for (auto& [peer, batch] : pending_) {
    if (batch.messages_size() == 0) continue;
    senders_[peer]->Enqueue(std::move(batch));
    batch.Clear();
  }
}

uint64_t GrpcRaftTransport::dropped_batches() const {
  uint64_t n = 0;
  for (const auto& [id, s] : senders_) n += s->dropped();
  return n;
}

RaftTransportService::RaftTransportService(std::string cluster_id, raft::NodeId self,
                                           DeliverFn deliver)
    : cluster_id_(std::move(cluster_id)), self_(self), deliver_(std::move(deliver)) {}

grpc::Status RaftTransportService::Stream(
    grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::RaftFrame, v1::RaftFrame>* stream) {
  v1::RaftFrame frame;
  if (!stream->Read(&frame) || !frame.has_hello()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "first frame must be a hello");
  }
  const v1::RaftHello& hello = frame.hello();
  if (hello.cluster_id() != cluster_id_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "cluster id mismatch: this node belongs to '" + cluster_id_ + "'");
  }
  if (hello.peer_node_id() != self_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "stream addressed to node " + std::to_string(hello.peer_node_id()) +
                            ", this is node " + std::to_string(self_));
  }
  const raft::NodeId from = hello.node_id();
  while (stream->Read(&frame)) {
    if (!frame.has_batch()) continue;
    for (const v1::GroupMessage& gm : frame.batch().messages()) {
      auto m = FromProto(gm.message());
      if (!m.ok() || m->from != from || m->to != self_) continue;  // malformed or misrouted
      deliver_(gm.group_id(), std::move(*m));
    }
  }
  return grpc::Status::OK;
}

grpc::Status RaftTransportService::InstallSnapshot(grpc::ServerContext*,
                                                   grpc::ServerReader<v1::SnapshotChunk>*,
                                                   v1::InstallSnapshotResponse*) {
  return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "snapshot streaming is not supported yet");
}

}  // namespace herald::cluster
