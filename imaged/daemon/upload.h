// The bytes of a client's upload (UploadImage) as an import::Stream, read as they arrive:
// bounded by the size the client declared (more, or fewer, is INVALID_ARGUMENT) and by an
// idle timeout (no data for that long cancels the call), so an upload can neither fill the
// disk nor hold the daemon forever. Raw and Android sparse uploads are read straight into the
// image; qcow, which needs random access, is drained into a spool file first.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <thread>

#include <grpcpp/server_context.h>
#include <grpcpp/support/sync_stream.h>

#include "imaged.grpc.pb.h"
#include "imaged/common/result.h"
#include "import/reader.h"
#include "import/source.h"

namespace imaged {

class UploadStream : public import::Stream {
 public:
  using Messages = grpc::ServerReaderWriter<v1::OperationUpdate, v1::UploadImageRequest>;
  // `declared`: the upload's size from its header; 0 when the client did not know it (a
  // pipe), then only the format bounds what is read.
  UploadStream(grpc::ServerContext* context, Messages* messages, uint64_t declared,
               std::chrono::milliseconds idle_timeout);
  ~UploadStream() override;
  UploadStream(const UploadStream&) = delete;
  UploadStream& operator=(const UploadStream&) = delete;

  Result<void> Read(void* buf, size_t len) override;
  uint64_t position() const override { return pos_; }
  uint64_t declared() const { return declared_; }

  // Up to `n` bytes from the start without consuming them (fewer only if the upload is shorter).
  Result<std::span<const uint8_t>> Peek(size_t n);
  // The upload must end here (with its declared size, if it declared one).
  Result<void> ExpectEnd();
  // The rest of the upload into `fd` (the spool of an upload that needs random access).
  Result<void> DrainTo(int fd);

 private:
  // Takes the next message's bytes into buf_; false at the end of the upload.
  Result<bool> Fill();
  Error StreamError(std::string_view what) const;
  void Watch();

  grpc::ServerContext* context_;
  Messages* messages_;
  uint64_t declared_;
  std::chrono::milliseconds idle_timeout_;
  std::string buf_;  // received, not yet consumed: [buf_pos_, end)
  size_t buf_pos_ = 0;
  uint64_t pos_ = 0;       // bytes consumed
  uint64_t received_ = 0;  // bytes received
  bool ended_ = false;

  // The idle watchdog: cancels the call when no message arrived for idle_timeout_.
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point last_message_;
  std::atomic<bool> timed_out_{false};
  std::thread watchdog_;
};

// Wraps a reader over an UploadStream: once the reader has produced the whole image, the upload
// must end there, or the import fails before anything is recorded.
class EndCheckedReader : public import::ImageReader {
 public:
  EndCheckedReader(std::unique_ptr<import::ImageReader> inner, UploadStream& stream)
      : inner_(std::move(inner)), stream_(stream) {}
  import::Format format() const override { return inner_->format(); }
  uint64_t virtual_size() const override { return inner_->virtual_size(); }
  Result<std::optional<import::Run>> Next() override;

 private:
  std::unique_ptr<import::ImageReader> inner_;
  UploadStream& stream_;
};

}  // namespace imaged
