#include "fs_grow.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include <fmt/format.h>

#include "fsprobe/fs_probe.h"
#include "imaged/common/unique_fd.h"

extern char** environ;

namespace imaged::manager {
namespace {

// The last few lines of a tool's output: what it said when it failed.
std::string Tail(const std::string& text) {
  constexpr size_t kKeep = 400;
  std::string t = text;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  return t.size() <= kKeep ? t : "..." + t.substr(t.size() - kKeep);
}

// Runs argv (found on PATH) with stdin from /dev/null and stdout+stderr captured; an exit status
// up to `max_ok_exit` is success (e2fsck exits 1 when it corrected something).
Result<void> RunTool(const std::vector<std::string>& argv, int max_ok_exit = 0) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return ErrnoError("pipe for {}", argv.front());
  UniqueFd read_end(pipefd[0]), write_end(pipefd[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, cargv[0], &actions, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  write_end.reset();
  if (rc != 0) {
    return MakeError(rc == ENOENT ? EOPNOTSUPP : rc, "{} is not installed ({})", argv.front(),
                     std::strerror(rc));
  }
  std::string output;
  char buf[4096];
  ssize_t n;
  while ((n = read(read_end.get(), buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) output.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) <= max_ok_exit) return Ok();
  return MakeError(EIO, "{} failed ({} {}): {}", fmt::join(argv, " "),
                   WIFEXITED(status) ? "exit" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), Tail(output));
}

// mountinfo writes space, tab, newline and backslash in paths as \ooo.
std::string UnescapeMountPath(const std::string& field) {
  auto octal = [&](size_t at) { return at < field.size() && field[at] >= '0' && field[at] <= '7'; };
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
      out += static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                               (field[i + 3] - '0'));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

// Where the filesystem on `dev` is mounted (in this process's mount namespace), if it is.
Result<std::optional<std::string>> MountPointOf(dev_t dev) {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return ErrnoError("read /proc/self/mountinfo");
  const std::string want = fmt::format("{}:{}", major(dev), minor(dev));
  std::string line;
  while (std::getline(in, line)) {
    // "36 35 98:0 /root /mnt/point opts ...": the device is field 3, the mount point field 5.
    std::istringstream fields(line);
    std::string id, parent, majmin, root, point;
    if (!(fields >> id >> parent >> majmin >> root >> point)) continue;
    if (majmin == want && root == "/") return UnescapeMountPath(point);
  }
  return std::nullopt;
}

Result<fsprobe::Filesystem> ProbeDevice(const std::string& device) {
  UniqueFd fd(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open {}", device);
  std::vector<uint8_t> head(fsprobe::kProbeBytes);
  const ssize_t n = pread(fd.get(), head.data(), head.size(), 0);
  if (n < 0) return ErrnoError("read the superblock of {}", device);
  head.resize(static_cast<size_t>(n));
  auto found = fsprobe::Probe(head);
  if (!found) return MakeError(EOPNOTSUPP, "no ext4, xfs or f2fs filesystem found on {}", device);
  return *found;
}

}  // namespace

Result<void> GrowFilesystem(const std::string& device) {
  const auto fs = IMAGED_TRY(ProbeDevice(device));
  struct stat st {};
  if (stat(device.c_str(), &st) != 0) return ErrnoError("stat {}", device);
  const auto mounted = IMAGED_TRY(MountPointOf(st.st_rdev));
  if (fs.type == "ext4") {
    // Online when mounted; offline resize2fs wants a freshly checked filesystem.
    if (!mounted) IMAGED_TRY(RunTool({"e2fsck", "-f", "-p", device}, /*max_ok_exit=*/1));
    return RunTool({"resize2fs", device});
  }
  if (fs.type == "xfs") {
    if (!mounted) {
      return MakeError(EOPNOTSUPP, "xfs grows only while mounted (xfs_growfs): mount {} and "
                       "run imagectl resize --fs again", device);
    }
    return RunTool({"xfs_growfs", *mounted});
  }
  if (mounted) {
    return MakeError(EOPNOTSUPP, "f2fs grows only while unmounted (resize.f2fs): unmount {} "
                     "and run imagectl resize --fs again", *mounted);
  }
  return RunTool({"resize.f2fs", device});
}

}  // namespace imaged::manager
