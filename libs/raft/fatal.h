// Invariant violations (internal to libs/raft). A violated invariant means corrupt state: the
// process aborts after printing what broke. Tests and the simulation may install a hook that
// runs first (e.g. to print the command that replays a simulation seed).
#ifndef HERALD_LIBS_RAFT_FATAL_H_
#define HERALD_LIBS_RAFT_FATAL_H_

#include <string>

namespace herald::raft {

using FatalHook = void (*)(const std::string& what);
// Installs a hook called (on the violating thread) before abort(). Pass nullptr to remove.
void SetFatalHook(FatalHook hook);

[[noreturn]] void Fatal(const std::string& what);

}  // namespace herald::raft

#endif  // HERALD_LIBS_RAFT_FATAL_H_
