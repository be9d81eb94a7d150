// Reading small sysfs attributes without exceptions. Private to dm/.
#pragma once

#include <optional>
#include <string>

namespace imaged::dm::internal {

// The attribute's text without trailing newlines/spaces; nullopt on any failure. sysfs files
// vanish and start failing reads (ENODEV) when their device goes away, e.g. a loop detached by
// another process between our open and read, so every error is an ordinary "not there" answer.
// Never throws (std::ifstream + istreambuf_iterator throws ios_base::failure on a read error).
std::optional<std::string> ReadSysfs(const std::string& path);
// The same on an already open fd, read from offset 0.
std::optional<std::string> ReadSysfsFd(int fd);

}  // namespace imaged::dm::internal
