#include "libs/broker/partition_state_machine.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "libs/common/random.h"
#include "libs/storage/keys.h"

namespace herald::broker {
namespace {

v1::Message Msg(const std::string& topic, const std::string& payload, uint64_t producer = 0,
                uint64_t seq = 0) {
  v1::Message m;
  m.set_topic(topic);
  m.set_payload(payload);
  m.set_producer_id(producer);
  m.set_sequence(seq);
  return m;
}

std::string PublishEntry(int64_t now, std::vector<v1::Message> msgs) {
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(now);
  for (auto& m : msgs) *c.mutable_publish()->add_messages() = std::move(m);
  return c.SerializeAsString();
}

class PartitionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-broker-XXXXXX";
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
    auto p = PartitionStateMachine::Open(*engine_, 3, options_);
    ASSERT_TRUE(p.ok()) << p.status();
    psm_ = std::move(*p);
  }
  // Applies one entry and writes its batch, as the host does.
  ApplyResult Apply(uint64_t index, const std::string& data) {
    rocksdb::WriteBatch b;
    auto r = psm_->Apply(index, data, &b);
    EXPECT_TRUE(r.ok()) << r.status();
    psm_->StageApplied(&b);
    EXPECT_TRUE(engine_->Write(&b).ok());
    return r.ok() ? *r : ApplyResult{};
  }
  std::vector<v1::Message> FetchAll(const std::string& filter, int64_t now = 2000) {
    auto f = psm_->Fetch(0, 0, {filter}, now, {});
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? f->messages : std::vector<v1::Message>{};
  }

  // The partition's key for `kind` (see the layout in partition_state_machine.cc).
  static std::string RawKey(char kind) {
    std::string k;
    storage::PutU32(&k, 3);
    k.push_back(kind);
    return k;
  }
  bool Stored(const std::string& key) {
    auto v = engine_->Get(storage::Family::kPartition, key);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() && v->has_value();
  }
  // Stages message `offset` as versions before batched records stored it: one record per
  // message, producer `producer` with sequence = offset.
  void PutLegacyMessage(rocksdb::WriteBatch* b, uint64_t offset, const std::string& topic,
                        uint64_t producer) {
    v1::Message m = Msg(topic, "x", producer, offset);
    m.set_partition(3);
    m.set_offset(offset);
    std::string k = RawKey('m');
    storage::PutU64(&k, offset);
    b->Put(engine_->handle(storage::Family::kPartition), k, m.SerializeAsString());
  }
  std::string ProducerKey(uint64_t producer) {
    std::string k = RawKey('p');
    storage::PutU64(&k, producer);
    return k;
  }

  PartitionOptions options_;
  std::string dir_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<PartitionStateMachine> psm_;
};

TEST_F(PartitionTest, MessagesGetDenseOffsetsAndTheLeadersPublishTime) {
  auto r = Apply(5, PublishEntry(1000, {Msg("a/b", "1"), Msg("a/c", "2"), Msg("x", "3")}));
  ASSERT_EQ(r.publish.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.publish[i].offset(), static_cast<uint64_t>(i + 1));
    EXPECT_EQ(r.publish[i].epoch(), 1u);
    EXPECT_EQ(r.publish[i].partition(), 3u);
    EXPECT_FALSE(r.publish[i].has_error());
  }
  auto msgs = FetchAll("a/+");
  ASSERT_EQ(msgs.size(), 2u);
  EXPECT_EQ(msgs[0].payload(), "1");
  EXPECT_EQ(msgs[0].publish_time_unix_ms(), 1000);
  EXPECT_EQ(msgs[1].offset(), 2u);
  EXPECT_EQ(psm_->state().message_count(), 3u);
}

TEST_F(PartitionTest, ReplayedEntriesAreNoOpsAfterReopen) {
  std::string e1 = PublishEntry(1000, {Msg("t", "a")});
  std::string e2 = PublishEntry(1001, {Msg("t", "b")});
  Apply(1, e1);
  Apply(2, e2);
  Reopen();
  EXPECT_EQ(psm_->applied_index(), 2u);
  // A crash before the host learned that 1 and 2 were applied makes it replay them.
  EXPECT_TRUE(Apply(1, e1).publish.empty());
  EXPECT_TRUE(Apply(2, e2).publish.empty());
  auto r = Apply(3, PublishEntry(1002, {Msg("t", "c")}));
  EXPECT_EQ(r.publish[0].offset(), 3u);
  EXPECT_EQ(FetchAll("t").size(), 3u);
}

TEST_F(PartitionTest, IdempotentPublishDropsDuplicatesAndReportsTheOriginalOffset) {
  Apply(1, PublishEntry(1000, {Msg("t", "a", 77, 1), Msg("t", "b", 77, 2)}));
  Reopen();  // the producer table is durable, not just in memory
  auto r = Apply(2, PublishEntry(1001, {Msg("t", "b", 77, 2), Msg("t", "c", 77, 3)}));
  ASSERT_EQ(r.publish.size(), 2u);
  EXPECT_TRUE(r.publish[0].duplicate());
  EXPECT_EQ(r.publish[0].offset(), 2u);
  EXPECT_FALSE(r.publish[0].has_error());
  EXPECT_FALSE(r.publish[1].duplicate());
  EXPECT_EQ(r.publish[1].offset(), 3u);
  auto msgs = FetchAll("t");
  ASSERT_EQ(msgs.size(), 3u);
  EXPECT_EQ(msgs[2].payload(), "c");
}

TEST_F(PartitionTest, EntriesAppliedIntoOneBatchWriteTheStateOnce) {
  // The host applies every committed entry of a pass into one batch and stages the records
  // they changed once, after the last of them.
  rocksdb::WriteBatch b;
  ASSERT_TRUE(psm_->Apply(1, PublishEntry(1000, {Msg("t", "a", 77, 1), Msg("t", "b", 77, 2)}), &b)
                  .ok());
  ASSERT_TRUE(psm_->Apply(2, PublishEntry(1001, {Msg("t", "c", 77, 3)}), &b).ok());
  psm_->ApplyOther(3);
  EXPECT_EQ(b.Count(), 2u);  // one message record per command: nothing in-place staged yet
  psm_->StageApplied(&b);
  EXPECT_EQ(b.Count(), 3u);  // + the state record (the producer waits for its checkpoint)
  ASSERT_TRUE(engine_->Write(&b).ok());
  rocksdb::WriteBatch empty;
  psm_->StageApplied(&empty);
  EXPECT_EQ(empty.Count(), 0u);  // nothing changed since
  Reopen();
  EXPECT_EQ(psm_->applied_index(), 3u);
  auto r = Apply(4, PublishEntry(1002, {Msg("t", "c", 77, 3), Msg("t", "d", 77, 4)}));
  ASSERT_EQ(r.publish.size(), 2u);
  EXPECT_TRUE(r.publish[0].duplicate());
  EXPECT_EQ(r.publish[0].offset(), 3u);
  EXPECT_EQ(r.publish[1].offset(), 4u);
  EXPECT_EQ(FetchAll("t").size(), 4u);
}

TEST_F(PartitionTest, ProducersAreWrittenAtCheckpointsAndRestoredFromTheMessagesAfterThem) {
  options_.producer_checkpoint_messages = 5;
  Reopen();
  Apply(1, PublishEntry(1000, {Msg("t", "a", 77, 1), Msg("t", "b", 88, 1), Msg("t", "c", 77, 2)}));
  EXPECT_FALSE(Stored(ProducerKey(77)));  // 3 messages: no checkpoint yet
  Reopen();
  // Restored from the stored messages: duplicates answered with their offsets, order kept.
  auto r = Apply(2, PublishEntry(1001, {Msg("t", "c", 77, 2), Msg("t", "a", 77, 1),
                                        Msg("t", "x", 88, 3), Msg("t", "d", 77, 3)}));
  ASSERT_EQ(r.publish.size(), 4u);
  EXPECT_TRUE(r.publish[0].duplicate());
  EXPECT_EQ(r.publish[0].offset(), 3u);
  EXPECT_TRUE(r.publish[1].duplicate());
  EXPECT_EQ(r.publish[1].offset(), 1u);
  EXPECT_EQ(r.publish[2].error().code(), v1::ERROR_CODE_OUT_OF_ORDER_SEQUENCE);
  EXPECT_EQ(r.publish[3].offset(), 4u);
  EXPECT_FALSE(Stored(ProducerKey(77)));  // 4 messages since the start
  Apply(3, PublishEntry(1002, {Msg("t", "e", 88, 2)}));
  EXPECT_TRUE(Stored(ProducerKey(77)));  // the fifth: both producers' records written
  EXPECT_TRUE(Stored(ProducerKey(88)));
  EXPECT_EQ(psm_->state().producers_through_offset(), 6u);
  Apply(4, PublishEntry(1003, {Msg("t", "f", 77, 4)}));
  Reopen();  // records as of offset 6, then message 6 replayed
  r = Apply(5, PublishEntry(1004, {Msg("t", "f", 77, 4), Msg("t", "e", 88, 2),
                                   Msg("t", "g", 77, 5)}));
  ASSERT_EQ(r.publish.size(), 3u);
  EXPECT_TRUE(r.publish[0].duplicate());
  EXPECT_EQ(r.publish[0].offset(), 6u);
  EXPECT_TRUE(r.publish[1].duplicate());
  EXPECT_EQ(r.publish[1].offset(), 5u);
  EXPECT_EQ(r.publish[2].offset(), 7u);
  EXPECT_EQ(FetchAll("t").size(), 7u);
}

TEST_F(PartitionTest, RetentionWritesTheProducersBeforeRemovingMessagesTheyDependOn) {
  options_.producer_checkpoint_messages = 1000;
  Reopen();
  Apply(1, PublishEntry(1000, {Msg("t", "a", 77, 1), Msg("t", "b", 77, 2)}));
  Apply(2, PublishEntry(9000, {Msg("t", "c")}));
  auto plan = psm_->PlanRetention(10'000, 5000, 0);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(plan->has_value());
  EXPECT_EQ((*plan)->before_offset(), 3u);
  v1::PartitionCommand trim;
  trim.set_proposed_at_unix_ms(10'000);
  *trim.mutable_trim() = **plan;
  EXPECT_FALSE(Stored(ProducerKey(77)));
  Apply(3, trim.SerializeAsString());
  EXPECT_TRUE(Stored(ProducerKey(77)));
  Reopen();
  auto r = Apply(4, PublishEntry(10'001, {Msg("t", "b", 77, 2), Msg("t", "d", 77, 3)}));
  ASSERT_EQ(r.publish.size(), 2u);
  EXPECT_TRUE(r.publish[0].duplicate());
  EXPECT_EQ(r.publish[0].offset(), 2u);  // remembered although message 2 is gone
  EXPECT_EQ(r.publish[1].offset(), 4u);
}

TEST_F(PartitionTest, StateStoredUnderTheFormerKeyIsReadAndMoved) {
  // As earlier versions stored a partition: state under 'S' (no producer checkpoint, producer
  // records written with every batch) and a producer that sent messages 1 and 2.
  v1::PartitionStateRecord st;
  st.set_applied_index(7);
  st.set_epoch(1);
  st.set_first_offset(1);
  st.set_next_offset(3);
  st.set_message_count(2);
  v1::ProducerRecord producer;
  producer.set_last_sequence(2);
  producer.add_recent_offsets(1);
  producer.add_recent_offsets(2);
  rocksdb::WriteBatch b;
  for (uint64_t off : {1, 2}) PutLegacyMessage(&b, off, "t", 77);
  b.Put(engine_->handle(storage::Family::kPartition), RawKey('S'), st.SerializeAsString());
  b.Put(engine_->handle(storage::Family::kPartition), ProducerKey(77),
        producer.SerializeAsString());
  ASSERT_TRUE(engine_->Write(&b).ok());
  Reopen();
  EXPECT_EQ(psm_->applied_index(), 7u);
  EXPECT_EQ(psm_->state().producers_through_offset(), 3u);  // the records were complete
  auto r = Apply(8, PublishEntry(1000, {Msg("t", "x", 77, 2), Msg("t", "y", 77, 3)}));
  ASSERT_EQ(r.publish.size(), 2u);
  EXPECT_TRUE(r.publish[0].duplicate());
  EXPECT_EQ(r.publish[0].offset(), 2u);
  EXPECT_EQ(r.publish[1].offset(), 3u);
  EXPECT_FALSE(Stored(RawKey('S')));
  EXPECT_TRUE(Stored(RawKey('n')));
  Reopen();
  EXPECT_EQ(psm_->applied_index(), 8u);
  EXPECT_EQ(FetchAll("t").size(), 3u);
}

TEST_F(PartitionTest, SequenceGapIsRefusedAndNothingIsAppended) {
  Apply(1, PublishEntry(1000, {Msg("t", "a", 9, 10)}));  // unknown producer: any start
  auto r = Apply(2, PublishEntry(1001, {Msg("t", "b", 9, 12)}));
  ASSERT_EQ(r.publish.size(), 1u);
  EXPECT_EQ(r.publish[0].error().code(), v1::ERROR_CODE_OUT_OF_ORDER_SEQUENCE);
  EXPECT_EQ(r.publish[0].offset(), 0u);
  EXPECT_EQ(FetchAll("t").size(), 1u);
}

TEST_F(PartitionTest, VeryOldDuplicateIsStillNotAppended) {
  std::vector<v1::Message> many;
  for (uint64_t s = 1; s <= 100; ++s) many.push_back(Msg("t", "x", 5, s));
  Apply(1, PublishEntry(1000, many));
  auto r = Apply(2, PublishEntry(1001, {Msg("t", "x", 5, 1)}));
  EXPECT_TRUE(r.publish[0].duplicate());
  EXPECT_EQ(r.publish[0].error().code(), v1::ERROR_CODE_DUPLICATE);
  EXPECT_EQ(psm_->state().message_count(), 100u);
}

TEST_F(PartitionTest, RetainedMessageIsReplacedByNewerRetainAndDeletedByEmptyPayload) {
  v1::Message r1 = Msg("home/temp", "20");
  r1.set_retain(true);
  v1::Message r2 = Msg("home/temp", "21");
  r2.set_retain(true);
  v1::Message other = Msg("home/hum", "40");
  other.set_retain(true);
  Apply(1, PublishEntry(1000, {r1, r2, other, Msg("home/temp", "not retained")}));
  auto got = psm_->GetRetained("home/temp", 2000);
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->payload(), "21");
  auto all = psm_->MatchRetained("home/#", 2000, 100);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 2u);

  v1::Message del = Msg("home/temp", "");
  del.set_retain(true);
  Apply(2, PublishEntry(1001, {del}));
  EXPECT_FALSE(psm_->GetRetained("home/temp", 2000)->has_value());
  // The empty retained publish is still a message that subscribers receive.
  EXPECT_EQ(FetchAll("home/temp").size(), 4u);
}

TEST_F(PartitionTest, ExpiredMessagesAreNotReturned) {
  v1::Message short_lived = Msg("t", "short");
  short_lived.set_expiry_interval_s(10);
  v1::Message retained = Msg("r", "keep");
  retained.set_retain(true);
  retained.set_expiry_interval_s(10);
  Apply(1, PublishEntry(1000, {short_lived, Msg("t", "forever"), retained}));
  EXPECT_EQ(FetchAll("t", 5000).size(), 2u);
  auto later = FetchAll("t", 1000 + 10'000);
  ASSERT_EQ(later.size(), 1u);
  EXPECT_EQ(later[0].payload(), "forever");
  EXPECT_TRUE(psm_->GetRetained("r", 5000)->has_value());
  EXPECT_FALSE(psm_->GetRetained("r", 11'000)->has_value());
}

TEST_F(PartitionTest, FetchHonoursLimitsAndReportsHowFarItEvaluated) {
  std::vector<v1::Message> msgs;
  for (int i = 0; i < 10; ++i) msgs.push_back(Msg(i % 2 ? "odd" : "even", std::to_string(i)));
  Apply(1, PublishEntry(1000, msgs));
  auto f = psm_->Fetch(0, 0, {"odd"}, 2000, {.max_messages = 2, .max_bytes = 1 << 20});
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->messages.size(), 2u);
  EXPECT_EQ(f->messages[1].offset(), 4u);
  // Offset 5 ("even") may have been looked at, but 6 ("odd") was not returned: resume after 5
  // at most, and never skip 6.
  EXPECT_GE(f->evaluated_through, 4u);
  EXPECT_LT(f->evaluated_through, 6u);
  auto rest = psm_->Fetch(f->evaluated_through, 0, {"odd"}, 2000, {});
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->messages.size(), 3u);
  EXPECT_EQ(rest->messages[0].offset(), 6u);
  EXPECT_EQ(rest->evaluated_through, 10u);
  auto none = psm_->Fetch(0, 0, {"nobody"}, 2000, {});
  EXPECT_TRUE(none->messages.empty());
  EXPECT_EQ(none->evaluated_through, 10u);
  auto until = psm_->Fetch(0, 3, {"#"}, 2000, {});
  EXPECT_EQ(until->messages.size(), 3u);
  // A scan budget: four messages looked at, two of them matching; resume after the fourth.
  auto budget = psm_->Fetch(0, 0, {"odd"}, 2000, {.max_scanned = 4});
  ASSERT_TRUE(budget.ok());
  ASSERT_EQ(budget->messages.size(), 2u);  // offsets 2 and 4
  EXPECT_EQ(budget->evaluated_through, 4u);
  auto nothing = psm_->Fetch(0, 0, {"nobody"}, 2000, {.max_scanned = 3});
  EXPECT_TRUE(nothing->messages.empty());
  EXPECT_EQ(nothing->evaluated_through, 3u);
}

TEST_F(PartitionTest, RetainedPageLooksAtABoundedNumberOfMessages) {
  std::vector<v1::Message> msgs;
  for (const char* t : {"a/1", "a/2", "b/1", "b/2", "b/3"}) {
    v1::Message m = Msg(t, t);
    m.set_retain(true);
    msgs.push_back(m);
  }
  Apply(1, PublishEntry(1000, msgs));
  std::vector<std::string> got;
  std::string after, next;
  int pages = 0;
  do {
    auto page = psm_->RetainedPage({"b/#"}, after, 2000, 100, 1 << 20, &next, /*max_scanned=*/2);
    ASSERT_TRUE(page.ok());
    for (auto& m : *page) got.push_back(m.topic());
    after = next;
    ++pages;
  } while (!after.empty() && pages < 10);
  EXPECT_EQ(got, (std::vector<std::string>{"b/1", "b/2", "b/3"}));
  EXPECT_EQ(pages, 3);  // a/1 a/2 | b/1 b/2 | b/3
}

TEST_F(PartitionTest, DollarTopicsDoNotMatchLeadingWildcards) {
  Apply(1, PublishEntry(1000, {Msg("$SYS/broker/load", "1"), Msg("a", "2")}));
  EXPECT_EQ(FetchAll("#").size(), 1u);
  EXPECT_EQ(FetchAll("$SYS/#").size(), 1u);
}

TEST_F(PartitionTest, RetentionTrimsByAgeAndSizeAndReadersSeeTheGap) {
  std::vector<v1::Message> msgs;
  for (int i = 0; i < 10; ++i) msgs.push_back(Msg("t", std::string(100, 'a' + i)));
  Apply(1, PublishEntry(1000, {msgs.begin(), msgs.begin() + 5}));
  Apply(2, PublishEntry(9000, {msgs.begin() + 5, msgs.end()}));
  // Age: everything published before 10000 - 5000 goes.
  auto plan = psm_->PlanRetention(10'000, 5000, 0);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(plan->has_value());
  EXPECT_EQ((*plan)->before_offset(), 6u);
  EXPECT_EQ((*plan)->removed_messages(), 5u);
  v1::PartitionCommand trim;
  trim.set_proposed_at_unix_ms(10'000);
  *trim.mutable_trim() = **plan;
  Apply(3, trim.SerializeAsString());
  EXPECT_EQ(psm_->state().first_offset(), 6u);
  EXPECT_EQ(psm_->state().message_count(), 5u);
  EXPECT_EQ(psm_->state().trimmed_messages(), 5u);
  auto f = psm_->Fetch(2, 0, {"t"}, 10'000, {});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->gap_to, 5u);
  ASSERT_EQ(f->messages.size(), 5u);
  EXPECT_EQ(f->messages[0].offset(), 6u);

  // Size: whole records (one per publish command) go, oldest first, until the rest fits.
  const uint64_t five = psm_->state().message_bytes();
  for (uint64_t i = 0; i < 3; ++i) Apply(4 + i, PublishEntry(9500, {Msg("t", std::string(100, 'x'))}));
  const uint64_t one = (psm_->state().message_bytes() - five) / 3;
  auto by_size = psm_->PlanRetention(10'000, 0, 3 * one);
  ASSERT_TRUE(by_size->has_value());
  EXPECT_EQ((*by_size)->before_offset(), 11u);  // the record of offsets 6..10
  EXPECT_EQ((*by_size)->removed_messages(), 5u);
  EXPECT_EQ((*by_size)->removed_bytes(), five);
  by_size = psm_->PlanRetention(10'000, 0, 2 * one);
  ASSERT_TRUE(by_size->has_value());
  EXPECT_EQ((*by_size)->before_offset(), 12u);
  EXPECT_EQ((*by_size)->removed_messages(), 6u);
  // The newest record stays even when alone it exceeds the limit: at least max_bytes is kept.
  by_size = psm_->PlanRetention(10'000, 0, 1);
  ASSERT_TRUE(by_size->has_value());
  EXPECT_EQ((*by_size)->before_offset(), 13u);
  // A long backlog is planned a few records at a time.
  by_size = psm_->PlanRetention(10'000, 0, 1, /*max_records=*/2);
  ASSERT_TRUE(by_size->has_value());
  EXPECT_EQ((*by_size)->before_offset(), 12u);
  // Nothing to do when within limits.
  EXPECT_FALSE(psm_->PlanRetention(10'000, 0, 100 * one)->has_value());
  EXPECT_FALSE(psm_->PlanRetention(10'000, 0, five + 3 * one)->has_value());
}

TEST_F(PartitionTest, ReadsStartAndStopInsideTheRecordOfOneCommand) {
  // One record holds a command's messages (offsets 1..5); a second command adds 6..7.
  Apply(1, PublishEntry(1000, {Msg("a", "1"), Msg("b", "2"), Msg("a", "3"), Msg("b", "4"),
                               Msg("a", "5")}));
  Apply(2, PublishEntry(1001, {Msg("b", "6"), Msg("a", "7")}));
  auto offsets = [](const FetchOutput& f) {
    std::vector<uint64_t> v;
    for (const auto& m : f.messages) v.push_back(m.offset());
    return v;
  };
  auto f = psm_->Fetch(2, 4, {"#"}, 2000, {});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(offsets(*f), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(f->evaluated_through, 4u);
  f = psm_->Fetch(3, 0, {"a"}, 2000, {.max_messages = 1});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(offsets(*f), (std::vector<uint64_t>{5}));
  EXPECT_EQ(f->evaluated_through, 6u);  // 6 ("b") looked at and filtered out; 7 not returned
  f = psm_->Fetch(6, 0, {"a"}, 2000, {});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(offsets(*f), (std::vector<uint64_t>{7}));
  f = psm_->Fetch(0, 0, {"b"}, 2000, {.max_scanned = 3});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(offsets(*f), (std::vector<uint64_t>{2}));
  EXPECT_EQ(f->evaluated_through, 3u);
  f = psm_->Fetch(7, 0, {"#"}, 2000, {});
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->messages.empty());
  EXPECT_EQ(f->evaluated_through, 7u);
}

TEST_F(PartitionTest, ALargeCommandIsStoredInSeveralRecords) {
  options_.max_record_bytes = 300;
  Reopen();
  std::vector<v1::Message> msgs;
  for (int i = 0; i < 10; ++i) msgs.push_back(Msg("t", std::string(100, 'a' + i)));
  rocksdb::WriteBatch b;
  ASSERT_TRUE(psm_->Apply(1, PublishEntry(1000, msgs), &b).ok());
  EXPECT_EQ(b.Count(), 4u);  // records of 3, 3, 3 and 1 messages (each ~110 bytes)
  psm_->StageApplied(&b);
  ASSERT_TRUE(engine_->Write(&b).ok());
  auto all = FetchAll("t");
  ASSERT_EQ(all.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(all[i].offset(), static_cast<uint64_t>(i + 1));
    EXPECT_EQ(all[i].payload(), std::string(100, 'a' + i));
  }
  auto f = psm_->Fetch(4, 5, {"t"}, 2000, {});
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->messages.size(), 1u);
  EXPECT_EQ(f->messages[0].offset(), 5u);
  // Retention now goes by these smaller records.
  auto plan = psm_->PlanRetention(2000, 0, psm_->state().message_bytes() / 2);
  ASSERT_TRUE(plan.ok() && plan->has_value());
  EXPECT_EQ((*plan)->before_offset(), 4u);
}

TEST_F(PartitionTest, ATrimPlannedBeforeAnotherWasAppliedIsIgnored) {
  // Two leaders in turn plan from the same state (the second before it applied the first's
  // trim): the second trim's counts would count the first's messages again.
  for (uint64_t i = 0; i < 4; ++i) Apply(1 + i, PublishEntry(1000 + i, {Msg("t", "x")}));
  auto t1 = psm_->PlanRetention(10'000, 0, 1);  // keeps the newest record: before 4
  ASSERT_TRUE(t1.ok() && t1->has_value());
  EXPECT_EQ((*t1)->from_offset(), 1u);
  v1::TrimCommand t2 = **t1;
  t2.set_before_offset(3);
  t2.set_removed_messages(2);
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(10'000);
  *c.mutable_trim() = **t1;
  Apply(5, c.SerializeAsString());
  EXPECT_EQ(psm_->state().first_offset(), 4u);
  EXPECT_EQ(psm_->state().message_count(), 1u);
  // A later plan from the same first offset, overlapping: ignored, counters unchanged.
  t2.set_before_offset(5);
  t2.set_removed_messages(4);
  *c.mutable_trim() = t2;
  Apply(6, c.SerializeAsString());
  EXPECT_EQ(psm_->state().first_offset(), 4u);
  EXPECT_EQ(psm_->state().message_count(), 1u);
  EXPECT_EQ(psm_->state().trimmed_messages(), 3u);
  EXPECT_EQ(FetchAll("t").size(), 1u);
}

TEST_F(PartitionTest, ARetentionPlanReadsABoundedAmount) {
  for (uint64_t i = 0; i < 10; ++i) {
    Apply(1 + i, PublishEntry(1000, {Msg("t", std::string(1000, 'x'))}));
  }
  // Every record is too old; the plan stops after about 3 KB of records.
  auto plan = psm_->PlanRetention(100'000, 1000, 0, 10000, /*max_scanned_bytes=*/3000);
  ASSERT_TRUE(plan.ok() && plan->has_value());
  EXPECT_EQ((*plan)->before_offset(), 4u);
  EXPECT_EQ((*plan)->removed_messages(), 3u);
}

TEST_F(PartitionTest, ATrimThatCutsARecordHidesItsEarlierMessages) {
  // An earlier version's leader plans trims per message, so a trim may end inside a record.
  Apply(1, PublishEntry(1000, {Msg("t", "1"), Msg("t", "2"), Msg("t", "3"), Msg("t", "4")}));
  Apply(2, PublishEntry(1001, {Msg("t", "5")}));
  v1::PartitionCommand trim;
  trim.set_proposed_at_unix_ms(5000);
  trim.mutable_trim()->set_before_offset(3);
  trim.mutable_trim()->set_removed_messages(2);
  Apply(3, trim.SerializeAsString());
  auto f = psm_->Fetch(0, 0, {"t"}, 5000, {});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->gap_to, 2u);
  ASSERT_EQ(f->messages.size(), 3u);
  EXPECT_EQ(f->messages[0].offset(), 3u);
  // Retention removes the rest of the cut record: two messages still counted, whole record.
  auto plan = psm_->PlanRetention(10'000, 5000, 0);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(plan->has_value());
  EXPECT_EQ((*plan)->before_offset(), 6u);
  EXPECT_EQ((*plan)->removed_messages(), 3u);
  *trim.mutable_trim() = **plan;
  Apply(4, trim.SerializeAsString());
  EXPECT_TRUE(FetchAll("t").empty());
  EXPECT_EQ(psm_->state().message_count(), 0u);
}

TEST_F(PartitionTest, MessagesStoredOnePerRecordAreReadWithTheBatchesAfterThem) {
  // As earlier versions stored messages 1..3: a record each, state without batched_from.
  v1::PartitionStateRecord st;
  st.set_applied_index(4);
  st.set_epoch(1);
  st.set_first_offset(1);
  st.set_next_offset(4);
  st.set_message_count(3);
  st.set_producers_through_offset(1);  // producer 77's messages replayed from the records
  rocksdb::WriteBatch b;
  for (uint64_t off : {1, 2, 3}) PutLegacyMessage(&b, off, off == 2 ? "u" : "t", 77);
  b.Put(engine_->handle(storage::Family::kPartition), RawKey('n'), st.SerializeAsString());
  ASSERT_TRUE(engine_->Write(&b).ok());
  Reopen();
  EXPECT_EQ(psm_->state().batched_from_offset(), 4u);
  auto r = Apply(5, PublishEntry(1000, {Msg("t", "y", 77, 3), Msg("t", "z", 77, 4),
                                        Msg("u", "w", 77, 5)}));
  ASSERT_EQ(r.publish.size(), 3u);
  EXPECT_TRUE(r.publish[0].duplicate());  // replayed from the per-message records
  EXPECT_EQ(r.publish[0].offset(), 3u);
  EXPECT_EQ(r.publish[2].offset(), 5u);
  Reopen();  // the producer is replayed across both layouts
  EXPECT_EQ(psm_->state().batched_from_offset(), 4u);
  EXPECT_TRUE(Apply(6, PublishEntry(1001, {Msg("t", "z", 77, 5)})).publish[0].duplicate());
  auto f = psm_->Fetch(1, 0, {"t"}, 2000, {});
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->messages.size(), 2u);
  EXPECT_EQ(f->messages[0].offset(), 3u);
  EXPECT_EQ(f->messages[1].offset(), 4u);
  EXPECT_EQ(FetchAll("u").size(), 2u);
}

TEST_F(PartitionTest, ACorruptMessageRecordIsAnErrorNotACrash) {
  Apply(1, PublishEntry(1000, {Msg("t", "1"), Msg("t", "2")}));
  std::string k = RawKey('m');
  storage::PutU64(&k, 2);
  rocksdb::WriteBatch b;
  b.Put(engine_->handle(storage::Family::kPartition), k, std::string("\x0a\x50short", 7));
  ASSERT_TRUE(engine_->Write(&b).ok());
  auto f = psm_->Fetch(0, 0, {"t"}, 2000, {});
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(PartitionTest, DamagedMessageRecordsAreErrorsOrReadableNeverACrash) {
  Apply(1, PublishEntry(1000, {Msg("t", "one"), Msg("t", "two"), Msg("t", "three")}));
  std::string k = RawKey('m');
  storage::PutU64(&k, 3);
  auto v = engine_->Get(storage::Family::kPartition, k);
  ASSERT_TRUE(v.ok() && v->has_value());
  const std::string good = **v;
  SeededRandom rnd(7);
  int errors = 0;
  for (int round = 0; round < 2000; ++round) {
    std::string bad = good;
    switch (rnd.Uniform(3)) {
      case 0:  // flipped bytes
        for (uint64_t n = 1 + rnd.Uniform(4); n > 0; --n) {
          bad[rnd.Uniform(bad.size())] ^= static_cast<char>(1 + rnd.Uniform(255));
        }
        break;
      case 1:  // cut short
        bad.resize(rnd.Uniform(bad.size()));
        break;
      default:  // random bytes
        bad.resize(rnd.Uniform(64));
        for (char& c : bad) c = static_cast<char>(rnd.Uniform(256));
    }
    rocksdb::WriteBatch b;
    b.Put(engine_->handle(storage::Family::kPartition), k, bad);
    ASSERT_TRUE(engine_->Write(&b).ok());
    auto f = psm_->Fetch(0, 0, {"#"}, 2000, {});
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
      ++errors;
      continue;
    }
    // Damage that still decodes (a flipped payload byte) yields messages 1..3 in order.
    ASSERT_EQ(f->messages.size(), 3u);
    for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(f->messages[i].offset(), i + 1);
  }
  EXPECT_GT(errors, 1000);
}

TEST_F(PartitionTest, CorruptEntryIsAnErrorNotACrash) {
  rocksdb::WriteBatch b;
  auto r = psm_->Apply(1, std::string("\xff\xff\xff\x01garbage", 11), &b);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace herald::broker
