// Who is calling: the daemon accepts connections itself, reads SO_PEERCRED/SO_PEERGROUPS, and
// hands the connection to gRPC. gRPC names such a connection "fd:<n>" in ServerContext::peer(),
// which is the key back to the credentials recorded at accept time.
#pragma once

#include <sys/types.h>

#include <mutex>
#include <string>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "imaged/common/result.h"
#include "imaged/common/unique_fd.h"

namespace imaged {

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

// Reads the credentials of the process at the other end of a connected unix socket.
Result<PeerCredentials> ReadPeerCredentials(int fd);

// Credentials per connection, keyed by the connection's fd number and checked against the
// socket's identity (device and inode): gRPC closes connections without telling us, and a later
// connection may get the same number, so an entry whose fd no longer names its socket is stale
// and dropped. Connections per uid are capped, so one user cannot take every fd.
class PeerRegistry {
 public:
  explicit PeerRegistry(size_t max_per_uid = 128) : max_per_uid_(max_per_uid) {}
  // EUSERS when the peer's uid already holds max_per_uid connections.
  Result<void> Record(int fd, PeerCredentials credentials);
  // Looks up a gRPC peer string ("fd:<n>", possibly with a scheme prefix).
  std::optional<PeerCredentials> Lookup(std::string_view grpc_peer) const;
  size_t size() const;

 private:
  struct Entry {
    PeerCredentials credentials;
    dev_t dev = 0;
    ino_t ino = 0;
  };
  static bool StillOpen(int fd, const Entry& e);
  void ForgetClosedLocked() const;

  size_t max_per_uid_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<int, Entry> by_fd_;
};

// Root may change state; so may members (primary or supplementary) of the admin group.
bool MayChangeState(const PeerCredentials& peer, std::optional<gid_t> admin_group);

// Opens `path` for reading with the peer's rights, not the daemon's: on a thread of its own
// whose filesystem uid, gid and supplementary groups are the peer's (which also drops the
// root daemon's capability to override permissions). Never blocks (O_NONBLOCK); anything but
// a regular file or a block device is refused (EINVAL) without being read. EACCES when the
// peer may not read it.
Result<UniqueFd> OpenAsPeer(const std::string& path, const PeerCredentials& peer);

}  // namespace imaged
