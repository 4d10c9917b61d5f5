// Typed configuration: each service declares its options once, bound to fields of its config
// struct, and they are filled from (lowest to highest precedence) defaults, a YAML file,
// environment variables and command-line flags.
//
// An option named "admin.listen" is written
//   in the file as      admin: { listen: "0.0.0.0:8081" }   (nested maps form the dotted key)
//   as a flag as        --admin.listen=0.0.0.0:8081   or   --admin.listen 0.0.0.0:8081
//   in the environment  HERALD_ADMIN_LISTEN=0.0.0.0:8081    ('.' becomes '_', upper-cased)
// Unknown keys in a file or on the command line are errors; unknown HERALD_* variables are
// ignored, since the environment is shared with other tools.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace herald {

// A byte count, written "4096", "64KiB", "16MiB", "1GiB", "10MB" (KB/MB/GB are powers of 1000).
struct ByteSize {
  uint64_t bytes = 0;
};

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text);
absl::StatusOr<bool> ParseBool(std::string_view text);

class ConfigSchema {
 public:
  using Field = std::variant<std::string*, bool*, int*, int64_t*, uint32_t*, uint64_t*, double*,
                             absl::Duration*, ByteSize*, std::vector<std::string>*>;

  struct Option {
    std::string key;
    Field field;
    std::string help;
    std::string default_text;  // the field's value when it was registered
    std::string source = "default";
  };

  explicit ConfigSchema(std::string env_prefix = "HERALD_") : env_prefix_(std::move(env_prefix)) {}

  // Registers an option; the field's current value is its default. Keys are lower-case,
  // '.'-separated, made of [a-z0-9_]. The field must outlive the schema.
  template <typename T>
  void Add(std::string key, T* field, std::string help) {
    AddField(std::move(key), Field(field), std::move(help));
  }

  // Sets one option from its text form. `source` names where the value came from in errors.
  absl::Status Set(std::string_view key, std::string_view value, std::string_view source);

  absl::Status LoadYamlFile(const std::string& path);
  absl::Status LoadYamlString(std::string_view yaml, std::string_view source);
  // Applies every "<prefix><KEY>" variable that names a known option.
  absl::Status ApplyEnvironment(char** envp);
  // Applies "--key=value" / "--key value" / "--flag" (booleans). Anything else is an error.
  absl::Status ApplyFlags(const std::vector<std::string>& args);

  // The environment variable name of an option key, e.g. "admin.listen" -> HERALD_ADMIN_LISTEN.
  std::string EnvName(std::string_view key) const;
  // A Markdown table of every option: key, flag, environment variable, default, description.
  std::string Markdown() const;
  // The effective configuration, one "key = value  (source)" line per option.
  std::string Dump() const;

  const std::vector<Option>& options() const { return options_; }

 private:
  void AddField(std::string key, Field field, std::string help);
  Option* Find(std::string_view key);

  std::string env_prefix_;
  std::vector<Option> options_;
};

// What a main should do after LoadCommandLine.
enum class LoadOutcome { kRun, kExitOk };

// Standard startup for Herald binaries. Handles --help, --help-config (Markdown table),
// --version and --config FILE, then loads file < environment < flags into `schema`.
// Prints help/version to stdout itself; returns an error for bad input.
absl::StatusOr<LoadOutcome> LoadCommandLine(ConfigSchema& schema, int argc, char** argv,
                                            char** envp, std::string_view usage);

}  // namespace herald
