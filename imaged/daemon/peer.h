// Who is calling: the daemon accepts connections itself, reads SO_PEERCRED/SO_PEERGROUPS, and
// hands the connection to gRPC. gRPC names such a connection "fd:<n>" in ServerContext::peer(),
// which is the key back to the credentials recorded at accept time.
#pragma once

#include <sys/types.h>

#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "imaged/common/result.h"

namespace imaged {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

// Reads the credentials of the process at the other end of a connected unix socket.
Result<PeerCredentials> ReadPeerCredentials(int fd);

class PeerRegistry {
 public:
  void Record(int fd, PeerCredentials credentials);
  void Forget(int fd);
  // Looks up a gRPC peer string ("fd:<n>", possibly with a scheme prefix).
  std::optional<PeerCredentials> Lookup(std::string_view grpc_peer) const;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<int, PeerCredentials> by_fd_;
};

// Root may change state; so may members (primary or supplementary) of the admin group.
bool MayChangeState(const PeerCredentials& peer, std::optional<gid_t> admin_group);

}  // namespace imaged
