#include "daemon/server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "imaged/common/unique_fd.h"

namespace imaged {
namespace {

// True if something accepts connections on the unix socket at `path`.
bool SocketIsLive(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return false;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
}

Result<void> PrepareSocketPath(const std::string& path) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return MakeError(ENAMETOOLONG, "socket path \"{}\" must be 1..{} bytes", path,
                     sizeof(addr.sun_path) - 1);
  }
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) return MakeError(ec.value(), "create socket directory \"{}\"", parent.string());
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return MakeError(EEXIST, "\"{}\" exists and is not a socket", path);
    }
    if (SocketIsLive(path)) {
      return MakeError(EADDRINUSE, "another imaged is serving on \"{}\"", path);
    }
    // A socket nobody listens on is left over from a daemon that died: take it over.
    if (::unlink(path.c_str()) != 0) return ErrnoError("remove stale socket \"{}\"", path);
  }
  return Ok();
}

}  // namespace

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  IMAGED_TRY(PrepareSocketPath(options.socket_path));
  std::unique_ptr<Server> server(new Server(options));
  server->service_ = std::make_unique<ImagedService>();

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + options.socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(server->service_.get());

  // The socket is created inside BuildAndStart; a restrictive umask closes the window in
  // which it would otherwise exist with default permissions.
  mode_t old_mask = ::umask(0777 & ~options.socket_mode);
  server->server_ = builder.BuildAndStart();
  ::umask(old_mask);
  if (!server->server_) {
    return MakeError(EADDRNOTAVAIL, "gRPC server failed to listen on \"{}\"", options.socket_path);
  }
  if (::chmod(options.socket_path.c_str(), options.socket_mode) != 0) {
    return ErrnoError("chmod socket \"{}\"", options.socket_path);
  }
  return server;
}

Server::~Server() {
  Shutdown();
  ::unlink(options_.socket_path.c_str());
}

void Server::Wait() {
  if (server_) server_->Wait();
}

void Server::Shutdown() {
  if (server_) server_->Shutdown();
}

}  // namespace imaged
