// The MQTT edge's password file: who may connect with which password (like mosquitto's
// password_file, in Herald's own format; docs/configuration.md "Authentication and ACL files").
//
//   # comment
//   alice:$pbkdf2-sha512$210000$<salt, base64>$<hash, base64>
//
// Each password is stored as PBKDF2-HMAC-SHA-512 (RFC 8018 §5.2) of the UTF-8 password with a
// random salt; the iteration count is read from each line, so lines written with different
// counts can live in one file. `heraldctl passwd` writes these lines.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herald::auth {

// OWASP's 2023 recommendation for PBKDF2-HMAC-SHA-512: about 100-200 ms of one core per hash.
inline constexpr int kDefaultPbkdf2Iterations = 210000;
// Iteration counts a password file may name; the upper bound keeps a typo from turning every
// CONNECT into minutes of CPU.
inline constexpr int kMinPbkdf2Iterations = 1;
inline constexpr int kMaxPbkdf2Iterations = 10'000'000;
inline constexpr size_t kPasswordSaltBytes = 16;
inline constexpr size_t kPasswordHashBytes = 64;
// Verify results remembered per PasswordFile (see PasswordFile::Verify).
inline constexpr size_t kDefaultVerifyCacheEntries = 10000;

// The part after "user:" of a password file line for `password`, with a fresh
// kPasswordSaltBytes salt from OpenSSL's RAND_bytes: "$pbkdf2-sha512$<iterations>$<salt>$<hash>"
// (standard base64 with padding). Errors: InvalidArgument for an empty password or iterations
// outside [kMinPbkdf2Iterations, kMaxPbkdf2Iterations]; Internal if OpenSSL fails.
absl::StatusOr<std::string> HashPassword(std::string_view password,
                                         int iterations = kDefaultPbkdf2Iterations);

// HashPassword with a given salt (at least 8 bytes): deterministic, for tests and known answers.
absl::StatusOr<std::string> HashPasswordWithSalt(std::string_view password, std::string_view salt,
                                                 int iterations);

// Whether `user` can be written to a password file: 1..65,535 bytes of MQTT UTF-8 (§1.5.4)
// without ':', control characters, leading '#' or leading/trailing spaces or tabs.
absl::Status ValidatePasswordFileUser(std::string_view user);

// A parsed password file. Immutable after Parse/Load apart from the internal verify cache, so
// every method may be called from any thread at the same time. Reloading the file means
// parsing a new PasswordFile (its cache starts empty) and swapping it in.
class PasswordFile {
 public:
  struct CacheStats {
    uint64_t hits = 0;
    uint64_t misses = 0;
    size_t entries = 0;
  };

  // Parses `text`. Blank lines and lines whose first non-blank character is '#' are ignored;
  // every other line must be "user:$pbkdf2-sha512$<iterations>$<salt>$<hash>" (surrounding
  // blanks ignored), where iterations is in [kMinPbkdf2Iterations, kMaxPbkdf2Iterations], the
  // salt decodes to 8..1024 bytes and the hash to kPasswordHashBytes. A user may appear once.
  // Errors: InvalidArgument "<name_for_errors>:<line>: <reason>" for the first bad line.
  // `cache_entries` bounds the verify cache; 0 turns it off.
  static absl::StatusOr<PasswordFile> Parse(std::string_view text, std::string_view name_for_errors,
                                            size_t cache_entries = kDefaultVerifyCacheEntries);
  // Reads and parses the file at `path` (errors name the path).
  static absl::StatusOr<PasswordFile> Load(const std::string& path,
                                           size_t cache_entries = kDefaultVerifyCacheEntries);

  PasswordFile(PasswordFile&&) noexcept;
  PasswordFile& operator=(PasswordFile&&) noexcept;
  ~PasswordFile();

  // Whether `password` is `user`'s password. Costs one PBKDF2 at the line's iteration count
  // (~100+ ms of CPU at the default): call it off the event loop. The hash comparison is
  // constant-time (CRYPTO_memcmp). An unknown user is refused at once, without hashing, so the
  // answer's timing tells whether a user name exists; user names are not treated as secret.
  //
  // Results are remembered in a bounded LRU cache keyed by (user, HMAC-SHA-256 of the password
  // under a random key drawn when the file was parsed), so a reconnect storm of clients with
  // the same credentials costs one PBKDF2 per distinct (user, password), and a wrong password
  // can never hit the entry of the right one. The cache holds no password, but a memory dump
  // of the process (key included) would allow guessing cached passwords at HMAC speed rather
  // than PBKDF2 speed; pass cache_entries = 0 where that matters.
  bool Verify(std::string_view user, std::string_view password) const;

  bool HasUser(std::string_view user) const;
  // Number of users in the file.
  size_t size() const { return users_.size(); }
  // Counters of the verify cache, e.g. for metrics.
  CacheStats cache_stats() const;

 private:
  struct Entry {
    int iterations = 0;
    std::string salt;
    std::string hash;
  };
  class VerifyCache;

  PasswordFile();

  absl::flat_hash_map<std::string, Entry> users_;
  std::unique_ptr<VerifyCache> cache_;  // null when caching is off
};

// Editing helpers for `heraldctl passwd`. Both keep every other line (comments included) in
// place and end the text with a newline; "\r\n" line ends become "\n".
//
// `text` with `user`'s line replaced by "user:<encoded_hash>", or with that line appended when
// `user` has none. `user` must pass ValidatePasswordFileUser.
std::string SetPasswordFileEntry(std::string_view text, std::string_view user,
                                 std::string_view encoded_hash);
// `text` without `user`'s line; `*removed` tells whether there was one.
std::string RemovePasswordFileEntry(std::string_view text, std::string_view user, bool* removed);

}  // namespace herald::auth
