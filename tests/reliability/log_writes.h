// A reader and replayer of dm-log-writes logs (kernel drivers/md/dm-log-writes.c,
// Documentation/admin-guide/device-mapper/log-writes.rst), for power-cut tests in the manner of
// xfstests' generic log-writes tests: log every write a filesystem sends to its disk, then
// replay the log onto a fresh device up to each flush and check what a power cut there leaves.
//
// The format, in blocks of the logged device's logical block size ("sectorsize"):
//   block 0:   log_write_super {le64 magic, le64 version, le64 nr_entries, le32 sectorsize}
//   then, per entry: one block holding log_write_entry {le64 sector, le64 nr_sectors,
//   le64 flags, le64 data_len} (a mark's name follows the struct inside that block), and
//   after it nr_sectors blocks of written data (none for discards and marks).
// sector and nr_sectors count sectorsize blocks of the logged device. Entries are in the order
// the writes completed, flushes after the writes they made durable.
//
//   auto log = LogWrites::Open("/tmp/log.img");
//   for (uint64_t point : log->FlushPoints()) { log->Replay(next, point + 1, fd); ... }
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"

namespace imaged::test {

inline constexpr uint64_t kLogWritesMagic = 0x6a736677736872;
inline constexpr uint64_t kLogWritesVersion = 1;

// log_write_entry.flags
inline constexpr uint64_t kLogFlush = 1 << 0;     // REQ_PREFLUSH: what completed before is durable
inline constexpr uint64_t kLogFua = 1 << 1;       // REQ_FUA: this write is durable when done
inline constexpr uint64_t kLogDiscard = 1 << 2;   // no data in the log
inline constexpr uint64_t kLogMark = 1 << 3;      // `dmsetup message <dev> 0 mark <name>`
inline constexpr uint64_t kLogMetadata = 1 << 4;  // REQ_META: the filesystem's own metadata
inline constexpr uint64_t kLogKnownFlags =
    kLogFlush | kLogFua | kLogDiscard | kLogMark | kLogMetadata;

struct LogEntry {
  uint64_t sector = 0;      // first sectorsize block written on the logged device
  uint64_t nr_sectors = 0;  // sectorsize blocks written (or discarded)
  uint64_t flags = 0;
  std::string mark;          // the name, for marks
  uint64_t data_offset = 0;  // byte offset of the written data in the log

  bool is_mark() const { return flags & kLogMark; }
  bool is_discard() const { return flags & kLogDiscard; }
  // A point where a power cut is worth checking: the disk promised durability here.
  bool is_flush_point() const { return flags & (kLogFlush | kLogFua); }
};

class LogWrites {
 public:
  // Reads the super block and indexes every entry. Anything inconsistent (bad magic, version
  // or sector size, an entry past the end of the log, unknown flags, a mark longer than its
  // block) is EINVAL naming the entry: a log is never trusted half way.
  static Result<LogWrites> Open(const std::string& path);

  uint32_t sector_size() const { return sector_size_; }
  const std::vector<LogEntry>& entries() const { return entries_; }

  // Indices of the entries with FLUSH or FUA, in log order.
  std::vector<uint64_t> FlushPoints() const;
  // Indices of the marks, in log order.
  std::vector<uint64_t> Marks() const;
  // The first mark called `name`.
  std::optional<uint64_t> FindMark(const std::string& name) const;
  // Whether entries [begin, end) write or discard any byte of [first_byte, end_byte) of the
  // logged device (e.g. which of two filesystems sharing it a flush made durable), counting only
  // entries that have every flag of `with_flags` (kLogFua: writes durable on completion, such
  // as jbd2's commit blocks).
  bool WritesWithin(uint64_t begin, uint64_t end, uint64_t first_byte, uint64_t end_byte,
                    uint64_t with_flags = 0) const;

  // Writes entries [begin, end) onto `target_fd` (a block device or a file as large as the
  // logged device), discards as zeros, then fdatasyncs it. An entry that reaches past the
  // target's end is EINVAL and nothing after it is written.
  Result<void> Replay(uint64_t begin, uint64_t end, int target_fd) const;

 private:
  LogWrites(UniqueFd fd, std::string path, uint32_t sector_size)
      : fd_(std::move(fd)), path_(std::move(path)), sector_size_(sector_size) {}
  Result<void> ReadEntries(uint64_t nr_entries, uint64_t log_bytes);
  Result<LogEntry> ReadEntry(uint64_t index, uint64_t offset, uint64_t log_bytes) const;
  Result<void> ReplayEntry(const LogEntry& entry, uint64_t index, int target_fd,
                           uint64_t target_bytes) const;

  UniqueFd fd_;
  std::string path_;
  uint32_t sector_size_ = 0;
  std::vector<LogEntry> entries_;
};

}  // namespace imaged::test
