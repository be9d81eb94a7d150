// Map, Unmap, mapped-state queries and zero-fill.
//
// Every device is recorded in `<name>.status` before it is created: dm by name, loops as
// `loop:/dev/loopN` between LOOP_CTL_GET_FREE and LOOP_CONFIGURE (LoopOptions::before_configure).
// Recover also scans loops by backing file, so even a number lost to a race cannot leak a loop.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "crash_point.h"
#include "dm/loop_device.h"
#include "imaged/common/size.h"
#include "internal.h"

namespace imaged {

using manager::RoundUp;
using metadata::StatusEntry;

namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Writes zeros over [0, bytes) through `write_at`, in large aligned chunks.
Result<void> WriteZeros(
    uint64_t bytes, const Progress& progress,
    const std::function<Result<void>(const void*, size_t, uint64_t)>& write_at) {
  constexpr size_t kChunk = 1 << 20;
  std::unique_ptr<void, FreeDeleter> buf(std::aligned_alloc(4096, kChunk));
  if (!buf) return MakeError(ENOMEM, "allocate {} bytes", kChunk);
  std::memset(buf.get(), 0, kChunk);
  uint64_t done = 0;
  while (done < bytes) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, bytes - done));
    IMAGED_TRY(write_at(buf.get(), n, done));
    done += n;
    IMAGED_CRASH_POINT("zero_fill.progress");
    if (progress && !progress(done, bytes)) return MakeError(ECANCELED, "zero-fill cancelled");
  }
  return Ok();
}

// Ranges of `fd` that read as zeros without owning written blocks: holes and (on ext4, xfs)
// unwritten extents, as SEEK_HOLE reports them.
Result<std::vector<std::pair<uint64_t, uint64_t>>> HoleRanges(int fd, uint64_t size,
                                                              const std::string& path) {
  std::vector<std::pair<uint64_t, uint64_t>> holes;
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < size) {
    off_t hole = lseek(fd, pos, SEEK_HOLE);
    if (hole < 0) {
      if (errno == ENXIO) break;
      return ErrnoError("seek hole in \"{}\"", path);
    }
    if (static_cast<uint64_t>(hole) >= size) break;
    off_t data = lseek(fd, hole, SEEK_DATA);
    uint64_t end = data < 0 ? size : std::min<uint64_t>(static_cast<uint64_t>(data), size);
    if (data < 0 && errno != ENXIO) return ErrnoError("seek data in \"{}\"", path);
    holes.emplace_back(static_cast<uint64_t>(hole), end - static_cast<uint64_t>(hole));
    pos = static_cast<off_t>(end);
  }
  return holes;
}

bool IsUnder(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() + 1 && path.compare(0, dir.size(), dir) == 0 &&
         path[dir.size()] == '/';
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// State

Result<std::vector<std::string>> ImageManager::Impl::LoopsBacking(
    const std::vector<std::string>& pieces) {
  std::vector<std::string> loops;
  for (const auto& piece : pieces) {
    if (!manager::PathExists(piece)) continue;
    auto found = dm::LoopDevice::FindByBackingFile(piece);
    if (!found) {
      if (found.error().code == ENOENT) continue;
      return std::move(found).error();
    }
    for (auto& l : *found) loops.push_back(std::move(l));
  }
  return loops;
}

Result<std::optional<std::string>> ImageManager::Impl::MappedDeviceLocked(std::string_view name) {
  // The kernel is the truth: a status file can be stale after a crash, and images mapped by
  // imaged-init at boot have a dm device but no status file.
  if (IMAGED_TRY(DmExists(dm_name(name)))) {
    return std::optional<std::string>(dm::DeviceMapper::DevicePath(dm_name(name)));
  }
  auto pieces = fiemap::SplitFiemap::ListPieces(list_path(name));
  if (pieces) {
    auto loops = IMAGED_TRY(LoopsBacking(*pieces));
    if (!loops.empty()) return std::optional<std::string>(loops.front());
  }
  return std::optional<std::string>();
}

Result<bool> ImageManager::IsMapped(std::string_view name) {
  auto device = IMAGED_TRY(GetMappedDevice(name));
  return device.has_value();
}

Result<std::optional<std::string>> ImageManager::GetMappedDevice(std::string_view name) {
  IMAGED_TRY_CTX(ValidateImageName(name), "mapped device");
  auto device = IMAGED_TRY_CTX(impl_->MappedDeviceLocked(name), "mapped device of \"{}\"", name);
  if (!device) {
    const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "mapped device of \"{}\"", name);
    if (!md || !metadata::FindPartition(*md, name)) {
      return MakeError(ENOENT, "mapped device of \"{}\": no such image", name);
    }
  }
  return device;
}

// ---------------------------------------------------------------------------------------------
// Strategy

Result<MapStrategy> ImageManager::Impl::ResolveStrategy(const fiemap::FilesystemInfo& fs) {
  switch (options.strategy) {
    case MapStrategy::kLoop:
      return MapStrategy::kLoop;
    case MapStrategy::kDmLinear:
      if (!fs.through_device_mapper) {
        // The fs holds its device exclusively; the kernel would refuse a table over it (EBUSY).
        return MakeError(EOPNOTSUPP,
                         "dm-linear needs the data filesystem on device-mapper, but it is "
                         "mounted directly on {}",
                         fs.fs_device);
      }
      if (!manager::DeviceMapperAvailable()) {
        return MakeError(EOPNOTSUPP, "device-mapper is not available (/dev/mapper/control)");
      }
      return MapStrategy::kDmLinear;
    case MapStrategy::kAuto:
      break;
  }
  // Under dm-crypt the disk holds ciphertext: a dm-linear device would store the image in
  // plaintext beside the user's encrypted data and disagree with the file's contents
  // (AOSP_REFERENCE 9.20). The loop path keeps the image encrypted and coherent.
  if (fs.through_device_mapper && !fs.disk_holds_ciphertext && manager::DeviceMapperAvailable() &&
      !fs.disk.empty()) {
    UniqueFd probe(open(fs.disk.c_str(), O_RDONLY | O_CLOEXEC));
    if (probe) return MapStrategy::kDmLinear;
  }
  return MapStrategy::kLoop;
}

Result<bool> ImageManager::Impl::FileViewMatchesDevice(const fiemap::FilesystemInfo& fs) {
  const MapStrategy s = IMAGED_TRY(ResolveStrategy(fs));
  return s == MapStrategy::kLoop || !fs.disk_holds_ciphertext;
}

// ---------------------------------------------------------------------------------------------
// Map

Result<std::string> ImageManager::Map(std::string_view name, std::chrono::milliseconds timeout) {
  IMAGED_TRY_CTX(ValidateImageName(name), "map");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "map \"{}\"", name);
  Impl::MapRequest request;
  request.timeout = timeout;
  return IMAGED_TRY_CTX(impl_->MapLocked(name, request), "map \"{}\"", name);
}

Result<std::string> ImageManager::Impl::MapLocked(std::string_view name,
                                                  const MapRequest& request) {
  const auto md = IMAGED_TRY(ReadLp());
  const auto* p = md ? metadata::FindPartition(*md, name) : nullptr;
  if (!p) return MakeError(ENOENT, "no such image");
  if (auto device = IMAGED_TRY(MappedDeviceLocked(name))) {
    return MakeError(EBUSY, "already mapped at {}", *device);
  }
  const std::string status = status_path(name);
  // Nothing of the image is live (checked above), so a leftover status file is stale.
  IMAGED_TRY(metadata::RemoveStatusFile(status));

  // SAFETY RULE: never map blocks the files no longer own.
  std::optional<fiemap::SplitFiemap> split;
  IMAGED_TRY(CheckExtentsLocked(name, *md, &split));
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(options.data_dir));
  const MapStrategy strategy = IMAGED_TRY(ResolveStrategy(fs));
  const bool readonly =
      (p->attributes & metadata::kPartitionAttrReadonly) != 0 && !request.force_writable;
  const uint64_t size = metadata::PartitionSizeBytes(*md, *p);
  const auto timeout = request.timeout.count() > 0 ? request.timeout : options.default_map_timeout;
  const std::string dm_dev = dm_name(name);

  // Undoes everything on any failure: dm first, then loops (their destructors), then the record.
  struct Cleanup {
    Impl* impl;
    std::string status;
    std::string dm_dev;
    bool dm_created = false;
    std::vector<dm::LoopDevice> loops;
    bool armed = true;
    ~Cleanup() {
      if (!armed) return;
      if (dm_created) {
        if (auto mapper = impl->Dm()) {
          dm::RemoveOptions ro;
          ro.ignore_missing = true;
          (void)(*mapper)->Remove(dm_dev, ro);
        }
      }
      for (auto it = loops.rbegin(); it != loops.rend(); ++it) (void)it->Detach();
      loops.clear();
      (void)metadata::RemoveStatusFile(status);
    }
  } cleanup{this, status, dm_dev, false, {}, true};

  dm::CreateOptions dm_options;
  dm_options.readonly = readonly;
  dm_options.timeout = timeout;

  if (strategy == MapStrategy::kDmLinear) {
    dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
    const auto extents = metadata::PartitionExtents(*md, *p);
    dm::Table table = manager::DmLinearTable(extents, fs.disk_dev, readonly);
    IMAGED_TRY(metadata::AppendStatusEntry(status, {StatusEntry::Kind::Dm, dm_dev}));
    IMAGED_CRASH_POINT("map.status_dm");
    cleanup.dm_created = true;  // Remove(ignore_missing) is harmless if Create never got far
    std::string path =
        IMAGED_TRY_CTX(mapper->Create(dm_dev, table, dm_options), "dm-linear over {}", fs.disk);
    IMAGED_CRASH_POINT("map.dm_created");
    cleanup.armed = false;
    IMAGED_CRASH_POINT("map.done");
    return path;
  }

  const auto& pieces = split->pieces();
  dm::DeviceMapper* mapper = nullptr;
  if (pieces.size() > 1) {
    auto m = Dm();
    if (!m) {
      return std::move(m).error().Wrap(
          fmt::format("joining {} pieces needs device-mapper", pieces.size()));
    }
    mapper = *m;
  }
  const uint32_t lbs = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  // What the status file holds: one loop entry per piece attached so far, plus the one being
  // attached. When LoopDevice::Attach loses the free loop to another process it asks again with
  // the next number; that entry is then replaced, so the file never names a loop that is not ours
  // for long (and Recover only ever detaches loops backed by our pieces anyway).
  std::vector<StatusEntry> recorded;
  for (const auto& piece : pieces) {
    dm::LoopOptions lo;
    lo.read_only = readonly;
    lo.direct_io = true;
    lo.block_size = lbs;
    // A discard through the loop would punch a hole in our piece, freeing blocks that
    // lp_metadata (and so imaged-init at the next boot) still maps. Write-zeroes cannot be turned
    // off on current kernels; RestoreAllocationLocked repairs after those.
    lo.no_discard = true;
    // One piece: the loop itself is the device, so it must be exactly the image size, not the
    // block-rounded file size (AOSP_REFERENCE 9.13).
    if (pieces.size() == 1) lo.size_limit = size;
    const size_t index = cleanup.loops.size();
    lo.before_configure = [&](const std::string& loop_path) -> Result<void> {
      recorded.resize(index);
      recorded.push_back({StatusEntry::Kind::Loop, loop_path});
      IMAGED_TRY(metadata::WriteStatusFile(status, recorded));
      IMAGED_CRASH_POINT("map.loop_recorded");
      return Ok();
    };
    auto loop =
        IMAGED_TRY_CTX(dm::LoopDevice::Attach(piece.path(), lo), "loop over \"{}\"", piece.path());
    cleanup.loops.push_back(std::move(loop));
    if (recorded.size() != cleanup.loops.size() ||
        recorded.back().value != cleanup.loops.back().path()) {
      // Cannot happen unless Attach broke its contract; never leave the device unrecorded.
      recorded.resize(index);
      recorded.push_back({StatusEntry::Kind::Loop, cleanup.loops.back().path()});
      IMAGED_TRY(metadata::WriteStatusFile(status, recorded));
    }
    IMAGED_CRASH_POINT("map.loop_attached");
  }
  std::string path;
  if (pieces.size() == 1) {
    path = cleanup.loops.front().path();
  } else {
    dm::Table table;
    uint64_t start = 0;
    uint64_t remaining = size / metadata::kSectorSize;
    for (size_t i = 0; i < pieces.size() && remaining > 0; ++i) {
      const uint64_t len = std::min(pieces[i].size() / metadata::kSectorSize, remaining);
      table.Emplace<dm::LinearTarget>(start, len,
                                      dm::DeviceMapper::DeviceString(cleanup.loops[i].dev()), 0);
      start += len;
      remaining -= len;
    }
    table.set_readonly(readonly);
    IMAGED_TRY(metadata::AppendStatusEntry(status, {StatusEntry::Kind::Dm, dm_dev}));
    IMAGED_CRASH_POINT("map.status_dm");
    cleanup.dm_created = true;
    path = IMAGED_TRY_CTX(mapper->Create(dm_dev, table, dm_options), "dm-linear over {} loops",
                          pieces.size());
    IMAGED_CRASH_POINT("map.dm_created");
  }
  for (auto& loop : cleanup.loops) loop.release();
  cleanup.loops.clear();
  cleanup.armed = false;
  IMAGED_CRASH_POINT("map.done");
  return path;
}

Result<std::vector<std::string>> ImageManager::MapAll() {
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "map all");
  std::vector<std::string> mapped;
  if (!md) return mapped;
  for (const auto& p : md->partitions) {
    if (p.attributes & metadata::kPartitionAttrDisabled) continue;
    auto locks = IMAGED_TRY_CTX(impl_->LockImage(p.name), "map all: \"{}\"", p.name);
    if (IMAGED_TRY(impl_->MappedDeviceLocked(p.name))) continue;
    Impl::MapRequest request;
    IMAGED_TRY_CTX(impl_->MapLocked(p.name, request), "map all: map \"{}\"", p.name);
    mapped.push_back(p.name);
  }
  return mapped;
}

// ---------------------------------------------------------------------------------------------
// Unmap

Result<void> ImageManager::Impl::TearDown(std::string_view name,
                                          const std::vector<StatusEntry>& entries,
                                          const std::vector<std::string>& pieces) {
  // dm first: it holds the loops below it.
  const std::string dm_dev = dm_name(name);
  if (IMAGED_TRY(DmExists(dm_dev))) {
    dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
    dm::RemoveOptions ro;
    ro.ignore_missing = true;
    IMAGED_TRY_CTX(mapper->Remove(dm_dev, ro), "remove {}", dm_dev);
    IMAGED_CRASH_POINT("unmap.dm_removed");
  }
  // Only loops whose backing file is one of this image's pieces: the numbers in a status file
  // may have been reused by someone else after a crash.
  std::vector<std::string> ours = IMAGED_TRY(LoopsBacking(pieces));
  for (const auto& e : entries) {
    if (e.kind != StatusEntry::Kind::Loop) continue;
    if (std::find(ours.begin(), ours.end(), e.value) != ours.end()) continue;
    auto backing = dm::LoopDevice::BackingFile(e.value);
    if (!backing) continue;  // detached already, or not a loop
    const std::string base = manager::Basename(*backing);
    if (IsUnder(*backing, options.data_dir) && base.starts_with(std::string(name) + ".img.")) {
      ours.push_back(e.value);  // its piece is gone from the list file, but it is ours
    }
  }
  for (auto it = ours.rbegin(); it != ours.rend(); ++it) {
    IMAGED_TRY_CTX(dm::LoopDevice::DetachPath(*it), "detach {}", *it);
    IMAGED_CRASH_POINT("unmap.loop_detached");
  }
  return Ok();
}

Result<void> ImageManager::Unmap(std::string_view name) {
  IMAGED_TRY_CTX(ValidateImageName(name), "unmap");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "unmap \"{}\"", name);
  IMAGED_TRY_CTX(impl_->UnmapLocked(name), "unmap \"{}\"", name);
  return Ok();
}

Result<void> ImageManager::Impl::UnmapLocked(std::string_view name) {
  const std::string status = status_path(name);
  std::vector<StatusEntry> entries;
  auto read = metadata::ReadStatusFile(status);
  const bool have_status = read.has_value() || read.error().code != ENOENT;
  if (read) entries = std::move(*read);
  const auto device = IMAGED_TRY(MappedDeviceLocked(name));
  if (!device && !have_status) {
    const auto md = IMAGED_TRY(ReadLp());
    if (!md || !metadata::FindPartition(*md, name)) return MakeError(ENOENT, "no such image");
    return MakeError(ENXIO, "the image is not mapped");
  }
  std::vector<std::string> pieces;
  if (auto listed = fiemap::SplitFiemap::ListPieces(list_path(name))) pieces = std::move(*listed);
  IMAGED_TRY(TearDown(name, entries, pieces));
  IMAGED_TRY(metadata::RemoveStatusFile(status));
  IMAGED_CRASH_POINT("unmap.status_removed");
  const bool had_loops = std::any_of(entries.begin(), entries.end(), [](const StatusEntry& e) {
    return e.kind == StatusEntry::Kind::Loop;
  });
  if (had_loops || entries.empty()) {
    IMAGED_TRY_CTX(RestoreAllocationLocked(name),
                   "unmapped, but restoring the pieces' allocation failed");
  }
  IMAGED_CRASH_POINT("unmap.done");
  return Ok();
}

Result<bool> ImageManager::Impl::RestoreAllocationLocked(std::string_view name) {
  const auto md = IMAGED_TRY(ReadLp());
  const auto* p = md ? metadata::FindPartition(*md, name) : nullptr;
  if (!p) return false;
  const auto pieces = IMAGED_TRY(fiemap::SplitFiemap::ListPieces(list_path(name)));
  bool restored = false;
  for (const auto& piece : pieces) {
    UniqueFd fd(open(piece.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) return ErrnoError("open \"{}\"", piece);
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return ErrnoError("stat \"{}\"", piece);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    const auto holes = IMAGED_TRY(HoleRanges(fd.get(), size, piece));
    if (holes.empty()) continue;
    restored = true;
    if (fallocate(fd.get(), 0, 0, static_cast<off_t>(size)) != 0) {
      return ErrnoError("fallocate \"{}\"", piece);
    }
    // The ranges read as zeros already; writing zeros makes their blocks written for FIEMAP.
    for (const auto& [off, len] : holes) {
      IMAGED_TRY(WriteZeros(len, {}, [&](const void* b, size_t n, uint64_t at) -> Result<void> {
        ssize_t w = pwrite(fd.get(), b, n, static_cast<off_t>(off + at));
        if (w != static_cast<ssize_t>(n)) return ErrnoError("write zeros to \"{}\"", piece);
        return Ok();
      }));
    }
    if (fsync(fd.get()) != 0) return ErrnoError("fsync \"{}\"", piece);
  }
  if (!restored) return false;
  const uint32_t attributes = p->attributes;
  const uint64_t size = metadata::PartitionSizeBytes(*md, *p);
  auto split = IMAGED_TRY(fiemap::SplitFiemap::Open(list_path(name)));
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(options.data_dir));
  const auto extents = IMAGED_TRY(manager::ComputeLpExtents(split, manager::DiskFactsOf(fs), size));
  auto record = [&](std::optional<metadata::LpMetadata> current) -> Result<metadata::LpMetadata> {
    if (!current || !metadata::FindPartition(*current, name)) {
      return MakeError(ENOENT, "no such image");
    }
    IMAGED_TRY(metadata::SetPartition(*current, name, attributes, extents));
    return std::move(*current);
  };
  IMAGED_TRY(EditLp(record));
  return true;
}

// ---------------------------------------------------------------------------------------------
// ZeroFill

Result<void> ImageManager::ZeroFill(std::string_view name, uint64_t bytes,
                                    const Progress& progress) {
  IMAGED_TRY_CTX(ValidateImageName(name), "zero-fill");
  auto locks = IMAGED_TRY_CTX(impl_->LockImage(name), "zero-fill \"{}\"", name);
  IMAGED_TRY_CTX(impl_->ZeroFillLocked(name, bytes, progress), "zero-fill \"{}\"", name);
  return Ok();
}

Result<void> ImageManager::Impl::ZeroFillLocked(std::string_view name, uint64_t bytes,
                                                const Progress& progress) {
  const auto md = IMAGED_TRY(ReadLp());
  const auto* p = md ? metadata::FindPartition(*md, name) : nullptr;
  if (!p) return MakeError(ENOENT, "no such image");
  const uint64_t size = metadata::PartitionSizeBytes(*md, *p);
  if (bytes > size) {
    return MakeError(EINVAL, "{} bytes requested, the image has {}", bytes, size);
  }
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(options.data_dir));
  const uint64_t lbs = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  // Whole logical blocks: direct I/O cannot write less.
  const uint64_t count = bytes == 0 ? size : std::min(RoundUp(bytes, lbs), size);

  auto through_device = [&](const std::string& device) -> Result<void> {
    UniqueFd fd(open(device.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
    if (!fd) return ErrnoError("open {}", device);
    IMAGED_TRY(
        WriteZeros(count, progress, [&](const void* b, size_t n, uint64_t off) -> Result<void> {
          ssize_t w = pwrite(fd.get(), b, n, static_cast<off_t>(off));
          if (w < 0) return ErrnoError("write {} bytes at {} of {}", n, off, device);
          if (static_cast<size_t>(w) != n)
            return MakeError(EIO, "short write at {} of {}", off, device);
          return Ok();
        }));
    if (fdatasync(fd.get()) != 0) return ErrnoError("sync {}", device);
    return Ok();
  };

  if (auto device = IMAGED_TRY(MappedDeviceLocked(name))) return through_device(*device);

  if (IMAGED_TRY(FileViewMatchesDevice(fs))) {
    // The device would read exactly what the files hold: write the files, no mapping needed
    // (which also works for split images on hosts without device-mapper).
    std::optional<fiemap::SplitFiemap> split;
    IMAGED_TRY(CheckExtentsLocked(name, *md, &split));
    IMAGED_TRY(split->OpenForIo(/*direct=*/true));
    IMAGED_TRY(WriteZeros(count, progress, [&](const void* b, size_t n, uint64_t off) {
      return split->PWrite(b, n, off);
    }));
    return split->Sync();
  }

  // The disk holds ciphertext under a dm-linear mapping: zeros must go through the device.
  MapRequest request;
  request.force_writable = true;
  const std::string device = IMAGED_TRY(MapLocked(name, request));
  auto written = through_device(device);
  auto unmapped = UnmapLocked(name);
  IMAGED_TRY(std::move(written));
  IMAGED_TRY_CTX(std::move(unmapped), "unmap after zero-fill");
  return Ok();
}

}  // namespace imaged
