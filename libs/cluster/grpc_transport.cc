#include "libs/cluster/grpc_transport.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>

#include "libs/cluster/raft_wire.h"
#include "libs/common/logging.h"
#include "libs/common/thread.h"
#include "libs/storage/keys.h"

namespace herald::cluster {

namespace {

// Channels to peer nodes: keepalive pings every 10 s (also when idle), a connection that has not
// answered one in 5 s is dropped (the nodes accept pings that often: core_node.cc), and no limit
// on the size of a message sent.
grpc::ChannelArguments PeerChannelArguments() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetMaxSendMessageSize(-1);
  return args;
}

}  // namespace

class GrpcRaftTransport::PeerSender {
 public:
  // Queued batches merged into one frame stay under this (the receiver accepts 64 MiB).
  static constexpr size_t kMaxMergedBytes = 8 << 20;

  PeerSender(raft::NodeId self, raft::NodeId peer, std::string cluster_id, std::string address,
             const std::shared_ptr<grpc::ChannelCredentials>& credentials, size_t max_queued)
      : self_(self),
        peer_(peer),
        cluster_id_(std::move(cluster_id)),
        address_(std::move(address)),
        max_queued_(max_queued) {
    grpc::ChannelArguments args = PeerChannelArguments();
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
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
    SetThreadName("raft-send-" + std::to_string(peer_));
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
          // Batches that queued while the last write ran go out as one (up to kMaxMergedBytes):
          // fewer writes and wake-ups under load. Each kind keeps its order; the receiver
          // handles heartbeats, then their responses, then messages, which is safe across
          // batches as within one (heartbeats never carry a commit beyond what the follower
          // acknowledged). A batch with a quiesce heartbeat is not merged into one with
          // messages it follows: the follower would quiesce, then be woken by older appends.
          v1::RaftBatch* into = frame.mutable_batch();
          size_t bytes = into->ByteSizeLong();
          while (!queue_.empty()) {
            v1::RaftBatch& b = queue_.front();
            const bool quiesce =
                std::any_of(b.heartbeats().begin(), b.heartbeats().end(),
                            [](const v1::GroupHeartbeat& h) { return h.quiesce(); });
            if (quiesce && into->messages_size() > 0) break;
            const size_t more = b.ByteSizeLong();
            if (bytes + more > kMaxMergedBytes) break;
            bytes += more;
            for (auto& x : *b.mutable_heartbeats()) *into->add_heartbeats() = std::move(x);
            for (auto& x : *b.mutable_heartbeat_responses()) {
              *into->add_heartbeat_responses() = std::move(x);
            }
            for (auto& x : *b.mutable_messages()) *into->add_messages() = std::move(x);
            queue_.pop_front();
          }
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

namespace {

// Snapshot data is a stream of records: [key length u32][key][value length u32][value].
constexpr size_t kSnapshotChunkBytes = 1 << 20;
// 3: messages from the state's batched_from_offset on stored one record per publish command
// (MessageBatchRecord). 2: a partition's state record under [partition]['n'] and its producers'
// records as of the checkpoint the state names (libs/broker). 1 (state under 'S', producer
// records current) and 2 are still accepted: the state machine reads them all. A node that knows
// only older formats refuses a newer one before touching its replica.
constexpr uint32_t kSnapshotFormat = 3;
constexpr uint32_t kOldestSnapshotFormat = 1;

uint32_t Crc32cTableEntry(uint32_t i) {
  uint32_t c = i;
  for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  return c;
}

}  // namespace

uint32_t Crc32c(uint32_t crc, std::string_view data) {
  static const auto* table = [] {
    auto* t = new uint32_t[256];
    for (uint32_t i = 0; i < 256; ++i) t[i] = Crc32cTableEntry(i);
    return t;
  }();
  crc = ~crc;
  for (unsigned char b : data) crc = table[(crc ^ b) & 0xff] ^ (crc >> 8);
  return ~crc;
}

GrpcRaftTransport::GrpcRaftTransport(raft::NodeId self, std::string cluster_id,
                                     const std::map<raft::NodeId, std::string>& peers,
                                     std::shared_ptr<grpc::ChannelCredentials> credentials,
                                     size_t max_queued_batches)
    : self_(self),
      cluster_id_(std::move(cluster_id)),
      credentials_(credentials ? std::move(credentials) : grpc::InsecureChannelCredentials()),
      max_queued_batches_(max_queued_batches) {
  UpdatePeers(peers);
}

GrpcRaftTransport::~GrpcRaftTransport() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> l(transfers_mu_);
    stopping_ = true;
    for (grpc::ClientContext* ctx : transfer_contexts_) ctx->TryCancel();
    threads = std::move(transfer_threads_);
  }
  for (std::thread& t : threads) t.join();
}

void GrpcRaftTransport::UpdatePeers(const std::map<raft::NodeId, std::string>& peers) {
  for (const auto& [id, address] : peers) {
    if (id == self_) continue;
    auto known = addresses_.find(id);
    if (known != addresses_.end() && known->second == address) continue;
    auto sender = std::make_unique<PeerSender>(self_, id, cluster_id_, address, credentials_,
                                               max_queued_batches_);
    std::unique_ptr<PeerSender> old;
    {
      std::lock_guard<std::mutex> l(senders_mu_);
      old = std::move(senders_[id]);
      senders_[id] = std::move(sender);
    }
    addresses_[id] = address;
    if (old) spdlog::info("raft transport: node {} moved to {}", id, address);
  }
}

void GrpcRaftTransport::Send(GroupId group, raft::Message message) {
  if (senders_.count(message.to) == 0) return;  // unknown peer
  if (message.type == raft::MessageType::kSnapshot) return;  // only through SendSnapshot
  v1::RaftBatch& batch = pending_[message.to];
  // Heartbeats without a ReadIndex context carry nothing but group, term and commit (see
  // Node::BroadcastHeartbeat and HandleHeartbeat): send them as compact entries.
  if (message.type == raft::MessageType::kHeartbeat && message.context.empty()) {
    v1::GroupHeartbeat* hb = batch.add_heartbeats();
    hb->set_group_id(group);
    hb->set_term(message.term);
    hb->set_commit(message.commit);
    return;
  }
  if (message.type == raft::MessageType::kHeartbeatResp && message.context.empty()) {
    v1::GroupHeartbeatResponse* r = batch.add_heartbeat_responses();
    r->set_group_id(group);
    r->set_term(message.term);
    return;
  }
  v1::GroupMessage* gm = batch.add_messages();
  gm->set_group_id(group);
  ToProto(std::move(message), gm->mutable_message());
}

void GrpcRaftTransport::SendQuiesce(GroupId group, raft::Message heartbeat) {
  if (senders_.count(heartbeat.to) == 0) return;
  v1::GroupHeartbeat* hb = pending_[heartbeat.to].add_heartbeats();
  hb->set_group_id(group);
  hb->set_term(heartbeat.term);
  hb->set_commit(heartbeat.commit);
  hb->set_quiesce(true);
}

void GrpcRaftTransport::Flush() {
  for (auto& [peer, batch] : pending_) {
    if (batch.messages_size() == 0 && batch.heartbeats_size() == 0 &&
        batch.heartbeat_responses_size() == 0) {
      continue;
    }
    senders_[peer]->Enqueue(std::move(batch));
    batch.Clear();
    sent_since_tick_.insert(peer);
  }
}

void GrpcRaftTransport::Tick() {
  Flush();
  for (auto& [peer, sender] : senders_) {
    if (sent_since_tick_.count(peer) == 0) sender->Enqueue(v1::RaftBatch());
  }
  sent_since_tick_.clear();
}

uint64_t GrpcRaftTransport::dropped_batches() const {
  std::lock_guard<std::mutex> l(senders_mu_);
  uint64_t n = 0;
  for (const auto& [id, s] : senders_) n += s->dropped();
  return n;
}

void GrpcRaftTransport::SendSnapshot(GroupId group, raft::Message message,
                                     std::shared_ptr<SnapshotSource> source) {
  auto address = addresses_.find(message.to);
  if (address == addresses_.end()) return;
  std::lock_guard<std::mutex> l(transfers_mu_);
  if (stopping_ || transfers_.count({group, message.to}) != 0) return;  // one at a time
  if (transfers_.empty()) {
    // Every earlier transfer thread has left its last critical section: join them (transfers
    // are rare, so they never pile up).
    for (std::thread& t : transfer_threads_) t.join();
    transfer_threads_.clear();
  }
  transfers_.emplace(group, message.to);
  transfer_threads_.emplace_back([this, group, message = std::move(message),
                                  source = std::move(source), addr = address->second]() mutable {
    raft::NodeId to = message.to;
    SetThreadName("raft-snap-" + std::to_string(to));
    RunSnapshotTransfer(group, std::move(message), std::move(source), std::move(addr));
    std::lock_guard<std::mutex> l(transfers_mu_);
    transfers_.erase({group, to});
  });
}

void GrpcRaftTransport::RunSnapshotTransfer(GroupId group, raft::Message message,
                                            std::shared_ptr<SnapshotSource> source,
                                            std::string address) {
  const raft::NodeId to = message.to;
  const uint64_t index = source->index;
  auto start = std::chrono::steady_clock::now();
  // Keepalive as on the Raft streams: a receiver cut off mid-transfer fails it within about
  // 15 s, so that the next attempt can start, instead of holding the slot until the deadline.
  auto stub = v1::RaftTransport::NewStub(
      grpc::CreateCustomChannel(address, credentials_, PeerChannelArguments()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  {
    std::lock_guard<std::mutex> l(transfers_mu_);
    if (stopping_) return;
    transfer_contexts_.insert(&ctx);
  }
  v1::InstallSnapshotResponse response;
  auto writer = stub->InstallSnapshot(&ctx, &response);
  v1::SnapshotChunk chunk;
  v1::SnapshotHeader* h = chunk.mutable_header();
  h->set_cluster_id(cluster_id_);
  h->set_from_node_id(self_);
  h->set_group_id(group);
  ToProto(message, h->mutable_message());
  // The metadata group's image has kept format 1 (later formats changed partition records
  // only), so nodes of any version take it.
  h->set_format_version(group == kMetadataGroup ? kOldestSnapshotFormat : kSnapshotFormat);
  bool ok = writer->Write(chunk);
  chunk.Clear();

  uint64_t offset = 0;
  uint32_t crc = 0;
  uint64_t records = 0;
  std::string buf;
  auto flush = [&](bool final) {
    crc = Crc32c(crc, buf);
    chunk.set_offset(offset);
    chunk.set_crc32c(crc);
    chunk.set_final(final);
    offset += buf.size();
    chunk.set_data(std::move(buf));
    buf.clear();
    ok = ok && writer->Write(chunk);
    chunk.Clear();
  };
  rocksdb::ReadOptions ro;
  ro.snapshot = source->db_snapshot;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it =
      source->engine.NewIterator(storage::Family::kPartition, ro);
  for (it->Seek(source->prefix); ok && it->Valid() && it->key().starts_with(source->prefix);
       it->Next()) {
    storage::PutU32(&buf, static_cast<uint32_t>(it->key().size()));
    buf.append(it->key().data(), it->key().size());
    storage::PutU32(&buf, static_cast<uint32_t>(it->value().size()));
    buf.append(it->value().data(), it->value().size());
    ++records;
    if (buf.size() >= kSnapshotChunkBytes) flush(false);
  }
  if (ok && !it->status().ok()) {
    spdlog::error("raft group {}: reading snapshot at {}: {}", group, index,
                  it->status().ToString());
    ok = false;
  }
  it.reset();
  source.reset();  // release the database snapshot as soon as it has been read
  if (ok) flush(true);
  if (ok) ok = writer->WritesDone();
  grpc::Status st = writer->Finish();
  {
    std::lock_guard<std::mutex> l(transfers_mu_);
    transfer_contexts_.erase(&ctx);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (ok && st.ok()) {
    spdlog::info("raft group {}: snapshot at {} sent to node {} ({} records, {} bytes, {:.2f} s)",
                 group, index, to, records, offset, secs);
  } else {
    spdlog::warn("raft group {}: snapshot at {} to node {} failed: {}", group, index, to,
                 st.ok() ? std::string("stream broken") : st.error_message());
  }
}

RaftTransportService::RaftTransportService(std::string cluster_id, raft::NodeId self,
                                           DeliverFn deliver, HeardFn heard)
    : cluster_id_(std::move(cluster_id)),
      self_(self),
      deliver_(std::move(deliver)),
      heard_(std::move(heard)) {}

// One peer's stream, on gRPC's callback API: each frame is handled on the gRPC thread that read
// it (no thread per stream to wake), and handed to the host with one wake-up per batch.
class RaftTransportService::StreamReactor final
    : public grpc::ServerBidiReactor<v1::RaftFrame, v1::RaftFrame> {
 public:
  explicit StreamReactor(RaftTransportService* service) : service_(service) {
    StartRead(&frame_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);  // the peer closed the stream (or it was cancelled)
      return;
    }
    if (!hello_done_) {
      grpc::Status st = service_->CheckHello(frame_, &from_);
      if (!st.ok()) {
        Finish(st);
        return;
      }
      hello_done_ = true;
    } else if (frame_.has_batch()) {
      service_->HandleBatch(from_, &frame_);
    }
    StartRead(&frame_);
  }

  void OnDone() override { delete this; }

 private:
  RaftTransportService* const service_;
  v1::RaftFrame frame_;
  bool hello_done_ = false;
  raft::NodeId from_ = 0;
};

grpc::ServerBidiReactor<v1::RaftFrame, v1::RaftFrame>* RaftTransportService::Stream(
    grpc::CallbackServerContext*) {
  return new StreamReactor(this);
}

grpc::Status RaftTransportService::CheckHello(const v1::RaftFrame& frame,
                                              raft::NodeId* from) const {
  if (!frame.has_hello()) {
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
  *from = hello.node_id();
  return grpc::Status::OK;
}

void RaftTransportService::HandleBatch(raft::NodeId from, v1::RaftFrame* frame) {
  const v1::RaftBatch& batch = frame->batch();
  if (heard_) heard_(from);
  // raft.proto: heartbeats, then heartbeat responses, then messages.
  // A coalesced entry carries everything its message had (see GrpcRaftTransport::Send).
  auto expand = [&](raft::MessageType type, uint64_t term, uint64_t commit) {
    raft::Message m;
    m.type = type;
    m.from = from;
    m.to = self_;
    m.term = term;
    m.commit = commit;
    return m;
  };
  std::vector<RaftHost::Inbound> in;
  in.reserve(batch.heartbeats_size() + batch.heartbeat_responses_size() +
             batch.messages_size());
  for (const v1::GroupHeartbeat& hb : batch.heartbeats()) {
    in.push_back({hb.group_id(), expand(raft::MessageType::kHeartbeat, hb.term(), hb.commit()),
                  hb.quiesce()});
  }
  for (const v1::GroupHeartbeatResponse& r : batch.heartbeat_responses()) {
    in.push_back({r.group_id(), expand(raft::MessageType::kHeartbeatResp, r.term(), 0), false});
  }
  for (v1::GroupMessage& gm : *frame->mutable_batch()->mutable_messages()) {
    auto m = FromProto(std::move(*gm.mutable_message()));
    if (!m.ok() || m->from != from || m->to != self_) continue;  // malformed or misrouted
    in.push_back({gm.group_id(), std::move(*m), false});
  }
  deliver_(std::move(in));
}

grpc::Status RaftTransportService::InstallSnapshot(grpc::ServerContext*,
                                                   grpc::ServerReader<v1::SnapshotChunk>* reader,
                                                   v1::InstallSnapshotResponse* response) {
  v1::SnapshotChunk chunk;
  if (!reader->Read(&chunk) || !chunk.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "first chunk must carry the header");
  }
  const v1::SnapshotHeader& h = chunk.header();
  if (h.cluster_id() != cluster_id_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "cluster id mismatch");
  }
  if (h.format_version() < kOldestSnapshotFormat || h.format_version() > kSnapshotFormat) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown snapshot format version");
  }
  auto message = FromProto(h.message());
  if (!message.ok() || message->type != raft::MessageType::kSnapshot || !message->snapshot ||
      message->to != self_ || message->from != h.from_node_id()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "header is not a snapshot message");
  }
  if (host_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this node takes no snapshots");
  }
  const GroupId group = h.group_id();
  {
    std::lock_guard<std::mutex> l(installs_mu_);
    if (!installs_.insert(group).second) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "a snapshot of this group is already being installed");
    }
  }
  struct Release {
    RaftTransportService* self;
    GroupId group;
    ~Release() {
      std::lock_guard<std::mutex> l(self->installs_mu_);
      self->installs_.erase(group);
    }
  } release{this, group};

  bool skip = false;
  absl::Status s =
      host_->BeginSnapshotInstall(group, message->snapshot->metadata.index, message->term, &skip);
  if (absl::IsFailedPrecondition(s)) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, std::string(s.message()));
  }
  if (!s.ok()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
  uint64_t offset = 0;
  uint32_t crc = 0;
  bool final = false;
  std::string pending;  // records not written yet, the last one possibly incomplete
  size_t pos = 0;       // end of the complete records in `pending` (scanned once)
  while (!final && reader->Read(&chunk)) {
    if (chunk.offset() != offset || Crc32c(crc, chunk.data()) != chunk.crc32c()) {
      return grpc::Status(grpc::StatusCode::DATA_LOSS, "snapshot chunk offset or CRC mismatch");
    }
    crc = chunk.crc32c();
    offset += chunk.data().size();
    final = chunk.final();
    if (skip) continue;
    pending.append(chunk.data());
    // Write the complete records; keep the tail of a record split across chunks.
    while (true) {
      std::string_view rest(pending.data() + pos, pending.size() - pos);
      uint32_t klen = 0, vlen = 0;
      std::string_view probe = rest;
      if (!storage::GetU32(&probe, &klen) || probe.size() < klen) break;
      probe.remove_prefix(klen);
      if (!storage::GetU32(&probe, &vlen) || probe.size() < vlen) break;
      pos += 8 + klen + vlen;
    }
    if (pos >= (4u << 20) || (final && pos > 0)) {
      s = host_->WriteSnapshotRecords(group, std::string_view(pending.data(), pos));
      if (!s.ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(s.message()));
      pending.erase(0, pos);
      pos = 0;
    }
  }
  if (!final) return grpc::Status(grpc::StatusCode::CANCELLED, "snapshot stream ended early");
  if (!pending.empty()) {
    return grpc::Status(grpc::StatusCode::DATA_LOSS, "snapshot ends inside a record");
  }
  s = host_->FinishSnapshotInstall(group, std::move(*message), !skip);
  if (!s.ok()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
  response->set_received_bytes(offset);
  return grpc::Status::OK;
}

}  // namespace herald::cluster
