// Import: a raw / Android sparse / qcow image file into a new (or an existing, unmapped) image.
// Data goes into the pieces with O_DIRECT writes. A new image is written in one pass: its pieces
// are allocated without zeroing, the import writes every byte (zero runs as zeros, several
// writes in flight), and only then are its extents read and recorded (CreateLocked's fill).
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>

#include "crash_point.h"
#include "import/reader.h"
#include "import/source.h"
#include "import/unwrap.h"
#include "import/writer.h"
#include "internal.h"
#include "space.h"

namespace imaged {
using manager::RoundUp;
namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// A RunSink over the pieces of an image opened with O_DIRECT. Copy() hands it 4 KiB-aligned
// writes; anything else (a tail, a foreign buffer) goes through an aligned read-modify-write.
// Safe for concurrent calls on disjoint ranges (CopyOptions::max_in_flight).
class SplitSink : public import::RunSink {
 public:
  SplitSink(fiemap::SplitFiemap& split, uint64_t size, uint32_t lbs)
      : split_(split), size_(size), lbs_(lbs) {}

  Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override {
    if (Aligned(offset, data.size(), data.data())) {
      return split_.PWrite(data.data(), data.size(), offset);
    }
    return Patch(offset, data.size(), data.data());
  }

  Result<void> WriteZeroes(uint64_t offset, uint64_t length) override {
    // Unaligned head and tail: patch just the partial blocks; the aligned middle goes through
    // the one zero writer.
    const uint64_t end = offset + length;
    const uint64_t head_end = std::min(end, RoundUpTo(offset));
    if (head_end > offset) IMAGED_TRY(Patch(offset, head_end - offset, nullptr));
    const uint64_t tail_start = std::max(head_end, end / lbs_ * lbs_);
    if (tail_start > head_end) {
      IMAGED_TRY(
          WriteZeros(head_end, tail_start - head_end, [&](std::span<const uint8_t> z, uint64_t at) {
            return split_.PWrite(z.data(), z.size(), at);
          }));
    }
    if (end > tail_start) IMAGED_TRY(Patch(tail_start, end - tail_start, nullptr));
    return Ok();
  }

  uint64_t size() const override { return size_; }

 private:
  bool Aligned(uint64_t offset, uint64_t length, const void* p) const {
    return offset % lbs_ == 0 && length % lbs_ == 0 && reinterpret_cast<uintptr_t>(p) % lbs_ == 0;
  }

  // Read-modify-write of the whole logical blocks around [offset, offset+length); `data` null
  // means zeros.
  Result<void> Patch(uint64_t offset, uint64_t length, const uint8_t* data) {
    const uint64_t start = offset / lbs_ * lbs_;
    const uint64_t end = RoundUpTo(offset + length);
    const size_t span = static_cast<size_t>(end - start);
    std::unique_ptr<uint8_t, FreeDeleter> buf(
        static_cast<uint8_t*>(std::aligned_alloc(4096, RoundUpTo(span, 4096))));
    if (!buf) return MakeError(ENOMEM, "allocate {} bytes", span);
    IMAGED_TRY(split_.PRead(buf.get(), span, start));
    if (data) {
      std::memcpy(buf.get() + (offset - start), data, length);
    } else {
      std::memset(buf.get() + (offset - start), 0, length);
    }
    return split_.PWrite(buf.get(), span, start);
  }

  uint64_t RoundUpTo(uint64_t v, uint64_t a = 0) const {
    if (a == 0) a = lbs_;
    return (v + a - 1) / a * a;
  }

  fiemap::SplitFiemap& split_;
  uint64_t size_;
  uint32_t lbs_;
};

// A new image's one pass: every byte written (zero runs as zeros: the pieces are not pre-zeroed),
// 8 MiB writes, 4 in flight (several O_DIRECT streams measured 1.2-1.7x one on the bench disk).
import::CopyOptions SinglePassCopyOptions(){import::CopyOptions o;
o.target_is_zeroed = false;
o.buffer_size = 8 << 20;
// Zero runs shorter than a buffer are cheaper inside one large data write.
o.min_zero_write = o.buffer_size;
o.max_in_flight = 4;
return o;
}  // namespace

}  // namespace imaged

// One import: the reader over the source, the target image (new or existing) and the copy.
class ImportOperation {
 public:
  ImportOperation(ImageManager::Impl& impl, std::string_view name, const ImportOptions& options)
      : impl_(impl), name_(name), options_(options) {}

  // From a file: the reader is opened here, reading stored qcow clusters on the writer threads.
  Result<ImageInfo> Run(std::unique_ptr<import::FileSource> source) {
    source_ = std::move(source);
    IMAGED_TRY(InspectDataFilesystem());
    IMAGED_TRY(OpenReader());
    return Run();
  }
  // From a reader the caller made (an upload's stream), which must outlive the call.
  Result<ImageInfo> Run(import::ImageReader& reader, std::string_view source_name) {
    IMAGED_TRY(InspectDataFilesystem());
    reader_ = &reader;
    if (reader_->virtual_size() == 0) {
      return MakeError(EINVAL, "\"{}\" holds an empty image", source_name);
    }
    return Run();
  }

 private:
  Result<ImageInfo> Run() {
    auto locks = IMAGED_TRY(impl_.LockImage(name_));
    copy_progress_ = options_.progress;
    if (CrashPoints().armed || input_position_) {
      copy_progress_ = [this](uint64_t done, uint64_t total) {
        IMAGED_CRASH_POINT("import.copy_progress");
        if (input_position_ && !options_.input_progress(input_position_(), source_->size())) {
          return false;
        }
        return options_.progress ? options_.progress(done, total) : true;
      };
    }
    if (options_.dry_run) return Plan();
    IMAGED_TRY(options_.into_existing ? IntoExisting() : IntoNewImage());
    IMAGED_CRASH_POINT("import.done");
    // One read of lp_metadata and the kernel for both the news and the result.
    auto info = ReadBack();
    impl_.Announce(options_.into_existing ? ImageChangeKind::kImported : ImageChangeKind::kCreated,
                   name_, "import", {}, info ? &*info : nullptr);
    return info;
  }

  Result<ImageInfo> ReadBack() {
    const auto md = IMAGED_TRY(impl_.ReadLp());
    if (!md) return MakeError(ENOENT, "lp_metadata vanished");
    return impl_.InfoLocked(name_, *md);
  }

  // A dry run: the checks of the real import up to the first change, and what it would take.
  Result<ImageInfo> Plan() {
    ImageInfo info;
    info.name = name_;
    if (options_.into_existing) {
      const ImageManager::Impl::Image image = IMAGED_TRY(CheckExisting());
      *options_.dry_run = IMAGED_TRY(impl_.PlanInPlace(name_, image.size, fs_));
    } else {
      *options_.dry_run = IMAGED_TRY(impl_.CheckCreatable(name_, NewImageSize(), fs_));
    }
    info.size_bytes = options_.dry_run->size_bytes;
    info.pieces = options_.dry_run->pieces;
    info.readonly = options_.readonly;
    return info;
  }

  uint64_t NewImageSize() const { return manager::RoundUp(reader_->virtual_size(), lbs_); }

  // Once per import: the reader of a compressed file needs its free space, the copy its disk.
  Result<void> InspectDataFilesystem() {
    fs_ = IMAGED_TRY(fiemap::InspectFilesystem(impl_.data.fd(), impl_.data.path()));
    lbs_ = std::max<uint32_t>(fs_.disk_logical_block_size, 512);
    return Ok();
  }

  Result<void> OpenReader() {
    const std::string& source_path = source_->name();
    // Explicitly raw means the file's own bytes, compressed or not.
    if (options_.format != import::Format::Raw) {
      const import::Wrapping wrapping = IMAGED_TRY(import::DetectWrapping(*source_));
      if (wrapping != import::Wrapping::None) {
        owned_reader_ = IMAGED_TRY_CTX(OpenUnwrapped(wrapping), "read {} \"{}\"",
                                       import::WrappingName(wrapping), source_path);
        reader_ = owned_reader_.get();
        return CheckNotEmpty();
      }
    }
    const import::Format format =
        options_.format ? *options_.format : IMAGED_TRY(import::DetectFormat(*source_));
    import::ReaderOptions reader_options;
    // Stored qcow clusters are read, and compressed ones decompressed, by Copy's writer
    // threads straight into the write buffers: in parallel, and off this thread.
    reader_options.defer_data_reads = true;
    reader_options.defer_decompression = true;
    owned_reader_ = IMAGED_TRY_CTX(import::OpenReader(*source_, format, reader_options),
                                   "read {} \"{}\"", import::FormatName(format), source_path);
    reader_ = owned_reader_.get();
    return CheckNotEmpty();
  }

  // A compressed or archived image, decoded as a stream. A raw one inside may be decoded once
  // just to count its size, bounded by the space it could take: a new image needs free space,
  // an existing one cannot be larger than its filesystem.
  Result<std::unique_ptr<import::ImageReader>> OpenUnwrapped(import::Wrapping wrapping) {
    import::UnwrapOptions unwrap;
    unwrap.format = options_.format;
    const uint64_t reserve = manager::ReserveBytes(impl_.options.reserve, fs_);
    unwrap.max_size = options_.into_existing ? fs_.total_bytes
                                             : fs_.free_bytes - std::min(fs_.free_bytes, reserve);
    unwrap.count_progress = options_.input_progress;
    auto reader = IMAGED_TRY(import::OpenUnwrappedReader(*source_, wrapping, unwrap));
    if (options_.input_progress) {
      input_position_ = [reader = reader.get()] { return reader->input_position(); };
      // Measuring read the file to its end; the import reads it again from its start.
      if (!options_.input_progress(input_position_(), source_->size())) {
        return MakeError(ECANCELED, "import cancelled");
      }
    }
    return std::unique_ptr<import::ImageReader>(std::move(reader));
  }

  Result<void> CheckNotEmpty() const {
    if (reader_->virtual_size() == 0) {
      return MakeError(EINVAL, "\"{}\" holds an empty image", source_->name());
    }
    return Ok();
  }

  // Into an existing, unmapped image: not atomic by design; a failure leaves it partly written.
  Result<void> IntoExisting() {
    const ImageManager::Impl::Image image = IMAGED_TRY(CheckExisting());
    auto copied = CopyIntoImage(image, /*target_is_zeroed=*/false);
    if (!copied) return std::move(copied).error().Wrap("the image was partly overwritten");
    return Ok();
  }

  Result<ImageManager::Impl::Image> CheckExisting() {
    ImageManager::Impl::Image image = IMAGED_TRY(impl_.FindUnmappedImage(name_));
    if (image.readonly()) return MakeError(EROFS, "the image is read-only");
    if (image.size < reader_->virtual_size()) {
      return MakeError(EFBIG, "the source holds {} bytes, the image only {}",
                       reader_->virtual_size(), image.size);
    }
    return image;
  }

  // Into a new image, all or nothing: until the data is in, a crash must not leave a
  // half-filled image behind (the fill intent makes Recover remove it).
  Result<void> IntoNewImage() {
    manager::Intent intent;
    intent.op = manager::Intent::Op::kFill;
    IMAGED_TRY(impl_.WriteIntent(name_, intent));
    IMAGED_CRASH_POINT("import.marked");
    auto created = CreateAndFill();
    if (!created) {
      Error e = std::move(created).error();
      // The marker stays while anything of the image does: the next Recover then removes it.
      const bool left =
          impl_.data.Exists(imageset::ListFileName(name_)) || impl_.FindImage(name_).has_value();
      if (auto cleared = left ? Result<void>() : impl_.ClearIntent(name_); !cleared) {
        e.message += fmt::format(" (and {})", cleared.error().ToString());
      }
      return e;
    }
    IMAGED_CRASH_POINT("import.copied");
    return impl_.ClearIntent(name_);
  }

  Result<void> CreateAndFill() {
    const uint64_t size = NewImageSize();
    CreateOptions create;
    create.readonly = options_.readonly;
    if (options_.progress) {
      // Allocation is part of the import: it may be cancelled, and shows as 0 bytes copied.
      create.progress = [this](uint64_t, uint64_t) {
        return options_.progress(0, reader_->virtual_size());
      };
    }
    // The files are what the device reads (loop, or dm-linear over plaintext): write them before
    // the image is recorded. Under dm-crypt only the mapped device shows what the image reads,
    // so that path creates a zeroed image and writes through a mapping afterwards.
    const bool through_files = IMAGED_TRY(impl_.FileViewMatchesDevice(fs_));
    ImageManager::Impl::FillFn fill;
    if (through_files) {
      fill = [&](fiemap::SplitFiemap& split) -> Result<void> {
        IMAGED_TRY(split.OpenForIo(/*direct=*/true));
        SplitSink sink(split, size, lbs_);
        IMAGED_TRY(import::Copy(*reader_, sink, copy_progress_, SinglePassCopyOptions()));
        return Ok();  // CompleteZeroing (in CreateLocked) fsyncs every piece
      };
    }
    IMAGED_TRY(impl_.CreateLocked(name_, size, create, fill));
    IMAGED_CRASH_POINT("import.created");
    if (through_files) return Ok();
    auto copied = CopyThroughDevice();
    if (!copied) {
      Error e = std::move(copied).error();
      if (auto undo = impl_.DeleteLocked(name_); !undo) {
        e.message +=
            fmt::format(" (and removing the new image failed: {})", undo.error().ToString());
      }
      return e;
    }
    return Ok();
  }

  Result<void> CopyIntoImage(const ImageManager::Impl::Image& image, bool target_is_zeroed) {
    if (!IMAGED_TRY(impl_.FileViewMatchesDevice(fs_))) return CopyThroughDevice();
    fiemap::SplitFiemap split = IMAGED_TRY(impl_.CheckExtentsLocked(name_, image));
    IMAGED_TRY(split.OpenForIo(/*direct=*/true));
    SplitSink sink(split, image.size, lbs_);
    import::CopyOptions copy_options;
    copy_options.target_is_zeroed = target_is_zeroed;
    IMAGED_TRY(import::Copy(*reader_, sink, copy_progress_, copy_options));
    return split.Sync();
  }

  // dm-linear over a ciphertext disk: only the device shows what the image will read.
  Result<void> CopyThroughDevice() {
    ImageManager::Impl::MapRequest request;
    request.force_writable = true;
    const std::string device = IMAGED_TRY(impl_.MapLocked(name_, request));
    auto write = [&]() -> Result<void> {
      import::FileSinkOptions so;
      so.direct = true;
      auto sink = IMAGED_TRY(import::FileSink::Open(device, so));
      IMAGED_TRY(import::Copy(*reader_, *sink, copy_progress_, {}));
      return sink->Sync();
    };
    auto written = write();
    auto unmapped = impl_.UnmapLocked(name_);
    IMAGED_TRY(std::move(written));
    return unmapped;
  }

  ImageManager::Impl& impl_;
  std::string name_;
  const ImportOptions& options_;
  std::unique_ptr<import::FileSource> source_;
  std::unique_ptr<import::ImageReader> owned_reader_;
  import::ImageReader* reader_ = nullptr;
  std::function<uint64_t()> input_position_;  // a compressed source's decoder, for progress
  fiemap::FilesystemInfo fs_;
  uint32_t lbs_ = 512;
  Progress copy_progress_;
};

Result<ImageInfo> ImageManager::Import(std::string_view name,
                                       std::unique_ptr<import::FileSource> source,
                                       const ImportOptions& options) {
  IMAGED_TRY_CTX(imageset::ValidateImageName(name), "import");
  const std::string source_name = source->name();
  ImportOperation operation(*impl_, name, options);
  return IMAGED_TRY_CTX(operation.Run(std::move(source)), "import \"{}\" from \"{}\"", name,
                        source_name);
}

Result<ImageInfo> ImageManager::Import(std::string_view name, import::ImageReader& reader,
                                       std::string_view source_name, const ImportOptions& options) {
  IMAGED_TRY_CTX(imageset::ValidateImageName(name), "import");
  ImportOperation operation(*impl_, name, options);
  return IMAGED_TRY_CTX(operation.Run(reader, source_name), "import \"{}\" from {}", name,
                        source_name);
}

Result<ImageInfo> ImageManager::Import(std::string_view name, const std::string& source_path,
                                       const ImportOptions& options) {
  auto source = IMAGED_TRY_CTX(import::FileSource::Open(source_path), "import \"{}\"", name);
  return Import(name, std::move(source), options);
}

}  // namespace imaged
