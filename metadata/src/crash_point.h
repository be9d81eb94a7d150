// Test-only crash points inside AtomicWriteFile, driven by the same environment as the
// manager's (imaged/manager/crash_point.h, which lists every point): IMAGED_CRASH_AT=<point>[:<n>]
// SIGKILLs the process at the n-th hit, IMAGED_CRASH_TRACE=<file> logs every hit. metadata/ does
// not depend on the manager, hence this small twin. Read once; one bool load when unset.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace imaged::metadata::internal {

struct CrashConfig {
  std::string point;
  unsigned long nth = 1;
  std::string trace;
  bool armed = false;
};

inline const CrashConfig& CrashPointConfig() {
  static const CrashConfig config = [] {
    CrashConfig c;
    if (const char* at = std::getenv("IMAGED_CRASH_AT"); at && *at) {
      std::string s = at;
      if (auto colon = s.rfind(':'); colon != std::string::npos) {
        c.nth = std::strtoul(s.c_str() + colon + 1, nullptr, 10);
        if (c.nth == 0) c.nth = 1;
        s.resize(colon);
      }
      c.point = s;
    }
    if (const char* t = std::getenv("IMAGED_CRASH_TRACE"); t && *t) c.trace = t;
    c.armed = !c.point.empty() || !c.trace.empty();
    return c;
  }();
  return config;
}

inline void CrashPoint(const char* point) {
  const CrashConfig& c = CrashPointConfig();
  if (!c.armed) return;
  if (!c.trace.empty()) {
    int fd = open(c.trace.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
      std::string line = std::string(point) + "\n";
      (void)!write(fd, line.data(), line.size());
      close(fd);
    }
  }
  static std::atomic<unsigned long> hits{0};
  if (c.point == point && hits.fetch_add(1) + 1 == c.nth) raise(SIGKILL);
}

}  // namespace imaged::metadata::internal
