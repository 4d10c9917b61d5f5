#include "libs/auth/password_file.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <charconv>
#include <climits>
#include <list>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/synchronization/mutex.h"
#include "libs/auth/text_file.h"
#include "libs/common/strings.h"
#include "libs/protocol/mqtt/topic.h"

namespace herald::auth {
namespace {

constexpr std::string_view kScheme = "$pbkdf2-sha512$";
constexpr size_t kMinSaltBytes = 8;
constexpr size_t kMaxSaltBytes = 1024;
constexpr size_t kCacheKeyBytes = 32;

// A non-null pointer to the bytes of `s`, which may be an empty view with a null data().
const unsigned char* Bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.empty() ? "" : s.data());
}

std::string Base64(std::string_view bytes) { return absl::Base64Escape(AsAbsl(bytes)); }

// PBKDF2-HMAC-SHA-512 of `password` into `out_len` bytes; nullopt if OpenSSL fails.
std::optional<std::string> Pbkdf2Sha512(std::string_view password, std::string_view salt,
                                        int iterations, size_t out_len) {
  if (password.size() > INT_MAX || salt.size() > INT_MAX || out_len > INT_MAX) return std::nullopt;
  std::string out(out_len, '\0');
  if (PKCS5_PBKDF2_HMAC(
          reinterpret_cast<const char*>(Bytes(password)), static_cast<int>(password.size()),
          Bytes(salt), static_cast<int>(salt.size()), iterations, EVP_sha512(),
          static_cast<int>(out_len), reinterpret_cast<unsigned char*>(out.data())) != 1) {
    return std::nullopt;
  }
  return out;
}

bool ParseIterations(std::string_view s, int* out) {
  if (s.empty() || s[0] == '+' || s[0] == '-') return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && *out >= kMinPbkdf2Iterations &&
         *out <= kMaxPbkdf2Iterations;
}

// The user of a non-comment, non-blank password file line (already trimmed): the text before
// the first ':'.
std::string_view UserOfLine(std::string_view trimmed) {
  return trimmed.substr(0, trimmed.find(':'));
}

bool IsEntryLine(std::string_view trimmed) { return !trimmed.empty() && trimmed[0] != '#'; }

}  // namespace

// Bounded LRU map from cache key to Verify result. Thread-safe.
class PasswordFile::VerifyCache {
 public:
  explicit VerifyCache(size_t capacity) : capacity_(capacity) {
    if (RAND_bytes(key_, sizeof(key_)) != 1) {
      // Without a secret key the cache would be a table of fast password hashes: do not cache.
      capacity_ = 0;
    }
  }

  // (fixed-length MAC of the password) + user: unambiguous without a separator.
  std::optional<std::string> Key(std::string_view user, std::string_view password) const {
    if (capacity_ == 0) return std::nullopt;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (HMAC(EVP_sha256(), key_, sizeof(key_), Bytes(password), password.size(), mac, &mac_len) ==
        nullptr) {
      return std::nullopt;
    }
    std::string key(reinterpret_cast<const char*>(mac), mac_len);
    key.append(user);
    return key;
  }

  std::optional<bool> Lookup(const std::string& key) {
    absl::MutexLock lock(&mu_);
    auto it = map_.find(key);
    if (it == map_.end()) {
      ++misses_;
      return std::nullopt;
    }
    ++hits_;
    order_.splice(order_.begin(), order_, it->second.second);
    return it->second.first;
  }

  void Insert(const std::string& key, bool result) {
    absl::MutexLock lock(&mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {  // another thread verified the same credentials meanwhile
      it->second.first = result;
      return;
    }
    while (map_.size() >= capacity_ && !order_.empty()) {
      map_.erase(order_.back());
      order_.pop_back();
    }
    order_.push_front(key);
    map_.emplace(key, std::make_pair(result, order_.begin()));
  }

  CacheStats Stats() const {
    absl::MutexLock lock(&mu_);
    return CacheStats{.hits = hits_, .misses = misses_, .entries = map_.size()};
  }

 private:
  size_t capacity_;
  unsigned char key_[kCacheKeyBytes];
  mutable absl::Mutex mu_;
  // Most recently used first.
  std::list<std::string> order_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::pair<bool, std::list<std::string>::iterator>> map_
      ABSL_GUARDED_BY(mu_);
  uint64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::StatusOr<std::string> HashPasswordWithSalt(std::string_view password, std::string_view salt,
                                                 int iterations) {
  if (password.empty()) return absl::InvalidArgumentError("the password is empty");
  if (iterations < kMinPbkdf2Iterations || iterations > kMaxPbkdf2Iterations) {
    return absl::InvalidArgumentError(StrCat("iterations must be in [", kMinPbkdf2Iterations, ", ",
                                             kMaxPbkdf2Iterations, "], not ", iterations));
  }
  if (salt.size() < kMinSaltBytes || salt.size() > kMaxSaltBytes) {
    return absl::InvalidArgumentError(
        StrCat("the salt must be ", kMinSaltBytes, "..", kMaxSaltBytes, " bytes"));
  }
  auto hash = Pbkdf2Sha512(password, salt, iterations, kPasswordHashBytes);
  if (!hash.has_value()) return absl::InternalError("PKCS5_PBKDF2_HMAC failed");
  return StrCat(kScheme, iterations, "$", Base64(salt), "$", Base64(*hash));
}

absl::StatusOr<std::string> HashPassword(std::string_view password, int iterations) {
  unsigned char salt[kPasswordSaltBytes];
  if (RAND_bytes(salt, sizeof(salt)) != 1) return absl::InternalError("RAND_bytes failed");
  return HashPasswordWithSalt(
      password, std::string_view(reinterpret_cast<const char*>(salt), sizeof(salt)), iterations);
}

absl::Status ValidatePasswordFileUser(std::string_view user) {
  if (user.empty()) return absl::InvalidArgumentError("the user name is empty");
  if (user.size() > 65535) return absl::InvalidArgumentError("the user name is too long");
  if (!mqtt::IsValidMqttUtf8(user, /*reject_control_characters=*/true)) {
    return absl::InvalidArgumentError("the user name is not UTF-8 or has control characters");
  }
  if (user.find(':') != std::string_view::npos) {
    return absl::InvalidArgumentError("the user name contains ':'");
  }
  if (user[0] == '#') return absl::InvalidArgumentError("the user name starts with '#'");
  if (TrimBlanks(user).size() != user.size()) {
    return absl::InvalidArgumentError("the user name starts or ends with a blank");
  }
  return absl::OkStatus();
}

PasswordFile::PasswordFile() = default;
PasswordFile::PasswordFile(PasswordFile&&) noexcept = default;
PasswordFile& PasswordFile::operator=(PasswordFile&&) noexcept = default;
PasswordFile::~PasswordFile() = default;

absl::StatusOr<PasswordFile> PasswordFile::Parse(std::string_view text,
                                                 std::string_view name_for_errors,
                                                 size_t cache_entries) {
  PasswordFile file;
  std::vector<std::string_view> lines = SplitLines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = TrimBlanks(lines[i]);
    if (!IsEntryLine(line)) continue;
    auto fail = [&](std::string_view why) {
      return absl::InvalidArgumentError(StrCat(name_for_errors, ":", i + 1, ": ", why));
    };
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return fail("expected user:$pbkdf2-sha512$...");
    std::string_view user = line.substr(0, colon);
    if (absl::Status s = ValidatePasswordFileUser(user); !s.ok()) {
      return fail(AsStd(s.message()));
    }
    std::string_view encoded = line.substr(colon + 1);
    if (!encoded.starts_with(kScheme)) {
      return fail("unknown hash scheme (expected $pbkdf2-sha512$)");
    }
    encoded.remove_prefix(kScheme.size());
    // <iterations>$<salt>$<hash>
    size_t d1 = encoded.find('$');
    size_t d2 = d1 == std::string_view::npos ? d1 : encoded.find('$', d1 + 1);
    if (d2 == std::string_view::npos || encoded.find('$', d2 + 1) != std::string_view::npos) {
      return fail("expected $pbkdf2-sha512$<iterations>$<salt>$<hash>");
    }
    Entry entry;
    if (!ParseIterations(encoded.substr(0, d1), &entry.iterations)) {
      return fail(StrCat("iterations must be a number in [", kMinPbkdf2Iterations, ", ",
                         kMaxPbkdf2Iterations, "]"));
    }
    std::string_view salt64 = encoded.substr(d1 + 1, d2 - d1 - 1);
    std::string_view hash64 = encoded.substr(d2 + 1);
    if (!absl::Base64Unescape(AsAbsl(salt64), &entry.salt) || entry.salt.size() < kMinSaltBytes ||
        entry.salt.size() > kMaxSaltBytes) {
      return fail(
          StrCat("the salt must be base64 of ", kMinSaltBytes, "..", kMaxSaltBytes, " bytes"));
    }
    if (!absl::Base64Unescape(AsAbsl(hash64), &entry.hash) ||
        entry.hash.size() != kPasswordHashBytes) {
      return fail(StrCat("the hash must be base64 of ", kPasswordHashBytes, " bytes"));
    }
    if (!file.users_.emplace(std::string(user), std::move(entry)).second) {
      return fail(StrCat("user '", user, "' appears twice"));
    }
  }
  if (cache_entries > 0) file.cache_ = std::make_unique<VerifyCache>(cache_entries);
  return file;
}

absl::StatusOr<PasswordFile> PasswordFile::Load(const std::string& path, size_t cache_entries) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path, cache_entries);
}

bool PasswordFile::Verify(std::string_view user, std::string_view password) const {
  auto it = users_.find(AsAbsl(user));
  if (it == users_.end()) return false;
  const Entry& entry = it->second;
  std::optional<std::string> key;
  if (cache_ != nullptr) {
    key = cache_->Key(user, password);
    if (key.has_value()) {
      if (std::optional<bool> cached = cache_->Lookup(*key); cached.has_value()) return *cached;
    }
  }
  std::optional<std::string> hash =
      Pbkdf2Sha512(password, entry.salt, entry.iterations, entry.hash.size());
  if (!hash.has_value()) return false;  // not cached: OpenSSL failing is not an answer
  bool ok = CRYPTO_memcmp(hash->data(), entry.hash.data(), entry.hash.size()) == 0;
  if (key.has_value()) cache_->Insert(*key, ok);
  return ok;
}

bool PasswordFile::HasUser(std::string_view user) const { return users_.contains(AsAbsl(user)); }

PasswordFile::CacheStats PasswordFile::cache_stats() const {
  return cache_ == nullptr ? CacheStats{} : cache_->Stats();
}

std::string SetPasswordFileEntry(std::string_view text, std::string_view user,
                                 std::string_view encoded_hash) {
  std::string out;
  bool replaced = false;
  for (std::string_view line : SplitLines(text)) {
    std::string_view trimmed = TrimBlanks(line);
    if (IsEntryLine(trimmed) && UserOfLine(trimmed) == user) {
      if (replaced) continue;  // a duplicate line: keep only the new entry
      StrAppend(&out, user, ":", encoded_hash, "\n");
      replaced = true;
      continue;
    }
    StrAppend(&out, line, "\n");
  }
  if (!replaced) StrAppend(&out, user, ":", encoded_hash, "\n");
  return out;
}

std::string RemovePasswordFileEntry(std::string_view text, std::string_view user, bool* removed) {
  std::string out;
  *removed = false;
  for (std::string_view line : SplitLines(text)) {
    std::string_view trimmed = TrimBlanks(line);
    if (IsEntryLine(trimmed) && UserOfLine(trimmed) == user) {
      *removed = true;
      continue;
    }
    StrAppend(&out, line, "\n");
  }
  return out;
}

}  // namespace herald::auth
