// vm-label tests need device-mapper, which only the guest kernel has (tests/vm/run). On the host
// they skip with a reason; inside the guest (IMAGED_IN_VM=1) a missing device-mapper is a
// failure, so a broken guest can never pass as "all skipped".
//
// Use at the top of each vm test body or fixture SetUp():
//   #include "../vm/vm_env.h"
//   IMAGED_REQUIRE_DEVICE_MAPPER();
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

namespace imaged::test {

inline bool InVm() {
  const char* v = std::getenv("IMAGED_IN_VM");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// Empty when /dev/mapper/control opens (which also autoloads dm_mod in the guest), else why not.
inline std::string DeviceMapperUnavailableReason() {
  int fd = ::open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    ::close(fd);
    return {};
  }
  return std::string("cannot open /dev/mapper/control: ") + std::strerror(errno);
}

}  // namespace imaged::test

#define IMAGED_REQUIRE_DEVICE_MAPPER()                                                     \
  do {                                                                                     \
    const std::string imaged_dm_reason_ = ::imaged::test::DeviceMapperUnavailableReason(); \
    if (!imaged_dm_reason_.empty()) {                                                      \
      if (::imaged::test::InVm()) {                                                        \
        FAIL() << "inside the guest (IMAGED_IN_VM=1) but " << imaged_dm_reason_;           \
      }                                                                                    \
      GTEST_SKIP() << "needs device-mapper (run via tests/vm/run): " << imaged_dm_reason_; \
    }                                                                                      \
  } while (0)
