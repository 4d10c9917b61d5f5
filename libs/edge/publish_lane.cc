#include "libs/edge/publish_lane.h"

#include <algorithm>
#include <set>
#include <utility>
#include <vector>

namespace herald::edge {

PublishLane::PublishLane(v1::Broker::Stub* stub, EndFn on_end, std::function<void()> on_gone)
    : on_end_(std::move(on_end)), on_gone_(std::move(on_gone)) {
  // Binding creates the call without starting anything, so Send may write before Start.
  stub->async()->PublishStream(&ctx_, this);
  AddHold();
}

void PublishLane::Start(std::shared_ptr<PublishLane> self) {
  self_ = std::move(self);
  StartRead(&response_);
  StartCall();
}

void PublishLane::Send(uint64_t id, v1::PublishRequest* request, Waiter* waiter) {
  v1::StreamedPublish r;
  r.set_request_id(id);
  r.mutable_publish()->Swap(request);
  const size_t bytes = r.ByteSizeLong();
  bool write = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!ended_) {
      pending_[id] = Sent{waiter, Clock::now()};
      queued_.emplace_back(std::move(r), bytes);
      if (!write_in_progress_) {
        write_in_progress_ = true;
        FillWritingLocked();
        write = true;
      }
      waiter = nullptr;
    }
  }
  if (waiter != nullptr) {
    waiter->Answered(grpc::Status(grpc::StatusCode::CANCELLED, "publish stream ended"), nullptr);
    return;
  }
  if (write) StartWrite(&writing_);
}

void PublishLane::FillWritingLocked() {
  writing_.Clear();
  size_t bytes = 0;
  while (!queued_.empty() && writing_.requests_size() < kMessageRequests &&
         (writing_.requests_size() == 0 || bytes + queued_.front().second <= kMessageBytes)) {
    bytes += queued_.front().second;
    *writing_.add_requests() = std::move(queued_.front().first);
    queued_.pop_front();
  }
}

void PublishLane::Expire(Clock::time_point before) {
  std::vector<Waiter*> expired;
  {
    std::lock_guard<std::mutex> l(mu_);
    std::set<uint64_t> ids;
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.at < before) {
        expired.push_back(it->second.waiter);
        ids.insert(it->first);
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    if (!ids.empty()) {
      queued_.erase(std::remove_if(queued_.begin(), queued_.end(),
                                   [&](const auto& q) { return ids.count(q.first.request_id()); }),
                    queued_.end());
    }
  }
  for (Waiter* w : expired) {
    w->Answered(
        grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "no answer on the publish stream"),
        nullptr);
  }
}

void PublishLane::OnWriteDone(bool ok) {
  bool write = false, release = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!ok) queued_.clear();  // the stream broke: its waiters fail in OnDone
    if (!ended_ && !queued_.empty()) {
      FillWritingLocked();
      write = true;
    } else {
      write_in_progress_ = false;
      release = ended_;
    }
  }
  if (write) StartWrite(&writing_);
  if (release) RemoveHold();
}

void PublishLane::OnReadDone(bool ok) {
  if (!ok) {  // the stream is over; OnDone follows once no write is in progress
    bool release;
    {
      std::lock_guard<std::mutex> l(mu_);
      ended_ = true;
      release = !write_in_progress_;
    }
    if (release) RemoveHold();
    return;
  }
  std::vector<std::pair<Waiter*, v1::StreamedPublishAnswer*>> answered;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (v1::StreamedPublishAnswer& a : *response_.mutable_answers()) {
      auto it = pending_.find(a.request_id());
      if (it == pending_.end()) continue;  // expired meanwhile
      answered.emplace_back(it->second.waiter, &a);
      pending_.erase(it);
    }
  }
  for (auto& [waiter, a] : answered) {
    grpc::Status st;
    if (a->has_error()) {
      st = grpc::Status(a->error().code() == v1::ERROR_CODE_INVALID_ARGUMENT
                            ? grpc::StatusCode::INVALID_ARGUMENT
                            : grpc::StatusCode::INTERNAL,
                        a->error().message());
    }
    waiter->Answered(st, a->mutable_publish());
  }
  StartRead(&response_);
}

void PublishLane::OnDone(const grpc::Status& status) {
  std::map<uint64_t, Sent> failed;
  {
    std::lock_guard<std::mutex> l(mu_);
    failed.swap(pending_);
  }
  on_end_(this, status);
  grpc::Status why = status;
  if (status.ok()) why = grpc::Status(grpc::StatusCode::UNAVAILABLE, "publish stream ended");
  for (auto& [id, sent] : failed) sent.waiter->Answered(why, nullptr);
  on_gone_();
  self_.reset();  // may delete this: the last statement
}

}  // namespace herald::edge
