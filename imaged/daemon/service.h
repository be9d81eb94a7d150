// The gRPC service: checks who may do what, translates RPCs into ImageManager calls and
// library errors into gRPC statuses (with the errno in the "imaged-errno" trailer).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <grpcpp/support/byte_buffer.h>

#include "daemon/metrics.h"
#include "daemon/peer.h"
#include "daemon/upload.h"
#include "daemon/watch.h"
#include "imaged.grpc.pb.h"
#include "manager/image_manager.h"

namespace imaged {

// errno -> gRPC code, as documented in proto/imaged.proto.
grpc::StatusCode StatusCodeForErrno(int code);
// The code for an error: DATA_LOSS for its kind when data is at stake, else by its errno.
grpc::StatusCode StatusCodeFor(const Error& error);
grpc::Status ToStatus(grpc::ServerContextBase* context, const Error& error);

// Long operations in progress, by the id their client gave them, so that CancelOperation can
// ask one to stop. The operation itself decides at its next progress report.
class OperationRegistry {
 public:
  struct Operation {
    uid_t uid = 0;
    std::atomic<bool> cancel_requested{false};
  };
  // Registers the call's operation (if its client named it) for as long as the handle lives.
  class Scope {
   public:
    Scope(OperationRegistry* registry, std::string id, std::shared_ptr<Operation> op)
        : registry_(registry), id_(std::move(id)), op_(std::move(op)) {}
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    ~Scope();
    bool cancel_requested() const { return op_->cancel_requested.load(); }

   private:
    OperationRegistry* registry_;
    std::string id_;
    std::shared_ptr<Operation> op_;
  };
  std::unique_ptr<Scope> Begin(grpc::ServerContext* context, uid_t uid);
  // ENOENT when no such operation runs, EPERM when `uid` (not root) did not start it.
  Result<void> Cancel(const std::string& id, uid_t uid);

 private:
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Operation>> running_;
};

// ListImages is served raw (callback API, pre-serialized bytes): every call between two
// changes answers from the same encoded reply instead of rebuilding 1,000 messages.
class ImagedService final
    : public v1::Imaged::WithRawCallbackMethod_ListImages<v1::Imaged::Service> {
 public:
  // `hub` has the manager's changes (ManagerOptions::on_change) and gets the operations'
  // progress; `metrics` counts every call once Metrics::Interceptor is on the server.
  ImagedService(ImageManager* manager, const PeerRegistry* peers, std::optional<gid_t> admin_group,
                WatchHub* hub, Metrics* metrics,
                std::chrono::milliseconds upload_idle_timeout = std::chrono::seconds(60));

  grpc::Status Health(grpc::ServerContext*, const v1::HealthRequest*,
                      v1::HealthResponse*) override;
  grpc::Status Version(grpc::ServerContext*, const v1::VersionRequest*,
                       v1::VersionResponse*) override;
  grpc::Status CreateImage(grpc::ServerContext*, const v1::CreateImageRequest*,
                           grpc::ServerWriter<v1::OperationUpdate>*) override;
  grpc::Status DeleteImage(grpc::ServerContext*, const v1::ImageRequest*, v1::Empty*) override;
  grpc::ServerUnaryReactor* ListImages(grpc::CallbackServerContext*, const grpc::ByteBuffer*,
                                       grpc::ByteBuffer*) override;
  grpc::Status GetImage(grpc::ServerContext*, const v1::ImageRequest*, v1::ImageInfo*) override;
  grpc::Status MapImage(grpc::ServerContext*, const v1::MapImageRequest*,
                        v1::MapImageResponse*) override;
  grpc::Status UnmapImage(grpc::ServerContext*, const v1::ImageRequest*, v1::Empty*) override;
  grpc::Status MapAllImages(grpc::ServerContext*, const v1::Empty*,
                            v1::MapAllImagesResponse*) override;
  grpc::Status DisableImage(grpc::ServerContext*, const v1::ImageRequest*, v1::Empty*) override;
  grpc::Status RemoveDisabledImages(grpc::ServerContext*, const v1::Empty*,
                                    v1::RemoveDisabledImagesResponse*) override;
  grpc::Status ZeroFillImage(grpc::ServerContext*, const v1::ZeroFillRequest*,
                             grpc::ServerWriter<v1::OperationUpdate>*) override;
  grpc::Status ValidateImages(grpc::ServerContext*, const v1::Empty*,
                              v1::ValidateImagesResponse*) override;
  grpc::Status ResizeImage(grpc::ServerContext*, const v1::ResizeImageRequest*,
                           grpc::ServerWriter<v1::OperationUpdate>*) override;
  grpc::Status ImportImage(grpc::ServerContext*, const v1::ImportImageRequest*,
                           grpc::ServerWriter<v1::OperationUpdate>*) override;
  grpc::Status UploadImage(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::OperationUpdate, v1::UploadImageRequest>*) override;
  grpc::Status RebuildMetadata(grpc::ServerContext*, const v1::Empty*,
                               v1::RebuildMetadataResponse*) override;
  grpc::Status CancelOperation(grpc::ServerContext*, const v1::CancelOperationRequest*,
                               v1::Empty*) override;
  grpc::Status WatchImages(grpc::ServerContext*, const v1::WatchImagesRequest*,
                           grpc::ServerWriter<v1::WatchEvent>*) override;
  grpc::Status GetMetrics(grpc::ServerContext*, const v1::Empty*, v1::MetricsResponse*) override;

  // What GetMetrics answers and the metrics textfile holds.
  std::string RenderMetrics();

 private:
  // OK if the caller may change state, PERMISSION_DENIED otherwise.
  grpc::Status Authorize(grpc::ServerContext* context) const;
  uid_t CallerUid(grpc::ServerContext* context) const;
  Result<ImageInfo> ImportUpload(const std::string& name, std::optional<import::Format> format,
                                 UploadStream& upload, ImportOptions& options);
  Result<ImageInfo> ImportSpooled(const std::string& name, UploadStream& upload,
                                  const ImportOptions& options);

  // The encoded ListImagesResponse for one manager snapshot (held, so its address cannot be
  // reused by a later snapshot while it is the key).
  struct EncodedList {
    std::shared_ptr<const std::vector<ImageInfo>> snapshot;
    grpc::ByteBuffer reply;
  };
  grpc::Status EncodeList(grpc::ServerContextBase* context, grpc::ByteBuffer* reply);
  // The first message of a watch (and the one after RebuildMetadata): every image, or `name`.
  bool SendSnapshot(grpc::ServerWriter<v1::WatchEvent>* writer, uint64_t sequence,
                    const std::string& name);

  ImageManager* manager_;
  OperationRegistry operations_;
  std::mutex list_mu_;
  EncodedList list_cache_;
  const PeerRegistry* peers_;
  std::optional<gid_t> admin_group_;
  WatchHub* hub_;
  Metrics* metrics_;
  std::chrono::milliseconds upload_idle_timeout_;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace imaged
