// ImageManager::List served from memory. Private to the manager.
//
// A List answer is a snapshot of lp_metadata, the list files and the kernel's mapped state,
// computed in one pass (one lp_metadata read, one read per list file, one /sys/block scan, one
// DM_LIST_DEVICES) and reused while nothing changed:
//  - every operation of this ImageManager that may change an image invalidates it at its start
//    and at its end (ChangeNote, held by OpLocks and by Recover);
//  - a change of lp_metadata's identity (dev, inode, mtime, size) or of the metadata dir's mtime
//    (status files created, replaced or removed: another process mapped or unmapped) does too;
//  - and it is recomputed at most `refresh` (default 1 s) after it was taken, so a mapping made
//    or removed by ANOTHER process without touching our metadata shows up at most about that
//    late. While one caller refreshes an expired snapshot, others get the expired one.
// Operations never use it: they always check the kernel's live state.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "imaged/common/result.h"
#include "manager/image_manager.h"
#include "metadata/lp_metadata.h"

namespace imaged::manager {

class ListCache {
 public:
  // What lp_metadata and the metadata dir looked like; equal keys mean nothing changed there.
  struct Key {
    bool lp_exists = false;
    dev_t lp_dev = 0;
    ino_t lp_ino = 0;
    int64_t lp_mtime_ns = 0;
    int64_t lp_size = 0;
    int64_t dir_mtime_ns = 0;
    bool operator==(const Key&) const = default;
  };
  using Compute = std::function<Result<std::vector<ImageInfo>>()>;
  using Clock = std::chrono::steady_clock;

  void set_refresh(std::chrono::milliseconds refresh) { refresh_ = refresh; }
  void Invalidate() { generation_.fetch_add(1, std::memory_order_acq_rel); }

  using Images = std::shared_ptr<const std::vector<ImageInfo>>;
  // The snapshot, recomputed with `compute` when it is invalid. `key` is called before
  // `compute`, so a change made while computing is seen at the next call. The same pointer is
  // returned for as long as the snapshot is reused.
  Result<Images> Get(const std::function<Key()>& key, const Compute& compute);

 private:
  struct Snapshot {
    uint64_t generation = 0;
    Key key;
    Clock::time_point taken;
    std::vector<ImageInfo> images;
  };
  std::shared_ptr<const Snapshot> Current();
  Result<std::shared_ptr<const Snapshot>> Refresh(const std::function<Key()>& key,
                                                  const Compute& compute);

  std::chrono::milliseconds refresh_{1000};
  std::atomic<uint64_t> generation_{0};
  std::mutex snapshot_mu_;  // guards snapshot_ (the pointer only; held for a copy)
  std::shared_ptr<const Snapshot> snapshot_;
  std::mutex refresh_mu_;  // one computation at a time
};

// Invalidates a ListCache when made and when destroyed: held for the duration of an operation
// that may change images, so a List during or after it never reuses a snapshot from before.
class ChangeNote {
 public:
  ChangeNote() = default;
  explicit ChangeNote(ListCache* cache) : cache_(cache) {
    if (cache_) cache_->Invalidate();
  }
  ChangeNote(ChangeNote&& other) noexcept : cache_(std::exchange(other.cache_, nullptr)) {}
  ChangeNote& operator=(ChangeNote&& other) noexcept {
    if (this != &other) {
      if (cache_) cache_->Invalidate();
      cache_ = std::exchange(other.cache_, nullptr);
    }
    return *this;
  }
  ChangeNote(const ChangeNote&) = delete;
  ChangeNote& operator=(const ChangeNote&) = delete;
  ~ChangeNote() {
    if (cache_) cache_->Invalidate();
  }

 private:
  ListCache* cache_ = nullptr;
};

// The fields of an image that lp_metadata alone gives (not pieces, not the mapping).
ImageInfo LpImageInfo(const metadata::LpMetadata& md, const metadata::Partition& p);

}  // namespace imaged::manager
