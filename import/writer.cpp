#include "import/writer.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "imaged/common/size.h"
#include "internal.h"

namespace imaged::import {
namespace {

constexpr uint64_t kAlign = 4096;

uint64_t AlignUp(uint64_t v) {
  return (v + kAlign - 1) & ~(kAlign - 1);
}
uint64_t AlignDown(uint64_t v) {
  return v & ~(kAlign - 1);
}

// A compressed cluster handed over undecoded (Run::decoder).
struct Decode {
  const ClusterDecoder* decoder = nullptr;  // null: not a decoded fill
  uint64_t key = 0;
  uint64_t guest = 0;  // where the cluster's data starts
  size_t size = 0;     // decoded
};

// Part of a staging buffer that is filled only right before the buffer is written (on the
// writer thread when there is a pool): zeros, bytes read from the source (deferred reads), or
// a decompressed cluster (deferred decompression).
struct Fill {
  size_t at;  // offset in the buffer
  size_t length;
  Source* source;          // null (and no decoder): zeros
  uint64_t source_offset;  // with a decoder: where in the decoded cluster the part begins
  Decode decode;
};

// A decoded cluster into its place; one that straddles buffers (or is cut at the image's end)
// is decoded whole into a scratch cluster and only this buffer's part copied.
Result<void> DecodeInto(uint8_t* out, const Fill& f) {
  const Decode& d = f.decode;
  if (f.source_offset == 0 && f.length == d.size) {
    return d.decoder->DecodeCluster(d.key, d.guest, {out, f.length});
  }
  std::vector<uint8_t> cluster(d.size);
  IMAGED_TRY(d.decoder->DecodeCluster(d.key, d.guest, cluster));
  std::memcpy(out, cluster.data() + f.source_offset, f.length);
  return Ok();
}

// `buffer` will be written at `offset` of the target.
Result<void> ApplyFills(uint8_t* buffer, uint64_t offset, const std::vector<Fill>& fills) {
  for (const Fill& f : fills) {
    if (f.decode.decoder) {
      IMAGED_TRY(DecodeInto(buffer + f.at, f));
      continue;
    }
    if (!f.source) {
      std::memset(buffer + f.at, 0, f.length);
      continue;
    }
    IMAGED_TRY_CTX(f.source->ReadAt(buffer + f.at, f.length, f.source_offset),
                   "data for guest offset {} at file offset {}", offset + f.at, f.source_offset);
  }
  return Ok();
}

// Appends a fill, merging it into the previous one when both continue each other.
void AddFill(std::vector<Fill>& fills, const Fill& f) {
  if (!fills.empty()) {
    Fill& last = fills.back();
    const bool continues = last.at + last.length == f.at && last.source == f.source &&
                           !last.decode.decoder && !f.decode.decoder &&
                           (!f.source || last.source_offset + last.length == f.source_offset);
    if (continues) {
      last.length += f.length;
      return;
    }
  }
  fills.push_back(f);
}

// Writer threads for Copy with max_in_flight > 1: the caller fills one buffer while up to
// max_in_flight others are being written. The buffers belong to the pool; the caller owns
// current() until it submits it.
class WritePool {
 public:
  WritePool(RunSink& sink, size_t buffer_size, int in_flight)
      : sink_(sink), buffer_size_(buffer_size), max_in_flight_(in_flight) {}

  // After a failure: writes not started yet are dropped, running ones are waited for.
  ~WritePool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      for (const Job& job : queue_) {
        outstanding_.erase(job.offset);
        if (job.buffer >= 0) free_.push_back(job.buffer);
      }
      queue_.clear();
    }
    work_cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  Result<void> Start() {
    for (int i = 0; i < max_in_flight_ + 1; ++i) {
      void* p = nullptr;
      if (posix_memalign(&p, kAlign, buffer_size_) != 0) {
        return MakeError(ENOMEM, "allocate a {}-byte import buffer", buffer_size_);
      }
      buffers_.emplace_back(static_cast<uint8_t*>(p));
      if (i > 0) free_.push_back(i);
    }
    current_ = 0;
    // std::thread reports failure by throwing; nothing may throw out of an import.
    try {
      for (int i = 0; i < max_in_flight_; ++i) threads_.emplace_back([this] { Work(); });
    } catch (const std::exception& e) {
      return MakeError(EAGAIN, "start an import writer thread: {}", e.what());
    }
    return Ok();
  }

  uint8_t* current() const { return buffers_[current_].get(); }

  // Hands current() (len bytes for `offset`, to be completed by `fills`) to a writer and
  // makes a free buffer current.
  Result<void> SubmitData(uint64_t offset, size_t len, std::vector<Fill> fills) {
    if (!Aligned(offset, len)) {
      // The last, unaligned write: the sink may read-modify-write around it, so alone.
      IMAGED_TRY(Drain());
      return Run({offset, len, current_, std::move(fills)});
    }
    std::unique_lock<std::mutex> l(mu_);
    IMAGED_TRY(WaitForSlot(l));
    Push(l, {offset, len, current_, std::move(fills)});
    done_cv_.wait(l, [&] { return !free_.empty(); });
    current_ = free_.back();
    free_.pop_back();
    return FirstError();
  }

  Result<void> SubmitZeroes(uint64_t offset, uint64_t len) {
    while (len > 0) {
      const uint64_t n = std::min<uint64_t>(len, buffer_size_);
      if (!Aligned(offset, n)) {
        IMAGED_TRY(Drain());
        IMAGED_TRY(Run({offset, n, -1, {}}));
      } else {
        std::unique_lock<std::mutex> l(mu_);
        IMAGED_TRY(WaitForSlot(l));
        Push(l, {offset, n, -1, {}});
      }
      offset += n;
      len -= n;
    }
    return Ok();
  }

  // Waits for every submitted write; the first error of any.
  Result<void> Drain() {
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return outstanding_.empty(); });
    return FirstError();
  }

  // Everything below this offset is written; `handed_out` when nothing is outstanding.
  uint64_t Written(uint64_t handed_out) {
    std::lock_guard<std::mutex> l(mu_);
    return outstanding_.empty() ? handed_out : std::min(handed_out, *outstanding_.begin());
  }

 private:
  struct Job {
    uint64_t offset;
    uint64_t length;
    int buffer;  // -1: zeros
    std::vector<Fill> fills;  // parts of the buffer still to fill before the write
  };

  static bool Aligned(uint64_t offset, uint64_t len) {
    return offset % kAlign == 0 && len % kAlign == 0;
  }

  Result<void> FirstError() const {
    if (first_error_) return *first_error_;
    return Ok();
  }

  Result<void> WaitForSlot(std::unique_lock<std::mutex>& l) {
    done_cv_.wait(l, [&] {
      return first_error_ || outstanding_.size() < static_cast<size_t>(max_in_flight_);
    });
    return FirstError();
  }

  void Push(std::unique_lock<std::mutex>&, Job job) {
    outstanding_.insert(job.offset);
    queue_.push_back(std::move(job));
    work_cv_.notify_one();
  }

  Result<void> Run(const Job& job) {
    try {
      if (job.buffer < 0) return sink_.WriteZeroes(job.offset, job.length);
      uint8_t* buffer = buffers_[static_cast<size_t>(job.buffer)].get();
      IMAGED_TRY(ApplyFills(buffer, job.offset, job.fills));
      return sink_.Write(job.offset, {buffer, static_cast<size_t>(job.length)});
    } catch (const std::exception& e) {
      return MakeError(EIO, "import write at {}: {}", job.offset, e.what());
    }
  }

  void Work() {
    std::unique_lock<std::mutex> l(mu_);
    while (true) {
      work_cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Job job = std::move(queue_.front());
      queue_.pop_front();
      // After a failure the rest is not written: the import fails anyway.
      const bool skip = first_error_.has_value();
      l.unlock();
      Result<void> r = skip ? Result<void>(Ok()) : Run(job);
      l.lock();
      if (!r && !first_error_) first_error_ = std::move(r).error();
      if (job.buffer >= 0) free_.push_back(job.buffer);
      outstanding_.erase(job.offset);
      done_cv_.notify_all();
    }
  }

  RunSink& sink_;
  const size_t buffer_size_;
  const int max_in_flight_;
  struct FreeBuffer {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::vector<std::unique_ptr<uint8_t, FreeBuffer>> buffers_;
  int current_ = -1;
  std::vector<std::thread> threads_;

  std::mutex mu_;
  std::condition_variable work_cv_;  // a job was queued, or stop
  std::condition_variable done_cv_;  // a job finished
  std::deque<Job> queue_;
  std::vector<int> free_;           // buffers neither current nor queued nor being written
  std::set<uint64_t> outstanding_;  // offsets of queued and running jobs
  std::optional<Error> first_error_;
  bool stop_ = false;
};

// Coverage [0, pos) has been handed out; the bounce buffer holds [buf_off, pos) with buf_off
// always 4096-aligned, and whenever pos is unaligned the buffer is non-empty. So flushing a full
// buffer, or flushing at an aligned pos, always issues aligned writes.
class Stager {
 public:
  Stager(RunSink& sink, const ProgressFn& progress, const CopyOptions& options, uint64_t total)
      : sink_(sink), progress_(progress), options_(options), total_(total) {}

  Result<void> Init() {
    if (options_.max_in_flight > 1) {
      pool_ = std::make_unique<WritePool>(sink_, options_.buffer_size, options_.max_in_flight);
      if (pool_->Start()) {
        buf_ = pool_->current();
        return Ok();
      }
      pool_.reset();  // no threads or memory for them: one write at a time still works
    }
    void* p = nullptr;
    if (posix_memalign(&p, kAlign, options_.buffer_size) != 0) {
      return MakeError(ENOMEM, "allocate a {}-byte import buffer", options_.buffer_size);
    }
    own_buf_.reset(static_cast<uint8_t*>(p));
    buf_ = own_buf_.get();
    return Ok();
  }

  uint64_t pos() const { return pos_ + pending_zero_; }

  Result<void> Data(std::span<const uint8_t> data) {
    IMAGED_TRY(ResolveZeros());
    while (!data.empty()) {
      size_t n = std::min(data.size(), options_.buffer_size - buf_len_);
      std::memcpy(buf_ + buf_len_, data.data(), n);
      IMAGED_TRY(Advance(n));
      data = data.subspan(n);
    }
    return Ok();
  }

  // `len` bytes of `source` at `offset`, read when the buffer is written.
  Result<void> DataFrom(Source& source, uint64_t offset, uint64_t len) {
    IMAGED_TRY(ResolveZeros());
    return AppendFills(len, [&](size_t at, size_t n, uint64_t done) {
      return Fill{at, n, &source, offset + done, {}};
    });
  }

  // The first `len` bytes of a cluster that is decompressed when the buffer is written.
  Result<void> DataDecoded(const Decode& decode, uint64_t len) {
    IMAGED_TRY(ResolveZeros());
    return AppendFills(len, [&](size_t at, size_t n, uint64_t done) {
      return Fill{at, n, nullptr, done, decode};
    });
  }

  void Zero(uint64_t len) { pending_zero_ += len; }

  Result<void> Finish() {
    IMAGED_TRY(ResolveZeros());
    IMAGED_TRY(Flush());
    if (!pool_) return Ok();
    IMAGED_TRY(pool_->Drain());
    return Report();  // now everything is written
  }

 private:
  Result<void> Advance(size_t n) {
    buf_len_ += n;
    pos_ += n;
    if (buf_len_ == options_.buffer_size) IMAGED_TRY(Flush());
    return Ok();
  }

  // Zeros memset by whoever writes the buffer.
  Result<void> AppendZeros(uint64_t len) {
    return AppendFills(len, [](size_t at, size_t n, uint64_t) {
      return Fill{at, n, nullptr, 0, {}};
    });
  }

  // `len` bytes of fills, split where buffers end: `fill(at, n, done)` is the part of `n` bytes
  // at offset `at` of the buffer, `done` bytes into the range.
  template <typename MakeFill>
  Result<void> AppendFills(uint64_t len, const MakeFill& fill) {
    for (uint64_t done = 0; done < len;) {
      const size_t n =
          static_cast<size_t>(std::min<uint64_t>(len - done, options_.buffer_size - buf_len_));
      AddFill(fills_, fill(buf_len_, n, done));
      IMAGED_TRY(Advance(n));
      done += n;
    }
    return Ok();
  }

  Result<void> Flush() {
    if (buf_len_ > 0) {
      std::vector<Fill> fills = std::exchange(fills_, {});
      if (pool_) {
        IMAGED_TRY(pool_->SubmitData(buf_off_, buf_len_, std::move(fills)));
        buf_ = pool_->current();
      } else {
        IMAGED_TRY(ApplyFills(buf_, buf_off_, fills));
        IMAGED_TRY(sink_.Write(buf_off_, {buf_, buf_len_}));
      }
      buf_off_ += buf_len_;
      buf_len_ = 0;
    }
    return Report();
  }

  Result<void> Report() {
    if (!progress_) return Ok();
    // Called with the buffer empty: [0, pos_) is handed out; with a pool only the part below
    // every outstanding write is written.
    const uint64_t done = pool_ ? pool_->Written(pos_) : pos_;
    if (!progress_(done, total_)) return MakeError(ECANCELED, "import cancelled");
    return Ok();
  }

  Result<void> ResolveZeros() {
    uint64_t z = std::exchange(pending_zero_, 0);
    if (z == 0) return Ok();
    // Short gaps between data are cheaper as part of one large write than as separate calls.
    if (z < options_.min_zero_write) return AppendZeros(z);
    uint64_t head = std::min(z, AlignUp(pos_) - pos_);
    IMAGED_TRY(AppendZeros(head));
    z -= head;
    IMAGED_TRY(Flush());
    uint64_t middle = AlignDown(z);
    if (middle > 0) {
      if (!options_.target_is_zeroed) {
        IMAGED_TRY(pool_ ? pool_->SubmitZeroes(pos_, middle) : sink_.WriteZeroes(pos_, middle));
      }
      pos_ += middle;
      buf_off_ = pos_;
      IMAGED_TRY(Report());
    }
    return AppendZeros(z - middle);
  }

  RunSink& sink_;
  const ProgressFn& progress_;
  const CopyOptions& options_;
  uint64_t total_;
  std::unique_ptr<uint8_t, FreeDeleter> own_buf_;  // the buffer when there is no pool
  std::unique_ptr<WritePool> pool_;
  uint8_t* buf_ = nullptr;  // the buffer being filled
  size_t buf_len_ = 0;
  uint64_t buf_off_ = 0;
  uint64_t pos_ = 0;
  uint64_t pending_zero_ = 0;
  std::vector<Fill> fills_;  // of the buffer being filled
};

// Data comes either in `data` or as a range of a source (checked against its size here, so a
// bad range fails before the write it would belong to is queued).
bool DataRunValid(const Run& run) {
  if (run.decoder) return run.data.empty() && !run.source && run.length <= run.decoded_size;
  if (!run.source) return run.data.size() == run.length;
  return run.data.empty() && run.source_offset <= run.source->size() &&
         run.length <= run.source->size() - run.source_offset;
}

}  // namespace

Result<ImportStats> Copy(ImageReader& reader, RunSink& sink, const ProgressFn& progress,
                         const CopyOptions& options) {
  const uint64_t vsize = reader.virtual_size();
  const uint64_t target = sink.size();
  if (vsize > target) {
    return MakeError(EFBIG, "image is larger than the target ({} > {})", HumanSize(vsize),
                     HumanSize(target));
  }
  if (options.buffer_size < kAlign || options.buffer_size % kAlign != 0) {
    return MakeError(EINVAL, "import buffer size {} is not a multiple of 4096",
                     options.buffer_size);
  }
  const uint64_t total = options.zero_beyond_image ? target : vsize;
  Stager out(sink, progress, options, total);
  IMAGED_TRY(out.Init());
  ImportStats stats;
  while (true) {
    std::optional<Run> run = IMAGED_TRY(reader.Next());
    if (!run) break;
    const uint64_t pos = out.pos();
    if (run->offset < pos || run->length == 0 || run->offset > vsize ||
        run->length > vsize - run->offset ||
        (run->kind == Run::Kind::Data && !DataRunValid(*run))) {
      return MakeError(EINVAL, "{} reader produced an invalid run at offset {} (length {})",
                       FormatName(reader.format()), run->offset, run->length);
    }
    if (run->offset > pos) {
      out.Zero(run->offset - pos);  // a gap reads as zeros
      stats.bytes_zero += run->offset - pos;
    }
    ++stats.runs;
    if (run->kind == Run::Kind::Data) {
      if (run->decoder) {
        IMAGED_TRY(out.DataDecoded({run->decoder, run->decode_key, run->offset, run->decoded_size},
                                   run->length));
      } else if (run->source) {
        IMAGED_TRY(out.DataFrom(*run->source, run->source_offset, run->length));
      } else {
        IMAGED_TRY(out.Data(run->data));
      }
      stats.bytes_data += run->length;
    } else {
      out.Zero(run->length);
      stats.bytes_zero += run->length;
    }
  }
  const uint64_t end = out.pos();
  if (end < total) {
    out.Zero(total - end);
    stats.bytes_zero += total - end;
  }
  IMAGED_TRY(out.Finish());
  return stats;
}

Result<std::unique_ptr<FileSink>> FileSink::Open(const std::string& path,
                                                 const FileSinkOptions& options) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open \"{}\"", path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoError("stat \"{}\"", path);
  uint64_t size = 0;
  bool block = S_ISBLK(st.st_mode);
  if (block) {
    if (ioctl(fd.get(), BLKGETSIZE64, &size) != 0) return ErrnoError("size of \"{}\"", path);
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else {
    return MakeError(EINVAL, "\"{}\" is neither a regular file nor a block device", path);
  }
  UniqueFd direct;
  if (options.direct) {
    direct.reset(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT));
    if (!direct) return ErrnoError("open \"{}\" with O_DIRECT", path);
  }
  return std::unique_ptr<FileSink>(
      new FileSink(std::move(fd), std::move(direct), size, block, path));
}

Result<void> FileSink::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset > size_ || data.size() > size_ - offset) {
    return MakeError(EINVAL, "write {} bytes at {} past the end of \"{}\" ({})", data.size(),
                     offset, path_, size_);
  }
  bool aligned = offset % kAlign == 0 && data.size() % kAlign == 0 &&
                 reinterpret_cast<uintptr_t>(data.data()) % kAlign == 0;
  int fd = direct_fd_ && aligned ? direct_fd_.get() : fd_.get();
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write {} at offset {} of \"{}\"", HumanSize(data.size()), offset, path_);
    }
    if (n == 0)
      return MakeError(EIO, "write at offset {} of \"{}\" made no progress", offset, path_);
    data = data.subspan(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return Ok();
}

Result<void> FileSink::WriteZeroes(uint64_t offset, uint64_t length) {
  if (offset > size_ || length > size_ - offset) {
    return MakeError(EINVAL, "zero {} bytes at {} past the end of \"{}\" ({})", length, offset,
                     path_, size_);
  }
  if (length == 0) return Ok();
  if (block_) {
    uint64_t range[2] = {offset, length};
    if (ioctl(fd_.get(), BLKZEROOUT, range) == 0) return Ok();
  } else if (fallocate(fd_.get(), FALLOC_FL_ZERO_RANGE, static_cast<off_t>(offset),
                       static_cast<off_t>(length)) == 0) {
    return Ok();
  }
  if (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOTTY) {
    return ErrnoError("zero {} at offset {} of \"{}\"", HumanSize(length), offset, path_);
  }
  // No zeroing primitive here: write zeros (never punch holes, which would free blocks an
  // image's extents depend on).
  static const std::vector<uint8_t> zeros(1 << 20);
  while (length > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(length, zeros.size()));
    IMAGED_TRY(Write(offset, {zeros.data(), n}));
    offset += n;
    length -= n;
  }
  return Ok();
}

Result<void> FileSink::Sync() {
  if (fdatasync(fd_.get()) != 0) return ErrnoError("sync \"{}\"", path_);
  return Ok();
}

}  // namespace imaged::import
