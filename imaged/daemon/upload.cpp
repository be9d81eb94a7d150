#include "daemon/upload.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "imaged/common/file_io.h"
#include "imaged/common/size.h"

namespace imaged {

UploadStream::UploadStream(grpc::ServerContext* context, Messages* messages, uint64_t declared,
                           std::chrono::milliseconds idle_timeout)
    : context_(context),
      messages_(messages),
      declared_(declared),
      idle_timeout_(idle_timeout),
      last_message_(std::chrono::steady_clock::now()),
      watchdog_([this] { Watch(); }) {}

UploadStream::~UploadStream() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  watchdog_.join();
}

void UploadStream::Watch() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const auto deadline = last_message_ + idle_timeout_;
    if (std::chrono::steady_clock::now() >= deadline) {
      // Unblocks the Read() in Fill(); the import sees ETIMEDOUT and cleans up.
      timed_out_ = true;
      context_->TryCancel();
      return;
    }
    wake_.wait_until(lock, deadline);
  }
}

Error UploadStream::StreamError(std::string_view what) const {
  if (timed_out_) {
    return MakeError(ETIMEDOUT, "upload: no data for {} s", idle_timeout_.count() / 1000);
  }
  if (context_->IsCancelled()) return MakeError(ECANCELED, "upload cancelled");
  return MakeError(EINVAL, "upload: {}", what);
}

Result<bool> UploadStream::Fill() {
  if (ended_) return false;
  v1::UploadImageRequest message;
  if (!messages_->Read(&message)) {
    if (timed_out_ || context_->IsCancelled()) return StreamError("");
    ended_ = true;
    if (declared_ != 0 && received_ != declared_) {
      return MakeError(EINVAL, "upload ended after {} of the {} bytes it declared", received_,
                       declared_);
    }
    return false;
  }
  {
    std::lock_guard lock(mu_);
    last_message_ = std::chrono::steady_clock::now();
  }
  if (message.part_case() != v1::UploadImageRequest::kData) {
    return StreamError("only data may follow the header");
  }
  received_ += message.data().size();
  if (declared_ != 0 && received_ > declared_) {
    return MakeError(EINVAL, "upload is longer than the {} bytes it declared", declared_);
  }
  if (buf_pos_ == buf_.size()) {
    buf_ = std::move(*message.mutable_data());
    buf_pos_ = 0;
  } else {
    buf_.erase(0, buf_pos_);
    buf_pos_ = 0;
    buf_ += message.data();
  }
  return true;
}

Result<void> UploadStream::Read(void* buf, size_t len) {
  auto* out = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < len) {
    if (buf_pos_ == buf_.size() && !IMAGED_TRY(Fill())) {
      return MakeError(EINVAL, "upload truncated: {} bytes wanted at offset {}", len - done, pos_);
    }
    const size_t n = std::min(len - done, buf_.size() - buf_pos_);
    std::memcpy(out + done, buf_.data() + buf_pos_, n);
    buf_pos_ += n;
    done += n;
    pos_ += n;
  }
  return Ok();
}

Result<std::span<const uint8_t>> UploadStream::Peek(size_t n) {
  while (buf_.size() - buf_pos_ < n && IMAGED_TRY(Fill())) {
  }
  const size_t have = std::min(n, buf_.size() - buf_pos_);
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(buf_.data()) + buf_pos_, have);
}

Result<void> UploadStream::ExpectEnd() {
  if (buf_pos_ != buf_.size() || IMAGED_TRY(Fill())) {
    return MakeError(EINVAL, "upload holds more bytes after the image's end at offset {}", pos_);
  }
  return Ok();
}

Result<void> UploadStream::DrainTo(int fd) {
  uint64_t at = 0;
  do {
    const size_t n = buf_.size() - buf_pos_;
    IMAGED_TRY_CTX(FullPWrite(fd, buf_.data() + buf_pos_, n, at), "spool upload");
    at += n;
    pos_ += n;
    buf_pos_ = buf_.size();
  } while (IMAGED_TRY(Fill()));
  return Ok();
}

Result<std::optional<import::Run>> EndCheckedReader::Next() {
  auto run = IMAGED_TRY(inner_->Next());
  if (!run) IMAGED_TRY(stream_.ExpectEnd());
  return run;
}

}  // namespace imaged
