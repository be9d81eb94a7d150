#include "daemon/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_posix.h>

namespace imaged {
namespace {

Result<sockaddr_un> SocketAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return MakeError(ENAMETOOLONG, "socket path \"{}\" must be 1..{} bytes", path,
                     sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

// True if something accepts connections on the unix socket at `path`.
bool SocketIsLive(const sockaddr_un& addr) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
}

Result<UniqueFd> Listen(const ServerOptions& options) {
  const std::string& path = options.socket_path;
  sockaddr_un addr = IMAGED_TRY(SocketAddress(path));
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) return MakeError(ec.value(), "create socket directory \"{}\"", parent.string());
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return MakeError(EEXIST, "\"{}\" exists and is not a socket", path);
    if (SocketIsLive(addr)) return MakeError(EADDRINUSE, "another imaged is serving on \"{}\"", path);
    // A socket nobody listens on is left over from a daemon that died: take it over.
    if (::unlink(path.c_str()) != 0) return ErrnoError("remove stale socket \"{}\"", path);
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError("socket");
  // A restrictive umask closes the window in which the socket exists with default permissions.
  mode_t old_mask = ::umask(0777 & ~options.socket_mode);
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  ::umask(old_mask);
  if (rc != 0) return MakeError(bind_errno, "bind \"{}\"", path);
  if (::chmod(path.c_str(), options.socket_mode) != 0) return ErrnoError("chmod \"{}\"", path);
  if (options.socket_group != static_cast<gid_t>(-1) &&
      ::chown(path.c_str(), static_cast<uid_t>(-1), options.socket_group) != 0) {
    return ErrnoError("chown \"{}\" to group {}", path, options.socket_group);
  }
  if (::listen(fd.get(), 128) != 0) return ErrnoError("listen \"{}\"", path);
  return fd;
}

}  // namespace

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options, grpc::Service* service,
                                              PeerRegistry* peers) {
  std::unique_ptr<Server> server(new Server(options, peers));
  server->listen_fd_ = IMAGED_TRY(Listen(options));
  server->stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!server->stop_fd_) return ErrnoError("eventfd");

  server->spare_fd_ = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.RegisterService(service);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             static_cast<int>(options.idle_timeout.count()));
  if (options.interceptor) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(options.interceptor());
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  server->server_ = builder.BuildAndStart();
  if (!server->server_) return MakeError(EIO, "gRPC server failed to start");
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

void Server::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fmt::print(stderr, "imaged: poll on listening socket: {}\n", std::strerror(errno));
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    if (!AcceptOne()) {
      // Out of fds even after shedding: wait a little (or for shutdown) before trying again.
      pollfd stop = {stop_fd_.get(), POLLIN, 0};
      if (::poll(&stop, 1, 100) > 0) return;
    }
  }
}

bool Server::AcceptOne() {
  int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE) {
      ShedOneConnection();
      return false;
    }
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
      fmt::print(stderr, "imaged: accept: {}\n", std::strerror(errno));
    }
    return true;
  }
  auto peer = ReadPeerCredentials(fd);
  auto recorded = peer ? peers_->Record(fd, *peer) : Result<void>(peer.error());
  if (!recorded) {
    fmt::print(stderr, "imaged: refusing connection: {}\n", recorded.error().ToString());
    ::close(fd);
    return true;
  }
  grpc::AddInsecureChannelFromFd(server_.get(), fd);  // gRPC owns and closes the fd now
  return true;
}

void Server::ShedOneConnection() {
  if (spare_fd_) {
    spare_fd_.reset();
    const int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) ::close(fd);
    spare_fd_ = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  }
  ++shed_since_log_;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_shed_log_ >= std::chrono::seconds(10)) {
    fmt::print(stderr, "imaged: out of file descriptors: refused {} connection(s)\n",
               shed_since_log_);
    shed_since_log_ = 0;
    last_shed_log_ = now;
  }
}

Server::~Server() {
  Shutdown();
  if (acceptor_.joinable()) acceptor_.join();
  server_.reset();
  // Only a server that bound the socket removes it: a refused start must never delete the
  // socket of the daemon that is serving on it.
  if (listen_fd_) ::unlink(options_.socket_path.c_str());
}

void Server::Wait() {
  if (server_) server_->Wait();
}

void Server::Shutdown() {
  if (shut_down_.exchange(true)) return;
  uint64_t one = 1;
  if (stop_fd_) (void)!::write(stop_fd_.get(), &one, sizeof(one));
  // In-flight calls get a grace period, then are cancelled (long operations clean up on cancel).
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace imaged
