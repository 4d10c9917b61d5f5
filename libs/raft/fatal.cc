#include "libs/raft/fatal.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace herald::raft {
namespace {
std::atomic<FatalHook> g_hook{nullptr};
}  // namespace

void SetFatalHook(FatalHook hook) { g_hook.store(hook); }

void Fatal(const std::string& what) {
  std::fprintf(stderr, "raft: invariant violated: %s\n", what.c_str());
  if (FatalHook hook = g_hook.load()) hook(what);
  std::abort();
}

}  // namespace herald::raft
