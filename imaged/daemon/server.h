// Owns the listening unix socket and the gRPC server around ImagedService.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/server.h>

#include "daemon/service.h"
#include "imaged/common/result.h"

namespace imaged {

struct ServerOptions {
  std::string socket_path = "/run/imaged/imaged.sock";
  // Socket file mode: owner and group may connect (group membership grants read access).
  unsigned socket_mode = 0660;
};

class Server {
 public:
  // Binds the socket (refusing if another daemon answers on it), starts serving.
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  // Blocks until Shutdown() is called from another thread.
  void Wait();
  void Shutdown();
  const std::string& socket_path() const { return options_.socket_path; }

 private:
  explicit Server(ServerOptions options) : options_(std::move(options)) {}

  ServerOptions options_;
  std::unique_ptr<ImagedService> service_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace imaged
