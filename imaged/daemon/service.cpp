#include "daemon/service.h"

#include "daemon/upload.h"

#include <fcntl.h>
#include <unistd.h>

#include <mutex>

#include <fmt/format.h>

#include "imaged/common/unique_fd.h"
#include "imaged/version.h"
#include "imageset/names.h"
#include "import/unwrap.h"

namespace imaged {
namespace {

using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;

// Which long operation a ProgressStreamer reports, for watchers (WatchHub) too.
struct OperationNews {
  WatchHub* hub = nullptr;
  std::string operation;  // "create", "import", ...
  std::string name;
};

// Progress goes to the client at most every 1/200 of the total, plus the final update; a
// cancelled call (client gone, deadline, Ctrl-C) makes the operation stop and clean up.
template <typename Writer>
class ProgressStreamer {
 public:
  ProgressStreamer(ServerContext* context, Writer* writer,
                   std::unique_ptr<OperationRegistry::Scope> operation, OperationNews news)
      : context_(context),
        writer_(writer),
        operation_(std::move(operation)),
        news_(std::move(news)) {}

  // The call's status, after telling watchers how the operation ended.
  Status End(Status status) {
    news_.hub->Publish(
        OperationEndNews{news_.operation, news_.name, status.ok(), status.error_message()});
    return status;
  }

  // The one place a cancel is decided: at a progress report, which the operations make only
  // where stopping still leaves nothing behind. Past its last report an operation completes.
  bool operator()(uint64_t done, uint64_t total) {
    if (context_->IsCancelled() || operation_->cancel_requested()) return false;
    if (Throttled(done, total, output_sent_)) return true;
    done_ = done;
    total_ = total;
    return Send();
  }

  // The input side of an import from a compressed file (ImportOptions::input_progress).
  bool Input(uint64_t done, uint64_t total) {
    if (context_->IsCancelled() || operation_->cancel_requested()) return false;
    input_done_ = done;
    input_total_ = total;
    // Once the copy reports, its updates carry the input position; before that (while a raw
    // image inside is measured) these are the only updates.
    if (done_ != 0 || Throttled(done, total, input_sent_)) return true;
    return Send();
  }

  bool Done(const ImageInfo& info);
  bool Planned(const SpacePlan& plan);

 private:
  // At most one update per 0.5% of the total (and the first and last always): false when this
  // one is to be sent, which `last_sent` then records (0 until the first; a first 0 counts as 1).
  static bool Throttled(uint64_t done, uint64_t total, uint64_t& last_sent) {
    const uint64_t step = total / 200;
    if (done != total && step != 0 && done < last_sent + step && last_sent != 0) return true;
    last_sent = done == 0 ? 1 : done;
    return false;
  }

  bool Send() {
    v1::OperationUpdate update;
    auto& progress = *update.mutable_progress();
    progress.set_done_bytes(done_);
    progress.set_total_bytes(total_);
    progress.set_input_done_bytes(input_done_);
    progress.set_input_total_bytes(input_total_);
    news_.hub->Publish(OperationProgressNews{news_.operation, news_.name, done_, total_,
                                             input_done_, input_total_});
    std::lock_guard lock(mutex_);
    // A failed write means the client went away: treat as a cancel.
    return writer_->Write(update);
  }

  ServerContext* context_;
  Writer* writer_;
  std::unique_ptr<OperationRegistry::Scope> operation_;
  OperationNews news_;
  uint64_t output_sent_ = 0;
  uint64_t done_ = 0, total_ = 0;
  uint64_t input_done_ = 0, input_total_ = 0, input_sent_ = 0;
  std::mutex mutex_;
};

void FillInfo(const ImageInfo& in, v1::ImageInfo* out) {
  out->set_name(in.name);
  out->set_size_bytes(in.size_bytes);
  out->set_pieces(in.pieces);
  out->set_extents(in.extents);
  out->set_readonly(in.readonly);
  out->set_disabled(in.disabled);
  out->set_mapped_device(in.mapped_device.value_or(""));
}

v1::ChangeKind ToProto(ImageChangeKind kind) {
  switch (kind) {
    case ImageChangeKind::kCreated:
      return v1::CREATED;
    case ImageChangeKind::kDeleted:
      return v1::DELETED;
    case ImageChangeKind::kMapped:
      return v1::MAPPED;
    case ImageChangeKind::kUnmapped:
      return v1::UNMAPPED;
    case ImageChangeKind::kResized:
      return v1::RESIZED;
    case ImageChangeKind::kDisabled:
      return v1::DISABLED;
    case ImageChangeKind::kImported:
      return v1::IMPORTED;
    case ImageChangeKind::kZeroFilled:
      return v1::ZERO_FILLED;
    case ImageChangeKind::kCorrupt:
      return v1::CORRUPT;
    case ImageChangeKind::kSetRebuilt:
      break;  // sent as a new snapshot
  }
  return v1::CHANGE_KIND_UNSPECIFIED;
}

uint64_t UnixMillis(std::chrono::system_clock::time_point time) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count());
}

// The event for one piece of news (not for kSetRebuilt, which is a new snapshot).
v1::WatchEvent ToEvent(const News& news) {
  v1::WatchEvent event;
  event.set_sequence(news.sequence);
  event.set_unix_time_ms(UnixMillis(news.time));
  if (const auto* change = std::get_if<ImageChange>(&news.what)) {
    auto* out = event.mutable_change();
    out->set_kind(ToProto(change->kind));
    out->set_name(change->name);
    out->set_operation(change->operation);
    if (change->image) FillInfo(*change->image, out->mutable_image());
    out->set_detail(change->detail);
  } else if (const auto* progress = std::get_if<OperationProgressNews>(&news.what)) {
    auto* out = event.mutable_progress();
    out->set_operation(progress->operation);
    out->set_name(progress->name);
    out->mutable_progress()->set_done_bytes(progress->done);
    out->mutable_progress()->set_total_bytes(progress->total);
    out->mutable_progress()->set_input_done_bytes(progress->input_done);
    out->mutable_progress()->set_input_total_bytes(progress->input_total);
  } else if (const auto* end = std::get_if<OperationEndNews>(&news.what)) {
    auto* out = event.mutable_ended();
    out->set_operation(end->operation);
    out->set_name(end->name);
    out->set_ok(end->ok);
    out->set_error(end->error);
  }
  return event;
}

bool IsSetRebuilt(const News& news) {
  const auto* change = std::get_if<ImageChange>(&news.what);
  return change && change->kind == ImageChangeKind::kSetRebuilt;
}

template <typename Writer>
bool ProgressStreamer<Writer>::Done(const ImageInfo& info) {
  v1::OperationUpdate update;
  FillInfo(info, update.mutable_done());
  std::lock_guard lock(mutex_);
  return writer_->Write(update);
}

template <typename Writer>
bool ProgressStreamer<Writer>::Planned(const SpacePlan& plan) {
  v1::OperationUpdate update;
  v1::SpacePlan* out = update.mutable_plan();
  out->set_size_bytes(plan.size_bytes);
  out->set_allocate_bytes(plan.allocate_bytes);
  out->set_pieces(plan.pieces);
  out->set_free_bytes(plan.free_bytes);
  out->set_free_after_bytes(plan.free_after_bytes);
  out->set_reserve_bytes(plan.reserve_bytes);
  out->set_fs_bytes(plan.fs_bytes);
  std::lock_guard lock(mutex_);
  return writer_->Write(update);
}

// The format the client asked for; nullopt for auto-detection. Values this build does not know
// are refused rather than taken as auto.
Result<std::optional<import::Format>> FromProto(v1::ImportFormat format) {
  switch (format) {
    case v1::IMPORT_FORMAT_AUTO:
      return std::optional<import::Format>();
    case v1::IMPORT_FORMAT_RAW:
      return std::optional<import::Format>(import::Format::Raw);
    case v1::IMPORT_FORMAT_SPARSE:
      return std::optional<import::Format>(import::Format::Sparse);
    case v1::IMPORT_FORMAT_QCOW1:
      return std::optional<import::Format>(import::Format::Qcow1);
    case v1::IMPORT_FORMAT_QCOW2:
      return std::optional<import::Format>(import::Format::Qcow2);
    default:
      return MakeError(EINVAL, "unknown import format {}", static_cast<int>(format));
  }
}

// Finishes a long operation: its status, or the final update with the image's info.
template <typename Writer>
// The last message of an operation: the image as it is now, or the plan of a dry run.
Status FinishWithInfo(ServerContext* context, ImageManager* manager, std::string_view name,
                      const Result<void>& result, ProgressStreamer<Writer>& progress,
                      const SpacePlan* dry_run = nullptr) {
  if (!result) return ToStatus(context, result.error());
  if (dry_run) {
    progress.Planned(*dry_run);
    return Status::OK;
  }
  auto info = manager->Info(name);
  if (!info) return ToStatus(context, info.error());
  progress.Done(*info);
  return Status::OK;
}

}  // namespace

StatusCode StatusCodeForErrno(int code) {
  switch (code) {
    case EINVAL:
    case ENAMETOOLONG:
    case EOPNOTSUPP:
    case EBADMSG:
      return StatusCode::INVALID_ARGUMENT;
    case ENOENT:
      return StatusCode::NOT_FOUND;
    case EEXIST:
      return StatusCode::ALREADY_EXISTS;
    case EBUSY:
    case ENXIO:
    case EROFS:
      return StatusCode::FAILED_PRECONDITION;
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
    case ENOMEM:
      return StatusCode::RESOURCE_EXHAUSTED;
    case EPERM:
    case EACCES:
      return StatusCode::PERMISSION_DENIED;
    case ECANCELED:
      return StatusCode::CANCELLED;
    case EUCLEAN:
      return StatusCode::DATA_LOSS;
    case ETIMEDOUT:
      return StatusCode::DEADLINE_EXCEEDED;
    default:
      return StatusCode::INTERNAL;
  }
}

StatusCode StatusCodeFor(const Error& error) {
  // The kind first: an I/O error while reading an image's extents is still data at stake.
  if (error.kind == ErrorKind::kExtentsChanged || error.kind == ErrorKind::kCorruptMetadata) {
    return StatusCode::DATA_LOSS;
  }
  return StatusCodeForErrno(error.code);
}

Status ToStatus(grpc::ServerContextBase* context, const Error& error) {
  if (context) context->AddTrailingMetadata("imaged-errno", std::to_string(error.code));
  return Status(StatusCodeFor(error), error.ToString());
}

ImagedService::ImagedService(ImageManager* manager, const PeerRegistry* peers,
                             std::optional<gid_t> admin_group, WatchHub* hub, Metrics* metrics,
                             std::chrono::milliseconds upload_idle_timeout)
    : manager_(manager),
      peers_(peers),
      admin_group_(admin_group),
      hub_(hub),
      metrics_(metrics),
      upload_idle_timeout_(upload_idle_timeout),
      started_(std::chrono::steady_clock::now()) {}

Status ImagedService::Authorize(ServerContext* context) const {
  auto peer = peers_->Lookup(context->peer());
  if (!peer) {
    // Every connection is accepted by Server, so an unknown peer is a bug: deny, never allow.
    return Status(StatusCode::PERMISSION_DENIED, "imaged: caller's credentials are unknown");
  }
  if (!MayChangeState(*peer, admin_group_)) {
    return Status(StatusCode::PERMISSION_DENIED,
                  fmt::format("uid {} may not change images (root or the admin group only)",
                              peer->uid));
  }
  return Status::OK;
}

uid_t ImagedService::CallerUid(ServerContext* context) const {
  auto peer = peers_->Lookup(context->peer());
  return peer ? peer->uid : static_cast<uid_t>(-1);
}

OperationRegistry::Scope::~Scope() {
  if (id_.empty()) return;
  std::lock_guard lock(registry_->mutex_);
  registry_->running_.erase(id_);
}

std::unique_ptr<OperationRegistry::Scope> OperationRegistry::Begin(grpc::ServerContext* context,
                                                                  uid_t uid) {
  auto op = std::make_shared<Operation>();
  op->uid = uid;
  std::string id;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("imaged-operation-id"); it != metadata.end()) {
    id.assign(it->second.data(), std::min<size_t>(it->second.size(), 128));
    std::lock_guard lock(mutex_);
    if (!running_.emplace(id, op).second) id.clear();  // a reused id names the first one only
  }
  return std::make_unique<Scope>(this, std::move(id), std::move(op));
}

Result<void> OperationRegistry::Cancel(const std::string& id, uid_t uid) {
  std::lock_guard lock(mutex_);
  auto it = running_.find(id);
  if (it == running_.end()) return MakeError(ENOENT, "no operation \"{}\" is running", id);
  if (uid != 0 && uid != it->second->uid) {
    return MakeError(EPERM, "operation \"{}\" was started by another user", id);
  }
  it->second->cancel_requested = true;
  return Ok();
}

Status ImagedService::CancelOperation(ServerContext* context,
                                      const v1::CancelOperationRequest* request, v1::Empty*) {
  auto cancelled = operations_.Cancel(request->operation_id(), CallerUid(context));
  return cancelled ? Status::OK : ToStatus(context, cancelled.error());
}

#define IMAGED_AUTHORIZE(context)                     \
  do {                                                \
    if (auto denied = Authorize(context); !denied.ok()) return denied; \
  } while (0)

Status ImagedService::Health(ServerContext*, const v1::HealthRequest*,
                             v1::HealthResponse* response) {
  const auto refusal = manager_->Refusal();
  response->set_status(refusal ? v1::HealthResponse::NOT_SERVING : v1::HealthResponse::SERVING);
  if (refusal) response->set_reason(*refusal);
  auto up = std::chrono::steady_clock::now() - started_;
  response->set_uptime_seconds(
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(up).count()));
  return Status::OK;
}

Status ImagedService::Version(ServerContext*, const v1::VersionRequest*,
                              v1::VersionResponse* response) {
  response->set_version(kVersion);
  response->set_git_revision(kGitRevision);
  response->set_api_version(kApiVersion);
  return Status::OK;
}

Status ImagedService::CreateImage(ServerContext* context, const v1::CreateImageRequest* request,
                                  grpc::ServerWriter<v1::OperationUpdate>* writer) {
  IMAGED_AUTHORIZE(context);
  ProgressStreamer progress(
      context, writer, operations_.Begin(context, CallerUid(context)),
      {hub_, request->dry_run() ? "create --dry-run" : "create", request->name()});
  CreateOptions options;
  options.readonly = request->readonly();
  options.zero_fill_bytes = request->zero_fill_bytes();
  options.progress = [&](uint64_t done, uint64_t total) { return progress(done, total); };
  SpacePlan plan;
  if (request->dry_run()) options.dry_run = &plan;
  auto result = manager_->Create(request->name(), request->size_bytes(), options);
  return progress.End(
      FinishWithInfo(context, manager_, request->name(), result, progress, options.dry_run));
}

Status ImagedService::DeleteImage(ServerContext* context, const v1::ImageRequest* request,
                                  v1::Empty*) {
  IMAGED_AUTHORIZE(context);
  auto result = manager_->Delete(request->name());
  return result ? Status::OK : ToStatus(context, result.error());
}

Status ImagedService::EncodeList(grpc::ServerContextBase* context, grpc::ByteBuffer* reply) {
  // The shared snapshot avoids copying every ImageInfo per call (List is the hot read path).
  auto images = manager_->ListShared();
  if (!images) return ToStatus(context, images.error());
  std::lock_guard lock(list_mu_);
  if (list_cache_.snapshot != *images) {
    v1::ListImagesResponse response;
    response.mutable_images()->Reserve(static_cast<int>((*images)->size()));
    for (const auto& image : **images) FillInfo(image, response.add_images());
    grpc::Slice encoded(response.SerializeAsString());
    list_cache_.reply = grpc::ByteBuffer(&encoded, 1);
    list_cache_.snapshot = std::move(*images);
  }
  // Copies share the encoded slice (reference counted), not the bytes.
  *reply = list_cache_.reply;
  return Status::OK;
}

grpc::ServerUnaryReactor* ImagedService::ListImages(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer*,
                                                    grpc::ByteBuffer* reply) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(EncodeList(context, reply));
  return reactor;
}

Status ImagedService::GetImage(ServerContext* context, const v1::ImageRequest* request,
                               v1::ImageInfo* response) {
  auto info = manager_->Info(request->name());
  if (!info) return ToStatus(context, info.error());
  FillInfo(*info, response);
  return Status::OK;
}

Status ImagedService::MapImage(ServerContext* context, const v1::MapImageRequest* request,
                               v1::MapImageResponse* response) {
  IMAGED_AUTHORIZE(context);
  auto device = manager_->Map(request->name(), std::chrono::milliseconds(request->timeout_ms()));
  if (!device) return ToStatus(context, device.error());
  response->set_device(*device);
  return Status::OK;
}

Status ImagedService::UnmapImage(ServerContext* context, const v1::ImageRequest* request,
                                 v1::Empty*) {
  IMAGED_AUTHORIZE(context);
  auto result = manager_->Unmap(request->name());
  return result ? Status::OK : ToStatus(context, result.error());
}

Status ImagedService::MapAllImages(ServerContext* context, const v1::Empty*,
                                   v1::MapAllImagesResponse* response) {
  IMAGED_AUTHORIZE(context);
  auto mapped = manager_->MapAll();
  if (!mapped) return ToStatus(context, mapped.error());
  for (const auto& name : *mapped) response->add_mapped(name);
  return Status::OK;
}

Status ImagedService::DisableImage(ServerContext* context, const v1::ImageRequest* request,
                                   v1::Empty*) {
  IMAGED_AUTHORIZE(context);
  auto result = manager_->Disable(request->name());
  return result ? Status::OK : ToStatus(context, result.error());
}

Status ImagedService::RemoveDisabledImages(ServerContext* context, const v1::Empty*,
                                           v1::RemoveDisabledImagesResponse* response) {
  IMAGED_AUTHORIZE(context);
  auto removed = manager_->RemoveDisabled();
  if (!removed) return ToStatus(context, removed.error());
  for (const auto& name : *removed) response->add_removed(name);
  return Status::OK;
}

Status ImagedService::ZeroFillImage(ServerContext* context, const v1::ZeroFillRequest* request,
                                    grpc::ServerWriter<v1::OperationUpdate>* writer) {
  IMAGED_AUTHORIZE(context);
  ProgressStreamer progress(context, writer, operations_.Begin(context, CallerUid(context)),
                            {hub_, "zero-fill", request->name()});
  auto result = manager_->ZeroFill(request->name(), request->bytes(),
                                   [&](uint64_t d, uint64_t t) { return progress(d, t); });
  return progress.End(FinishWithInfo(context, manager_, request->name(), result, progress));
}

Status ImagedService::ValidateImages(ServerContext* context, const v1::Empty*,
                                     v1::ValidateImagesResponse* response) {
  auto results = manager_->Validate();
  if (!results) return ToStatus(context, results.error());
  for (const auto& r : *results) {
    auto* out = response->add_results();
    out->set_name(r.name);
    out->set_ok(r.ok);
    out->set_problem(r.problem);
  }
  return Status::OK;
}

Status ImagedService::ResizeImage(ServerContext* context, const v1::ResizeImageRequest* request,
                                  grpc::ServerWriter<v1::OperationUpdate>* writer) {
  IMAGED_AUTHORIZE(context);
  if ((request->size_bytes() == 0) == (request->grow_by_bytes() == 0)) {
    return Status(StatusCode::INVALID_ARGUMENT,
                  "exactly one of size_bytes and grow_by_bytes must be non-zero");
  }
  if (request->shrink() &&
      (request->grow_by_bytes() != 0 || request->grow_filesystem() || request->dry_run())) {
    return Status(StatusCode::INVALID_ARGUMENT,
                  "shrink takes size_bytes, cannot grow a filesystem, and allocates nothing to "
                  "plan (no dry run)");
  }
  ProgressStreamer progress(
      context, writer, operations_.Begin(context, CallerUid(context)),
      {hub_, request->dry_run() ? "resize --dry-run" : "resize", request->name()});
  ResizeOptions options;
  options.progress = [&](uint64_t d, uint64_t t) { return progress(d, t); };
  options.grow_filesystem = request->grow_filesystem();
  SpacePlan plan;
  if (request->dry_run()) options.dry_run = &plan;
  auto result = request->shrink() ? manager_->Shrink(request->name(), request->size_bytes())
                : request->grow_by_bytes() != 0
                    ? manager_->GrowBy(request->name(), request->grow_by_bytes(), options)
                    : manager_->Resize(request->name(), request->size_bytes(), options);
  return progress.End(
      FinishWithInfo(context, manager_, request->name(), result, progress, options.dry_run));
}

Status ImagedService::ImportImage(ServerContext* context, const v1::ImportImageRequest* request,
                                  grpc::ServerWriter<v1::OperationUpdate>* writer) {
  IMAGED_AUTHORIZE(context);
  if (request->source_path().empty() || request->source_path().front() != '/') {
    return Status(StatusCode::INVALID_ARGUMENT, "source_path must be an absolute path");
  }
  auto format = FromProto(request->format());
  if (!format) return ToStatus(context, format.error());
  // The client's rights, not the daemon's: the file is opened as the caller.
  auto peer = peers_->Lookup(context->peer());
  if (!peer) {
    return Status(StatusCode::PERMISSION_DENIED, "imaged: caller's credentials are unknown");
  }
  auto fd = OpenAsPeer(request->source_path(), *peer);
  if (!fd) return ToStatus(context, fd.error().Wrap("import"));
  auto source = import::FileSource::FromFd(std::move(*fd), request->source_path());
  if (!source) return ToStatus(context, source.error().Wrap("import"));

  ProgressStreamer progress(
      context, writer, operations_.Begin(context, CallerUid(context)),
      {hub_, request->dry_run() ? "import --dry-run" : "import", request->name()});
  ImportOptions options;
  options.format = *format;
  options.into_existing = request->into_existing();
  options.readonly = request->readonly();
  options.progress = [&](uint64_t d, uint64_t t) { return progress(d, t); };
  options.input_progress = [&](uint64_t d, uint64_t t) { return progress.Input(d, t); };
  SpacePlan plan;
  if (request->dry_run()) options.dry_run = &plan;
  auto info = manager_->Import(request->name(), std::move(*source), options);
  if (!info) return progress.End(ToStatus(context, info.error()));
  if (options.dry_run) {
    progress.Planned(plan);
  } else {
    progress.Done(*info);
  }
  return progress.End(Status::OK);
}

Status ImagedService::UploadImage(
    ServerContext* context,
    grpc::ServerReaderWriter<v1::OperationUpdate, v1::UploadImageRequest>* stream) {
  IMAGED_AUTHORIZE(context);
  v1::UploadImageRequest message;
  if (!stream->Read(&message) || !message.has_header()) {
    return Status(StatusCode::INVALID_ARGUMENT, "upload must start with a header message");
  }
  const auto header = message.header();
  auto name_ok = imageset::ValidateImageName(header.name());
  if (!name_ok) return ToStatus(context, name_ok.error());
  auto format = FromProto(header.format());
  if (!format) return ToStatus(context, format.error());
  ProgressStreamer progress(context, stream, operations_.Begin(context, CallerUid(context)),
                            {hub_, "upload", header.name()});
  ImportOptions options;
  options.into_existing = header.into_existing();
  options.readonly = header.readonly();
  options.progress = [&](uint64_t d, uint64_t t) { return progress(d, t); };
  options.input_progress = [&](uint64_t d, uint64_t t) { return progress.Input(d, t); };
  UploadStream upload(context, stream, header.total_bytes(), upload_idle_timeout_);
  auto info = ImportUpload(header.name(), *format, upload, options);
  if (!info) return progress.End(ToStatus(context, info.error()));
  progress.Done(*info);
  return progress.End(Status::OK);
}

Result<ImageInfo> ImagedService::ImportUpload(const std::string& name,
                                              std::optional<import::Format> format,
                                              UploadStream& upload, ImportOptions& options) {
  if (format != import::Format::Raw) {
    // Enough for every magic DetectFormat knows (some sit past the first sector).
    const auto prefix = IMAGED_TRY(upload.Peek(64 << 10));
    // A compressed image is decoded from a file: a raw one inside is decoded once to measure.
    if (import::DetectWrapping(prefix) != import::Wrapping::None) {
      options.format = format;
      return ImportSpooled(name, upload, options);
    }
    if (!format) format = IMAGED_TRY(import::DetectFormat(prefix));
  }
  options.format = format;
  std::unique_ptr<import::ImageReader> reader;
  if (*format == import::Format::Raw) {
    const uint64_t size = upload.declared();
    if (size == 0) return MakeError(EINVAL, "a raw upload must declare its size (total_bytes)");
    reader = IMAGED_TRY(import::OpenRawReader(upload, size));
  } else if (*format == import::Format::Sparse) {
    reader = IMAGED_TRY_CTX(import::OpenSparseReader(upload), "read sparse upload");
  } else {
    return ImportSpooled(name, upload, options);
  }
  EndCheckedReader checked(std::move(reader), upload);
  return manager_->Import(name, checked, "upload", options);
}

// qcow and compressed images need random access (or a second pass): the upload goes to an
// unnamed file on the data filesystem first (O_TMPFILE: nothing to clean up after a crash),
// bounded by its declared size.
Result<ImageInfo> ImagedService::ImportSpooled(const std::string& name, UploadStream& upload,
                                               const ImportOptions& options) {
  if (upload.declared() == 0) {
    return MakeError(EINVAL, "a qcow or compressed upload must declare its size (total_bytes)");
  }
  const std::string& dir = manager_->options().data_dir;
  UniqueFd spool(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (!spool) return ErrnoError("create upload spool in \"{}\"", dir);
  IMAGED_TRY(upload.DrainTo(spool.get()));
  auto source = IMAGED_TRY(import::FileSource::FromFd(std::move(spool), "upload"));
  return manager_->Import(name, std::move(source), options);
}

bool ImagedService::SendSnapshot(grpc::ServerWriter<v1::WatchEvent>* writer, uint64_t sequence,
                                 const std::string& name) {
  v1::WatchEvent event;
  event.set_sequence(sequence);
  event.set_unix_time_ms(UnixMillis(std::chrono::system_clock::now()));
  auto* snapshot = event.mutable_snapshot();
  // An unreadable set is an empty snapshot, not the end of the watch: the daemon may serve
  // again after RebuildMetadata, which sends a new one.
  if (auto images = manager_->ListShared()) {
    for (const auto& image : **images) {
      if (name.empty() || image.name == name) FillInfo(image, snapshot->add_images());
    }
  }
  return writer->Write(event);
}

Status ImagedService::WatchImages(ServerContext* context, const v1::WatchImagesRequest* request,
                                  grpc::ServerWriter<v1::WatchEvent>* writer) {
  if (!request->name().empty()) {
    auto valid = imageset::ValidateImageName(request->name());
    if (!valid) return ToStatus(context, valid.error().Wrap("watch"));
  }
  auto watch = hub_->Begin(request->name(), CallerUid(context));
  if (!watch) {
    return Status(
        watch.error().code == EAGAIN ? StatusCode::RESOURCE_EXHAUSTED : StatusCode::UNAVAILABLE,
        watch.error().ToString());
  }
  if (!SendSnapshot(writer, (*watch)->start_sequence(), request->name())) return Status::CANCELLED;
  // Woken by news; the timeout only bounds how long a client that went away holds the thread.
  while (!context->IsCancelled()) {
    News news;
    switch ((*watch)->Wait(std::chrono::milliseconds(500), &news)) {
      case WatchHub::Watch::Next::kTimedOut:
        continue;
      case WatchHub::Watch::Next::kClosed:
        return Status(StatusCode::UNAVAILABLE, "imaged is stopping");
      case WatchHub::Watch::Next::kFellBehind:
        return Status(StatusCode::RESOURCE_EXHAUSTED,
                      fmt::format("the watch fell behind and missed {} events: watch again",
                                  (*watch)->dropped()));
      case WatchHub::Watch::Next::kNews:
        break;
    }
    const bool sent = IsSetRebuilt(news) ? SendSnapshot(writer, news.sequence, request->name())
                                         : writer->Write(ToEvent(news));
    if (!sent) return Status::CANCELLED;
  }
  return Status::CANCELLED;
}

std::string ImagedService::RenderMetrics() {
  MetricsGauges gauges;
  auto images = manager_->ListShared();
  if (images) gauges.images = images->get();
  if (auto space = manager_->Space()) gauges.space = *space;
  gauges.watches = hub_->watches();
  return metrics_->Render(gauges);
}

Status ImagedService::GetMetrics(ServerContext*, const v1::Empty*, v1::MetricsResponse* response) {
  response->set_text(RenderMetrics());
  return Status::OK;
}

Status ImagedService::RebuildMetadata(ServerContext* context, const v1::Empty*,
                                      v1::RebuildMetadataResponse* response) {
  IMAGED_AUTHORIZE(context);
  auto report = manager_->RebuildMetadata();
  if (!report) return ToStatus(context, report.error());
  for (const auto& image : report->images) {
    auto* out = response->add_images();
    out->set_name(image.name);
    out->set_size_bytes(image.size_bytes);
    out->set_source(image.source);
  }
  for (const auto& skipped : report->skipped) response->add_skipped(skipped);
  response->set_saved_as(report->saved_as.value_or(""));
  return Status::OK;
}

}  // namespace imaged
