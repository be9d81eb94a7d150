// The daemon's news for WatchImages: image changes (from ImageManager's on_change) and the
// progress and end of long operations (from the service), fanned out to every watch. Knows no
// gRPC, so it is tested alone.
//
// Publishing never blocks on a watcher: each watch has a bounded queue, and a watch that falls
// that far behind is told so (and ends; its client watches again and gets a new snapshot).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <variant>

#include <sys/types.h>

#include "imaged/common/result.h"
#include "manager/image_manager.h"

namespace imaged {

struct OperationProgressNews {
  std::string operation;  // "create", "import", "upload", "resize", "zero-fill"
  std::string name;
  uint64_t done = 0, total = 0;
  uint64_t input_done = 0, input_total = 0;  // a compressed import's file
};

struct OperationEndNews {
  std::string operation;
  std::string name;
  bool ok = false;
  std::string error;  // when not ok
};

struct News {
  uint64_t sequence = 0;  // 1, 2, ... in the order published
  std::chrono::system_clock::time_point time;
  std::variant<ImageChange, OperationProgressNews, OperationEndNews> what;
  const std::string& name() const;  // the image it concerns (empty: the whole set)
};

class WatchHub {
 public:
  struct Limits {
    size_t max_watches = 64;   // each holds a server thread
    size_t max_queued = 4096;  // per watch, before it is dropped as too slow
    // So that one user (uid) cannot take every place.
    size_t max_watches_per_user = 16;
  };
  WatchHub() : WatchHub(Limits{}) {}
  explicit WatchHub(Limits limits) : limits_(limits) {}

  class Watch {
   public:
    enum class Next { kNews, kTimedOut, kFellBehind, kClosed };
    ~Watch();
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;
    // The last sequence published before this watch began: its snapshot is from after it.
    uint64_t start_sequence() const { return start_sequence_; }
    // Waits up to `wait` for the next news of this watch.
    Next Wait(std::chrono::milliseconds wait, News* out);
    // How many news were dropped when the watch fell behind.
    uint64_t dropped() const;

   private:
    friend class WatchHub;
    Watch(WatchHub* hub, std::string name, uid_t uid, uint64_t start)
        : hub_(hub), name_(std::move(name)), uid_(uid), start_sequence_(start) {}
    WatchHub* hub_;
    std::string name_;  // only this image's news; empty: all
    uid_t uid_;         // who watches
    uint64_t start_sequence_;
    std::deque<News> queue_;  // guarded by hub_->mutex_
    bool fell_behind_ = false;
    uint64_t dropped_ = 0;
  };

  // A new watch of every image (`name` empty) or of one, for user `uid`; EAGAIN when
  // max_watches are open, or max_watches_per_user of that user's.
  Result<std::unique_ptr<Watch>> Begin(std::string name, uid_t uid);
  void Publish(ImageChange change);
  void Publish(OperationProgressNews progress);
  void Publish(OperationEndNews end);
  // The daemon stops: every watch ends (kClosed) and no new one begins.
  void Close();
  size_t watches() const;
  uint64_t published() const;

 private:
  void Deliver(News news);

  const Limits limits_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::set<Watch*> watches_;
  uint64_t sequence_ = 0;
  bool closed_ = false;
};

}  // namespace imaged
