// The bridge from runs to a target (an image's backing pieces, or a plain file), independent
// of how the target maps to disk. Copy() stages data in an aligned bounce buffer so the sink
// can use O_DIRECT: every Write/WriteZeroes it issues is 4096-aligned in offset and length,
// except the very last call, whose length is unaligned only when the covered range ends
// unaligned. The buffer address is 4096-aligned too. Data runs that name a range of their
// source (ReaderOptions::defer_data_reads) are read straight into the buffer, right before it
// is written and by the thread that writes it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"
#include "import/reader.h"

namespace imaged::import {

class RunSink {
 public:
  virtual ~RunSink() = default;
  virtual Result<void> Write(uint64_t offset, std::span<const uint8_t> data) = 0;
  // Makes [offset, offset+length) read as zeros.
  virtual Result<void> WriteZeroes(uint64_t offset, uint64_t length) = 0;
  virtual uint64_t size() const = 0;
};

// Returns false to cancel (Copy then fails with ECANCELED).
using ProgressFn = std::function<bool(uint64_t done, uint64_t total)>;

struct CopyOptions {
  // The target already reads as zeros everywhere (freshly allocated): zero runs are skipped.
  bool target_is_zeroed = false;
  // Bounce buffer size, a multiple of 4096.
  size_t buffer_size = 4 << 20;
  // Zero runs shorter than this are written as data inside the buffer rather than split
  // into separate calls.
  uint64_t min_zero_write = 64 << 10;
  // Also zero [virtual_size, sink.size()) so no stale bytes remain past the image.
  bool zero_beyond_image = true;
  // Writes in flight at once, each on its own writer thread; 1 = one synchronous write at a
  // time on the caller's thread. With more, the sink's Write and WriteZeroes are called
  // concurrently on disjoint ranges (an unaligned write only once all others are done), so the
  // sink must allow that. Every write is finished before Copy returns, also on failure; the
  // first error wins, and progress never counts a write that has not completed. Memory:
  // (max_in_flight + 1) buffers of buffer_size.
  int max_in_flight = 1;
};

struct ImportStats {
  uint64_t bytes_data = 0;  // bytes the reader produced as Data
  uint64_t bytes_zero = 0;  // bytes covered as zeros (written or skipped), incl. past the image
  uint64_t runs = 0;        // runs produced by the reader
};

// Fails with EFBIG ("image is larger than the target") before writing anything when
// virtual_size > sink.size(). Progress reports bytes covered out of the covered total.
Result<ImportStats> Copy(ImageReader& reader, RunSink& sink, const ProgressFn& progress,
                         const CopyOptions& options = {});

struct FileSinkOptions {
  bool direct = false;  // O_DIRECT for aligned writes (unaligned tails go through the cache)
};

// pwrite() into one existing file or block device; size() is its size at open.
class FileSink : public RunSink {
 public:
  static Result<std::unique_ptr<FileSink>> Open(const std::string& path,
                                                const FileSinkOptions& options = {});
  Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override;
  Result<void> WriteZeroes(uint64_t offset, uint64_t length) override;
  uint64_t size() const override { return size_; }
  Result<void> Sync();

 private:
  FileSink(UniqueFd fd, UniqueFd direct_fd, uint64_t size, bool block, std::string path)
      : fd_(std::move(fd)),
        direct_fd_(std::move(direct_fd)),
        size_(size),
        block_(block),
        path_(std::move(path)) {}
  UniqueFd fd_;
  UniqueFd direct_fd_;  // invalid unless O_DIRECT was asked for
  uint64_t size_;
  bool block_;
  std::string path_;
};

}  // namespace imaged::import
