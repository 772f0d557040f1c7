// Error type of the whole library: every failure is an adapters::Error whose message names the
// file, key or option at fault, what was expected and what was found, and (optionally) a hint.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace adapters {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
  Error(const std::string& message, const std::string& hint)
      : std::runtime_error(hint.empty() ? message : message + " (hint: " + hint + ")") {}
};

// A valid request for something this build does not implement (an architecture, a method, a
// composition block): distinct from bad input so callers can report "unsupported".
class NotSupported : public Error {
 public:
  using Error::Error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, T&& first, Rest&&... rest) {
  os << std::forward<T>(first);
  append(os, std::forward<Rest>(rest)...);
}
}  // namespace detail

// Concatenates its arguments with operator<< : str("expected ", 3, " found ", n).
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  detail::append(os, std::forward<Args>(args)...);
  return os.str();
}

// Throws adapters::Error unless `cond` holds. The message is built only on failure.
#define ADAPTERS_CHECK(cond, ...)                              \
  do {                                                         \
    if (!(cond)) throw ::adapters::Error(::adapters::str(__VA_ARGS__)); \
  } while (0)

}  // namespace adapters
