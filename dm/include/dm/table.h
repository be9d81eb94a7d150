// Device-mapper tables as plain values: a Table is an ordered list of targets (one per
// contiguous range of the device, in 512-byte sectors). Building and validating a table needs
// no kernel; DeviceMapper turns it into one DM_TABLE_LOAD however many targets it has.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "imaged/common/result.h"

namespace imaged::dm {

class Target {
 public:
  Target(uint64_t start, uint64_t length) : start_(start), length_(length) {}
  virtual ~Target() = default;

  uint64_t start() const { return start_; }    // first sector of the device this target covers
  uint64_t length() const { return length_; }  // sectors
  uint64_t end() const { return start_ + length_; }

  virtual std::string type() const = 0;    // kernel target name: "linear", "zero", ...
  virtual std::string params() const = 0;  // the target's parameter string

  // Same range, type and parameters.
  bool operator==(const Target& other) const;

 private:
  uint64_t start_;
  uint64_t length_;
};

// Maps [start, start+length) to `device` (a path such as /dev/loop3, or "major:minor") from
// `offset_sectors` on. dm does not follow symlinks for the device: pass a real node or maj:min.
class LinearTarget : public Target {
 public:
  LinearTarget(uint64_t start, uint64_t length, std::string device, uint64_t offset_sectors)
      : Target(start, length), device_(std::move(device)), offset_(offset_sectors) {}
  std::string type() const override { return "linear"; }
  std::string params() const override;  // "<device> <offset_sectors>"
  const std::string& device() const { return device_; }
  uint64_t offset() const { return offset_; }

 private:
  std::string device_;
  uint64_t offset_;
};

// Reads return zeros, writes are discarded.
class ZeroTarget : public Target {
 public:
  using Target::Target;
  std::string type() const override { return "zero"; }
  std::string params() const override { return {}; }
};

// Every I/O fails with EIO.
class ErrorTarget : public Target {
 public:
  using Target::Target;
  std::string type() const override { return "error"; }
  std::string params() const override { return {}; }
};

// dm-verity (format 1, SHA-256, one block size): reads of `data_device` are checked against the
// hash tree on `hash_device` starting at hash block `hash_start_block` (the tree's first
// block, after veritysetup's superblock). A block whose hash does not match reads as EIO and
// the status turns from "V" to "C". The kernel refuses a verity target in a writable table
// (Table::Validate does too).
struct VerityConfig {
  std::string data_device;  // a real node or "major:minor", like LinearTarget's
  std::string hash_device;
  uint32_t block_size = 4096;
  uint64_t data_blocks = 0;
  uint64_t hash_start_block = 0;
  std::string root_hash_hex;
  std::string salt_hex;  // empty: no salt ("-")
};

class VerityTarget : public Target {
 public:
  // Covers the data: data_blocks * block_size bytes from `start`.
  VerityTarget(uint64_t start, VerityConfig config)
      : Target(start, config.data_blocks * (config.block_size / 512)), config_(std::move(config)) {}
  std::string type() const override { return "verity"; }
  // "1 <data> <hash> <bs> <bs> <data_blocks> <hash_start_block> sha256 <root> <salt>"
  std::string params() const override;
  const VerityConfig& config() const { return config_; }

 private:
  VerityConfig config_;
};

// Whether a verity target's status (DeviceMapper::GetStatus) says it has met a block that does
// not match its hash ("C") rather than none so far ("V").
Result<bool> VerityStatusCorrupt(std::string_view status);

// Any other target type, given by name and parameter string (tests, rare targets).
class RawTarget : public Target {
 public:
  RawTarget(uint64_t start, uint64_t length, std::string type, std::string params)
      : Target(start, length), type_(std::move(type)), params_(std::move(params)) {}
  std::string type() const override { return type_; }
  std::string params() const override { return params_; }

 private:
  std::string type_;
  std::string params_;
};

// One target of a live table as the kernel reports it (DeviceMapper::GetTable / GetStatus):
// devices appear as "major:minor".
struct TargetInfo {
  uint64_t start = 0;   // sectors
  uint64_t length = 0;  // sectors
  std::string type{};
  std::string params{};  // table parameters (GetTable) or status text (GetStatus)

  bool operator==(const TargetInfo&) const = default;
};

// Where a live "linear" or "crypt" target reads from, parsed from its parameters.
struct TargetDevice {
  std::string device;           // "major:minor" as the kernel prints it
  uint64_t offset_sectors = 0;  // sector of `device` the target's sector 0 maps to
};
// linear: "<device> <offset>".
Result<TargetDevice> LinearTargetDevice(std::string_view params);
// crypt: "<cipher> <key> <iv_offset> <device> <offset> [<#opt> <opt>...]".
Result<TargetDevice> CryptTargetDevice(std::string_view params);

class Table {
 public:
  Table() = default;
  Table(Table&&) = default;
  Table& operator=(Table&&) = default;

  void Add(std::unique_ptr<Target> target) { targets_.push_back(std::move(target)); }

  // table.Emplace<LinearTarget>(0, 8, "/dev/loop0", 0);
  template <typename T, typename... Args>
  T& Emplace(Args&&... args) {
    auto target = std::make_unique<T>(std::forward<Args>(args)...);
    T& ref = *target;
    targets_.push_back(std::move(target));
    return ref;
  }

  const std::vector<std::unique_ptr<Target>>& targets() const { return targets_; }
  bool empty() const { return targets_.empty(); }

  // Size of the device the table describes: the end of the last target (0 when empty).
  uint64_t num_sectors() const;

  // Loads the table read-only (DM_READONLY_FLAG): writes to the device fail with EROFS/EPERM.
  void set_readonly(bool readonly) { readonly_ = readonly; }
  bool readonly() const { return readonly_; }

  // A table the kernel would map as intended: at least one target, the first starting at
  // sector 0, each next one starting where the previous ended (no gaps, no overlaps), no
  // zero-length targets, a target type that is a non-empty single word. (AOSP libdm checks only
  // the first two; see AOSP_REFERENCE 9, item 22.)
  Result<void> Validate() const;

  // Same targets in the same order and the same read-only flag.
  bool operator==(const Table& other) const;

  // Whether a live device with table `live` (GetTable) and read-only flag `live_readonly`
  // (DeviceInfo::readonly) is exactly what loading this table would make: same ranges, types,
  // parameters, and the same read-only flag. Build tables with "major:minor" devices to
  // compare them: the kernel reports devices that way.
  bool Matches(const std::vector<TargetInfo>& live, bool live_readonly) const;

 private:
  std::vector<std::unique_ptr<Target>> targets_;
  bool readonly_ = false;
};

}  // namespace imaged::dm
