// Raw: the file's bytes are the image. All-zero 4 KiB blocks may be reported as Zero runs.
#include <algorithm>
#include <cstdlib>

#include "internal.h"

namespace imaged::import {
namespace {

constexpr size_t kZeroBlock = 4096;

bool IsZero(const uint8_t* p, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w) return false;
  }
  for (; i < n; ++i)
    if (p[i]) return false;
  return true;
}

// Reads its input sequentially, so a file and a stream (an upload) are read alike.
class RawReader : public ImageReader {
 public:
  RawReader(Stream& stream, uint64_t size, const ReaderOptions& options,
            std::unique_ptr<Stream> owned = nullptr)
      : owned_(std::move(owned)),
        stream_(stream),
        size_(size),
        options_(options),
        buf_(options.max_data_run) {}

  Format format() const override { return Format::Raw; }
  uint64_t virtual_size() const override { return size_; }

  Result<std::optional<Run>> Next() override {
    if (buf_pos_ == buf_len_) {
      if (file_pos_ >= size_) return std::optional<Run>();
      buf_len_ = static_cast<size_t>(std::min<uint64_t>(buf_.size(), size_ - file_pos_));
      IMAGED_TRY(stream_.Read(buf_.data(), buf_len_));
      buf_off_ = file_pos_;
      file_pos_ += buf_len_;
      buf_pos_ = 0;
    }
    const uint8_t* base = buf_.data();
    size_t start = buf_pos_;
    if (!options_.raw_detect_zeros) {
      buf_pos_ = buf_len_;
      return Emit(start, buf_len_, Run::Kind::Data);
    }
    // Extend a run of blocks of the same kind as the first one.
    auto block_zero = [&](size_t at) {
      return IsZero(base + at, std::min(kZeroBlock, buf_len_ - at));
    };
    bool zero = block_zero(start);
    size_t end = start;
    while (end < buf_len_ && block_zero(end) == zero) end += std::min(kZeroBlock, buf_len_ - end);
    buf_pos_ = end;
    return Emit(start, end, zero ? Run::Kind::Zero : Run::Kind::Data);
  }

 private:
  std::optional<Run> Emit(size_t start, size_t end, Run::Kind kind) {
    Run run;
    run.offset = buf_off_ + start;
    run.length = end - start;
    run.kind = kind;
    if (kind == Run::Kind::Data) run.data = {buf_.data() + start, end - start};
    return run;
  }

  std::unique_ptr<Stream> owned_;  // the SourceStream over a Source
  Stream& stream_;
  uint64_t size_;
  ReaderOptions options_;
  std::vector<uint8_t> buf_;
  uint64_t file_pos_ = 0;
  uint64_t buf_off_ = 0;
  size_t buf_len_ = 0;
  size_t buf_pos_ = 0;
};

}  // namespace

Result<std::unique_ptr<ImageReader>> OpenRawReader(Source& source, const ReaderOptions& options) {
  auto stream = std::make_unique<SourceStream>(source);
  Stream& ref = *stream;
  return std::unique_ptr<ImageReader>(
      new RawReader(ref, source.size(), options, std::move(stream)));
}

Result<std::unique_ptr<ImageReader>> OpenRawReader(Stream& stream, uint64_t size,
                                                   const ReaderOptions& options) {
  return std::unique_ptr<ImageReader>(new RawReader(stream, size, options));
}

}  // namespace imaged::import
