// Owns the listening unix socket and the gRPC server. Connections are accepted here, not by
// gRPC, so every peer's SO_PEERCRED is recorded (PeerRegistry) before it can send a request.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/server.h>

#include "daemon/peer.h"
#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"

namespace imaged {

struct ServerOptions {
  std::string socket_path = "/run/imaged/imaged.sock";
  // Owner and group may connect; connecting only grants the read-only RPCs to non-admins.
  unsigned socket_mode = 0660;
  gid_t socket_group = static_cast<gid_t>(-1);  // chown the socket to this group if set
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

  ServerOptions options_;
  PeerRegistry* peers_;
  UniqueFd listen_fd_;
  UniqueFd stop_fd_;  // eventfd that wakes the accept loop for shutdown
  std::unique_ptr<grpc::Server> server_;
  std::thread acceptor_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace imaged
