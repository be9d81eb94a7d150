// imagectl: the admin CLI, a thin gRPC client of imaged.
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <nlohmann/json.hpp>

#include "imaged.grpc.pb.h"
#include "imaged/common/size.h"
#include "imaged/version.h"

namespace {

namespace v1 = imaged::v1;
using nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitDenied = 4;
constexpr int kExitNotFound = 5;
constexpr int kExitCancelled = 6;

constexpr const char* kExitCodesHelp =
    "Exit codes:\n"
    "  0  success\n"
    "  1  the daemon refused or failed the operation (message on stderr)\n"
    "  2  usage error\n"
    "  3  the daemon could not be reached\n"
    "  4  permission denied (only root or the admin group may change images)\n"
    "  5  no such image\n"
    "  6  cancelled (Ctrl-C during a long operation; nothing is left behind)\n";

struct Context {
  std::string socket = "/run/imaged/imaged.sock";
  bool json = false;
  int timeout_seconds = 0;  // 0: none for long operations, 30 s for quick ones

  std::unique_ptr<v1::Imaged::Stub> Stub() const {
    auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
    return v1::Imaged::NewStub(channel);
  }
  void SetDeadline(grpc::ClientContext& call, bool long_operation) const {
    int seconds = timeout_seconds ? timeout_seconds : (long_operation ? 0 : 30);
    if (seconds) {
      call.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    }
  }
};

int ReportStatus(const grpc::Status& status, const Context& ctx) {
  if (status.ok()) return kExitOk;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      fmt::print(stderr, "imagectl: cannot reach imaged on {}: {}\n", ctx.socket,
                 status.error_message());
      return kExitUnreachable;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      fmt::print(stderr, "imagectl: no answer from imaged on {} in time\n", ctx.socket);
      return kExitUnreachable;
    case grpc::StatusCode::PERMISSION_DENIED:
      fmt::print(stderr, "imagectl: permission denied: {}\n", status.error_message());
      return kExitDenied;
    case grpc::StatusCode::NOT_FOUND:
      fmt::print(stderr, "imagectl: {}\n", status.error_message());
      return kExitNotFound;
    case grpc::StatusCode::CANCELLED:
      fmt::print(stderr, "imagectl: cancelled\n");
      return kExitCancelled;
    default:
      fmt::print(stderr, "imagectl: {}\n", status.error_message());
      return kExitFailed;
  }
}

json InfoJson(const v1::ImageInfo& info) {
  return json{{"name", info.name()},
              {"size_bytes", info.size_bytes()},
              {"pieces", info.pieces()},
              {"extents", info.extents()},
              {"readonly", info.readonly()},
              {"disabled", info.disabled()},
              {"mapped_device", info.mapped_device()}};
}

void PrintInfo(const v1::ImageInfo& info) {
  fmt::print("name:          {}\n", info.name());
  fmt::print("size:          {} ({} bytes)\n", imaged::HumanSize(info.size_bytes()),
             info.size_bytes());
  fmt::print("pieces:        {}\n", info.pieces());
  fmt::print("extents:       {}\n", info.extents());
  fmt::print("readonly:      {}\n", info.readonly() ? "yes" : "no");
  fmt::print("disabled:      {}\n", info.disabled() ? "yes" : "no");
  fmt::print("mapped device: {}\n", info.mapped_device().empty() ? "-" : info.mapped_device());
}

// Shows progress of a long operation: a bar on a terminal, a line per 10% otherwise.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(std::string label)
      : label_(std::move(label)), tty_(isatty(STDERR_FILENO)) {}
  // An import from a compressed file also reports the file's bytes read; before the image's
  // bytes are known (a raw image inside is measured first) only those.
  void Update(const v1::Progress& progress) {
    const bool measuring = progress.total_bytes() == 0 && progress.input_total_bytes() != 0;
    const uint64_t done = measuring ? progress.input_done_bytes() : progress.done_bytes();
    const uint64_t total = measuring ? progress.input_total_bytes() : progress.total_bytes();
    const std::string label = measuring ? label_ + " (measuring)" : label_;
    const std::string input =
        measuring || progress.input_total_bytes() == 0
            ? ""
            : fmt::format(", read {} / {}", imaged::HumanSize(progress.input_done_bytes()),
                          imaged::HumanSize(progress.input_total_bytes()));
    int percent = total ? static_cast<int>(done * 100 / total) : 100;
    if (tty_) {
      int filled = percent / 4;
      fmt::print(stderr, "\r{} [{:<25}] {:3}% {} / {}{}", label, std::string(filled, '#'), percent,
                 imaged::HumanSize(done), imaged::HumanSize(total), input);
      drawn_ = true;
    } else if (percent / 10 != last_decile_ || measuring != measuring_) {
      last_decile_ = percent / 10;
      measuring_ = measuring;
      fmt::print(stderr, "{}: {}% ({} of {} bytes{})\n", label, percent, done, total, input);
    }
  }
  ~ProgressPrinter() {
    if (drawn_) fmt::print(stderr, "\n");
  }

 private:
  std::string label_;
  bool tty_;
  bool drawn_ = false;
  int last_decile_ = -1;
  bool measuring_ = false;
};

// A long call names its operation, so that Ctrl-C can ask the daemon to stop it. The daemon
// decides: it stops (the call ends CANCELLED, nothing is left behind) unless the operation is
// past its point of no return, when it completes and the call ends OK; either way this client
// reports what the daemon did. A second Ctrl-C abandons the call without waiting for that
// answer.
class CancelOnInterrupt {
 public:
  CancelOnInterrupt(const Context& ctx, grpc::ClientContext* call) {
    uint8_t bytes[12] = {};
    if (getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) {
      std::memcpy(bytes, &call, sizeof(call));
    }
    for (uint8_t b : bytes) id_ += fmt::format("{:02x}", b);
    call->AddMetadata("imaged-operation-id", id_);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    watcher_ = std::thread([&ctx, call, set, this] {
      for (int sig = 0; sigwait(&set, &sig) == 0 && sig != SIGUSR1;) {
        if (cancel_asked_.exchange(true)) {
          abandoned_ = true;
          call->TryCancel();
          return;
        }
        fmt::print(stderr, "\nimagectl: asking the daemon to cancel (Ctrl-C again to stop "
                           "waiting for its answer)\n");
        v1::CancelOperationRequest request;
        request.set_operation_id(id_);
        // NOT_FOUND right after the start: the daemon has not registered the call yet.
        for (int attempt = 0; attempt < 20; ++attempt) {
          grpc::ClientContext cancel_call;
          v1::Empty empty;
          auto status = ctx.Stub()->CancelOperation(&cancel_call, request, &empty);
          if (status.error_code() != grpc::StatusCode::NOT_FOUND) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      }
    });
  }
  ~CancelOnInterrupt() {
    pthread_kill(watcher_.native_handle(), SIGUSR1);
    watcher_.join();
  }
  // Ctrl-C twice: the call was dropped, the daemon's answer is unknown.
  bool abandoned() const { return abandoned_; }

 private:
  std::string id_;
  std::thread watcher_;
  std::atomic<bool> cancel_asked_{false};
  std::atomic<bool> abandoned_{false};
};

std::string SizeWithBytes(uint64_t bytes) {
  return bytes < 1024 ? imaged::HumanSize(bytes)
                      : fmt::format("{} ({} bytes)", imaged::HumanSize(bytes), bytes);
}

// What a dry run would allocate, like qemu-img measure.
void PrintPlan(const v1::SpacePlan& plan, const Context& ctx, const std::string& done_label) {
  if (ctx.json) {
    fmt::print("{}\n", json{{"dry_run", true},
                            {"size_bytes", plan.size_bytes()},
                            {"allocate_bytes", plan.allocate_bytes()},
                            {"pieces", plan.pieces()},
                            {"free_bytes", plan.free_bytes()},
                            {"free_after_bytes", plan.free_after_bytes()},
                            {"reserve_bytes", plan.reserve_bytes()},
                            {"fs_bytes", plan.fs_bytes()}}
                           .dump(2));
    return;
  }
  fmt::print("dry run: nothing was {}\n", done_label);
  fmt::print("image size:  {}\n", SizeWithBytes(plan.size_bytes()));
  fmt::print("allocate:    {}, {} piece{} after\n", SizeWithBytes(plan.allocate_bytes()),
             plan.pieces(), plan.pieces() == 1 ? "" : "s");
  fmt::print("free now:    {} of {}\n", SizeWithBytes(plan.free_bytes()),
             imaged::HumanSize(plan.fs_bytes()));
  fmt::print("free after:  {} (kept free: at least {})\n", SizeWithBytes(plan.free_after_bytes()),
             imaged::HumanSize(plan.reserve_bytes()));
}

// Drains a stream of OperationUpdate, printing progress; prints the final info (or plan).
template <typename Stream>
int FinishOperation(Stream& stream, const Context& ctx, const std::string& doing,
                    const std::string& done_label, const CancelOnInterrupt& cancel) {
  v1::OperationUpdate update;
  v1::ImageInfo final_info;
  std::optional<v1::SpacePlan> plan;
  bool done = false;
  {
    ProgressPrinter printer(doing);
    while (stream->Read(&update)) {
      if (update.has_progress()) {
        if (!ctx.json) printer.Update(update.progress());
      } else if (update.has_done()) {
        final_info = update.done();
        done = true;
      } else if (update.has_plan()) {
        plan = update.plan();
        done = true;
      }
    }
  }
  auto status = stream->Finish();
  if (cancel.abandoned()) {
    // Not exit 6: that promises nothing is left, which only the daemon's answer could say.
    fmt::print(stderr, "imagectl: stopped waiting; the daemon may still have completed the "
                       "operation (check with imagectl info)\n");
    return kExitFailed;
  }
  if (!status.ok()) return ReportStatus(status, ctx);
  if (!done) {
    fmt::print(stderr, "imagectl: the daemon ended the operation without a result\n");
    return kExitFailed;
  }
  if (plan) {
    PrintPlan(*plan, ctx, done_label);
  } else if (ctx.json) {
    fmt::print("{}\n", InfoJson(final_info).dump(2));
  } else {
    fmt::print("{}: {} ({})\n", done_label, final_info.name(),
               imaged::HumanSize(final_info.size_bytes()));
  }
  return kExitOk;
}

std::optional<uint64_t> SizeArg(const std::string& text, const char* what) {
  auto size = imaged::ParseSize(text);
  if (!size) fmt::print(stderr, "imagectl: {}: \"{}\" is not a size (e.g. 4096, 512M, 4G)\n", what, text);
  return size;
}

v1::ImportFormat FormatArg(const std::string& s) {
  if (s == "raw") return v1::IMPORT_FORMAT_RAW;
  if (s == "sparse") return v1::IMPORT_FORMAT_SPARSE;
  if (s == "qcow") return v1::IMPORT_FORMAT_QCOW1;
  if (s == "qcow2") return v1::IMPORT_FORMAT_QCOW2;
  return v1::IMPORT_FORMAT_AUTO;
}

grpc::Status FetchVersion(const Context& ctx, v1::VersionResponse* response) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  return ctx.Stub()->Version(&call, v1::VersionRequest{}, response);
}

int CmdVersion(const Context& ctx) {
  v1::VersionResponse response;
  auto status = FetchVersion(ctx, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    json out = {{"client", {{"version", imaged::kVersion}, {"git_revision", imaged::kGitRevision}}},
                {"server",
                 {{"version", response.version()},
                  {"git_revision", response.git_revision()},
                  {"api_version", response.api_version()}}}};
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("client: imagectl {} ({})\n", imaged::kVersion, imaged::kGitRevision);
    fmt::print("server: imaged {} ({}), api {}\n", response.version(), response.git_revision(),
               response.api_version());
  }
  return kExitOk;
}

int CmdHealth(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::HealthResponse response;
  auto status = ctx.Stub()->Health(&call, v1::HealthRequest{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  bool serving = response.status() == v1::HealthResponse::SERVING;
  if (ctx.json) {
    fmt::print("{}\n", json{{"serving", serving},
                            {"uptime_seconds", response.uptime_seconds()},
                            {"reason", response.reason()}}
                           .dump(2));
  } else if (serving) {
    fmt::print("serving (up {} s)\n", response.uptime_seconds());
  } else {
    fmt::print("not serving (up {} s): {}\n", response.uptime_seconds(), response.reason());
  }
  return serving ? kExitOk : kExitFailed;
}

int CmdRebuildMetadata(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, true);
  v1::RebuildMetadataResponse response;
  auto status = ctx.Stub()->RebuildMetadata(&call, v1::Empty{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    json images = json::array();
    for (const auto& i : response.images()) {
      images.push_back({{"name", i.name()}, {"size_bytes", i.size_bytes()}, {"source", i.source()}});
    }
    fmt::print("{}\n", json{{"images", images},
                            {"skipped", response.skipped()},
                            {"saved_as", response.saved_as()}}
                           .dump(2));
    return kExitOk;
  }
  if (!response.saved_as().empty()) {
    fmt::print("the unreadable lp_metadata was kept as {}\n", response.saved_as());
  }
  for (const auto& i : response.images()) {
    fmt::print("{}: {} (size and attributes from {})\n", i.name(), imaged::HumanSize(i.size_bytes()),
               i.source());
  }
  for (const auto& skipped : response.skipped()) fmt::print("skipped {}\n", skipped);
  fmt::print("lp_metadata rebuilt with {} image(s)\n", response.images_size());
  return kExitOk;
}

int CmdList(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::ListImagesResponse response;
  auto status = ctx.Stub()->ListImages(&call, v1::ListImagesRequest{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    json out = json::array();
    for (const auto& image : response.images()) out.push_back(InfoJson(image));
    fmt::print("{}\n", out.dump(2));
    return kExitOk;
  }
  // Like lvs: one row per image, sizes human-readable.
  fmt::print("{:<36} {:>10} {:>6} {:>7} {:<5} {}\n", "NAME", "SIZE", "PIECES", "EXTENTS", "FLAGS",
             "DEVICE");
  for (const auto& image : response.images()) {
    std::string flags;
    flags += image.readonly() ? 'r' : '-';
    flags += image.disabled() ? 'd' : '-';
    flags += image.mapped_device().empty() ? '-' : 'm';
    fmt::print("{:<36} {:>10} {:>6} {:>7} {:<5} {}\n", image.name(),
               imaged::HumanSize(image.size_bytes()), image.pieces(), image.extents(), flags,
               image.mapped_device().empty() ? "-" : image.mapped_device());
  }
  return kExitOk;
}

int CmdInfo(const Context& ctx, const std::string& name) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::ImageRequest request;
  request.set_name(name);
  v1::ImageInfo info;
  auto status = ctx.Stub()->GetImage(&call, request, &info);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    fmt::print("{}\n", InfoJson(info).dump(2));
  } else {
    PrintInfo(info);
  }
  return kExitOk;
}

// "created", "zero-filled", ...: a ChangeKind as watch prints it.
std::string ChangeName(v1::ChangeKind kind) {
  std::string name = v1::ChangeKind_Name(kind);
  for (char& c : name) c = c == '_' ? '-' : static_cast<char>(std::tolower(c));
  return name;
}

json WatchJson(const v1::WatchEvent& event) {
  json out = {{"sequence", event.sequence()}, {"unix_time_ms", event.unix_time_ms()}};
  if (event.has_snapshot()) {
    out["event"] = "snapshot";
    out["images"] = json::array();
    for (const auto& image : event.snapshot().images()) out["images"].push_back(InfoJson(image));
  } else if (event.has_change()) {
    const auto& change = event.change();
    out["event"] = ChangeName(change.kind());
    out["name"] = change.name();
    out["operation"] = change.operation();
    if (change.has_image()) out["image"] = InfoJson(change.image());
    if (!change.detail().empty()) out["detail"] = change.detail();
  } else if (event.has_progress()) {
    const auto& p = event.progress();
    out.update({{"event", "progress"},
                {"operation", p.operation()},
                {"name", p.name()},
                {"done_bytes", p.progress().done_bytes()},
                {"total_bytes", p.progress().total_bytes()},
                {"input_done_bytes", p.progress().input_done_bytes()},
                {"input_total_bytes", p.progress().input_total_bytes()}});
  } else if (event.has_ended()) {
    const auto& e = event.ended();
    out.update({{"event", "ended"},
                {"operation", e.operation()},
                {"name", e.name()},
                {"ok", e.ok()},
                {"error", e.error()}});
  }
  return out;
}

std::string ImageSummary(const v1::ImageInfo& image) {
  return fmt::format("{} {}{}{}{}", image.name(), imaged::HumanSize(image.size_bytes()),
                     image.readonly() ? " readonly" : "", image.disabled() ? " disabled" : "",
                     image.mapped_device().empty() ? "" : " mapped at " + image.mapped_device());
}

void PrintWatchEvent(const v1::WatchEvent& event) {
  const time_t seconds = static_cast<time_t>(event.unix_time_ms() / 1000);
  struct tm local {};
  localtime_r(&seconds, &local);
  const std::string when = fmt::format("{:02}:{:02}:{:02}.{:03}", local.tm_hour, local.tm_min,
                                       local.tm_sec, event.unix_time_ms() % 1000);
  if (event.has_snapshot()) {
    fmt::print("{} snapshot: {} image(s)\n", when, event.snapshot().images_size());
    for (const auto& image : event.snapshot().images()) fmt::print("  {}\n", ImageSummary(image));
  } else if (event.has_change()) {
    const auto& c = event.change();
    fmt::print("{} {} {} ({}){}\n", when, ChangeName(c.kind()),
               c.has_image() ? ImageSummary(c.image()) : c.name(), c.operation(),
               c.detail().empty() ? "" : ": " + c.detail());
  } else if (event.has_progress()) {
    const auto& p = event.progress();
    const uint64_t total = p.progress().total_bytes();
    fmt::print("{} progress {} {}: {}% ({} of {})\n", when, p.operation(), p.name(),
               total ? p.progress().done_bytes() * 100 / total : 100,
               imaged::HumanSize(p.progress().done_bytes()), imaged::HumanSize(total));
  } else if (event.has_ended()) {
    const auto& e = event.ended();
    fmt::print("{} ended {} {}: {}\n", when, e.operation(), e.name(),
               e.ok() ? "ok" : "failed: " + e.error());
  }
}

// Prints every event until the daemon ends the watch (or Ctrl-C). Output is flushed per event,
// so a pipe reader sees each as it happens.
int CmdWatch(const Context& ctx, const std::string& name) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, true);
  v1::WatchImagesRequest request;
  request.set_name(name);
  auto stream = ctx.Stub()->WatchImages(&call, request);
  v1::WatchEvent event;
  bool watching = false;
  while (stream->Read(&event)) {
    watching = true;
    if (ctx.json) {
      fmt::print("{}\n", WatchJson(event).dump());
    } else {
      PrintWatchEvent(event);
    }
    std::fflush(stdout);
  }
  const auto status = stream->Finish();
  if (watching && status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    fmt::print(stderr, "imagectl: the watch ended: {}\n", status.error_message());
    return kExitUnreachable;
  }
  return ReportStatus(status, ctx);
}

int CmdStats(const Context& ctx) {
  if (ctx.json) {
    fmt::print(stderr, "imagectl: stats prints the Prometheus text format, which has no --json\n");
    return kExitUsage;
  }
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::MetricsResponse response;
  auto status = ctx.Stub()->GetMetrics(&call, v1::Empty{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  fmt::print("{}", response.text());
  return kExitOk;
}

// For the RPCs that take a name and return Empty.
template <typename Method>
int CmdSimple(const Context& ctx, const std::string& name, Method method, const char* verb) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::ImageRequest request;
  request.set_name(name);
  v1::Empty response;
  auto stub = ctx.Stub();
  auto status = ((*stub).*method)(&call, request, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    fmt::print("{}\n", json{{"name", name}, {"result", verb}}.dump(2));
  } else {
    fmt::print("{} {}\n", verb, name);
  }
  return kExitOk;
}

int CmdMap(const Context& ctx, const std::string& name, uint32_t timeout_ms) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::MapImageRequest request;
  request.set_name(name);
  request.set_timeout_ms(timeout_ms);
  v1::MapImageResponse response;
  auto status = ctx.Stub()->MapImage(&call, request, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    fmt::print("{}\n", json{{"name", name}, {"device", response.device()}}.dump(2));
  } else {
    fmt::print("{}\n", response.device());
  }
  return kExitOk;
}

int CmdMapAll(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::MapAllImagesResponse response;
  auto status = ctx.Stub()->MapAllImages(&call, v1::Empty{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    fmt::print("{}\n", json{{"mapped", response.mapped()}}.dump(2));
  } else {
    for (const auto& name : response.mapped()) fmt::print("mapped {}\n", name);
  }
  return kExitOk;
}

int CmdRemoveDisabled(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::RemoveDisabledImagesResponse response;
  auto status = ctx.Stub()->RemoveDisabledImages(&call, v1::Empty{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (ctx.json) {
    fmt::print("{}\n", json{{"removed", response.removed()}}.dump(2));
  } else {
    for (const auto& name : response.removed()) fmt::print("removed {}\n", name);
  }
  return kExitOk;
}

int CmdValidate(const Context& ctx) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, false);
  v1::ValidateImagesResponse response;
  auto status = ctx.Stub()->ValidateImages(&call, v1::Empty{}, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  bool all_ok = true;
  json out = json::array();
  for (const auto& r : response.results()) {
    all_ok = all_ok && r.ok();
    out.push_back(json{{"name", r.name()}, {"ok", r.ok()}, {"problem", r.problem()}});
    if (!ctx.json) fmt::print("{:<36} {}\n", r.name(), r.ok() ? "ok" : r.problem());
  }
  if (ctx.json) fmt::print("{}\n", out.dump(2));
  return all_ok ? kExitOk : kExitFailed;
}

// An older daemon would ignore dry_run and do the operation: ask first. 0 when it may go on.
int CheckDaemonPlans(const Context& ctx) {
  v1::VersionResponse response;
  auto status = FetchVersion(ctx, &response);
  if (!status.ok()) return ReportStatus(status, ctx);
  if (response.api_version() >= imaged::kFirstApiWithDryRun) return kExitOk;
  fmt::print(stderr,
             "imagectl: imaged {} (api {}) does not know --dry-run and would do the operation; "
             "nothing was sent\n",
             response.version(), response.api_version());
  return kExitFailed;
}

int CmdCreate(const Context& ctx, const std::string& name, uint64_t size, bool readonly,
              uint64_t zero_fill, bool dry_run) {
  if (dry_run) {
    if (int rc = CheckDaemonPlans(ctx); rc != kExitOk) return rc;
  }
  grpc::ClientContext call;
  ctx.SetDeadline(call, true);
  v1::CreateImageRequest request;
  request.set_name(name);
  request.set_size_bytes(size);
  request.set_readonly(readonly);
  request.set_zero_fill_bytes(zero_fill);
  request.set_dry_run(dry_run);
  CancelOnInterrupt cancel(ctx, &call);
  auto stream = ctx.Stub()->CreateImage(&call, request);
  return FinishOperation(stream, ctx, "creating", "created", cancel);
}

int CmdZeroFill(const Context& ctx, const std::string& name, uint64_t bytes) {
  grpc::ClientContext call;
  ctx.SetDeadline(call, true);
  v1::ZeroFillRequest request;
  request.set_name(name);
  request.set_bytes(bytes);
  CancelOnInterrupt cancel(ctx, &call);
  auto stream = ctx.Stub()->ZeroFillImage(&call, request);
  return FinishOperation(stream, ctx, "zero-filling", "zero-filled", cancel);
}

struct ResizeFlags {
  bool relative = false;  // `size` is the bytes to add ("+1G")
  bool shrink = false;
  bool grow_fs = false;
  bool dry_run = false;
};

int CmdResize(const Context& ctx, const std::string& name, uint64_t size, ResizeFlags flags) {
  if (flags.dry_run) {
    if (int rc = CheckDaemonPlans(ctx); rc != kExitOk) return rc;
  }
  grpc::ClientContext call;
  ctx.SetDeadline(call, true);
  v1::ResizeImageRequest request;
  request.set_name(name);
  request.set_shrink(flags.shrink);
  request.set_grow_filesystem(flags.grow_fs);
  request.set_dry_run(flags.dry_run);
  if (flags.relative) {
    request.set_grow_by_bytes(size);
  } else {
    request.set_size_bytes(size);
  }
  CancelOnInterrupt cancel(ctx, &call);
  auto stream = ctx.Stub()->ResizeImage(&call, request);
  return FinishOperation(stream, ctx, "resizing", "resized", cancel);
}

// The daemon opens the file itself: it must be an absolute path it can read.
int CmdImportPath(const Context& ctx, const std::string& file, v1::ImportImageRequest request) {
  char* resolved = realpath(file.c_str(), nullptr);
  if (!resolved) {
    fmt::print(stderr, "imagectl: {}: {}\n", file, std::strerror(errno));
    return kExitFailed;
  }
  request.set_source_path(resolved);
  free(resolved);
  grpc::ClientContext call;
  ctx.SetDeadline(call, true);
  CancelOnInterrupt cancel(ctx, &call);
  auto stream = ctx.Stub()->ImportImage(&call, request);
  return FinishOperation(stream, ctx, "importing", "imported", cancel);
}

// Sends fd's bytes to the end; false (after printing why) when reading it failed, so that the
// caller cancels the upload rather than let a pipe's stream end early as if complete.
template <typename Writer>
bool SendChunks(int fd, const std::string& file, Writer& stream) {
  // One message, its data read into in place and reused for every chunk: no copy, and no
  // allocation per chunk. Allocating a fresh 1 MiB string per chunk (freed together with
  // gRPC's 1 MiB serialization slice) made glibc give the top of the heap back and grow it
  // again at every message, so every chunk faulted its pages in anew: 26,700 page faults
  // and 1,000 brk calls per 256 MiB, which made the upload 2-5x slower than the path form.
  // Messages stay at 1 MiB: 4 MiB (just under gRPC's default receive limit) measured slower.
  constexpr size_t kChunk = 1 << 20;
  v1::UploadImageRequest chunk;
  std::string& data = *chunk.mutable_data();
  for (;;) {
    data.resize(kChunk);
    const ssize_t n = read(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fmt::print(stderr, "imagectl: {}: {}\n", file, std::strerror(errno));
      return false;
    }
    if (n == 0) return true;
    data.resize(static_cast<size_t>(n));
    if (!stream.Write(chunk)) return true;  // the daemon ended the call: Finish says why
  }
}

// The client reads the file with its own rights and streams it to the daemon.
int CmdUpload(const Context& ctx, const std::string& file, const v1::ImportImageRequest& request) {
  int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fmt::print(stderr, "imagectl: {}: {}\n", file, std::strerror(errno));
    return kExitFailed;
  }
  struct stat st {};
  fstat(fd, &st);
  grpc::ClientContext call;
  ctx.SetDeadline(call, true);
  CancelOnInterrupt cancel(ctx, &call);
  auto stream = ctx.Stub()->UploadImage(&call);
  v1::UploadImageRequest header;
  auto& h = *header.mutable_header();
  h.set_name(request.name());
  h.set_format(request.format());
  h.set_into_existing(request.into_existing());
  h.set_readonly(request.readonly());
  h.set_total_bytes(S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0);
  bool read_ok = true;
  if (stream->Write(header)) read_ok = SendChunks(fd, file, *stream);  // else Finish says why
  close(fd);
  if (!read_ok) {
    call.TryCancel();
    stream->Finish();
    return kExitFailed;
  }
  stream->WritesDone();
  return FinishOperation(stream, ctx, "importing", "imported", cancel);
}

struct ImportFlags {
  std::string format;
  bool into_existing = false;
  bool readonly = false;
  bool upload = false;
  bool dry_run = false;
};

int CmdImport(const Context& ctx, const std::string& file, const std::string& name,
              const ImportFlags& flags) {
  if (flags.upload && flags.dry_run) {
    // Planning needs the image's size, which only reading (and maybe decoding) the file says.
    fmt::print(stderr,
               "imagectl: import: --dry-run reads FILE in place; it cannot plan an "
               "--upload\n");
    return kExitUsage;
  }
  if (flags.dry_run) {
    if (int rc = CheckDaemonPlans(ctx); rc != kExitOk) return rc;
  }
  v1::ImportImageRequest request;
  request.set_name(name);
  request.set_format(FormatArg(flags.format));
  request.set_into_existing(flags.into_existing);
  request.set_readonly(flags.readonly);
  request.set_dry_run(flags.dry_run);
  return flags.upload ? CmdUpload(ctx, file, request)
                      : CmdImportPath(ctx, file, std::move(request));
}

// What the subcommands' arguments parse into.
struct Args {
  std::string name, size_text, file, format = "auto";
  bool readonly = false, into_existing = false, upload = false, shrink = false, grow_fs = false,
       dry_run = false;
  std::string zero_fill_text = "0";
  uint32_t timeout_ms = 0;
};

CLI::App* NameCommand(CLI::App& app, const char* command, const char* help, Args& a) {
  auto* sub = app.add_subcommand(command, help);
  sub->add_option("name", a.name, "image name")->required();
  return sub;
}

void AddDryRun(CLI::App* command, Args& a) {
  command->add_flag("--dry-run", a.dry_run,
                    "check and print what would be allocated and left free; change nothing");
}

// Commands that only read.
void AddQueryCommands(CLI::App& app, Context& ctx, Args& a, int& rc) {
  app.add_subcommand("version", "print client and daemon versions")
      ->callback([&] { rc = CmdVersion(ctx); });
  app.add_subcommand("health", "check that the daemon serves (and why not)")
      ->callback([&] { rc = CmdHealth(ctx); });
  app.add_subcommand("list", "list images (flags: r readonly, d disabled, m mapped)")
      ->callback([&] { rc = CmdList(ctx); });
  NameCommand(app, "info", "show one image", a)->callback([&] { rc = CmdInfo(ctx, a.name); });
  app.add_subcommand("validate", "check every image's extents against lp_metadata")
      ->callback([&] { rc = CmdValidate(ctx); });
  auto* watch = app.add_subcommand(
      "watch", "print the images, then every change and the progress of long operations");
  watch->add_option("name", a.name, "only this image's events");
  watch->callback([&] { rc = CmdWatch(ctx, a.name); });
  app.add_subcommand("stats", "print the daemon's metrics (Prometheus text format)")->callback([&] {
    rc = CmdStats(ctx);
  });
}

// Commands that create, grow or fill images.
void AddCreateCommands(CLI::App& app, Context& ctx, Args& a, int& rc) {
  auto* create = NameCommand(app, "create", "create an image of SIZE (e.g. 512M, 4G)", a);
  create->add_option("size", a.size_text, "size in bytes, or with K/M/G/T suffix")->required();
  create->add_flag("--readonly", a.readonly, "map the image read-only");
  create->add_option("--zero-fill", a.zero_fill_text, "zero the first N bytes through the device");
  AddDryRun(create, a);
  create->callback([&] {
    auto size = SizeArg(a.size_text, "size");
    auto zero = SizeArg(a.zero_fill_text, "--zero-fill");
    rc = size && zero ? CmdCreate(ctx, a.name, *size, a.readonly, *zero, a.dry_run) : kExitUsage;
  });
  auto* zero = NameCommand(app, "zero-fill", "write zeros over an image through its device", a);
  zero->add_option("bytes", a.zero_fill_text, "how many bytes from the start (default: all)");
  zero->callback([&] {
    auto bytes = SizeArg(a.zero_fill_text, "bytes");
    rc = bytes ? CmdZeroFill(ctx, a.name, *bytes) : kExitUsage;
  });
  auto* resize = NameCommand(
      app, "resize", "grow an image to SIZE, or by +SIZE; a mapped image grows in place", a);
  resize->add_option("size", a.size_text, "new size (e.g. 8G), or +SIZE to add (e.g. +1G)")
      ->required();
  resize->add_flag("--shrink", a.shrink,
                   "allow SIZE below the image's size (unmapped only; the bytes past SIZE are "
                   "lost; refused if a filesystem on the image is larger)");
  resize->add_flag("--fs", a.grow_fs,
                   "then grow the ext4/xfs/f2fs filesystem on it (resize2fs online when mounted, "
                   "xfs_growfs mounted only, resize.f2fs unmounted only)");
  AddDryRun(resize, a);
  resize->callback([&] {
    const bool relative = a.size_text.starts_with('+');
    if (a.shrink && (relative || a.grow_fs || a.dry_run)) {
      fmt::print(stderr,
                 "imagectl: resize: --shrink takes the new size, without +SIZE, --fs or "
                 "--dry-run\n");
      rc = kExitUsage;
      return;
    }
    auto size = SizeArg(relative ? a.size_text.substr(1) : a.size_text, "size");
    if (size && relative && *size == 0) {
      fmt::print(stderr, "imagectl: size: \"{}\" adds nothing\n", a.size_text);
      size.reset();
    }
    rc = size ? CmdResize(ctx, a.name, *size, {relative, a.shrink, a.grow_fs, a.dry_run})
              : kExitUsage;
  });
  auto* import =
      app.add_subcommand("import",
                         "import a raw, Android sparse or qcow/qcow2 FILE as NAME; raw and sparse "
                         "may be gzip, xz, zstd or bzip2 compressed, or the one file in a zip");
  import->add_option("file", a.file)->required();
  import->add_option("name", a.name)->required();
  import
      ->add_option("--format", a.format,
                   "auto, raw (FILE's own bytes, even if compressed), sparse, qcow or qcow2")
      ->check(CLI::IsMember({"auto", "raw", "sparse", "qcow", "qcow2"}))
      ->capture_default_str();
  import->add_flag("--into-existing", a.into_existing, "write into an existing unmapped image");
  import->add_flag("--readonly", a.readonly, "create the image read-only");
  import->add_flag("--upload", a.upload,
                   "send the file's bytes over the socket (when the daemon cannot read FILE)");
  AddDryRun(import, a);
  import->callback([&] {
    rc = CmdImport(ctx, a.file, a.name,
                   {a.format, a.into_existing, a.readonly, a.upload, a.dry_run});
  });
}

// Commands that map, unmap, disable, delete or repair.
void AddLifecycleCommands(CLI::App& app, Context& ctx, Args& a, int& rc) {
  NameCommand(app, "delete", "delete an unmapped image", a)->callback([&] {
    rc = CmdSimple(ctx, a.name, &v1::Imaged::Stub::DeleteImage, "deleted");
  });
  auto* map = NameCommand(app, "map", "map an image; prints the block device", a);
  map->add_option("--timeout-ms", a.timeout_ms, "wait this long for the device node");
  map->callback([&] { rc = CmdMap(ctx, a.name, a.timeout_ms); });
  NameCommand(app, "unmap", "remove an image's block device", a)->callback([&] {
    rc = CmdSimple(ctx, a.name, &v1::Imaged::Stub::UnmapImage, "unmapped");
  });
  app.add_subcommand("map-all", "map every image that is not mapped or disabled")
      ->callback([&] { rc = CmdMapAll(ctx); });
  NameCommand(app, "disable", "mark an image for removal (see remove-disabled)", a)->callback([&] {
    rc = CmdSimple(ctx, a.name, &v1::Imaged::Stub::DisableImage, "disabled");
  });
  app.add_subcommand("remove-disabled", "delete every disabled image")
      ->callback([&] { rc = CmdRemoveDisabled(ctx); });
  app.add_subcommand("rebuild-metadata",
                     "rebuild a lost or damaged lp_metadata from the images' files")
      ->callback([&] { rc = CmdRebuildMetadata(ctx); });
}

}  // namespace

int main(int argc, char** argv) {
  Context ctx;
  CLI::App app{"imagectl: manage imaged's block-device images"};
  app.footer(kExitCodesHelp);
  app.add_option("--socket", ctx.socket, "imaged's unix socket")->capture_default_str();
  app.add_flag("--json", ctx.json, "machine-readable output");
  app.add_option("--timeout", ctx.timeout_seconds,
                 "seconds to wait for an answer (default: 30, none for long operations)");
  app.require_subcommand(1);
  // `imagectl list --json` as well as `imagectl --json list`.
  app.fallthrough();

  int rc = kExitOk;
  Args args;
  AddQueryCommands(app, ctx, args, rc);
  AddCreateCommands(app, ctx, args, rc);
  AddLifecycleCommands(app, ctx, args, rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  return rc;
}
