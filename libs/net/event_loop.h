// An event loop (libuv) running on its own thread. Herald's edge runs one per CPU core.
//
// Threading: every object bound to a loop (Connection, Listener, Timer) is owned by and used
// from that loop's thread only. Other threads talk to a loop with Post().
#pragma once

#include <uv.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"

namespace herald::net {

class EventLoop;

// Something bound to a loop that must release its libuv handles when the loop stops.
// Registration and Close() happen on the loop thread.
class LoopResource {
 public:
  virtual ~LoopResource() = default;
  // Starts closing the resource's handles. The loop runs until every handle is closed.
  virtual void CloseForShutdown() = 0;
};

class EventLoop {
 public:
  explicit EventLoop(std::string name);
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;
  // Stops the loop if it is running.
  ~EventLoop();

  // Starts the loop's thread.
  absl::Status Start();
  // Closes every registered resource, waits for their handles to close and joins the thread.
  // Thread-safe, idempotent; must not be called from the loop's own thread.
  void Stop();

  // Runs `fn` on the loop thread, soon. Thread-safe. Returns false, dropping `fn` without
  // running it, when Stop() has begun; a task accepted before that runs before the loop's
  // resources are closed.
  bool Post(absl::AnyInvocable<void()> fn);
  bool InLoopThread() const { return std::this_thread::get_id() == thread_id_.load(); }
  bool stopping() const { return stopping_.load(); }

  uv_loop_t* uv() { return &loop_; }
  const std::string& name() const { return name_; }

  // Loop thread only.
  void Register(LoopResource* r);
  void Unregister(LoopResource* r);

 private:
  static void OnAsync(uv_async_t* h);
  void RunTasks();
  void BeginShutdown();

  const std::string name_;
  uv_loop_t loop_{};
  uv_async_t async_{};
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_{};
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::vector<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool shutdown_requested_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<LoopResource*> resources_;  // loop thread only
};

// A one-shot or repeating timer on a loop. Loop thread only. Destroying it cancels it.
class Timer : public LoopResource {
 public:
  Timer(EventLoop& loop, absl::AnyInvocable<void()> callback);
  ~Timer() override;
  // (Re)arms the timer: first fire after `delay`, then every `repeat` if non-zero.
  void Start(std::chrono::milliseconds delay, std::chrono::milliseconds repeat = {});
  void Stop();
  bool active() const;

 private:
  void CloseForShutdown() override;
  EventLoop& loop_;
  uv_timer_t* handle_;  // freed by the close callback
  absl::AnyInvocable<void()> callback_;
};

// N loops, one thread each. Owns the loops; Stop() stops all of them.
class LoopGroup {
 public:
  // `count` 0 means one per CPU.
  explicit LoopGroup(int count, const std::string& name_prefix = "loop");
  ~LoopGroup();
  absl::Status Start();
  void Stop();
  size_t size() const { return loops_.size(); }
  EventLoop& loop(size_t i) { return *loops_[i]; }
  // Round-robin choice for work that is not tied to a loop.
  EventLoop& Next();

 private:
  std::vector<std::unique_ptr<EventLoop>> loops_;
  std::atomic<size_t> next_{0};
};

}  // namespace herald::net
