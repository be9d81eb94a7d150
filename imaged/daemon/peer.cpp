#include "daemon/peer.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <thread>

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

bool PeerRegistry::StillOpen(int fd, const Entry& e) {
  struct stat st {};
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == e.dev && st.st_ino == e.ino;
}

void PeerRegistry::ForgetClosedLocked() const {
  for (auto it = by_fd_.begin(); it != by_fd_.end();) {
    it = StillOpen(it->first, it->second) ? std::next(it) : by_fd_.erase(it);
  }
}

Result<void> PeerRegistry::Record(int fd, PeerCredentials credentials) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoError("fstat connection");
  std::lock_guard lock(mutex_);
  ForgetClosedLocked();
  const size_t held = static_cast<size_t>(
      std::count_if(by_fd_.begin(), by_fd_.end(),
                    [&](const auto& e) { return e.second.credentials.uid == credentials.uid; }));
  if (held >= max_per_uid_) {
    return MakeError(EUSERS, "uid {} already has {} connections", credentials.uid, held);
  }
  by_fd_[fd] = Entry{std::move(credentials), st.st_dev, st.st_ino};
  return Ok();
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
  if (!StillOpen(fd, it->second)) {
    by_fd_.erase(it);
    return std::nullopt;
  }
  return it->second.credentials;
}

size_t PeerRegistry::size() const {
  std::lock_guard lock(mutex_);
  ForgetClosedLocked();
  return by_fd_.size();
}

bool MayChangeState(const PeerCredentials& peer, std::optional<gid_t> admin_group) {
  if (peer.uid == 0) return true;
  if (!admin_group) return false;
  return peer.gid == *admin_group ||
         std::find(peer.groups.begin(), peer.groups.end(), *admin_group) != peer.groups.end();
}

namespace {

// Takes the peer's filesystem identity on the calling thread only. glibc's setgroups() changes
// every thread of the process; the raw system calls change just this one, and the thread ends
// (its credentials with it) right after the open.
Result<void> BecomePeerOnThisThread(const PeerCredentials& peer) {
  if (syscall(SYS_setgroups, peer.groups.size(), peer.groups.data()) != 0) {
    return ErrnoError("setgroups");
  }
  syscall(SYS_setfsgid, peer.gid);
  syscall(SYS_setfsuid, peer.uid);
  // setfsuid/setfsgid report no errors; ask back what the thread's identity is now.
  const auto fsuid = static_cast<uid_t>(syscall(SYS_setfsuid, static_cast<uid_t>(-1)));
  const auto fsgid = static_cast<gid_t>(syscall(SYS_setfsgid, static_cast<gid_t>(-1)));
  if (fsuid != peer.uid || fsgid != peer.gid) {
    return MakeError(EPERM, "could not take uid {} gid {} to open a file", peer.uid, peer.gid);
  }
  return Ok();
}

Result<UniqueFd> OpenForReading(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) return ErrnoError("open \"{}\"", path);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoError("stat \"{}\"", path);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return MakeError(EINVAL, "\"{}\" is neither a regular file nor a block device", path);
  }
  return fd;
}

}  // namespace

Result<UniqueFd> OpenAsPeer(const std::string& path, const PeerCredentials& peer) {
  if (peer.uid == 0) return OpenForReading(path);
  Result<UniqueFd> opened = MakeError(EINTR, "open \"{}\": not attempted", path);
  std::thread opener([&] {
    auto became = BecomePeerOnThisThread(peer);
    opened = became ? OpenForReading(path)
                    : Result<UniqueFd>(std::move(became).error().Wrap(
                          fmt::format("open \"{}\" as uid {}", path, peer.uid)));
  });
  opener.join();
  return opened;
}

}  // namespace imaged
