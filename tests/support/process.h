// Helpers for tests that run Herald's binaries as child processes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace herald::testing {

// A child process (a binary of build/bin) whose stderr is captured in an unlinked file.
// Killed with SIGKILL on destruction if still running.
class Process {
 public:
  // Runs `binary` from the build's bin directory with `args`. With a `prefix` (an absolute
  // program path and its arguments, e.g. {"/usr/sbin/ip", "netns", "exec", "ns1"}) the prefix
  // runs and is given the binary's path and `args`; it must exec the binary in place, so that
  // pid() and Signal reach it.
  Process(const std::string& binary, const std::vector<std::string>& args,
          const std::vector<std::string>& prefix = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Reads stderr until a line matches `pattern` (ECMAScript regex); returns the first capture
  // group, or the whole match, or "" on timeout or end of output.
  std::string WaitForLine(const std::string& pattern,
                          std::chrono::milliseconds timeout = std::chrono::seconds(15));
  // Waits for exit; returns the exit status, or -1 on timeout or death by a signal.
  int Wait(std::chrono::milliseconds timeout);
  void Signal(int sig);
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !exited_; }
  // Everything the child wrote to stderr so far.
  const std::string& log() const;

 private:
  // Appends what the child wrote since the last read to pending_ (lines WaitForLine has not
  // looked at) and log_ (everything); false if nothing.
  bool ReadMore() const;
  // The child has exited (whether or not Wait collected it).
  bool Exited() const;
  void DrainStderr();
  pid_t pid_ = -1;
  int err_fd_ = -1;  // the child's stderr: an unlinked file
  bool exited_ = false;
  mutable size_t read_offset_ = 0;
  mutable std::string pending_, log_;
};

// GET `path` from "host:port" with Connection: close; the raw response, "" on failure.
std::string HttpGet(const std::string& address, const std::string& path);

// A TCP port on 127.0.0.1 that was free a moment ago: a random one below the kernel's
// ephemeral port range (so that no port-0 listener or outgoing connection takes it meanwhile).
int PickFreePort();

}  // namespace herald::testing
