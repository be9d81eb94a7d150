// imaged: manages block-device images stored as files and maps them as block devices.
#include <signal.h>

#include <cstdio>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "daemon/server.h"
#include "imaged/version.h"

#ifdef IMAGED_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

int main(int argc, char** argv) {
  CLI::App app{"imaged: block-device images stored as files, mapped as block devices"};
  imaged::ServerOptions options;
  app.add_option("--socket", options.socket_path, "unix socket to serve the gRPC API on")
      ->capture_default_str();
  app.set_version_flag("--version", fmt::format("imaged {} ({})", imaged::kVersion,
                                                imaged::kGitRevision));
  CLI11_PARSE(app, argc, argv);

  // Signals are taken synchronously by one thread, so shutdown never runs in a handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = imaged::Server::Start(options);
  if (!server) {
    fmt::print(stderr, "imaged: {}\n", server.error().ToString());
    return 1;
  }
  fmt::print(stderr, "imaged {} serving on {}\n", imaged::kVersion, options.socket_path);
#ifdef IMAGED_HAVE_SYSTEMD
  sd_notify(0, "READY=1");
#endif

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
#ifdef IMAGED_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    (*server)->Shutdown();
  });
  (*server)->Wait();
  // Wake the waiter if Wait() returned for another reason; harmless after a signal.
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  return 0;
}
