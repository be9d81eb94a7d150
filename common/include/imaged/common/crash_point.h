// Test-only crash points: IMAGED_CRASH_POINT("create.pieces_done") SIGKILLs the process when the
// environment says so, leaving the disk exactly as a crash at that step would. tests/reliability
// uses them to prove that every durable step of every operation recovers
// (docs/crash-safety.md; manager/crash_point.h lists the points).
//
//   IMAGED_CRASH_AT=<point>        kill at the first hit of <point>
//   IMAGED_CRASH_AT=<point>:<n>    kill at the n-th hit (1-based) of <point> in this process
//   IMAGED_CRASH_TRACE=<file>      append "<point>\n" to <file> at every hit (to enumerate them)
//
// Nothing sets these outside tests. The environment is read once per process; unset, a crash
// point costs one load of a bool. Header-only so that every library can have points without
// depending on another.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace imaged {

struct CrashPointConfig {
  std::string point;  // empty: never crash
  unsigned long nth = 1;
  std::string trace;  // empty: no trace
  bool armed = false;
};

// A function-local static of an inline function is one object in the whole program.
inline const CrashPointConfig& CrashPoints() {
  static const CrashPointConfig config = [] {
    CrashPointConfig c;
    if (const char* at = std::getenv("IMAGED_CRASH_AT"); at && *at) {
      std::string s = at;
      if (auto colon = s.rfind(':'); colon != std::string::npos) {
        c.nth = std::strtoul(s.c_str() + colon + 1, nullptr, 10);
        if (c.nth == 0) c.nth = 1;
        s.resize(colon);
      }
      c.point = s;
    }
    if (const char* trace = std::getenv("IMAGED_CRASH_TRACE"); trace && *trace) c.trace = trace;
    c.armed = !c.point.empty() || !c.trace.empty();
    return c;
  }();
  return config;
}

inline void CrashPointHit(const char* point) {
  const CrashPointConfig& c = CrashPoints();
  if (!c.trace.empty()) {
    // One write per line with O_APPEND, so concurrent hits never interleave within a line.
    int fd = ::open(c.trace.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
      std::string line = std::string(point) + "\n";
      (void)!::write(fd, line.data(), line.size());
      ::close(fd);
    }
  }
  static std::atomic<unsigned long> hits{0};  // hits of the armed point only
  if (c.point == point && hits.fetch_add(1) + 1 == c.nth) ::raise(SIGKILL);
}

}  // namespace imaged

#define IMAGED_CRASH_POINT(point)                                  \
  do {                                                             \
    if (::imaged::CrashPoints().armed) ::imaged::CrashPointHit(point); \
  } while (0)
