// Where an image's bytes come from. Random access (Source) serves every format; the sparse
// reader also runs from a purely sequential Stream (a pipe or socket), because Android sparse
// is sequential by nature. qcow needs random access: a streamed qcow upload is spooled to a
// temporary file first and read through FileSource.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"

namespace imaged::import {

class Source {
 public:
  virtual ~Source() = default;
  // Reads exactly `len` bytes at `offset`. A range past size() fails with EINVAL
  // ("truncated"), never a short read. Safe to call from several threads at once.
  virtual Result<void> ReadAt(void* buf, size_t len, uint64_t offset) = 0;
  virtual uint64_t size() const = 0;
};

// pread() on a file or block device opened O_RDONLY|O_CLOEXEC. Only this one file is ever
// read: a backing file named inside an image is never opened. The size is taken once at open.
// Large reads with 4 KiB-aligned offset, length and buffer bypass the page cache (O_DIRECT,
// on the same open file reopened through /proc/self/fd): an import reads every byte once, so
// caching it would only cost a copy and push other data out of memory. Small reads, and every
// read where O_DIRECT is not supported, go through the cache and its readahead.
class FileSource : public Source {
 public:
  // Opens `path` without blocking (a FIFO is refused, never waited on).
  static Result<std::unique_ptr<FileSource>> Open(const std::string& path);
  // Takes ownership of an already open readable fd (e.g. opened with a client's rights). A
  // regular file or a block device only (EINVAL otherwise); O_NONBLOCK is cleared.
  static Result<std::unique_ptr<FileSource>> FromFd(UniqueFd fd, std::string name);

  Result<void> ReadAt(void* buf, size_t len, uint64_t offset) override;
  uint64_t size() const override { return size_; }
  const std::string& name() const { return name_; }
  // Reads at least this long (and aligned) use O_DIRECT when the file allows it.
  static constexpr size_t kMinDirectRead = 256 << 10;
  bool direct() const { return direct_fd_.get() >= 0 && !direct_failed_.load(); }

 private:
  FileSource(UniqueFd fd, UniqueFd direct_fd, uint64_t size, std::string name)
      : fd_(std::move(fd)), direct_fd_(std::move(direct_fd)), size_(size), name_(std::move(name)) {}
  // pread() through the page cache until `len` bytes are in.
  Result<void> PreadAll(uint8_t* p, size_t len, uint64_t offset);

  UniqueFd fd_;
  UniqueFd direct_fd_;                      // invalid when O_DIRECT could not be opened
  std::atomic<bool> direct_failed_{false};  // the fs refused an O_DIRECT read: cache only
  uint64_t size_;
  std::string name_;
};

// Bytes in memory (tests, fuzzing). The span must outlive the source.
class MemorySource : public Source {
 public:
  explicit MemorySource(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  Result<void> ReadAt(void* buf, size_t len, uint64_t offset) override;
  uint64_t size() const override { return bytes_.size(); }

 private:
  std::span<const uint8_t> bytes_;
};

// Sequential input. Read() fills exactly `len` bytes or fails (EINVAL "truncated" at EOF).
class Stream {
 public:
  virtual ~Stream() = default;
  virtual Result<void> Read(void* buf, size_t len) = 0;
  // Discards `len` bytes; the default reads them into a scratch buffer.
  virtual Result<void> Skip(uint64_t len);
  // Bytes consumed so far (for error messages).
  virtual uint64_t position() const = 0;
};

// A sequential view of a Source, starting at offset 0. Skip() is free.
class SourceStream : public Stream {
 public:
  explicit SourceStream(Source& source) : source_(source) {}
  Result<void> Read(void* buf, size_t len) override;
  Result<void> Skip(uint64_t len) override;
  uint64_t position() const override { return pos_; }

 private:
  Source& source_;
  uint64_t pos_ = 0;
};


}  // namespace imaged::import
