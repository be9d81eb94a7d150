// See crash_point.h. Not for production use: nothing sets these variables outside tests.
#include "crash_point.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace imaged::manager {
namespace {

struct CrashConfig {
  std::string point;  // empty: never crash
  unsigned long nth = 1;
  std::string trace;  // empty: no trace
};

CrashConfig ReadConfig() {
  CrashConfig c;
  if (const char* at = std::getenv("IMAGED_CRASH_AT"); at && *at) {
    std::string s = at;
    auto colon = s.rfind(':');
    if (colon != std::string::npos) {
      c.nth = std::strtoul(s.c_str() + colon + 1, nullptr, 10);
      if (c.nth == 0) c.nth = 1;
      s.resize(colon);
    }
    c.point = s;
  }
  if (const char* trace = std::getenv("IMAGED_CRASH_TRACE"); trace && *trace) c.trace = trace;
  return c;
}

const CrashConfig& Config() {
  static const CrashConfig config = ReadConfig();
  return config;
}

std::atomic<unsigned long> hits{0};

}  // namespace

const bool kCrashPointsArmed = !Config().point.empty() || !Config().trace.empty();

void CrashPointHit(const char* point) {
  const CrashConfig& c = Config();
  if (!c.trace.empty()) {
    // One write per line with O_APPEND, so concurrent hits never interleave within a line.
    int fd = open(c.trace.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
      std::string line = std::string(point) + "\n";
      (void)!write(fd, line.data(), line.size());
      close(fd);
    }
  }
  if (c.point.empty() || c.point != point) return;
  if (hits.fetch_add(1) + 1 == c.nth) raise(SIGKILL);
}

}  // namespace imaged::manager
