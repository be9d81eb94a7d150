// The daemon's config parser: any bytes either parse or give an error, never crash, and a
// failed parse leaves the config untouched.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  imaged::DaemonConfig config;
  const imaged::DaemonConfig before = config;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto result = imaged::ParseConfig(text, config);
  if (!result && (config.data_dir != before.data_dir || config.socket_path != before.socket_path)) {
    __builtin_trap();
  }
  return 0;
}
