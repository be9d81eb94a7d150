// Owns the listening unix socket and the gRPC server. Connections are accepted here, not by
// gRPC, so every peer's SO_PEERCRED is recorded (PeerRegistry) before it can send a request.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/server.h>
#include <grpcpp/support/server_interceptor.h>

#include "daemon/peer.h"
#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"

namespace imaged {

struct ServerOptions {
  std::string socket_path = "/run/imaged/imaged.sock";
  // Owner and group may connect; connecting only grants the read-only RPCs to non-admins.
  unsigned socket_mode = 0660;
  gid_t socket_group = static_cast<gid_t>(-1);  // chown the socket to this group if set
  // A connection with no call in progress for this long is closed.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  // Sees every call (Metrics::Interceptor); none when empty.
  std::function<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>()>
      interceptor;
};

class Server {
 public:
  // Binds the socket (refusing if another daemon answers on it) and starts serving `service`.
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                               grpc::Service* service, PeerRegistry* peers);
  ~Server();

  // Blocks until Shutdown() is called from another thread.
  void Wait();
  void Shutdown();
  const std::string& socket_path() const { return options_.socket_path; }

 private:
  Server(ServerOptions options, PeerRegistry* peers) : options_(std::move(options)), peers_(peers) {}
  void AcceptLoop();
  // Accepts one connection and hands it to gRPC; false when the loop should pause.
  bool AcceptOne();
  // Out of fds: drain one pending connection with the spare fd, so the listening socket does
  // not stay readable (which would spin the loop), and log at most every 10 s.
  void ShedOneConnection();

  ServerOptions options_;
  PeerRegistry* peers_;
  UniqueFd listen_fd_;
  UniqueFd stop_fd_;  // eventfd that wakes the accept loop for shutdown
  UniqueFd spare_fd_;  // /dev/null, given up to accept (and close) a connection at EMFILE
  std::chrono::steady_clock::time_point last_shed_log_{};
  uint64_t shed_since_log_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::thread acceptor_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace imaged
