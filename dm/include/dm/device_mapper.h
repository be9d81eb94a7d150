// Device-mapper devices over libdevmapper: create from a Table, swap tables, remove, list and
// inspect. Works with udev (waits for it through libdevmapper's cookies) and without it
// (DM_DISABLE_UDEV=1 or no udevd running: libdevmapper creates /dev/mapper nodes itself).
// Only devices named by the caller are touched; there is no "remove all".
// Thread-safe: libdevmapper keeps global state, so calls are serialised inside.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dm/table.h"
#include "imaged/common/result.h"

namespace imaged::dm {

struct DeviceInfo {
  std::string name{};
  std::string uuid{};
  dev_t dev = 0;
  int open_count = 0;
  int target_count = 0;  // targets of the live table
  bool active = false;   // has a live table
  bool suspended = false;
  bool readonly = false;
  bool deferred_remove = false;  // removal is pending until the last close
};

struct CreateOptions {
  std::string uuid{};     // optional; at most 128 bytes (DM_UUID_LEN - 1), printable, no spaces
  bool readonly = false;  // in addition to Table::readonly()
  // How long to wait for /dev/mapper/<name> to appear. 0 = do not wait for the node.
  std::chrono::milliseconds timeout{10000};
};

struct RemoveOptions {
  // Extra attempts while the device is busy (EBUSY: open, mounted, or briefly probed by udev),
  // with a backoff from 5 ms doubling up to 200 ms between attempts.
  int retries = 5;
  // When the device is open, mark it for removal at the last close instead of failing.
  bool deferred = false;
  // Succeed when no device has that name (teardown from a status file).
  bool ignore_missing = false;
};

class DeviceMapper {
 public:
  DeviceMapper();

  // Creates, loads and activates `name` with `table` (validated first). Returns the device
  // node path (/dev/mapper/<name>) once it exists. On any failure after the device was created
  // it is removed again. EEXIST when a device of that name exists.
  Result<std::string> Create(const std::string& name, const Table& table,
                             const CreateOptions& options = {});

  // Table swap: Load puts `table` in the inactive slot; Suspend + Resume make it live.
  Result<void> Load(const std::string& name, const Table& table);
  Result<void> Suspend(const std::string& name);
  Result<void> Resume(const std::string& name);
  // Load + Suspend + Resume: `table` goes live under the open device (online grow). I/O pauses
  // between suspend and resume (a mounted filesystem is frozen and thawed); the node and dev_t
  // stay and the kernel sends a change event. A table the kernel refuses (at load, or at resume
  // where it checks the targets' limits) leaves the old one live and resumed; the error says
  // why. Success means the device now has the new table's size.
  Result<void> ReplaceTable(const std::string& name, const Table& table);

  // Removes `name`. EBUSY (after retries) when it is still open and not deferred.
  Result<void> Remove(const std::string& name, const RemoveOptions& options = {});

  // Every dm device on the system (no count cap).
  Result<std::vector<DeviceInfo>> List();
  // nullopt when no device has that name.
  Result<std::optional<DeviceInfo>> Info(const std::string& name);
  // The dm device with that device number (e.g. from stat of /dev/dm-N); nullopt when it is
  // not a dm device or does not exist.
  Result<std::optional<DeviceInfo>> InfoByDev(dev_t dev);
  // The live table, as the kernel reports it (devices become "major:minor").
  Result<std::vector<TargetInfo>> GetTable(const std::string& name);
  // The live table's per-target status text ("" for linear, zero, error).
  Result<std::vector<TargetInfo>> GetStatus(const std::string& name);
  // Target types the kernel has loaded now, e.g. "linear", "zero", "error".
  Result<std::vector<std::string>> GetTargetTypes();
  // The block devices the device maps onto, from /sys/dev/block/M:m/slaves (e.g. "loop3").
  Result<std::vector<std::string>> GetUnderlyingDevices(const std::string& name);

  // Names: non-empty, at most 127 bytes (the kernel's DM_NAME_LEN is 128 with the NUL),
  // printable ASCII (0x21-0x7e: no spaces, no control characters), no '/', and not "." or
  // "..", since the name becomes a file in /dev/mapper. Stricter than the kernel, which also
  // accepts spaces and 8-bit bytes; those make udev rules and status files ambiguous.
  static Result<void> ValidateName(std::string_view name);
  // UUIDs: empty (none), or at most 128 bytes (DM_UUID_LEN is 129), printable, no spaces.
  static Result<void> ValidateUuid(std::string_view uuid);
  // /dev/mapper/<name>
  static std::string DevicePath(const std::string& name);
  // "major:minor", the form dm tables accept for any block device.
  static std::string DeviceString(dev_t dev);
};

}  // namespace imaged::dm
