#include "daemon/metrics.h"

#include <fmt/format.h>

#include "imaged.pb.h"
#include "imaged/version.h"

namespace imaged {
namespace {

std::string_view CodeName(grpc::StatusCode code) {
  static constexpr std::string_view kNames[] = {"OK",
                                                "CANCELLED",
                                                "UNKNOWN",
                                                "INVALID_ARGUMENT",
                                                "DEADLINE_EXCEEDED",
                                                "NOT_FOUND",
                                                "ALREADY_EXISTS",
                                                "PERMISSION_DENIED",
                                                "RESOURCE_EXHAUSTED",
                                                "FAILED_PRECONDITION",
                                                "ABORTED",
                                                "OUT_OF_RANGE",
                                                "UNIMPLEMENTED",
                                                "INTERNAL",
                                                "UNAVAILABLE",
                                                "DATA_LOSS",
                                                "UNAUTHENTICATED"};
  const auto i = static_cast<size_t>(code);
  return i < std::size(kNames) ? kNames[i] : "UNKNOWN";
}

// The method of "/imaged.v1.Imaged/CreateImage" if the service has it, else "other": a label
// per name a peer makes up would let any peer grow the daemon's memory.
std::string MethodLabel(std::string_view path) {
  const auto slash = path.rfind('/');
  const std::string method(slash == std::string_view::npos ? path : path.substr(slash + 1));
  // Looked up once: this runs at the start of every call.
  static const auto* service = v1::WatchEvent::descriptor()->file()->FindServiceByName("Imaged");
  return service && service->FindMethodByName(method) ? method : "other";
}

class CallRecorder final : public grpc::experimental::Interceptor {
 public:
  CallRecorder(Metrics* metrics, std::string method, const std::function<void()>* after)
      : metrics_(metrics),
        method_(std::move(method)),
        after_(after),
        start_(std::chrono::steady_clock::now()) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->CountCall(method_, methods->GetSendStatus().error_code(),
                          std::chrono::steady_clock::now() - start_);
      if (*after_) (*after_)();
    }
    methods->Proceed();
  }

 private:
  Metrics* metrics_;
  std::string method_;
  const std::function<void()>* after_;  // the factory's, which outlives every call
  std::chrono::steady_clock::time_point start_;
};

class RecorderFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  RecorderFactory(Metrics* metrics, std::function<void()> after)
      : metrics_(metrics), after_(std::move(after)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new CallRecorder(metrics_, MethodLabel(info->method()), &after_);
  }

 private:
  Metrics* metrics_;
  std::function<void()> after_;
};

// One metric family: its HELP and TYPE lines, then its samples.
void Family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// A label value as the text format quotes it.
std::string Quoted(std::string_view value) {
  std::string out = "\"";
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

void Sample(std::string& out, std::string_view name, std::string_view labels, double value) {
  fmt::format_to(std::back_inserter(out), "{}{}{}{} {}\n", name, labels.empty() ? "" : "{", labels,
                 labels.empty() ? "" : "}", value);
}

}  // namespace

std::string_view ChangeKindName(ImageChangeKind kind) {
  switch (kind) {
    case ImageChangeKind::kCreated:
      return "created";
    case ImageChangeKind::kDeleted:
      return "deleted";
    case ImageChangeKind::kMapped:
      return "mapped";
    case ImageChangeKind::kUnmapped:
      return "unmapped";
    case ImageChangeKind::kResized:
      return "resized";
    case ImageChangeKind::kDisabled:
      return "disabled";
    case ImageChangeKind::kImported:
      return "imported";
    case ImageChangeKind::kZeroFilled:
      return "zero-filled";
    case ImageChangeKind::kCorrupt:
      return "corrupt";
    case ImageChangeKind::kSetRebuilt:
      return "set-rebuilt";
  }
  return "unknown";
}

Metrics::Metrics() : started_(std::chrono::system_clock::now()) {}

void Metrics::CountCall(std::string_view method, grpc::StatusCode code,
                        std::chrono::nanoseconds took) {
  const double seconds = std::chrono::duration<double>(took).count();
  std::lock_guard lock(mutex_);
  ++calls_[{std::string(method), std::string(CodeName(code))}];
  Latency& latency = latency_[std::string(method)];
  size_t bucket = 0;
  while (bucket < std::size(kBuckets) && seconds > kBuckets[bucket]) ++bucket;
  if (bucket < std::size(kBuckets)) ++latency.buckets[bucket];
  ++latency.count;
  latency.sum_seconds += seconds;
}

void Metrics::CountChange(ImageChangeKind kind) {
  std::lock_guard lock(mutex_);
  ++changes_[std::string(ChangeKindName(kind))];
}

void Metrics::CountRecovery(const RecoveryReport& report) {
  std::lock_guard lock(mutex_);
  recovery_["adopted"] += report.adopted.size();
  recovery_["torn_down"] += report.torn_down.size();
  recovery_["kept"] += report.kept.size();
  recovery_["problem"] += report.problems.size();
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> Metrics::Interceptor(
    std::function<void()> after_each_call) {
  return std::make_unique<RecorderFactory>(this, std::move(after_each_call));
}

namespace {

void RenderImages(std::string& out, const MetricsGauges& g) {
  if (!g.images) return;
  uint64_t mapped = 0, disabled = 0, readonly = 0, bytes = 0, pieces = 0, extents = 0;
  for (const auto& image : *g.images) {
    mapped += image.mapped_device.has_value();
    disabled += image.disabled;
    readonly += image.readonly;
    bytes += image.size_bytes;
    pieces += image.pieces;
    extents += image.extents;
  }
  Family(out, "imaged_images", "gauge",
         "Images in the set, by state (an image may be in several).");
  Sample(out, "imaged_images", "state=\"all\"", static_cast<double>(g.images->size()));
  Sample(out, "imaged_images", "state=\"mapped\"", static_cast<double>(mapped));
  Sample(out, "imaged_images", "state=\"disabled\"", static_cast<double>(disabled));
  Sample(out, "imaged_images", "state=\"readonly\"", static_cast<double>(readonly));
  Family(out, "imaged_image_bytes", "gauge",
         "The images' sizes, summed (what they hold allocated).");
  Sample(out, "imaged_image_bytes", "", static_cast<double>(bytes));
  Family(out, "imaged_image_pieces", "gauge", "Backing files of all images.");
  Sample(out, "imaged_image_pieces", "", static_cast<double>(pieces));
  Family(out, "imaged_image_extents", "gauge", "Extents lp_metadata records for all images.");
  Sample(out, "imaged_image_extents", "", static_cast<double>(extents));
}

void RenderSpace(std::string& out, const MetricsGauges& g) {
  if (!g.space) return;
  Family(out, "imaged_data_fs_bytes", "gauge",
         "The data filesystem: its size, what is free, and what the reserve keeps free.");
  Sample(out, "imaged_data_fs_bytes", "kind=\"size\"", static_cast<double>(g.space->fs_bytes));
  Sample(out, "imaged_data_fs_bytes", "kind=\"free\"", static_cast<double>(g.space->free_bytes));
  Sample(out, "imaged_data_fs_bytes", "kind=\"reserve\"",
         static_cast<double>(g.space->reserve_bytes));
}

}  // namespace

std::string Metrics::Render(const MetricsGauges& gauges) const {
  std::string out;
  Family(out, "imaged_build_info", "gauge", "The daemon's version and git revision.");
  Sample(out, "imaged_build_info",
         fmt::format("version={},revision={}", Quoted(kVersion), Quoted(kGitRevision)), 1);
  Family(out, "imaged_start_time_seconds", "gauge", "When the daemon started (Unix time).");
  Sample(out, "imaged_start_time_seconds", "",
         std::chrono::duration<double>(started_.time_since_epoch()).count());
  RenderImages(out, gauges);
  RenderSpace(out, gauges);
  Family(out, "imaged_watches", "gauge", "Open WatchImages calls.");
  Sample(out, "imaged_watches", "", static_cast<double>(gauges.watches));

  std::lock_guard lock(mutex_);
  Family(out, "imaged_rpcs_total", "counter", "RPCs ended, by method and gRPC status code.");
  for (const auto& [key, count] : calls_) {
    Sample(out, "imaged_rpcs_total",
           fmt::format("method={},code={}", Quoted(key.first), Quoted(key.second)),
           static_cast<double>(count));
  }
  Family(out, "imaged_rpc_duration_seconds", "histogram",
         "How long RPCs took, by method (a watch: how long it was open).");
  for (const auto& [method, latency] : latency_) {
    uint64_t cumulative = 0;
    for (size_t i = 0; i < std::size(kBuckets); ++i) {
      cumulative += latency.buckets[i];
      Sample(out, "imaged_rpc_duration_seconds_bucket",
             fmt::format("method={},le=\"{}\"", Quoted(method), kBuckets[i]),
             static_cast<double>(cumulative));
    }
    Sample(out, "imaged_rpc_duration_seconds_bucket",
           fmt::format("method={},le=\"+Inf\"", Quoted(method)),
           static_cast<double>(latency.count));
    Sample(out, "imaged_rpc_duration_seconds_sum", fmt::format("method={}", Quoted(method)),
           latency.sum_seconds);
    Sample(out, "imaged_rpc_duration_seconds_count", fmt::format("method={}", Quoted(method)),
           static_cast<double>(latency.count));
  }
  Family(out, "imaged_image_changes_total", "counter", "Changes made to images, by kind.");
  for (const auto& [kind, count] : changes_) {
    Sample(out, "imaged_image_changes_total", fmt::format("kind={}", Quoted(kind)),
           static_cast<double>(count));
  }
  Family(out, "imaged_recovery_actions_total", "counter",
         "What startup recovery did: mappings adopted or torn down, files kept, problems.");
  for (const auto& [action, count] : recovery_) {
    Sample(out, "imaged_recovery_actions_total", fmt::format("action={}", Quoted(action)),
           static_cast<double>(count));
  }
  return out;
}

// ---- the textfile ----

Result<std::unique_ptr<MetricsTextfile>> MetricsTextfile::Start(
    const std::string& path, Render render, std::chrono::milliseconds interval,
    std::chrono::milliseconds debounce) {
  const std::string name = Basename(path);
  if (name.size() < 6 || name.substr(name.size() - 5) != ".prom") {
    return MakeError(EINVAL, "metrics textfile \"{}\" must end in .prom (what node_exporter reads)",
                     path);
  }
  auto dir = IMAGED_TRY_CTX(Directory::Open(Dirname(path)), "metrics textfile \"{}\"", path);
  // Temp files a crash of ours left mid-write (only this file's: the directory is shared).
  const std::string own_temps = fmt::format("{}{}.", kTempFilePrefix, name);
  for (const auto& file : IMAGED_TRY(dir.List())) {
    if (file.starts_with(own_temps)) (void)dir.RemoveFile(file);
  }
  std::unique_ptr<MetricsTextfile> textfile(
      new MetricsTextfile(std::move(dir), name, std::move(render), interval, debounce));
  textfile->WriteOnce();
  textfile->thread_ = std::thread([t = textfile.get()] { t->Run(); });
  return textfile;
}

MetricsTextfile::MetricsTextfile(Directory dir, std::string name, Render render,
                                 std::chrono::milliseconds interval,
                                 std::chrono::milliseconds debounce)
    : dir_(std::move(dir)),
      name_(std::move(name)),
      render_(std::move(render)),
      interval_(interval),
      debounce_(debounce) {}

MetricsTextfile::~MetricsTextfile() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void MetricsTextfile::Poke() {
  {
    std::lock_guard lock(mutex_);
    poked_ = true;
  }
  wake_.notify_all();
}

void MetricsTextfile::Run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, interval_, [&] { return poked_ || stopping_; });
    if (stopping_) break;
    // A burst of calls makes one write: wait out the debounce, then write what is then.
    if (poked_) wake_.wait_for(lock, debounce_, [&] { return stopping_; });
    poked_ = false;
    lock.unlock();
    WriteOnce();
    lock.lock();
  }
}

void MetricsTextfile::WriteOnce() {
  const std::string text = render_();
  AtomicWriteOptions options;
  options.mode = 0644;
  auto written = dir_.AtomicWrite(
      name_, std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()), options);
  if (!written && !failing_) {
    fmt::print(stderr, "imaged: metrics textfile: {} (said once until a write succeeds)\n",
               written.error().ToString());
  }
  failing_ = !written;
}

}  // namespace imaged
