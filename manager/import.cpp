// Import: a raw / Android sparse / qcow image file into a new (or an existing, unmapped) image.
// Data goes into the pieces with O_DIRECT writes. A new image is written in one pass: its pieces
// are allocated without zeroing, the import writes every byte (zero runs as zeros, several
// writes in flight), and only then are its extents read and recorded (CreateLocked's fill).
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "crash_point.h"
#include "import/reader.h"
#include "import/source.h"
#include "import/writer.h"
#include "internal.h"

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
    IMAGED_TRY(EnsureZeros());
    while (length > 0) {
      // Unaligned head or tail: patch just the partial block.
      uint64_t n = std::min<uint64_t>(length, kZeroChunk);
      if (offset % lbs_ != 0)
        n = std::min<uint64_t>(length, lbs_ - offset % lbs_);
      else if (n % lbs_ != 0 && n > lbs_)
        n -= n % lbs_;
      if (Aligned(offset, n, zeros_.get())) {
        IMAGED_TRY(split_.PWrite(zeros_.get(), n, offset));
      } else {
        IMAGED_TRY(Patch(offset, n, nullptr));
      }
      offset += n;
      length -= n;
    }
    return Ok();
  }

  uint64_t size() const override { return size_; }

 private:
  static constexpr size_t kZeroChunk = 4 << 20;

  bool Aligned(uint64_t offset, uint64_t length, const void* p) const {
    return offset % lbs_ == 0 && length % lbs_ == 0 && reinterpret_cast<uintptr_t>(p) % lbs_ == 0;
  }

  Result<void> EnsureZeros() {
    std::call_once(zeros_once_, [this] {
      zeros_.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, kZeroChunk)));
      if (zeros_) std::memset(zeros_.get(), 0, kZeroChunk);
    });
    if (!zeros_) return MakeError(ENOMEM, "allocate {} bytes", kZeroChunk);
    return Ok();
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
  std::once_flag zeros_once_;
  std::unique_ptr<uint8_t, FreeDeleter> zeros_;
};

// A new image's one pass: every byte written (zero runs as zeros: the pieces are not pre-zeroed),
// 8 MiB writes, 4 in flight (several O_DIRECT streams measured 1.2-1.7x one on the bench disk).
imaged::import::CopyOptions SinglePassCopyOptions() {
  imaged::import::CopyOptions o;
  o.target_is_zeroed = false;
  o.buffer_size = 8 << 20;
  // Zero runs shorter than a buffer are cheaper inside one large data write.
  o.min_zero_write = o.buffer_size;
  o.max_in_flight = 4;
  return o;
}

Result<import::Format> ToFormat(ImportFormat f, import::Source& source) {
  switch (f) {
    case ImportFormat::kAuto:
      return import::DetectFormat(source);
    case ImportFormat::kRaw:
      return import::Format::Raw;
    case ImportFormat::kSparse:
      return import::Format::Sparse;
    case ImportFormat::kQcow1:
      return import::Format::Qcow1;
    case ImportFormat::kQcow2:
      return import::Format::Qcow2;
  }
  return MakeError(EINVAL, "unknown format");
}

}  // namespace

Result<ImageInfo> ImageManager::Import(std::string_view name, const std::string& source_path,
                                       const ImportOptions& options) {
  IMAGED_TRY_CTX(ValidateImageName(name), "import");
  auto& impl = *impl_;
  auto run = [&]() -> Result<ImageInfo> {
    auto source = IMAGED_TRY(import::FileSource::Open(source_path));
    const import::Format format = IMAGED_TRY(ToFormat(options.format, *source));
    import::ReaderOptions reader_options;
    // Stored qcow clusters are read by Copy's writer threads straight into the write buffers.
    reader_options.defer_data_reads = true;
    auto reader = IMAGED_TRY_CTX(import::OpenReader(*source, format, reader_options),
                                 "read {} \"{}\"", import::FormatName(format), source_path);
    const uint64_t virtual_size = reader->virtual_size();
    if (virtual_size == 0) return MakeError(EINVAL, "\"{}\" holds an empty image", source_path);

    auto locks = IMAGED_TRY(impl.LockImage(name));
    const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(impl.options.data_dir));
    const uint32_t lbs = std::max<uint32_t>(fs.disk_logical_block_size, 512);

    Progress copy_progress = options.progress;
    if (CrashPoints().armed) {
      copy_progress = [&](uint64_t done, uint64_t total) {
        IMAGED_CRASH_POINT("import.copy_progress");
        return options.progress ? options.progress(done, total) : true;
      };
    }

    bool created = false;
    bool copied = false;
    if (options.into_existing) {
      const auto md = IMAGED_TRY(impl.ReadLp());
      const auto* p = md ? metadata::FindPartition(*md, name) : nullptr;
      if (!p) return MakeError(ENOENT, "no such image");
      if (auto device = IMAGED_TRY(impl.MappedDeviceLocked(name))) {
        return MakeError(EBUSY, "the image is mapped at {}", *device);
      }
      const uint64_t size = metadata::PartitionSizeBytes(*md, *p);
      if (size < virtual_size) {
        return MakeError(EFBIG, "the source holds {} bytes, the image only {}", virtual_size, size);
      }
    } else {
      CreateOptions create;
      create.readonly = options.readonly;
      if (options.progress) {
        // Allocation is part of the import: it may be cancelled, and shows as 0 bytes copied.
        create.progress = [&](uint64_t, uint64_t) { return options.progress(0, virtual_size); };
      }
      // Until the data is in, a crash must not leave a half-filled image behind: Recover deletes
      // images that still carry the marker.
      IMAGED_TRY(impl.MarkIncomplete(name));
      IMAGED_CRASH_POINT("import.marked");
      const uint64_t size = RoundUp(virtual_size, lbs);
      // The files are what the device reads (loop, or dm-linear over plaintext): write them
      // before the image is recorded. Under dm-crypt only the mapped device shows what the image
      // reads, so that path creates a zeroed image and writes through a mapping below.
      Impl::FillFn fill;
      auto view = impl.FileViewMatchesDevice(fs);
      if (!view) {
        (void)impl.ClearIncomplete(name);
        return std::move(view).error();
      }
      if (*view) {
        fill = [&](fiemap::SplitFiemap& split) -> Result<void> {
          IMAGED_TRY(split.OpenForIo(/*direct=*/true));
          SplitSink sink(split, size, lbs);
          IMAGED_TRY(import::Copy(*reader, sink, copy_progress, SinglePassCopyOptions()));
          return Ok();  // CompleteZeroing (in CreateLocked) fsyncs every piece
        };
      }
      if (auto made = impl.CreateLocked(name, size, create, fill); !made) {
        (void)impl.ClearIncomplete(name);
        return std::move(made).error();
      }
      created = true;
      copied = static_cast<bool>(fill);
      IMAGED_CRASH_POINT("import.created");
    }

    auto copy = [&]() -> Result<void> {
      const auto md = IMAGED_TRY(impl.ReadLp());
      import::CopyOptions copy_options;
      copy_options.target_is_zeroed = created;
      if (!IMAGED_TRY(impl.FileViewMatchesDevice(fs))) {
        // dm-linear over a ciphertext disk: only the device shows what the image will read.
        ImageManager::Impl::MapRequest request;
        request.force_writable = true;
        const std::string device = IMAGED_TRY(impl.MapLocked(name, request));
        auto write = [&]() -> Result<void> {
          import::FileSinkOptions so;
          so.direct = true;
          auto sink = IMAGED_TRY(import::FileSink::Open(device, so));
          copy_options.target_is_zeroed = false;  // the zeros went in through the fs
          IMAGED_TRY(import::Copy(*reader, *sink, copy_progress, copy_options));
          return sink->Sync();
        };
        auto written = write();
        auto unmapped = impl.UnmapLocked(name);
        IMAGED_TRY(std::move(written));
        return unmapped;
      }
      std::optional<fiemap::SplitFiemap> split;
      IMAGED_TRY(impl.CheckExtentsLocked(name, *md, &split));
      IMAGED_TRY(split->OpenForIo(/*direct=*/true));
      const auto* p = metadata::FindPartition(*md, name);
      SplitSink sink(*split, metadata::PartitionSizeBytes(*md, *p), lbs);
      IMAGED_TRY(import::Copy(*reader, sink, copy_progress, copy_options));
      return split->Sync();
    };
    auto result = copied ? Result<void>(Ok()) : copy();
    if (!result) {
      Error e = std::move(result).error();
      if (created) {
        if (auto undo = impl.DeleteLocked(name); !undo) {
          // The marker stays: the daemon's next Recover deletes the image.
          e.message +=
              fmt::format(" (and removing the new image failed: {})", undo.error().ToString());
        } else if (auto cleared = impl.ClearIncomplete(name); !cleared) {
          e.message += fmt::format(" (and {})", cleared.error().ToString());
        }
      } else {
        e.message += " (the image was partly overwritten)";
      }
      return e;
    }
    IMAGED_CRASH_POINT("import.copied");
    if (created) IMAGED_TRY(impl.ClearIncomplete(name));
    IMAGED_CRASH_POINT("import.done");
    const auto md = IMAGED_TRY(impl.ReadLp());
    return impl.InfoLocked(name, *md);
  };
  return IMAGED_TRY_CTX(run(), "import \"{}\" from \"{}\"", name, source_path);
}

}  // namespace imaged
