// imaged: manages block-device images stored as files and maps them as block devices.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "daemon/config.h"
#include "daemon/server.h"
#include "daemon/service.h"
#include "imaged/common/size.h"
#include "imaged/common/unique_fd.h"
#include "imaged/version.h"
#include "manager/image_manager.h"

#ifdef IMAGED_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace {

imaged::Result<std::optional<gid_t>> LookupGroup(const std::string& name) {
  if (name.empty()) return std::optional<gid_t>{};
  errno = 0;
  struct group* g = ::getgrnam(name.c_str());
  if (!g) return imaged::MakeError(errno ? errno : ENOENT, "admin group \"{}\" not found", name);
  return std::optional<gid_t>{g->gr_gid};
}

// Every connection and every open piece is an fd: take the hard limit (systemd's default soft
// limit of 1024 is low for a server), and say so if even that is small.
void RaiseFdLimit() {
  struct rlimit limit {};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  limit.rlim_cur = limit.rlim_max;
  (void)setrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur < 4096) {
    fmt::print(stderr, "imaged: warning: only {} file descriptors (RLIMIT_NOFILE)\n",
               static_cast<unsigned long long>(limit.rlim_cur));
  }
}

int Fail(const imaged::Error& error) {
  fmt::print(stderr, "imaged: {}\n", error.ToString());
  return 1;
}

// The flags, on top of the config file they may name.
struct Flags {
  std::string config_path;
  std::optional<std::string> socket, data_dir, metadata_dir, admin_group, strategy, dm_prefix,
      max_piece, min_free_bytes, metrics_textfile;
  std::optional<uint32_t> min_free_percent;
  bool rebuild_metadata = false;
};

void AddFlags(CLI::App& app, Flags& f) {
  app.add_option("--config", f.config_path, "config file (key = value lines)");
  app.add_option("--socket", f.socket,
                 "unix socket to serve the gRPC API on [/run/imaged/imaged.sock]");
  app.add_option("--data-dir", f.data_dir, "image files, on the data filesystem");
  app.add_option("--metadata-dir", f.metadata_dir, "lp_metadata and status files");
  app.add_option("--admin-group", f.admin_group, "group whose members may change images");
  app.add_option("--strategy", f.strategy, "map strategy: auto, dm-linear or loop");
  app.add_option("--dm-prefix", f.dm_prefix, "prefix of device-mapper names [imaged-]");
  app.add_option("--max-piece-size", f.max_piece, "largest backing file, e.g. 4G [fs maximum]");
  app.add_option("--min-free-percent", f.min_free_percent,
                 "free space (of the data fs) that create, import and resize leave [5]")
      ->check(CLI::Range(0, 90));
  app.add_option("--min-free-bytes", f.min_free_bytes,
                 "the same in bytes, e.g. 10G; the larger of the two applies [0]");
  app.add_option("--metrics-textfile", f.metrics_textfile,
                 "keep the metrics in this *.prom file (node_exporter's textfile collector)");
  app.add_flag("--rebuild-metadata", f.rebuild_metadata,
               "rebuild a lost or damaged lp_metadata from the images' files before serving");
  app.set_version_flag("--version",
                       fmt::format("imaged {} ({})", imaged::kVersion, imaged::kGitRevision));
}

imaged::Result<uint64_t> SizeFlag(std::string_view flag, const std::string& text) {
  auto size = imaged::ParseSize(text);
  if (!size) return imaged::MakeError(EINVAL, "{}: bad size \"{}\"", flag, text);
  return *size;
}

imaged::Result<imaged::DaemonConfig> Configure(const Flags& f) {
  imaged::DaemonConfig config;
  if (!f.config_path.empty()) IMAGED_TRY(imaged::LoadConfigFile(f.config_path, config));
  if (f.socket) config.socket_path = *f.socket;
  if (f.data_dir) config.data_dir = *f.data_dir;
  if (f.metadata_dir) config.metadata_dir = *f.metadata_dir;
  if (f.admin_group) config.admin_group = *f.admin_group;
  if (f.strategy) {
    config.strategy = IMAGED_TRY_CTX(imaged::ParseMapStrategy(*f.strategy), "--strategy");
  }
  if (f.dm_prefix) config.dm_prefix = *f.dm_prefix;
  if (f.max_piece) config.max_piece_size = IMAGED_TRY(SizeFlag("--max-piece-size", *f.max_piece));
  if (f.min_free_percent) config.min_free_percent = *f.min_free_percent;
  if (f.metrics_textfile) config.metrics_textfile = *f.metrics_textfile;
  if (f.min_free_bytes) {
    config.min_free_bytes = IMAGED_TRY(SizeFlag("--min-free-bytes", *f.min_free_bytes));
  }
  return config;
}

// The daemon's news: what the manager changes goes to the watches and the metrics.
struct Observers {
  imaged::WatchHub hub;
  imaged::Metrics metrics;
};

imaged::Result<std::unique_ptr<imaged::ImageManager>> OpenAndRecover(
    const imaged::DaemonConfig& config, bool rebuild, Observers& observers) {
  imaged::ManagerOptions options;
  options.data_dir = config.data_dir;
  options.metadata_dir = config.metadata_dir;
  options.strategy = config.strategy;
  options.dm_prefix = config.dm_prefix;
  options.max_piece_size = config.max_piece_size;
  options.default_map_timeout = std::chrono::milliseconds(config.map_timeout_ms);
  options.reserve = {config.min_free_percent, config.min_free_bytes};
  options.on_change = [&observers](const imaged::ImageChange& change) {
    observers.metrics.CountChange(change.kind);
    observers.hub.Publish(change);
  };
  auto manager = IMAGED_TRY(imaged::ImageManager::Open(options));
  if (rebuild) {
    const auto rebuilt = IMAGED_TRY_CTX(manager->RebuildMetadata(), "--rebuild-metadata");
    if (rebuilt.saved_as) {
      fmt::print(stderr, "imaged: kept the unreadable lp_metadata as {}\n", *rebuilt.saved_as);
    }
    for (const auto& image : rebuilt.images) {
      fmt::print(stderr, "imaged: rebuilt \"{}\": {} bytes (from {})\n", image.name,
                 image.size_bytes, image.source);
    }
    for (const auto& skipped : rebuilt.skipped) {
      fmt::print(stderr, "imaged: rebuild skipped {}\n", skipped);
    }
  }
  const auto recovered = IMAGED_TRY_CTX(manager->Recover(), "startup recovery");
  observers.metrics.CountRecovery(recovered);
  for (const auto& name : recovered.adopted) {
    fmt::print(stderr, "imaged: adopted mapping of \"{}\"\n", name);
  }
  for (const auto& name : recovered.torn_down) {
    fmt::print(stderr, "imaged: tore down stale mapping of \"{}\"\n", name);
  }
  for (const auto& problem : recovered.problems) {
    fmt::print(stderr, "imaged: recovery: {}\n", problem);
  }
  if (recovered.refused) {
    // Served anyway, so that Health says why and RebuildMetadata can repair it.
    fmt::print(stderr, "imaged: NOT SERVING: {}\n", *recovered.refused);
  }
  return manager;
}

// Serves until SIGINT or SIGTERM (blocked in every thread and taken synchronously by one, so
// shutdown never runs in a signal handler).
int Serve(imaged::Server& server, const sigset_t& signals, imaged::WatchHub& hub) {
#ifdef IMAGED_HAVE_SYSTEMD
  sd_notify(0, "READY=1");
#endif
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);  // also woken by the kill() below
#ifdef IMAGED_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    hub.Close();  // watches end now instead of holding the shutdown for its grace period
    server.Shutdown();
  });
  server.Wait();
  // Wakes the waiter if Wait() returned for another reason; once it took a signal it has
  // exited, and this one stays pending (blocked) until exit.
  kill(getpid(), SIGTERM);
  waiter.join();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"imaged: block-device images stored as files, mapped as block devices"};
  Flags flags;
  AddFlags(app, flags);
  CLI11_PARSE(app, argc, argv);
  auto config = Configure(flags);
  if (!config) return Fail(config.error());
  auto group = LookupGroup(config->admin_group);
  if (!group) return Fail(group.error());

  RaiseFdLimit();
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Held for as long as we run.
  auto claim = imaged::ClaimImageSet(config->metadata_dir);
  if (!claim) return Fail(claim.error());
  Observers observers;
  auto manager = OpenAndRecover(*config, flags.rebuild_metadata, observers);
  if (!manager) return Fail(manager.error());

  imaged::PeerRegistry peers(config->max_connections_per_uid);
  imaged::ImagedService service(manager->get(), &peers, *group, &observers.hub, &observers.metrics,
                                std::chrono::seconds(config->upload_idle_timeout_s));
  std::unique_ptr<imaged::MetricsTextfile> textfile;
  if (!config->metrics_textfile.empty()) {
    auto started = imaged::MetricsTextfile::Start(
        config->metrics_textfile, [&service] { return service.RenderMetrics(); },
        std::chrono::seconds(config->metrics_interval_s));
    if (!started) return Fail(started.error());
    textfile = std::move(*started);
  }
  imaged::ServerOptions server_options;
  server_options.socket_path = config->socket_path;
  server_options.idle_timeout = std::chrono::seconds(config->idle_timeout_s);
  if (*group) server_options.socket_group = **group;
  server_options.interceptor = [&observers, &textfile] {
    return observers.metrics.Interceptor([&textfile] {
      if (textfile) textfile->Poke();
    });
  };
  auto server = imaged::Server::Start(server_options, &service, &peers);
  if (!server) return Fail(server.error());
  fmt::print(stderr, "imaged {} serving on {} (data {}, metadata {})\n", imaged::kVersion,
             config->socket_path, config->data_dir, config->metadata_dir);
  return Serve(**server, signals, observers.hub);
}
