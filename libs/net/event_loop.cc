#include "libs/net/event_loop.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>

#include "libs/common/strings.h"
#include "libs/common/thread.h"

namespace herald::net {

EventLoop::EventLoop(std::string name) : name_(std::move(name)) {
  int rc = uv_loop_init(&loop_);
  if (rc != 0) {
    spdlog::critical("uv_loop_init: {}", uv_strerror(rc));
    std::abort();
  }
  rc = uv_async_init(&loop_, &async_, &EventLoop::OnAsync);
  if (rc != 0) {
    spdlog::critical("uv_async_init: {}", uv_strerror(rc));
    std::abort();
  }
  async_.data = this;
}

EventLoop::~EventLoop() {
  Stop();
  if (!started_.load()) {
    // Never ran: close the async handle and drain the loop on this thread.
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
  }
  int rc = uv_loop_close(&loop_);
  if (rc != 0) {
    spdlog::error("event loop {}: handles still open at destruction ({})", name_, uv_strerror(rc));
  }
}

absl::Status EventLoop::Start() {
  if (started_.exchange(true)) return absl::FailedPreconditionError("loop already started");
  thread_ = std::thread([this] {
    SetThreadName(name_);
    thread_id_.store(std::this_thread::get_id());
    uv_run(&loop_, UV_RUN_DEFAULT);
    // Run once more so close callbacks queued during shutdown complete.
    uv_run(&loop_, UV_RUN_DEFAULT);
  });
  return absl::OkStatus();
}

void EventLoop::Stop() {
  if (!started_.load()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!shutdown_requested_) {
      shutdown_requested_ = true;
      stopping_.store(true);
      uv_async_send(&async_);
    }
  }
  if (thread_.joinable()) {
    if (std::this_thread::get_id() == thread_.get_id()) {
      spdlog::critical("EventLoop::Stop called from its own thread");
      std::abort();
    }
    thread_.join();
  }
}

bool EventLoop::Post(absl::AnyInvocable<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_requested_) return false;
    tasks_.push_back(std::move(fn));
  }
  uv_async_send(&async_);
  return true;
}

void EventLoop::OnAsync(uv_async_t* h) {
  auto* self = static_cast<EventLoop*>(h->data);
  self->RunTasks();
}

void EventLoop::RunTasks() {
  std::vector<absl::AnyInvocable<void()>> tasks;
  bool shutdown;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks.swap(tasks_);
    shutdown = shutdown_requested_;
  }
  for (auto& t : tasks) t();
  if (shutdown) BeginShutdown();
}

void EventLoop::BeginShutdown() {
  if (uv_is_closing(reinterpret_cast<uv_handle_t*>(&async_))) return;
  // Resources may unregister themselves (or others) while closing: work on a copy.
  std::vector<LoopResource*> resources = resources_;
  for (LoopResource* r : resources) {
    if (std::find(resources_.begin(), resources_.end(), r) != resources_.end()) {
      r->CloseForShutdown();
    }
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
}

void EventLoop::Register(LoopResource* r) { resources_.push_back(r); }

void EventLoop::Unregister(LoopResource* r) {
  auto it = std::find(resources_.begin(), resources_.end(), r);
  if (it != resources_.end()) resources_.erase(it);
}

// ---- Timer ----

Timer::Timer(EventLoop& loop, absl::AnyInvocable<void()> callback)
    : loop_(loop), handle_(new uv_timer_t), callback_(std::move(callback)) {
  uv_timer_init(loop_.uv(), handle_);
  handle_->data = this;
  loop_.Register(this);
}

Timer::~Timer() {
  loop_.Unregister(this);
  CloseForShutdown();
}

void Timer::CloseForShutdown() {
  if (handle_ == nullptr) return;
  handle_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(handle_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  handle_ = nullptr;
}

void Timer::Start(std::chrono::milliseconds delay, std::chrono::milliseconds repeat) {
  if (handle_ == nullptr) return;
  uv_timer_start(
      handle_,
      [](uv_timer_t* h) {
        if (auto* self = static_cast<Timer*>(h->data)) self->callback_();
      },
      static_cast<uint64_t>(delay.count()), static_cast<uint64_t>(repeat.count()));
}

void Timer::Stop() {
  if (handle_ != nullptr) uv_timer_stop(handle_);
}

bool Timer::active() const {
  return handle_ != nullptr && uv_is_active(reinterpret_cast<const uv_handle_t*>(handle_));
}

// ---- LoopGroup ----

LoopGroup::LoopGroup(int count, const std::string& name_prefix) {
  if (count <= 0) count = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 0; i < count; ++i) {
    loops_.push_back(std::make_unique<EventLoop>(StrCat(name_prefix, "-", i)));
  }
}

LoopGroup::~LoopGroup() { Stop(); }

absl::Status LoopGroup::Start() {
  for (auto& l : loops_) {
    absl::Status s = l->Start();
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void LoopGroup::Stop() {
  for (auto& l : loops_) l->Stop();
}

EventLoop& LoopGroup::Next() { return *loops_[next_.fetch_add(1) % loops_.size()]; }

}  // namespace herald::net
