// TEST ONLY. Sets the TestingKnobs in a raft::Config that deliberately break one Raft rule, so a
// test can prove that the simulation notices. Never include this outside tests.
#ifndef HERALD_LIBS_RAFT_TESTING_KNOBS_H_
#define HERALD_LIBS_RAFT_TESTING_KNOBS_H_

#include "libs/raft/node.h"

namespace herald::raft {

struct TestingKnobsAccess {
  // Grant votes without the Raft §5.4.1 "candidate's log is at least as up-to-date" check.
  static void BreakVoteLogCheck(TestingKnobs* k) { k->break_vote_log_check_ = true; }
  // Commit entries of earlier terms by counting replicas (violates Raft §5.4.2).
  static void CommitPreviousTermByCounting(TestingKnobs* k) {
    k->commit_previous_term_by_counting_ = true;
  }
};

}  // namespace herald::raft

#endif  // HERALD_LIBS_RAFT_TESTING_KNOBS_H_
