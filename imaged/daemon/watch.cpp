#include "daemon/watch.h"

#include <algorithm>
#include <cerrno>

namespace imaged {

const std::string& News::name() const {
  return std::visit([](const auto& w) -> const std::string& { return w.name; }, what);
}

WatchHub::Watch::~Watch() {
  std::lock_guard lock(hub_->mutex_);
  hub_->watches_.erase(this);
}

WatchHub::Watch::Next WatchHub::Watch::Wait(std::chrono::milliseconds wait, News* out) {
  std::unique_lock lock(hub_->mutex_);
  hub_->changed_.wait_for(lock, wait,
                          [&] { return !queue_.empty() || fell_behind_ || hub_->closed_; });
  // What was queued before the watch fell behind is not worth sending: the client has to
  // start again from a snapshot anyway.
  if (fell_behind_) return Next::kFellBehind;
  if (hub_->closed_) return Next::kClosed;
  if (queue_.empty()) return Next::kTimedOut;
  *out = std::move(queue_.front());
  queue_.pop_front();
  return Next::kNews;
}

uint64_t WatchHub::Watch::dropped() const {
  std::lock_guard lock(hub_->mutex_);
  return dropped_;
}

Result<std::unique_ptr<WatchHub::Watch>> WatchHub::Begin(std::string name, uid_t uid) {
  std::lock_guard lock(mutex_);
  if (closed_) return MakeError(ESHUTDOWN, "imaged is stopping");
  if (watches_.size() >= limits_.max_watches) {
    return MakeError(EAGAIN, "{} watches are open, the most imaged serves", watches_.size());
  }
  const auto own = static_cast<size_t>(std::count_if(
      watches_.begin(), watches_.end(), [&](const Watch* w) { return w->uid_ == uid; }));
  if (own >= limits_.max_watches_per_user) {
    return MakeError(EAGAIN, "uid {} has {} watches open, the most one user may", uid, own);
  }
  std::unique_ptr<Watch> watch(new Watch(this, std::move(name), uid, sequence_));
  watches_.insert(watch.get());
  return watch;
}

void WatchHub::Deliver(News news) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    news.sequence = ++sequence_;
    news.time = std::chrono::system_clock::now();
    for (Watch* watch : watches_) {
      if (!watch->name_.empty() && !news.name().empty() && news.name() != watch->name_) continue;
      if (watch->fell_behind_) {
        ++watch->dropped_;
      } else if (watch->queue_.size() >= limits_.max_queued) {
        watch->fell_behind_ = true;
        watch->dropped_ += watch->queue_.size() + 1;
        watch->queue_.clear();
      } else {
        watch->queue_.push_back(news);
      }
    }
  }
  changed_.notify_all();
}

void WatchHub::Publish(ImageChange change) {
  Deliver(News{0, {}, std::move(change)});
}
void WatchHub::Publish(OperationProgressNews progress) {
  Deliver(News{0, {}, std::move(progress)});
}
void WatchHub::Publish(OperationEndNews end) {
  Deliver(News{0, {}, std::move(end)});
}

void WatchHub::Close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  changed_.notify_all();
}

size_t WatchHub::watches() const {
  std::lock_guard lock(mutex_);
  return watches_.size();
}

uint64_t WatchHub::published() const {
  std::lock_guard lock(mutex_);
  return sequence_;
}

}  // namespace imaged
