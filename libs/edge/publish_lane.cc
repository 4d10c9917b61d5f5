#include "libs/edge/publish_lane.h"

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
  bool write = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!ended_) {
      pending_[id] = Sent{waiter, Clock::now()};
      v1::StreamedPublish* r = next_.add_requests();
      r->set_request_id(id);
      r->mutable_publish()->Swap(request);
      if (!write_in_progress_) {
        write_in_progress_ = true;
        writing_.Swap(&next_);
        next_.Clear();
        write = true;
      }
      waiter = nullptr;
    }
  }
  if (waiter != nullptr) {
    waiter->Answered(grpc::Status(grpc::StatusCode::UNAVAILABLE, "publish stream ended"), nullptr);
    return;
  }
  if (write) StartWrite(&writing_);
}

void PublishLane::Expire(Clock::time_point before) {
  std::vector<Waiter*> expired;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.at < before) {
        expired.push_back(it->second.waiter);
        it = pending_.erase(it);
      } else {
        ++it;
      }
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
    if (!ok) next_.Clear();  // the stream broke: its waiters fail in OnDone
    if (!ended_ && next_.requests_size() > 0) {
      writing_.Swap(&next_);
      next_.Clear();
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
