#include "libs/net/event_loop.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <set>

namespace herald::net {
namespace {

TEST(EventLoopTest, PostRunsOnTheLoopThreadInOrder) {
  EventLoop loop("test");
  ASSERT_TRUE(loop.Start().ok());
  std::vector<int> order;
  std::promise<bool> in_loop;
  for (int i = 0; i < 100; ++i) loop.Post([&order, i] { order.push_back(i); });
  loop.Post([&] { in_loop.set_value(loop.InLoopThread()); });
  EXPECT_TRUE(in_loop.get_future().get());
  EXPECT_FALSE(loop.InLoopThread());
  loop.Stop();
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
  EXPECT_FALSE(loop.Post([] {}));
}

TEST(EventLoopTest, TimersFireOnceRepeatAndCancel) {
  EventLoop loop("timers");
  ASSERT_TRUE(loop.Start().ok());
  std::atomic<int> once{0}, repeat{0}, cancelled{0};
  std::promise<void> done;
  std::unique_ptr<Timer> t1, t2, t3;
  loop.Post([&] {
    t1 = std::make_unique<Timer>(loop, [&] { once++; });
    t1->Start(std::chrono::milliseconds(5));
    t3 = std::make_unique<Timer>(loop, [&] { cancelled++; });
    t3->Start(std::chrono::milliseconds(20));
    t3->Stop();
    t2 = std::make_unique<Timer>(loop, [&] {
      if (++repeat == 5) {
        t2->Stop();
        done.set_value();
      }
    });
    t2->Start(std::chrono::milliseconds(1), std::chrono::milliseconds(2));
  });
  done.get_future().wait();
  std::promise<void> cleaned;
  // Give the cancelled timer's original deadline time to pass.
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  loop.Post([&] {
    t1.reset();
    t2.reset();
    t3.reset();
    cleaned.set_value();
  });
  cleaned.get_future().wait();
  loop.Stop();
  EXPECT_EQ(once.load(), 1);
  EXPECT_EQ(repeat.load(), 5);
  EXPECT_EQ(cancelled.load(), 0);
}

TEST(EventLoopTest, StopClosesTimersThatAreStillArmed) {
  auto loop = std::make_unique<EventLoop>("armed");
  ASSERT_TRUE(loop->Start().ok());
  std::unique_ptr<Timer> t;
  std::promise<void> armed;
  loop->Post([&] {
    t = std::make_unique<Timer>(*loop, [] {});
    t->Start(std::chrono::hours(1));
    armed.set_value();
  });
  armed.get_future().wait();
  loop->Stop();  // must return although a timer is armed for an hour
  EXPECT_FALSE(t->active());
  t.reset();
  loop.reset();
}

TEST(LoopGroupTest, StartsOneThreadPerLoopAndStops) {
  LoopGroup group(3, "g");
  ASSERT_TRUE(group.Start().ok());
  EXPECT_EQ(group.size(), 3u);
  std::set<std::thread::id> ids;
  std::mutex mu;
  std::vector<std::future<void>> fs;
  for (size_t i = 0; i < group.size(); ++i) {
    auto p = std::make_shared<std::promise<void>>();
    fs.push_back(p->get_future());
    group.loop(i).Post([&, p] {
      std::lock_guard<std::mutex> l(mu);
      ids.insert(std::this_thread::get_id());
      p->set_value();
    });
  }
  for (auto& f : fs) f.wait();
  EXPECT_EQ(ids.size(), 3u);
  group.Stop();
}

}  // namespace
}  // namespace herald::net
