// Map, Unmap and zero-fill.
//
// Every device is recorded in `<name>.status` before it is created: dm by name, loops as
// `loop:/dev/loopN` between LOOP_CTL_GET_FREE and LOOP_CONFIGURE (LoopOptions::before_configure).
// Recover also finds loops by the identity of the file they hold, so even a number lost to a
// race cannot leak a loop.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "crash_point.h"
#include "dm/loop_device.h"
#include "imaged/common/size.h"
#include "internal.h"

namespace imaged {

using manager::RoundUp;
using metadata::StatusEntry;

namespace manager {

bool DeviceMapperAvailable() {
  UniqueFd fd(open("/dev/mapper/control", O_RDWR | O_CLOEXEC));
  return fd.valid();
}

}  // namespace manager

namespace {

// Undoes a half-made mapping on any failure: dm first, then loops (their destructors), then the
// status file. Commit() keeps everything.
class MappingUndo {
 public:
  MappingUndo(ImageManager::Impl& impl, std::string status, std::string dm_dev)
      : impl_(impl), status_(std::move(status)), dm_dev_(std::move(dm_dev)) {}
  ~MappingUndo() {
    if (committed_) return;
    if (dm_may_exist_) {
      if (auto mapper = impl_.Dm()) {
        dm::RemoveOptions ro;
        ro.ignore_missing = true;
        (void)(*mapper)->Remove(dm_dev_, ro);
      }
    }
    for (auto it = loops.rbegin(); it != loops.rend(); ++it) (void)it->Detach();
    loops.clear();
    (void)metadata::RemoveStatusFile(impl_.metadata, status_);
  }
  // Records the dm device in the status file, then creates it. Returns its node.
  Result<std::string> CreateDm(dm::DeviceMapper& mapper, const dm::Table& table,
                               std::chrono::milliseconds timeout) {
    IMAGED_TRY(
        metadata::AppendStatusEntry(impl_.metadata, status_, {StatusEntry::Kind::Dm, dm_dev_}));
    IMAGED_CRASH_POINT("map.status_dm");
    dm_may_exist_ = true;  // Remove(ignore_missing) is harmless if Create never got far
    dm::CreateOptions options;
    options.readonly = table.readonly();
    options.timeout = timeout;
    std::string path = IMAGED_TRY(mapper.Create(dm_dev_, table, options));
    IMAGED_CRASH_POINT("map.dm_created");
    return path;
  }
  // Keeps everything; the mapping at `path` is done.
  std::string Commit(std::string path) {
    for (auto& loop : loops) loop.release();
    loops.clear();
    committed_ = true;
    IMAGED_CRASH_POINT("map.done");
    return path;
  }
  std::vector<dm::LoopDevice> loops;

 private:
  ImageManager::Impl& impl_;
  std::string status_;
  std::string dm_dev_;
  bool dm_may_exist_ = false;
  bool committed_ = false;
};

dm::LoopOptions LoopOptionsFor(bool readonly, uint32_t lbs) {
  dm::LoopOptions lo;
  lo.read_only = readonly;
  lo.direct_io = true;
  lo.block_size = lbs;
  // A discard through the loop would punch a hole in our piece, freeing blocks that
  // lp_metadata (and so imaged-init at the next boot) still maps. Write-zeroes cannot be turned
  // off on current kernels; RestoreAllocationLocked repairs after those.
  lo.no_discard = true;
  return lo;
}

}  // namespace

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
  Impl::MapRequest request;
  request.timeout = timeout;
  return impl_->OnImage("map", name, [&]() -> Result<std::string> {
    auto device = impl_->MapLocked(name, request);
    if (device) {
      impl_->Announce(ImageChangeKind::kMapped, name, "map");
    } else if (device.error().kind == ErrorKind::kExtentsChanged) {
      impl_->Announce(ImageChangeKind::kCorrupt, name, "map", device.error().ToString());
    }
    return device;
  });
}

Result<std::string> ImageManager::Impl::MapLocked(std::string_view name,
                                                  const MapRequest& request) {
  const Image image = IMAGED_TRY(FindImage(name));
  if (auto device = IMAGED_TRY(MappedDeviceLocked(name))) {
    return MakeError(EBUSY, "already mapped at {}", *device);
  }
  // Nothing of the image is live (checked above), so a leftover status file is stale.
  IMAGED_TRY(metadata::RemoveStatusFile(metadata, imageset::StatusFileName(name)));
  // SAFETY RULE: never map blocks the files no longer own.
  const fiemap::SplitFiemap split = IMAGED_TRY(CheckExtentsLocked(name, image));
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  const bool readonly = image.readonly() && !request.force_writable;
  const auto timeout = request.timeout.count() > 0 ? request.timeout : options.default_map_timeout;
  if (IMAGED_TRY(ResolveStrategy(fs)) == MapStrategy::kDmLinear) {
    return MapDmLinear(name, image, fs, readonly, timeout);
  }
  return MapLoops(name, image, split, fs, readonly, timeout);
}

Result<std::string> ImageManager::Impl::MapDmLinear(std::string_view name, const Image& image,
                                                    const fiemap::FilesystemInfo& fs, bool readonly,
                                                    std::chrono::milliseconds timeout) {
  dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
  const std::string status = imageset::StatusFileName(name);
  const std::string dm_dev = dm_name(name);
  const dm::Table table = IMAGED_TRY(imageset::TableFromExtents(
      name, image.extents, dm::DeviceMapper::DeviceString(fs.disk_dev), readonly));
  MappingUndo undo(*this, status, dm_dev);
  std::string path =
      IMAGED_TRY_CTX(undo.CreateDm(*mapper, table, timeout), "dm-linear over {}", fs.disk);
  return undo.Commit(std::move(path));
}

Result<std::string> ImageManager::Impl::MapLoops(std::string_view name, const Image& image,
                                                 const fiemap::SplitFiemap& split,
                                                 const fiemap::FilesystemInfo& fs, bool readonly,
                                                 std::chrono::milliseconds timeout) {
  const auto& pieces = split.pieces();
  dm::DeviceMapper* mapper = nullptr;
  if (pieces.size() > 1) {
    mapper = IMAGED_TRY_CTX(Dm(), "joining {} pieces needs device-mapper", pieces.size());
  }
  const std::string status = imageset::StatusFileName(name);
  const std::string dm_dev = dm_name(name);
  MappingUndo undo(*this, status, dm_dev);
  // What the status file holds: one loop entry per piece attached so far, plus the one being
  // attached. When LoopDevice::Attach loses the free loop to another process it asks again with
  // the next number; that entry is then replaced, so the file never names a loop that is not ours
  // for long (and Recover only ever detaches loops holding our pieces anyway).
  std::vector<StatusEntry> recorded;
  for (const auto& piece : pieces) {
    dm::LoopOptions lo =
        LoopOptionsFor(readonly, fs.disk_logical_block_size ? fs.disk_logical_block_size : 512);
    // One piece: the loop itself is the device, so it must be exactly the image size, not the
    // block-rounded file size (AOSP_REFERENCE 9.13).
    if (pieces.size() == 1) lo.size_limit = image.size;
    const size_t index = undo.loops.size();
    lo.before_configure = [&](const std::string& loop_path) -> Result<void> {
      recorded.resize(index);
      recorded.push_back({StatusEntry::Kind::Loop, loop_path});
      IMAGED_TRY(metadata::WriteStatusFile(metadata, status, recorded));
      IMAGED_CRASH_POINT("map.loop_recorded");
      return Ok();
    };
    UniqueFd file = IMAGED_TRY(piece.OpenFile(readonly ? O_RDONLY : O_RDWR));
    undo.loops.push_back(IMAGED_TRY_CTX(dm::LoopDevice::Attach(file.get(), piece.path(), lo),
                                        "loop over \"{}\"", piece.path()));
    IMAGED_CRASH_POINT("map.loop_attached");
  }
  if (pieces.size() == 1) return undo.Commit(undo.loops.front().path());
  std::vector<uint64_t> sizes;
  std::vector<dev_t> devs;
  for (size_t i = 0; i < pieces.size(); ++i) {
    sizes.push_back(pieces[i].size());
    devs.push_back(undo.loops[i].dev());
  }
  const dm::Table table = imageset::JoinTable(sizes, devs, image.size, readonly);
  std::string path = IMAGED_TRY_CTX(undo.CreateDm(*mapper, table, timeout),
                                    "dm-linear over {} loops", pieces.size());
  return undo.Commit(std::move(path));
}

// ---------------------------------------------------------------------------------------------
// Grow a live mapping

Result<void> ImageManager::Impl::GrowMappingLocked(std::string_view name) {
  const Image image = IMAGED_TRY(FindImage(name));
  auto entries = metadata::ReadStatusFile(metadata, imageset::StatusFileName(name));
  if (!entries) return entries.error().code == ENOENT ? Ok() : Result<void>(entries.error());
  const bool has_loops = std::any_of(entries->begin(), entries->end(), [](const StatusEntry& e) {
    return e.kind == StatusEntry::Kind::Loop;
  });
  // SAFETY RULE: the grown device maps only blocks the files own now.
  const fiemap::SplitFiemap split = IMAGED_TRY(CheckExtentsLocked(name, image));
  const auto kernel = IMAGED_TRY(ScanKernel());
  if (has_loops) return GrowLoopMapping(name, image, split, *entries, kernel);
  if (!kernel.HasDm(dm_name(name))) return Ok();  // recorded, but gone (a reboot)
  dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
  const auto info = IMAGED_TRY(mapper->Info(dm_name(name)));
  if (!info) return Ok();
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  const dm::Table table = IMAGED_TRY(imageset::TableFromExtents(
      name, image.extents, dm::DeviceMapper::DeviceString(fs.disk_dev), info->readonly));
  IMAGED_TRY_CTX(mapper->ReplaceTable(dm_name(name), table), "grow {}", dm_name(name));
  return Ok();
}

Result<void> ImageManager::Impl::GrowLoopMapping(std::string_view name, const Image& image,
                                                 const fiemap::SplitFiemap& split,
                                                 const std::vector<StatusEntry>& entries,
                                                 const manager::KernelView& kernel) {
  const auto& pieces = split.pieces();
  // The loop holding each piece now (by the file's identity), "" for pieces that have none yet.
  std::vector<std::string> loops;
  for (const auto& piece : pieces) {
    auto st = IMAGED_TRY(data.Stat(piece.name()));
    const auto& held = st ? kernel.LoopsOf({st->st_dev, st->st_ino}) : std::vector<std::string>{};
    loops.push_back(held.empty() ? std::string() : held.front());
  }
  if (loops.front().empty()) return Ok();  // recorded, but gone (a reboot)
  const std::string dm_dev = dm_name(name);
  if (pieces.size() == 1) {
    if (kernel.HasDm(dm_dev)) return MakeError(EINVAL, "{} over one loop is not ours", dm_dev);
    // The loop is the device: exactly the image size (the file is block-rounded).
    IMAGED_TRY_CTX(dm::LoopDevice::Resize(loops.front(), image.size), "grow {}", loops.front());
    return Ok();
  }
  if (!kernel.HasDm(dm_dev)) {
    return MakeError(EINVAL, "{} pieces on loops, but no {} joins them", pieces.size(), dm_dev);
  }
  dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
  const auto info = IMAGED_TRY(mapper->Info(dm_dev));
  if (!info) return MakeError(ENXIO, "{} vanished", dm_dev);
  // Pieces mapped already take their file's size (only the old last piece grew).
  for (const auto& loop : loops) {
    if (!loop.empty()) IMAGED_TRY_CTX(dm::LoopDevice::Resize(loop, 0), "grow {}", loop);
  }
  // New pieces: a loop each, recorded in the status file before it is configured (as Map does).
  const std::string status = imageset::StatusFileName(name);
  auto record = [&](const std::vector<std::string>& now) {
    std::vector<StatusEntry> recorded;
    for (const auto& loop : now) {
      if (!loop.empty()) recorded.push_back({StatusEntry::Kind::Loop, loop});
    }
    recorded.push_back({StatusEntry::Kind::Dm, dm_dev});
    return metadata::WriteStatusFile(metadata, status, recorded);
  };
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  std::vector<dm::LoopDevice> added;
  auto undo = [&](Error e) -> Error {
    added.clear();  // detached
    if (auto r = metadata::WriteStatusFile(metadata, status, entries); !r) {
      e.message += fmt::format(" (and restoring {} failed: {})", status, r.error().ToString());
    }
    return e;
  };
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (!loops[i].empty()) continue;
    dm::LoopOptions lo = LoopOptionsFor(
        info->readonly, fs.disk_logical_block_size ? fs.disk_logical_block_size : 512);
    lo.before_configure = [&](const std::string& loop_path) -> Result<void> {
      loops[i] = loop_path;
      IMAGED_TRY(record(loops));
      IMAGED_CRASH_POINT("grow.loop_recorded");
      return Ok();
    };
    auto file = pieces[i].OpenFile(info->readonly ? O_RDONLY : O_RDWR);
    auto loop = file ? dm::LoopDevice::Attach(file->get(), pieces[i].path(), lo)
                     : Result<dm::LoopDevice>(file.error());
    if (!loop) return undo(loop.error().Wrap(fmt::format("loop over \"{}\"", pieces[i].path())));
    added.push_back(std::move(*loop));
  }
  std::vector<uint64_t> sizes;
  std::vector<dev_t> devs;
  for (size_t i = 0; i < pieces.size(); ++i) {
    struct stat st {};
    if (stat(loops[i].c_str(), &st) != 0) return undo(ErrnoError("stat {}", loops[i]));
    sizes.push_back(pieces[i].size());
    devs.push_back(st.st_rdev);
  }
  const dm::Table table = imageset::JoinTable(sizes, devs, image.size, info->readonly);
  if (auto swapped = mapper->ReplaceTable(dm_dev, table); !swapped) {
    return undo(std::move(swapped).error().Wrap(fmt::format("grow {}", dm_dev)));
  }
  for (auto& loop : added) loop.release();  // the table holds them now
  return Ok();
}

Result<std::vector<std::string>> ImageManager::MapAll() {
  const auto md = IMAGED_TRY_CTX(impl_->ReadLp(), "map all");
  std::vector<std::string> mapped;
  if (!md) return mapped;
  for (const auto& p : md->partitions) {
    if ((p.attributes & metadata::kPartitionAttrDisabled) || !imageset::IsImageName(p.name)) {
      continue;
    }
    auto locks = IMAGED_TRY_CTX(impl_->LockImage(p.name), "map all: \"{}\"", p.name);
    if (IMAGED_TRY(impl_->MappedDeviceLocked(p.name))) continue;
    Impl::MapRequest request;
    auto device = impl_->MapLocked(p.name, request);
    if (!device) {
      if (device.error().kind == ErrorKind::kExtentsChanged) {
        impl_->Announce(ImageChangeKind::kCorrupt, p.name, "map-all", device.error().ToString());
      }
      return std::move(device).error().Wrap(fmt::format("map all: map \"{}\"", p.name));
    }
    impl_->Announce(ImageChangeKind::kMapped, p.name, "map-all");
    mapped.push_back(p.name);
  }
  return mapped;
}

// ---------------------------------------------------------------------------------------------
// Unmap

Result<void> ImageManager::Impl::TearDown(std::string_view name) {
  const auto kernel = IMAGED_TRY(ScanKernel());
  // dm first: it holds the loops below it.
  const std::string dm_dev = dm_name(name);
  if (kernel.HasDm(dm_dev)) {
    dm::DeviceMapper* mapper = IMAGED_TRY(Dm());
    dm::RemoveOptions ro;
    ro.ignore_missing = true;
    IMAGED_TRY_CTX(mapper->Remove(dm_dev, ro), "remove {}", dm_dev);
    IMAGED_CRASH_POINT("unmap.dm_removed");
  }
  // Only loops that hold one of this image's files: the numbers in a status file may have been
  // reused by someone else after a crash, and names say nothing about what a loop holds.
  std::vector<std::string> ours;
  for (const auto& id : IMAGED_TRY(PieceIds(name))) {
    for (const auto& loop : kernel.LoopsOf(id)) ours.push_back(loop);
  }
  std::sort(ours.begin(), ours.end());
  for (auto it = ours.rbegin(); it != ours.rend(); ++it) {
    IMAGED_TRY_CTX(dm::LoopDevice::DetachPath(*it), "detach {}", *it);
    IMAGED_CRASH_POINT("unmap.loop_detached");
  }
  return Ok();
}

Result<void> ImageManager::Unmap(std::string_view name) {
  return impl_->OnImage("unmap", name, [&]() -> Result<void> {
    IMAGED_TRY(impl_->UnmapLocked(name));
    impl_->Announce(ImageChangeKind::kUnmapped, name, "unmap");
    return Ok();
  });
}

Result<void> ImageManager::Impl::UnmapLocked(std::string_view name) {
  const std::string status = imageset::StatusFileName(name);
  std::vector<StatusEntry> entries;
  auto read = metadata::ReadStatusFile(metadata, status);
  const bool have_status = read.has_value() || read.error().code != ENOENT;
  if (read) entries = std::move(*read);
  const auto device = IMAGED_TRY(MappedDeviceLocked(name));
  if (!device && !have_status) {
    IMAGED_TRY(FindImage(name));
    return MakeError(ENXIO, "the image is not mapped");
  }
  IMAGED_TRY(TearDown(name));
  IMAGED_TRY(metadata::RemoveStatusFile(metadata, status));
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
  auto image = FindImage(name);
  if (!image) return image.error().code == ENOENT ? Result<bool>(false) : image.error();
  const std::string list = imageset::ListFileName(name);
  bool restored = false;
  for (const auto& piece : IMAGED_TRY(fiemap::SplitFiemap::ListPieces(data, list))) {
    restored |= IMAGED_TRY(fiemap::FiemapWriter::EnsureWritten(data, piece));
  }
  if (!restored) return false;
  const auto split = IMAGED_TRY(fiemap::SplitFiemap::Open(data, list));
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  const auto extents =
      IMAGED_TRY(imageset::ComputeLpExtents(split, imageset::DiskFactsOf(fs), image->size));
  IMAGED_TRY(RecordExtents(name, image->partition.attributes, extents));
  return true;
}

// ---------------------------------------------------------------------------------------------
// ZeroFill

Result<void> ImageManager::ZeroFill(std::string_view name, uint64_t bytes,
                                    const Progress& progress) {
  return impl_->OnImage("zero-fill", name, [&]() -> Result<void> {
    IMAGED_TRY(impl_->ZeroFillLocked(name, bytes, progress));
    impl_->Announce(ImageChangeKind::kZeroFilled, name, "zero-fill");
    return Ok();
  });
}

namespace {

Result<void> ZeroDevice(const std::string& device, uint64_t count, const Progress& progress) {
  UniqueFd fd(open(device.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
  if (!fd) return ErrnoError("open {}", device);
  IMAGED_TRY(WriteZerosToFd(fd.get(), 0, count, device, progress));
  if (fdatasync(fd.get()) != 0) return ErrnoError("sync {}", device);
  return Ok();
}

}  // namespace

Result<void> ImageManager::Impl::ZeroFillLocked(std::string_view name, uint64_t bytes,
                                                const Progress& progress) {
  const Image image = IMAGED_TRY(FindImage(name));
  if (bytes > image.size) {
    return MakeError(EINVAL, "{} bytes requested, the image has {}", bytes, image.size);
  }
  const auto fs = IMAGED_TRY(fiemap::InspectFilesystem(data.fd(), data.path()));
  const uint64_t lbs = fs.disk_logical_block_size ? fs.disk_logical_block_size : 512;
  // Whole logical blocks: direct I/O cannot write less.
  const uint64_t count = bytes == 0 ? image.size : std::min(RoundUp(bytes, lbs), image.size);
  Progress counted = progress;
  if (CrashPoints().armed) {
    counted = [&](uint64_t done, uint64_t total) {
      IMAGED_CRASH_POINT("zero_fill.progress");
      return progress ? progress(done, total) : true;
    };
  }
  if (auto device = IMAGED_TRY(MappedDeviceLocked(name)))
    return ZeroDevice(*device, count, counted);

  if (IMAGED_TRY(FileViewMatchesDevice(fs))) {
    // The device would read exactly what the files hold: write the files, no mapping needed
    // (which also works for split images on hosts without device-mapper).
    fiemap::SplitFiemap split = IMAGED_TRY(CheckExtentsLocked(name, image));
    IMAGED_TRY(split.OpenForIo(/*direct=*/true));
    IMAGED_TRY(WriteZeros(
        0, count,
        [&](std::span<const uint8_t> z, uint64_t at) {
          return split.PWrite(z.data(), z.size(), at);
        },
        counted));
    return split.Sync();
  }

  // The disk holds ciphertext under a dm-linear mapping: zeros must go through the device.
  MapRequest request;
  request.force_writable = true;
  const std::string device = IMAGED_TRY(MapLocked(name, request));
  auto written = ZeroDevice(device, count, counted);
  auto unmapped = UnmapLocked(name);
  IMAGED_TRY(std::move(written));
  IMAGED_TRY_CTX(std::move(unmapped), "unmap after zero-fill");
  return Ok();
}

}  // namespace imaged
