#include "daemon/peer.h"

#include <sys/socket.h>

#include <algorithm>
#include <charconv>

namespace imaged {

Result<PeerCredentials> ReadPeerCredentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return ErrnoError("SO_PEERCRED");
  }
  PeerCredentials peer{cred.pid, cred.uid, cred.gid, {}};
  // SO_PEERGROUPS reports the supplementary groups; ERANGE tells the size needed.
  std::vector<gid_t> groups(64);
  while (true) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE || glen <= groups.size() * sizeof(gid_t)) {
      groups.clear();  // older kernels: primary group only
      break;
    }
    groups.resize(glen / sizeof(gid_t));
  }
  peer.groups = std::move(groups);
  return peer;
}

void PeerRegistry::Record(int fd, PeerCredentials credentials) {
  std::lock_guard lock(mutex_);
  by_fd_[fd] = std::move(credentials);
}

void PeerRegistry::Forget(int fd) {
  std::lock_guard lock(mutex_);
  by_fd_.erase(fd);
}

std::optional<PeerCredentials> PeerRegistry::Lookup(std::string_view grpc_peer) const {
  size_t pos = grpc_peer.rfind("fd:");
  if (pos == std::string_view::npos) return std::nullopt;
  std::string_view digits = grpc_peer.substr(pos + 3);
  int fd = -1;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), fd);
  if (ec != std::errc() || ptr != digits.data() + digits.size()) return std::nullopt;
  std::lock_guard lock(mutex_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return std::nullopt;
  return it->second;
}

bool MayChangeState(const PeerCredentials& peer, std::optional<gid_t> admin_group) {
  if (peer.uid == 0) return true;
  if (!admin_group) return false;
  return peer.gid == *admin_group ||
         std::find(peer.groups.begin(), peer.groups.end(), *admin_group) != peer.groups.end();
}

}  // namespace imaged
