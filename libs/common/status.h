// Status helpers on top of absl::Status / absl::StatusOr, the error currency across Herald's
// library boundaries (see CONVENTIONS.md).
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define HERALD_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status herald_status_ = (expr);          \
    if (!herald_status_.ok()) return herald_status_; \
  } while (0)

#define HERALD_STATUS_CONCAT_INNER_(a, b) a##b
#define HERALD_STATUS_CONCAT_(a, b) HERALD_STATUS_CONCAT_INNER_(a, b)

// `HERALD_ASSIGN_OR_RETURN(auto x, Foo());` declares/assigns from an absl::StatusOr, or returns
// its status from the enclosing function.
#define HERALD_ASSIGN_OR_RETURN(lhs, expr) \
  HERALD_ASSIGN_OR_RETURN_IMPL_(HERALD_STATUS_CONCAT_(herald_statusor_, __LINE__), lhs, expr)
#define HERALD_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                                  \
  if (!var.ok()) return std::move(var).status();      \
  lhs = std::move(var).value()

namespace herald {

// Maps an errno value to the closest absl::StatusCode and keeps strerror() and `context` in the
// message, e.g. ErrnoToStatus(ENOENT, "open /x") -> NotFound("open /x: No such file or directory").
absl::Status ErrnoToStatus(int err, std::string_view context);

}  // namespace herald
