#include "libs/common/status.h"

#include <cerrno>
#include <cstring>

#include "libs/common/strings.h"

namespace herald {

absl::Status ErrnoToStatus(int err, std::string_view context) {
  absl::StatusCode code;
  switch (err) {
    case 0:
      return absl::OkStatus();
    case ENOENT:
    case ESRCH:
      code = absl::StatusCode::kNotFound;
      break;
    case EEXIST:
    case EADDRINUSE:
      code = absl::StatusCode::kAlreadyExists;
      break;
    case EACCES:
    case EPERM:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case EINVAL:
    case ENAMETOOLONG:
    case EAFNOSUPPORT:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case ENOBUFS:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case ETIMEDOUT:
      code = absl::StatusCode::kDeadlineExceeded;
      break;
    case EAGAIN:
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
    case ENETUNREACH:
    case EHOSTUNREACH:
      code = absl::StatusCode::kUnavailable;
      break;
    case ECANCELED:
      code = absl::StatusCode::kCancelled;
      break;
    default:
      code = absl::StatusCode::kInternal;
      break;
  }
  return absl::Status(code, StrCat(context, ": ", std::strerror(err)));
}

}  // namespace herald
