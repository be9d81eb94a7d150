// Test support: run commands and start the real daemon, with readiness taken from sd_notify
// (no sleeps) and cleanup guaranteed by RAII even when an assertion fails.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace imaged::test {

struct CommandResult {
  int exit_code = -1;  // exit status, or 128+signal
  std::string out;
  std::string err;
};

// Runs argv to completion, capturing stdout and stderr. Extra environment entries are
// "NAME=value" strings appended to the current environment.
inline CommandResult RunCommand(const std::vector<std::string>& argv,
                                const std::vector<std::string>& extra_env = {}) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe failed");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
  for (const auto& e : extra_env) env_store.push_back(e);
  std::vector<char*> env;
  for (auto& e : env_store) env.push_back(e.data());
  env.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  CommandResult result;
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    result.exit_code = 127;
    result.err = std::string("spawn failed: ") + strerror(rc);
    return result;
  }
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// A temporary directory removed (recursively) on destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "imaged-test.XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Starts `argv` (the real imaged binary) with NOTIFY_SOCKET pointing at a datagram socket
// of ours and returns once the daemon sent READY=1. SIGTERMs (then SIGKILLs) on destruction.
class DaemonProcess {
 public:
  DaemonProcess(std::vector<std::string> argv, const std::filesystem::path& notify_dir,
                std::chrono::seconds timeout = std::chrono::seconds(30)) {
    notify_path_ = (notify_dir / "notify.sock").string();
    notify_fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, notify_path_.c_str(), sizeof(addr.sun_path) - 1);
    unlink(notify_path_.c_str());
    if (bind(notify_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      throw std::runtime_error("bind notify socket failed");
    }
    std::vector<std::string> env_store;
    for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
    env_store.push_back("NOTIFY_SOCKET=" + notify_path_);
    std::vector<char*> env;
    for (auto& e : env_store) env.push_back(e.data());
    env.push_back(nullptr);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], nullptr, nullptr, args.data(), env.data()) != 0) {
      pid_ = -1;
      throw std::runtime_error("spawn daemon failed");
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!ready_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{notify_fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 200))) > 0) {
        char buf[512];
        ssize_t n = recv(notify_fd_, buf, sizeof(buf) - 1, 0);
        if (n > 0) {
          buf[n] = 0;
          if (std::strstr(buf, "READY=1")) ready_ = true;
        }
      }
      int status = 0;
      if (!ready_ && waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;  // died before becoming ready
        exit_status_ = status;
        break;
      }
    }
  }
  ~DaemonProcess() {
    Stop();
    if (notify_fd_ >= 0) close(notify_fd_);
    unlink(notify_path_.c_str());
  }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  bool ready() const { return ready_; }
  pid_t pid() const { return pid_; }

  // How a daemon that died before it became ready ended, for failure messages.
  std::string HowItEnded() const {
    if (ready_ || pid_ > 0) return ready_ ? "ready" : "not ready in time";
    if (WIFSIGNALED(exit_status_)) {
      const int sig = WTERMSIG(exit_status_);
      return "killed by signal " + std::to_string(sig) + " (" + strsignal(sig) +
             ") before it was ready";
    }
    return "exited with " + std::to_string(WEXITSTATUS(exit_status_)) + " before it was ready";
  }

  // SIGTERM and wait; returns the wait status (or the one recorded if it already died).
  int Stop(std::chrono::seconds grace = std::chrono::seconds(20)) {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + grace;
    int status = 0;
    while (true) {
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) break;
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      pollfd none{-1, 0, 0};
      poll(&none, 0, 20);  // bounded wait for process exit; there is no fd to wait on
    }
    pid_ = -1;
    exit_status_ = status;
    return status;
  }

  // SIGKILL without any chance to clean up (crash tests).
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, &exit_status_, 0);
    pid_ = -1;
  }

 private:
  std::string notify_path_;
  int notify_fd_ = -1;
  pid_t pid_ = -1;
  int exit_status_ = 0;
  bool ready_ = false;
};

}  // namespace imaged::test
