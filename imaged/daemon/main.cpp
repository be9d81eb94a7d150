// imaged: manages block-device images stored as files and maps them as block devices.
#include <fcntl.h>
#include <grp.h>
#include <sys/file.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

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

imaged::Result<imaged::MapStrategy> ParseStrategy(const std::string& s) {
  if (s == "auto") return imaged::MapStrategy::kAuto;
  if (s == "dm-linear") return imaged::MapStrategy::kDmLinear;
  if (s == "loop") return imaged::MapStrategy::kLoop;
  return imaged::MakeError(EINVAL, "unknown strategy \"{}\"", s);
}

imaged::Result<imaged::UniqueFd> LockImageSet(const std::string& metadata_dir) {
  std::error_code ec;
  std::filesystem::create_directories(metadata_dir, ec);
  if (ec) return imaged::MakeError(ec.value(), "create metadata dir \"{}\"", metadata_dir);
  std::string path = metadata_dir + "/imaged.lock";
  imaged::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return imaged::ErrnoError("open \"{}\"", path);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return imaged::MakeError(EBUSY, "another imaged manages the image set in \"{}\"",
                               metadata_dir);
    }
    return imaged::ErrnoError("lock \"{}\"", path);
  }
  return fd;
}

int Fail(const imaged::Error& error) {
  fmt::print(stderr, "imaged: {}\n", error.ToString());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"imaged: block-device images stored as files, mapped as block devices"};
  std::string config_path;
  std::optional<std::string> socket, data_dir, metadata_dir, admin_group, strategy, dm_prefix,
      max_piece;
  app.add_option("--config", config_path, "config file (key = value lines)");
  app.add_option("--socket", socket, "unix socket to serve the gRPC API on [/run/imaged/imaged.sock]");
  app.add_option("--data-dir", data_dir, "image files, on the data filesystem");
  app.add_option("--metadata-dir", metadata_dir, "lp_metadata and status files");
  app.add_option("--admin-group", admin_group, "group whose members may change images");
  app.add_option("--strategy", strategy, "map strategy: auto, dm-linear or loop");
  app.add_option("--dm-prefix", dm_prefix, "prefix of device-mapper names [imaged-]");
  app.add_option("--max-piece-size", max_piece, "largest backing file, e.g. 4G [fs maximum]");
  app.set_version_flag("--version",
                       fmt::format("imaged {} ({})", imaged::kVersion, imaged::kGitRevision));
  CLI11_PARSE(app, argc, argv);

  imaged::DaemonConfig config;
  if (!config_path.empty()) {
    if (auto loaded = imaged::LoadConfigFile(config_path, config); !loaded) {
      return Fail(loaded.error());
    }
  }
  if (socket) config.socket_path = *socket;
  if (data_dir) config.data_dir = *data_dir;
  if (metadata_dir) config.metadata_dir = *metadata_dir;
  if (admin_group) config.admin_group = *admin_group;
  if (strategy) config.strategy = *strategy;
  if (dm_prefix) config.dm_prefix = *dm_prefix;
  if (max_piece) {
    auto size = imaged::ParseSize(*max_piece);
    if (!size) return Fail(imaged::MakeError(EINVAL, "--max-piece-size: bad size \"{}\"", *max_piece));
    config.max_piece_size = *size;
  }

  auto group = LookupGroup(config.admin_group);
  if (!group) return Fail(group.error());
  auto map_strategy = ParseStrategy(config.strategy);
  if (!map_strategy) return Fail(map_strategy.error());

  // Signals are taken synchronously by one thread, so shutdown never runs in a handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // One daemon per image set: startup recovery tears down mappings it does not know, which
  // would be wrong while another daemon serves the same set. The lock lives as long as we do.
  auto daemon_lock = LockImageSet(config.metadata_dir);
  if (!daemon_lock) return Fail(daemon_lock.error());

  imaged::ManagerOptions manager_options;
  manager_options.data_dir = config.data_dir;
  manager_options.metadata_dir = config.metadata_dir;
  manager_options.strategy = *map_strategy;
  manager_options.dm_prefix = config.dm_prefix;
  manager_options.max_piece_size = config.max_piece_size;
  manager_options.default_map_timeout = std::chrono::milliseconds(config.map_timeout_ms);
  auto manager = imaged::ImageManager::Open(manager_options);
  if (!manager) return Fail(manager.error());
  auto recovered = (*manager)->Recover();
  if (!recovered) return Fail(recovered.error().Wrap("startup recovery"));
  for (const auto& name : recovered->adopted) fmt::print(stderr, "imaged: adopted mapping of \"{}\"\n", name);
  for (const auto& name : recovered->torn_down) fmt::print(stderr, "imaged: tore down stale mapping of \"{}\"\n", name);
  for (const auto& path : recovered->removed_orphans) fmt::print(stderr, "imaged: removed orphan \"{}\"\n", path);

  imaged::PeerRegistry peers;
  imaged::ImagedService service(manager->get(), &peers, *group);
  imaged::ServerOptions server_options;
  server_options.socket_path = config.socket_path;
  if (*group) server_options.socket_group = **group;
  auto server = imaged::Server::Start(server_options, &service, &peers);
  if (!server) return Fail(server.error());
  fmt::print(stderr, "imaged {} serving on {} (data {}, metadata {})\n", imaged::kVersion,
             config.socket_path, config.data_dir, config.metadata_dir);
#ifdef IMAGED_HAVE_SYSTEMD
  sd_notify(0, "READY=1");
#endif

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);  // also woken by main's kill() below
#ifdef IMAGED_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    (*server)->Shutdown();
  });
  (*server)->Wait();
  // Wakes the waiter if Wait() returned for another reason; once it took a signal it has
  // exited, and this one stays pending (blocked) until exit.
  kill(getpid(), SIGTERM);
  waiter.join();
  return 0;
}
