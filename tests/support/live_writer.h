// A writer that keeps a block device busy while a test changes it under its feet (online
// grow): block i of the range gets the same 4 KiB pattern on every pass, through O_DIRECT, so
// after Stop() the range must hold exactly those patterns and no write may have failed.
#pragma once

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

#include "bytes.h"

namespace imaged::test {

class LiveWriter {
 public:
  static constexpr size_t kBlock = 4096;

  // Writes [0, bytes) of `device`, which must stay open and writable for the writer's life.
  LiveWriter(const std::string& device, uint64_t bytes)
      : fd_(open(device.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC)), blocks_(bytes / kBlock) {
    if (fd_ < 0) {
      open_errno_ = errno;
      return;
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~LiveWriter() { Stop(); }
  LiveWriter(const LiveWriter&) = delete;
  LiveWriter& operator=(const LiveWriter&) = delete;

  // Ends the current pass, waits for the thread and closes the device (so that it can be
  // unmapped); returns the passes completed.
  uint64_t Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return passes_;
  }
  int open_errno() const { return open_errno_; }
  uint64_t failed_writes() const { return failed_; }
  uint64_t passes() const { return passes_; }
  // The descriptor the writer uses: its view of the device's size is the one users have.
  int fd() const { return fd_; }

  // What block `i` holds once the writer has passed it.
  static std::string BlockPattern(uint64_t i) {
    return Pattern(kBlock, static_cast<uint32_t>(i) + 1000);
  }
  // True when [0, bytes) of `device` holds the writer's patterns.
  static bool Holds(const std::string& device, uint64_t bytes) {
    const int fd = open(device.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    std::string block(kBlock, '\0');
    bool same = true;
    for (uint64_t i = 0; same && i < bytes / kBlock; ++i) {
      same = pread(fd, block.data(), kBlock, static_cast<off_t>(i * kBlock)) ==
                 static_cast<ssize_t>(kBlock) &&
             block == BlockPattern(i);
    }
    close(fd);
    return same;
  }

 private:
  void Run() {
    AlignedBuffer buf = Aligned(kBlock);
    // At least one whole pass, so the range is written even when the test is quick.
    while (!stop_ || passes_ == 0) {
      for (uint64_t i = 0; i < blocks_; ++i) {
        const std::string p = BlockPattern(i);
        std::memcpy(buf.get(), p.data(), kBlock);
        if (pwrite(fd_, buf.get(), kBlock, static_cast<off_t>(i * kBlock)) !=
            static_cast<ssize_t>(kBlock)) {
          ++failed_;
        }
      }
      ++passes_;
    }
  }

  int fd_;
  uint64_t blocks_;
  int open_errno_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> passes_{0};
  std::atomic<uint64_t> failed_{0};
  std::thread thread_;
};

// The size of the block device behind an open descriptor (BLKGETSIZE64), 0 on error.
inline uint64_t OpenDeviceSize(int fd) {
  uint64_t bytes = 0;
  return ioctl(fd, BLKGETSIZE64, &bytes) == 0 ? bytes : 0;
}

}  // namespace imaged::test
