// MQTT persistent sessions in the partition state machine.
#include <gtest/gtest.h>

#include <filesystem>
#include <tuple>
#include <vector>

#include "libs/broker/partition_state_machine.h"

namespace herald::broker {
namespace {

v1::WillMessage Will(const std::string& topic, uint32_t delay_s) {
  v1::WillMessage w;
  w.mutable_message()->set_topic(topic);
  w.mutable_message()->set_payload("gone");
  w.set_delay_interval_s(delay_s);
  return w;
}

std::string OpenEntry(int64_t now, const std::string& client, bool clean_start, uint32_t expiry_s,
                      std::optional<v1::WillMessage> will = std::nullopt,
                      const std::string& edge = "edge-1") {
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(now);
  v1::OpenSessionRequest* r = c.mutable_open_session()->mutable_request();
  r->set_client_id(client);
  r->set_edge_id(edge);
  r->set_clean_start(clean_start);
  r->set_expiry_interval_s(expiry_s);
  if (will) *r->mutable_will() = *will;
  return c.SerializeAsString();
}

std::string UpdateEntry(int64_t now, std::vector<v1::SessionUpdate> updates) {
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(now);
  for (auto& u : updates) *c.mutable_update_sessions()->add_updates() = std::move(u);
  return c.SerializeAsString();
}

std::string CloseEntry(int64_t now, const std::string& client, uint64_t epoch, bool publish_will,
                       std::optional<uint32_t> expiry_s = std::nullopt) {
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(now);
  v1::CloseSessionRequest* r = c.mutable_close_session()->mutable_request();
  r->set_client_id(client);
  r->set_owner_epoch(epoch);
  r->set_publish_will(publish_will);
  if (expiry_s) r->set_expiry_interval_s(*expiry_s);
  return c.SerializeAsString();
}

std::string TimerEntry(int64_t now, const SessionTimer& t) {
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(now);
  v1::SessionTimerCommand* cmd = c.mutable_session_timer();
  cmd->set_client_id(t.client_id);
  cmd->set_owner_epoch(t.owner_epoch);
  cmd->set_kind(t.kind);
  return c.SerializeAsString();
}

v1::SessionUpdate Update(const std::string& client, uint64_t epoch) {
  v1::SessionUpdate u;
  u.set_client_id(client);
  u.set_owner_epoch(epoch);
  return u;
}

v1::PartitionPosition Pos(uint32_t partition, uint64_t epoch, uint64_t offset) {
  v1::PartitionPosition p;
  p.set_partition(partition);
  p.set_epoch(epoch);
  p.set_offset(offset);
  return p;
}

class SessionStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-session-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    Reopen();
  }
  void TearDown() override {
    psm_.reset();
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    psm_.reset();
    engine_.reset();
    auto e = storage::Engine::Open({.path = dir_, .sync = false});
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    auto p = PartitionStateMachine::Open(*engine_, 2);
    ASSERT_TRUE(p.ok()) << p.status();
    psm_ = std::move(*p);
  }
  ApplyResult Apply(const std::string& data) {
    rocksdb::WriteBatch b;
    auto r = psm_->Apply(++index_, data, &b);
    EXPECT_TRUE(r.ok()) << r.status();
    psm_->StageApplied(&b);
    EXPECT_TRUE(engine_->Write(&b).ok());
    psm_->Flushed();
    return r.ok() ? *r : ApplyResult{};
  }
  v1::OpenSessionResponse Open(int64_t now, const std::string& client, bool clean_start,
                               uint32_t expiry_s, std::optional<v1::WillMessage> will = {}) {
    ApplyResult r = Apply(OpenEntry(now, client, clean_start, expiry_s, will));
    EXPECT_TRUE(r.open_session.has_value());
    return r.open_session.value_or(v1::OpenSessionResponse());
  }
  std::optional<v1::Session> Get(const std::string& client) {
    auto s = psm_->GetSession(client);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : std::nullopt;
  }

  std::string dir_;
  uint64_t index_ = 0;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<PartitionStateMachine> psm_;
};

TEST_F(SessionStateTest, OpenCreatesThenResumesWithHigherEpoch) {
  auto first = Open(1000, "c1", false, 60);
  EXPECT_FALSE(first.session_present());
  EXPECT_EQ(first.session().client_id(), "c1");
  EXPECT_EQ(first.session().owner_edge_id(), "edge-1");
  EXPECT_EQ(first.session().created_time_unix_ms(), 1000);
  ApplyResult sub = Apply(UpdateEntry(1100, {[&] {
                                        auto u = Update("c1", first.session().owner_epoch());
                                        auto* s = u.add_put_subscriptions();
                                        s->set_filter("a/#");
                                        s->set_max_qos(v1::QOS_AT_LEAST_ONCE);
                                        return u;
                                      }()}));
  ASSERT_EQ(sub.session_updates.size(), 1u);
  EXPECT_FALSE(sub.session_updates[0].has_error());

  // Takeover by another edge without clean start: state kept, epoch higher.
  auto second = Apply(OpenEntry(1200, "c1", false, 60, std::nullopt, "edge-2")).open_session;
  ASSERT_TRUE(second.has_value());
  EXPECT_TRUE(second->session_present());
  EXPECT_GT(second->session().owner_epoch(), first.session().owner_epoch());
  EXPECT_EQ(second->session().owner_edge_id(), "edge-2");
  ASSERT_EQ(second->session().subscriptions_size(), 1);
  EXPECT_EQ(second->session().created_time_unix_ms(), 1000);

  // The previous owner is fenced.
  ApplyResult stale = Apply(UpdateEntry(1300, {Update("c1", first.session().owner_epoch())}));
  ASSERT_EQ(stale.session_updates.size(), 1u);
  EXPECT_EQ(stale.session_updates[0].error().code(), v1::ERROR_CODE_FENCED);
  ApplyResult stale_close = Apply(CloseEntry(1300, "c1", first.session().owner_epoch(), true));
  EXPECT_EQ(stale_close.session_error.code(), v1::ERROR_CODE_FENCED);
  EXPECT_FALSE(stale_close.close_session.has_value());
  EXPECT_EQ(Get("c1")->owner_edge_id(), "edge-2");
}

TEST_F(SessionStateTest, CleanStartDiscardsStateAndEpochsKeepGrowingAcrossDeletion) {
  auto first = Open(1000, "c1", false, 60);
  Apply(UpdateEntry(1100, {[&] {
                      auto u = Update("c1", first.session().owner_epoch());
                      u.add_put_subscriptions()->set_filter("x");
                      return u;
                    }()}));
  auto clean = Open(1200, "c1", true, 60);
  EXPECT_FALSE(clean.session_present());
  EXPECT_EQ(clean.session().subscriptions_size(), 0);
  EXPECT_GT(clean.session().owner_epoch(), first.session().owner_epoch());

  ApplyResult closed = Apply(CloseEntry(1300, "c1", clean.session().owner_epoch(), false, 0));
  ASSERT_TRUE(closed.close_session.has_value());
  EXPECT_TRUE(closed.close_session->session_deleted());
  EXPECT_FALSE(Get("c1").has_value());
  ApplyResult gone = Apply(UpdateEntry(1400, {Update("c1", clean.session().owner_epoch())}));
  EXPECT_EQ(gone.session_updates[0].error().code(), v1::ERROR_CODE_SESSION_NOT_FOUND);

  auto again = Open(1500, "c1", false, 60);
  EXPECT_FALSE(again.session_present());
  EXPECT_GT(again.session().owner_epoch(), clean.session().owner_epoch());
  Reopen();  // the counter is durable
  auto after_restart = Open(1600, "c1", false, 60);
  EXPECT_GT(after_restart.session().owner_epoch(), again.session().owner_epoch());
}

TEST_F(SessionStateTest, UpdatesApplyInOrderAndMergeCursorPositions) {
  auto open = Open(1000, "c1", false, 60);
  const uint64_t epoch = open.session().owner_epoch();
  auto u = Update("c1", epoch);
  for (const char* f : {"b", "a", "c"}) u.add_put_subscriptions()->set_filter(f);
  u.add_remove_subscriptions("c");  // removals come first: "c" is still added
  auto* in = u.add_put_inflight();
  in->set_direction(v1::INFLIGHT_DIRECTION_INBOUND);
  in->set_packet_id(7);
  in->set_state(v1::INFLIGHT_STATE_RECEIVED);
  auto* out = u.add_put_inflight();
  out->set_direction(v1::INFLIGHT_DIRECTION_OUTBOUND);
  out->set_packet_id(7);
  out->set_state(v1::INFLIGHT_STATE_AWAITING_ACK);
  *u.add_commit_positions() = Pos(3, 1, 10);
  *u.add_commit_positions() = Pos(1, 1, 5);
  *u.mutable_set_will() = Will("w/c1", 5);
  u.set_expiry_interval_s(120);
  EXPECT_FALSE(Apply(UpdateEntry(1100, {u})).session_updates[0].has_error());

  auto s = Get("c1");
  ASSERT_TRUE(s.has_value());
  ASSERT_EQ(s->subscriptions_size(), 3);
  EXPECT_EQ(s->subscriptions(0).filter(), "a");
  EXPECT_EQ(s->subscriptions(2).filter(), "c");
  ASSERT_EQ(s->inflight_size(), 2);
  EXPECT_EQ(s->inflight(0).direction(), v1::INFLIGHT_DIRECTION_OUTBOUND);
  EXPECT_EQ(s->inflight(1).direction(), v1::INFLIGHT_DIRECTION_INBOUND);
  ASSERT_EQ(s->cursor().positions_size(), 2);
  EXPECT_EQ(s->cursor().positions(0).partition(), 1u);
  EXPECT_EQ(s->will().message().topic(), "w/c1");
  EXPECT_EQ(s->expiry_interval_s(), 120u);

  // Older positions are ignored, newer epochs and higher offsets win; several updates of one
  // session in one command see each other.
  auto a = Update("c1", epoch);
  *a.add_commit_positions() = Pos(3, 1, 8);  // older: ignored
  *a.add_commit_positions() = Pos(1, 2, 1);  // newer epoch: wins
  auto b = Update("c1", epoch);
  *b.add_commit_positions() = Pos(3, 1, 12);  // higher offset: wins
  b.add_remove_subscriptions("a");
  auto* ref = b.add_remove_inflight();
  ref->set_direction(v1::INFLIGHT_DIRECTION_OUTBOUND);
  ref->set_packet_id(7);
  b.set_clear_will(true);
  ApplyResult r = Apply(UpdateEntry(1200, {a, b, Update("nobody", 1)}));
  ASSERT_EQ(r.session_updates.size(), 3u);
  EXPECT_FALSE(r.session_updates[0].has_error());
  EXPECT_FALSE(r.session_updates[1].has_error());
  EXPECT_EQ(r.session_updates[2].error().code(), v1::ERROR_CODE_SESSION_NOT_FOUND);
  s = Get("c1");
  EXPECT_EQ(s->cursor().positions(0).epoch(), 2u);
  EXPECT_EQ(s->cursor().positions(1).offset(), 12u);
  EXPECT_EQ(s->subscriptions_size(), 2);
  ASSERT_EQ(s->inflight_size(), 1);
  EXPECT_EQ(s->inflight(0).direction(), v1::INFLIGHT_DIRECTION_INBOUND);
  EXPECT_FALSE(s->has_will());
}

TEST_F(SessionStateTest, InflightPutsReplaceInPlaceAndNewOnesJoinTheEndOfTheirDirection) {
  auto open = Open(1000, "c1", false, 60);
  const uint64_t epoch = open.session().owner_epoch();
  auto put = [](v1::SessionUpdate& u, v1::InflightDirection d, uint32_t id, uint64_t offset) {
    auto* m = u.add_put_inflight();
    m->set_direction(d);
    m->set_packet_id(id);
    m->set_state(v1::INFLIGHT_STATE_AWAITING_ACK);
    m->set_offset(offset);
  };
  constexpr auto kOut = v1::INFLIGHT_DIRECTION_OUTBOUND;
  constexpr auto kIn = v1::INFLIGHT_DIRECTION_INBOUND;
  auto first = Update("c1", epoch);
  put(first, kOut, 1, 10);
  put(first, kIn, 5, 0);
  put(first, kOut, 2, 20);
  ASSERT_FALSE(Apply(UpdateEntry(1100, {first})).session_updates[0].has_error());
  auto second = Update("c1", epoch);
  auto* ref = second.add_remove_inflight();
  ref->set_direction(kOut);
  ref->set_packet_id(1);
  put(second, kIn, 6, 0);     // new inbound: after inbound 5
  put(second, kOut, 3, 30);   // new outbound: after outbound 2, before the inbound ones
  put(second, kOut, 2, 21);   // replaces outbound 2 where it is
  put(second, kOut, 4, 40);
  put(second, kOut, 3, 31);   // the same key again: the last put wins, in the first one's place
  ASSERT_FALSE(Apply(UpdateEntry(1200, {second})).session_updates[0].has_error());
  auto s = Get("c1");
  ASSERT_TRUE(s.has_value());
  std::vector<std::tuple<int, uint32_t, uint64_t>> got;
  for (const auto& m : s->inflight()) got.emplace_back(m.direction(), m.packet_id(), m.offset());
  std::vector<std::tuple<int, uint32_t, uint64_t>> want = {
      {kOut, 2, 21}, {kOut, 3, 31}, {kOut, 4, 40}, {kIn, 5, 0}, {kIn, 6, 0}};
  EXPECT_EQ(got, want);
}

TEST_F(SessionStateTest, ReplayedEntriesAreNoOps) {
  std::string open = OpenEntry(1000, "c1", false, 60);
  Apply(open);
  const uint64_t epoch = Get("c1")->owner_epoch();
  auto u = Update("c1", epoch);
  *u.add_commit_positions() = Pos(0, 1, 3);
  std::string update = UpdateEntry(1100, {u});
  Apply(update);
  const uint64_t applied = psm_->applied_index();
  // A crash before the host noticed: the same entries are handed to the state machine again.
  Reopen();
  rocksdb::WriteBatch b;
  auto r1 = psm_->Apply(applied - 1, open, &b);
  auto r2 = psm_->Apply(applied, update, &b);
  ASSERT_TRUE(r1.ok() && r2.ok());
  EXPECT_FALSE(r1->open_session.has_value());
  EXPECT_TRUE(r2->session_updates.empty());
  EXPECT_EQ(Get("c1")->owner_epoch(), epoch);
  EXPECT_EQ(psm_->state().last_owner_epoch(), epoch);
}

TEST_F(SessionStateTest, ReadsSeeStagedSessionsBeforeTheBatchIsWritten) {
  rocksdb::WriteBatch b;
  ASSERT_TRUE(psm_->Apply(1, OpenEntry(1000, "c1", false, 60), &b).ok());
  auto r = psm_->Apply(2, UpdateEntry(1001, {Update("c1", 1)}), &b);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->session_updates[0].has_error()) << r->session_updates[0].error().message();
  ASSERT_TRUE(engine_->Write(&b).ok());
  psm_->Flushed();
  EXPECT_TRUE(Get("c1").has_value());
}

TEST_F(SessionStateTest, CloseWithWillSchedulesItAfterTheDelay) {
  auto open = Open(1000, "c1", false, 60, Will("w/c1", 2));
  const uint64_t epoch = open.session().owner_epoch();
  ApplyResult closed = Apply(CloseEntry(10'000, "c1", epoch, true));
  ASSERT_TRUE(closed.close_session.has_value());
  EXPECT_FALSE(closed.close_session->session_deleted());
  auto s = Get("c1");
  EXPECT_TRUE(s->owner_edge_id().empty());
  EXPECT_EQ(s->disconnected_time_unix_ms(), 10'000);
  // Disconnected: mutations by the old owner are refused.
  EXPECT_EQ(Apply(UpdateEntry(10'001, {Update("c1", epoch)})).session_updates[0].error().code(),
            v1::ERROR_CODE_FENCED);

  EXPECT_TRUE(psm_->DueSessionTimers(11'999, 10).empty());
  auto due = psm_->DueSessionTimers(12'000, 10);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].kind, v1::SessionTimerCommand::KIND_WILL_DUE);
  // A timer proposed too early (another leader's clock) changes nothing.
  Apply(TimerEntry(11'000, due[0]));
  EXPECT_TRUE(psm_->will_outbox().empty());
  Apply(TimerEntry(12'000, due[0]));
  Apply(TimerEntry(12'001, due[0]));  // fired twice: nothing more
  ASSERT_EQ(psm_->will_outbox().size(), 1u);
  const v1::WillOutboxRecord w = psm_->will_outbox().begin()->second;
  EXPECT_EQ(w.message().topic(), "w/c1");
  EXPECT_EQ(w.message().producer_id(), WillProducerId("c1", epoch));
  EXPECT_EQ(w.message().sequence(), 1u);
  EXPECT_FALSE(Get("c1")->has_will());

  // The outbox survives a restart until the publication is recorded.
  Reopen();
  ASSERT_EQ(psm_->will_outbox().size(), 1u);
  v1::PartitionCommand done;
  done.set_proposed_at_unix_ms(12'100);
  done.mutable_will_published()->set_will_id(w.will_id());
  Apply(done.SerializeAsString());
  EXPECT_TRUE(psm_->will_outbox().empty());

  // Session expiry: 60 s after disconnection.
  due = psm_->DueSessionTimers(70'000, 10);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].kind, v1::SessionTimerCommand::KIND_EXPIRED);
  Apply(TimerEntry(70'000, due[0]));
  EXPECT_FALSE(Get("c1").has_value());
  EXPECT_TRUE(psm_->DueSessionTimers(100'000, 10).empty());
}

TEST_F(SessionStateTest, SessionEndingBeforeTheWillDelayPublishesTheWill) {
  auto open = Open(1000, "c1", false, 5, Will("w/c1", 30));
  Apply(CloseEntry(2000, "c1", open.session().owner_epoch(), true));
  auto due = psm_->DueSessionTimers(7000, 10);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].kind, v1::SessionTimerCommand::KIND_EXPIRED);
  Apply(TimerEntry(7000, due[0]));
  EXPECT_FALSE(Get("c1").has_value());
  EXPECT_EQ(psm_->will_outbox().size(), 1u);
}

TEST_F(SessionStateTest, NormalCloseDiscardsTheWillAndExpiryZeroDeletes) {
  auto open = Open(1000, "c1", false, 0, Will("w/c1", 0));
  ApplyResult closed = Apply(CloseEntry(2000, "c1", open.session().owner_epoch(), false));
  EXPECT_TRUE(closed.close_session->session_deleted());
  EXPECT_TRUE(psm_->will_outbox().empty());
  EXPECT_FALSE(Get("c1").has_value());
  EXPECT_EQ(psm_->state().session_count(), 0u);
}

TEST_F(SessionStateTest, ReconnectWithinTheWillDelayDropsTheWill) {
  auto open = Open(1000, "c1", false, 60, Will("w/c1", 10));
  Apply(CloseEntry(2000, "c1", open.session().owner_epoch(), true));
  auto again = Open(3000, "c1", false, 60);
  EXPECT_TRUE(again.session_present());
  EXPECT_TRUE(psm_->will_outbox().empty());
  EXPECT_TRUE(psm_->DueSessionTimers(100'000, 10).empty());
}

TEST_F(SessionStateTest, TakeoverPublishesOnlyAnUndelayedWillAndCleanStartAlways) {
  auto a = Open(1000, "a", false, 60, Will("w/a", 0));
  auto b = Open(1000, "b", false, 60, Will("w/b", 10));
  Open(2000, "a", false, 60);
  Open(2000, "b", false, 60);
  ASSERT_EQ(psm_->will_outbox().size(), 1u);
  EXPECT_EQ(psm_->will_outbox().begin()->second.client_id(), "a");
  Open(3000, "c", false, 60, Will("w/c", 10));
  Open(4000, "c", true, 60);  // the old session ends: its will is published
  EXPECT_EQ(psm_->will_outbox().size(), 2u);
}

TEST_F(SessionStateTest, LapsedLeaseDisconnectsWithWill) {
  auto open = Open(1000, "c1", false, 60, Will("w/c1", 0));
  EXPECT_TRUE(psm_->SessionConnected("c1", open.session().owner_epoch()));
  SessionTimer lapse{"c1", open.session().owner_epoch(),
                     v1::SessionTimerCommand::KIND_LEASE_LAPSED};
  Apply(TimerEntry(5000, lapse));
  EXPECT_FALSE(psm_->SessionConnected("c1", open.session().owner_epoch()));
  EXPECT_EQ(Get("c1")->disconnected_time_unix_ms(), 5000);
  EXPECT_EQ(psm_->will_outbox().size(), 1u);
  // A lapse for an older connection is ignored.
  auto again = Open(6000, "c1", false, 60);
  Apply(TimerEntry(7000, lapse));
  EXPECT_TRUE(psm_->SessionConnected("c1", again.session().owner_epoch()));
}

}  // namespace
}  // namespace herald::broker
