#include "libs/common/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "libs/common/status.h"
#include "libs/common/strings.h"
#include "libs/common/version.h"

namespace herald {
namespace {

template <typename Int>
absl::Status ParseInt(std::string_view text, Int* out) {
  int64_t wide;
  if constexpr (std::is_same_v<Int, uint64_t>) {
    uint64_t v;
    if (!absl::SimpleAtoi(AsAbsl(text), &v))
      return absl::InvalidArgumentError("not an unsigned integer");
    *out = v;
    return absl::OkStatus();
  } else {
    if (!absl::SimpleAtoi(AsAbsl(text), &wide)) return absl::InvalidArgumentError("not an integer");
    if (wide < static_cast<int64_t>(std::numeric_limits<Int>::min()) ||
        wide > static_cast<int64_t>(std::numeric_limits<Int>::max())) {
      return absl::OutOfRangeError("integer out of range");
    }
    *out = static_cast<Int>(wide);
    return absl::OkStatus();
  }
}

std::string FormatByteSize(uint64_t b) {
  static constexpr struct {
    uint64_t unit;
    const char* name;
  } kUnits[] = {{1ULL << 30, "GiB"}, {1ULL << 20, "MiB"}, {1ULL << 10, "KiB"}};
  for (const auto& u : kUnits) {
    if (b != 0 && b % u.unit == 0) return StrCat(b / u.unit, u.name);
  }
  return StrCat(b);
}

std::string FormatField(const ConfigSchema::Field& field) {
  struct Visitor {
    std::string operator()(std::string* v) const { return *v; }
    std::string operator()(bool* v) const { return *v ? "true" : "false"; }
    std::string operator()(int* v) const { return StrCat(*v); }
    std::string operator()(int64_t* v) const { return StrCat(*v); }
    std::string operator()(uint32_t* v) const { return StrCat(*v); }
    std::string operator()(uint64_t* v) const { return StrCat(*v); }
    std::string operator()(double* v) const { return StrCat(*v); }
    std::string operator()(absl::Duration* v) const { return absl::FormatDuration(*v); }
    std::string operator()(ByteSize* v) const { return FormatByteSize(v->bytes); }
    std::string operator()(std::vector<std::string>* v) const { return absl::StrJoin(*v, ","); }
  };
  return std::visit(Visitor{}, field);
}

absl::Status ParseInto(const ConfigSchema::Field& field, std::string_view text) {
  struct Visitor {
    std::string_view text;
    absl::Status operator()(std::string* v) const {
      *v = std::string(text);
      return absl::OkStatus();
    }
    absl::Status operator()(bool* v) const {
      HERALD_ASSIGN_OR_RETURN(*v, ParseBool(text));
      return absl::OkStatus();
    }
    absl::Status operator()(int* v) const { return ParseInt(text, v); }
    absl::Status operator()(int64_t* v) const { return ParseInt(text, v); }
    absl::Status operator()(uint32_t* v) const { return ParseInt(text, v); }
    absl::Status operator()(uint64_t* v) const { return ParseInt(text, v); }
    absl::Status operator()(double* v) const {
      if (!absl::SimpleAtod(AsAbsl(text), v)) return absl::InvalidArgumentError("not a number");
      return absl::OkStatus();
    }
    absl::Status operator()(absl::Duration* v) const {
      if (!absl::ParseDuration(AsAbsl(text), v) || *v < absl::ZeroDuration()) {
        return absl::InvalidArgumentError("not a duration (examples: 500ms, 10s, 1h30m)");
      }
      return absl::OkStatus();
    }
    absl::Status operator()(ByteSize* v) const {
      HERALD_ASSIGN_OR_RETURN(v->bytes, ParseByteSize(text));
      return absl::OkStatus();
    }
    absl::Status operator()(std::vector<std::string>* v) const {
      v->clear();
      for (absl::string_view part : absl::StrSplit(AsAbsl(text), ',', absl::SkipWhitespace())) {
        v->emplace_back(absl::StripAsciiWhitespace(part));
      }
      return absl::OkStatus();
    }
  };
  return std::visit(Visitor{text}, field);
}

bool ValidKey(std::string_view key) {
  if (key.empty() || key.front() == '.' || key.back() == '.') return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
  });
}

absl::Status FlattenYaml(ConfigSchema& schema, const YAML::Node& node, const std::string& prefix,
                         std::string_view source) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      for (const auto& kv : node) {
        std::string key = kv.first.as<std::string>();
        std::string full = prefix.empty() ? key : StrCat(prefix, ".", key);
        HERALD_RETURN_IF_ERROR(FlattenYaml(schema, kv.second, full, source));
      }
      return absl::OkStatus();
    case YAML::NodeType::Sequence: {
      std::vector<std::string> items;
      for (const auto& item : node) {
        if (!item.IsScalar()) {
          return absl::InvalidArgumentError(
              StrCat(source, ": ", prefix, ": list items must be scalars"));
        }
        items.push_back(item.as<std::string>());
      }
      return schema.Set(prefix, absl::StrJoin(items, ","), source);
    }
    case YAML::NodeType::Scalar:
      return schema.Set(prefix, node.as<std::string>(), source);
    case YAML::NodeType::Null:
      if (prefix.empty()) return absl::OkStatus();  // an empty file
      return absl::InvalidArgumentError(StrCat(source, ": ", prefix, ": missing value"));
    default:
      return absl::InvalidArgumentError(StrCat(source, ": unsupported YAML node"));
  }
}

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text) {
  text = AsStd(absl::StripAsciiWhitespace(AsAbsl(text)));
  size_t digits = 0;
  while (digits < text.size() && absl::ascii_isdigit(text[digits])) ++digits;
  if (digits == 0)
    return absl::InvalidArgumentError("not a byte size (examples: 4096, 64KiB, 1GiB)");
  uint64_t n;
  if (!absl::SimpleAtoi(AsAbsl(text.substr(0, digits)), &n)) {
    return absl::OutOfRangeError("byte size out of range");
  }
  std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(AsAbsl(text.substr(digits))));
  static constexpr struct {
    const char* name;
    uint64_t mult;
  } kUnits[] = {{"", 1},
                {"b", 1},
                {"k", 1ULL << 10},
                {"kib", 1ULL << 10},
                {"m", 1ULL << 20},
                {"mib", 1ULL << 20},
                {"g", 1ULL << 30},
                {"gib", 1ULL << 30},
                {"kb", 1000},
                {"mb", 1000'000},
                {"gb", 1000'000'000}};
  for (const auto& u : kUnits) {
    if (unit == u.name) {
      if (n > std::numeric_limits<uint64_t>::max() / u.mult) {
        return absl::OutOfRangeError("byte size out of range");
      }
      return n * u.mult;
    }
  }
  return absl::InvalidArgumentError(StrCat("unknown byte size unit '", unit, "'"));
}

absl::StatusOr<bool> ParseBool(std::string_view text) {
  std::string t = absl::AsciiStrToLower(AsAbsl(text));
  if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
  if (t == "false" || t == "0" || t == "no" || t == "off") return false;
  return absl::InvalidArgumentError("not a boolean (true/false)");
}

void ConfigSchema::AddField(std::string key, Field field, std::string help) {
  if (!ValidKey(key) || Find(key) != nullptr) {
    std::fprintf(stderr, "config: invalid or duplicate option key '%s'\n", key.c_str());
    std::abort();
  }
  std::string def = FormatField(field);
  options_.push_back(Option{std::move(key), field, std::move(help), std::move(def)});
}

ConfigSchema::Option* ConfigSchema::Find(std::string_view key) {
  for (auto& o : options_) {
    if (o.key == key) return &o;
  }
  return nullptr;
}

absl::Status ConfigSchema::Set(std::string_view key, std::string_view value,
                               std::string_view source) {
  Option* o = Find(key);
  if (o == nullptr) {
    return absl::InvalidArgumentError(StrCat(source, ": unknown option '", key, "'"));
  }
  absl::Status s = ParseInto(o->field, value);
  if (!s.ok()) {
    return absl::Status(s.code(),
                        StrCat(source, ": option '", key, "' value '", value, "': ", s.message()));
  }
  o->source = std::string(source);
  return absl::OkStatus();
}

absl::Status ConfigSchema::LoadYamlString(std::string_view yaml, std::string_view source) {
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsNull() && !root.IsMap()) {
      return absl::InvalidArgumentError(StrCat(source, ": top level must be a mapping"));
    }
    return FlattenYaml(*this, root, "", source);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(StrCat(source, ": ", e.what()));
  }
}

absl::Status ConfigSchema::LoadYamlFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return ErrnoToStatus(errno, StrCat("config file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return LoadYamlString(ss.str(), path);
}

std::string ConfigSchema::EnvName(std::string_view key) const {
  std::string name = env_prefix_;
  for (char c : key) name.push_back(c == '.' ? '_' : absl::ascii_toupper(c));
  return name;
}

absl::Status ConfigSchema::ApplyEnvironment(char** envp) {
  if (envp == nullptr) return absl::OkStatus();
  for (char** e = envp; *e != nullptr; ++e) {
    std::string_view entry(*e);
    if (!entry.starts_with(env_prefix_)) continue;
    size_t eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view name = entry.substr(0, eq);
    for (const auto& o : options_) {
      if (EnvName(o.key) == name) {
        HERALD_RETURN_IF_ERROR(Set(o.key, entry.substr(eq + 1), StrCat("environment ", name)));
        break;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ConfigSchema::ApplyFlags(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view arg = args[i];
    if (!arg.starts_with("--")) {
      return absl::InvalidArgumentError(StrCat("unexpected argument '", arg, "'"));
    }
    arg.remove_prefix(2);
    std::string_view key = arg;
    std::string_view value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      key = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    Option* o = Find(key);
    if (o == nullptr) {
      return absl::InvalidArgumentError(StrCat("unknown flag '--", key, "' (see --help)"));
    }
    if (!has_value) {
      if (std::holds_alternative<bool*>(o->field)) {
        // A bare boolean flag means true, unless the next argument is an explicit boolean.
        if (i + 1 < args.size() && ParseBool(args[i + 1]).ok()) {
          value = args[++i];
        } else {
          value = "true";
        }
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(StrCat("flag '--", key, "' needs a value"));
      }
    }
    HERALD_RETURN_IF_ERROR(Set(key, value, StrCat("flag --", key)));
  }
  return absl::OkStatus();
}

std::string ConfigSchema::Markdown() const {
  std::string out =
      "| option | flag | environment | default | description |\n"
      "| --- | --- | --- | --- | --- |\n";
  for (const auto& o : options_) {
    std::string def = o.default_text.empty() ? "(empty)" : StrCat("`", o.default_text, "`");
    StrAppend(&out, "| `", o.key, "` | `--", o.key, "` | `", EnvName(o.key), "` | ", def, " | ",
              o.help, " |\n");
  }
  return out;
}

std::string ConfigSchema::Dump() const {
  std::string out;
  for (const auto& o : options_) {
    StrAppend(&out, o.key, " = ", FormatField(o.field), "  (", o.source, ")\n");
  }
  return out;
}

absl::StatusOr<LoadOutcome> LoadCommandLine(ConfigSchema& schema, int argc, char** argv,
                                            char** envp, std::string_view usage) {
  std::vector<std::string> flags;
  std::string config_file;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("%.*s\n\nOptions (flag, or HERALD_* environment variable, or config file key):\n",
                  static_cast<int>(usage.size()), usage.data());
      std::printf("  --config FILE   YAML configuration file\n");
      for (const auto& o : schema.options()) {
        std::printf("  --%s (default: %s)\n      %s\n", o.key.c_str(),
                    o.default_text.empty() ? "\"\"" : o.default_text.c_str(), o.help.c_str());
      }
      return LoadOutcome::kExitOk;
    }
    if (a == "--help-config") {
      std::printf("%s", schema.Markdown().c_str());
      return LoadOutcome::kExitOk;
    }
    if (a == "--version") {
      std::printf("%s %s (%s)\n", argv[0], kHeraldVersion, kHeraldGitRevision);
      return LoadOutcome::kExitOk;
    }
    if (a == "--config" || a.starts_with("--config=")) {
      if (a == "--config") {
        if (i + 1 >= argc) return absl::InvalidArgumentError("flag '--config' needs a value");
        config_file = argv[++i];
      } else {
        config_file = std::string(a.substr(9));
      }
      continue;
    }
    flags.emplace_back(a);
  }
  if (config_file.empty()) {
    if (const char* env = std::getenv("HERALD_CONFIG"); env != nullptr) config_file = env;
  }
  if (!config_file.empty()) HERALD_RETURN_IF_ERROR(schema.LoadYamlFile(config_file));
  HERALD_RETURN_IF_ERROR(schema.ApplyEnvironment(envp));
  HERALD_RETURN_IF_ERROR(schema.ApplyFlags(flags));
  return LoadOutcome::kRun;
}

}  // namespace herald
