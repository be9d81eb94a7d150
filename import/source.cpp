#include "import/source.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace imaged::import {

Result<std::unique_ptr<FileSource>> FileSource::Open(const std::string& path) {
  // O_NONBLOCK: a FIFO would block open() until a writer came; FromFd refuses it.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) return ErrnoError("open \"{}\"", path);
  return FromFd(std::move(fd), path);
}

namespace {

// The same open file again, with O_DIRECT: through /proc/self/fd (never the path, which may
// name another file by now), and only if it is still the same inode. Invalid when the file
// system refuses O_DIRECT (tmpfs) or /proc is missing. Never for an fd that cannot read: the
// reopen must not grant more than the caller was given.
UniqueFd ReopenDirect(int fd, const struct stat& st) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || (flags & O_ACCMODE) == O_WRONLY) return UniqueFd();
  UniqueFd direct(
      ::open(fmt::format("/proc/self/fd/{}", fd).c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT));
  struct stat again {};
  if (!direct || fstat(direct.get(), &again) != 0 || again.st_dev != st.st_dev ||
      again.st_ino != st.st_ino) {
    return UniqueFd();
  }
  return direct;
}

bool Aligned4k(uint64_t v) {
  return v % 4096 == 0;
}

}  // namespace

Result<std::unique_ptr<FileSource>> FileSource::FromFd(UniqueFd fd, std::string name) {
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("stat \"{}\"", name);
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd.get(), BLKGETSIZE64, &size) != 0) return ErrnoError("size of \"{}\"", name);
  } else {
    return MakeError(EINVAL, "\"{}\" is neither a regular file nor a block device", name);
  }
  // Opened without blocking (Open, or a caller that had to), read with blocking reads.
  const int status = fcntl(fd.get(), F_GETFL);
  if (status < 0 || fcntl(fd.get(), F_SETFL, status & ~O_NONBLOCK) != 0) {
    return ErrnoError("fcntl \"{}\"", name);
  }
  UniqueFd direct = ReopenDirect(fd.get(), st);
  return std::unique_ptr<FileSource>(
      new FileSource(std::move(fd), std::move(direct), size, std::move(name)));
}

Result<void> FileSource::ReadAt(void* buf, size_t len, uint64_t offset) {
  if (offset > size_ || len > size_ - offset) {
    return MakeError(EINVAL, "\"{}\" truncated: {} bytes at offset {} past its end ({})", name_,
                     len, offset, size_);
  }
  auto* p = static_cast<uint8_t*>(buf);
  if (len >= kMinDirectRead && direct() && Aligned4k(offset) && Aligned4k(len) &&
      Aligned4k(reinterpret_cast<uintptr_t>(p))) {
    ssize_t n;
    do {
      n = ::pread(direct_fd_.get(), p, len, static_cast<off_t>(offset));
    } while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EINVAL) {
      // Some file systems accept O_DIRECT at open and refuse the read: cache from now on.
      direct_failed_ = true;
    } else if (n < 0) {
      return ErrnoError("read \"{}\" at offset {}", name_, offset);
    } else if (n == 0) {
      return MakeError(EINVAL, "\"{}\" truncated at offset {}", name_, offset);
    } else {
      // Whatever a short read left goes through the cache.
      p += n;
      len -= static_cast<size_t>(n);
      offset += static_cast<uint64_t>(n);
    }
  }
  return PreadAll(p, len, offset);
}

Result<void> FileSource::PreadAll(uint8_t* p, size_t len, uint64_t offset) {
  while (len > 0) {
    ssize_t n = ::pread(fd_.get(), p, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read \"{}\" at offset {}", name_, offset);
    }
    if (n == 0) return MakeError(EINVAL, "\"{}\" truncated at offset {}", name_, offset);
    p += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return Ok();
}

Result<void> MemorySource::ReadAt(void* buf, size_t len, uint64_t offset) {
  if (offset > bytes_.size() || len > bytes_.size() - offset) {
    return MakeError(EINVAL, "truncated: {} bytes at offset {} past the end ({})", len, offset,
                     bytes_.size());
  }
  if (len) std::memcpy(buf, bytes_.data() + offset, len);
  return Ok();
}

Result<void> Stream::Skip(uint64_t len) {
  uint8_t scratch[65536];
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, sizeof(scratch)));
    IMAGED_TRY(Read(scratch, n));
    len -= n;
  }
  return Ok();
}

Result<void> SourceStream::Read(void* buf, size_t len) {
  IMAGED_TRY(source_.ReadAt(buf, len, pos_));
  pos_ += len;
  return Ok();
}

Result<void> SourceStream::Skip(uint64_t len) {
  if (len > source_.size() - std::min(pos_, source_.size())) {
    return MakeError(EINVAL, "truncated: {} bytes at offset {} past the end ({})", len, pos_,
                     source_.size());
  }
  pos_ += len;
  return Ok();
}


}  // namespace imaged::import
