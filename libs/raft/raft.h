// Umbrella header for the Raft consensus library: see node.h for the host contract and
// docs/raft.md for the design.
#ifndef HERALD_LIBS_RAFT_RAFT_H_
#define HERALD_LIBS_RAFT_RAFT_H_

#include "libs/raft/node.h"     // IWYU pragma: export
#include "libs/raft/storage.h"  // IWYU pragma: export
#include "libs/raft/types.h"    // IWYU pragma: export

#endif  // HERALD_LIBS_RAFT_RAFT_H_
