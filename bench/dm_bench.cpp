// imaged_dm_bench dm --extents 1,1000,10000 --reps R --dir D    (needs device-mapper: guest)
// imaged_dm_bench loop --file F --reps R                         (host)
// imaged_dm_bench grow --reps R --dir D                          (needs device-mapper: guest)
// Times our library against the command-line peers on the same objects, interleaved rep by rep
// (alternating which goes first). One JSON line per sample:
//   {"row": "dm_map_1000", "side": "ours", "seconds": 0.0123}
// dm: DeviceMapper::Create (table built from extents, load, resume, node present) vs
// `dmsetup create NAME TABLEFILE`; DeviceMapper::Remove vs `dmsetup remove NAME`. The tables are
// N dm-linear targets of 4 KiB each over a loop device, every other 4 KiB block, so that no two
// targets are contiguous. loop: LoopDevice::Attach (direct I/O) vs `losetup --direct-io=on -f
// --show F`, and Detach vs `losetup -d`.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include <dm/device_mapper.h>
#include <dm/loop_device.h>
#include <dm/table.h>

#include "bench_util.h"

extern char** environ;

using namespace imaged;

namespace {

constexpr uint64_t kTargetSectors = 8;  // 4 KiB

void Sample(const std::string& row, const char* side, double seconds) {
  fmt::print("{{\"row\": \"{}\", \"side\": \"{}\", \"seconds\": {:.6f}}}\n", row, side, seconds);
  std::fflush(stdout);
}

// Runs argv, returns its stdout; dies unless it exits 0.
std::string Run(const std::vector<std::string>& argv) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) bench::Die("pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawnp(&pid, cargv[0], &actions, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipefd[1]);
  if (rc != 0) bench::Die(fmt::format("spawn {}: {}", argv[0], std::strerror(rc)));
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    bench::Die(fmt::format("{} failed (status {})", fmt::join(argv, " "), status));
  }
  return out;
}

std::vector<uint64_t> ParseList(const std::string& text) {
  std::vector<uint64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoull(item));
  return out;
}

// What a mapping starts from: extents (device offset, length) in sectors.
struct Extent {
  uint64_t physical;
  uint64_t length;
};

dm::Table BuildTable(const std::vector<Extent>& extents, const std::string& device) {
  dm::Table table;
  uint64_t start = 0;
  for (const auto& e : extents) {
    table.Emplace<dm::LinearTarget>(start, e.length, device, e.physical);
    start += e.length;
  }
  return table;
}

int RunDm(const bench::Args& args) {
  const auto counts = ParseList(args.Str("extents", "1,1000,10000"));
  const int reps = static_cast<int>(args.Size("reps", 3));
  const std::string dir = args.Str("dir");
  uint64_t max_count = 1;
  for (uint64_t c : counts) max_count = std::max(max_count, c);

  const std::string backing = dir + "/dm-bench-backing";
  {
    UniqueFd fd(open(backing.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd || ftruncate(fd.get(), static_cast<off_t>(max_count * 2 * kTargetSectors * 512)) != 0) {
      bench::Die(fmt::format("create {}: {}", backing, std::strerror(errno)));
    }
  }
  dm::LoopOptions lo;
  lo.allow_buffered = true;  // the guest's root fs may not take O_DIRECT
  auto loop = bench::Check(dm::LoopDevice::Attach(backing, lo), "attach loop");
  unlink(backing.c_str());
  const std::string device = dm::DeviceMapper::DeviceString(loop.dev());

  // What a dmsetup invocation costs before it does any work (exec, dynamic linking, one
  // DM_VERSION ioctl): the peer's fixed overhead, for reading the ratios below.
  Run({"dmsetup", "version"});
  for (int rep = 0; rep < reps; ++rep) {
    double t0 = bench::Now();
    Run({"dmsetup", "version"});
    Sample("dm_exec_ref", "peer", bench::Now() - t0);
  }

  dm::DeviceMapper dm;
  const std::string name = fmt::format("imaged-bench-{}", getpid());
  for (uint64_t count : counts) {
    std::vector<Extent> extents;
    for (uint64_t i = 0; i < count; ++i) extents.push_back({i * 2 * kTargetSectors, kTargetSectors});
    const std::string table_file = fmt::format("{}/dm-bench-table-{}", dir, count);
    {
      std::ofstream out(table_file);
      uint64_t start = 0;
      for (const auto& e : extents) {
        out << start << ' ' << e.length << " linear " << device << ' ' << e.physical << '\n';
        start += e.length;
      }
      if (!out) bench::Die("write " + table_file);
    }
    const std::string map_row = fmt::format("dm_map_{}", count);
    const std::string unmap_row = fmt::format("dm_unmap_{}", count);
    auto ours = [&] {
      double t0 = bench::Now();
      dm::Table table = BuildTable(extents, device);
      bench::Check(dm.Create(name, table), "dm create");
      double t1 = bench::Now();
      bench::Check(dm.Remove(name), "dm remove");
      double t2 = bench::Now();
      Sample(map_row, "ours", t1 - t0);
      Sample(unmap_row, "ours", t2 - t1);
    };
    auto peer = [&] {
      double t0 = bench::Now();
      Run({"dmsetup", "create", name, table_file});
      double t1 = bench::Now();
      Run({"dmsetup", "remove", name});
      double t2 = bench::Now();
      Sample(map_row, "peer", t1 - t0);
      Sample(unmap_row, "peer", t2 - t1);
    };
    // One untimed round of each warms the caches (binary, libdevmapper, kernel slabs).
    for (int rep = -1; rep < reps; ++rep) {
      if (rep < 0) {
        bench::Check(dm.Create(name, BuildTable(extents, device)), "dm create");
        bench::Check(dm.Remove(name), "dm remove");
        Run({"dmsetup", "create", name, table_file});
        Run({"dmsetup", "remove", name});
        continue;
      }
      if (rep % 2 == 0) {
        ours();
        peer();
      } else {
        peer();
        ours();
      }
    }
    unlink(table_file.c_str());
  }
  return 0;
}

// Reads 4 KiB with O_DIRECT at offset 0 of `device` in a loop and keeps each read's start
// and end, so that the longest read overlapping a window is the I/O pause a user saw there.
class PauseProbe {
 public:
  explicit PauseProbe(const std::string& device)
      : fd_(open(device.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC)) {
    if (!fd_) bench::Die(fmt::format("open {}: {}", device, std::strerror(errno)));
    reads_.reserve(1 << 22);
    thread_ = std::thread([this] { Run(); });
  }
  ~PauseProbe() {
    stop_ = true;
    thread_.join();
  }
  // The longest read that overlapped [from, to] (seconds, bench::Now() clock). Call after
  // `to`; waits for the read in flight at `to` to end.
  double LongestReadOverlapping(double from, double to) {
    const size_t seen = completed_.load();
    while (completed_.load() == seen) std::this_thread::yield();
    std::lock_guard lock(mu_);
    double longest = 0;
    for (const auto& [start, end] : reads_) {
      if (end >= from && start <= to) longest = std::max(longest, end - start);
    }
    reads_.clear();
    return longest;
  }

 private:
  void Run() {
    void* buf = nullptr;
    if (posix_memalign(&buf, 4096, 4096) != 0) bench::Die("posix_memalign");
    while (!stop_) {
      const double start = bench::Now();
      if (pread(fd_.get(), buf, 4096, 0) != 4096) bench::Die("probe read failed");
      const double end = bench::Now();
      {
        std::lock_guard lock(mu_);
        if (reads_.size() < reads_.capacity()) reads_.emplace_back(start, end);
      }
      ++completed_;
    }
    std::free(buf);
  }

  UniqueFd fd_;
  std::mutex mu_;
  std::vector<std::pair<double, double>> reads_;
  std::atomic<size_t> completed_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

double P99(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, v.size() * 99 / 100)];
}

// Online grow: a 1,000-target table goes live over a 999-target one while a reader reads the
// device; ours is DeviceMapper::ReplaceTable (what imaged's online grow runs), the peer is
// `dmsetup reload` + `suspend` + `resume`. One line per side: the p99 over the reps of the
// longest read overlapping the swap, {"row": "grow_pause", "side": "ours", "ms": 1.234, ...}.
int RunGrow(const bench::Args& args) {
  const int reps = static_cast<int>(args.Size("reps", 50));
  const std::string dir = args.Str("dir");
  constexpr uint64_t kTargets = 1000;
  const std::string backing = dir + "/dm-bench-grow";
  {
    UniqueFd fd(open(backing.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd || ftruncate(fd.get(), static_cast<off_t>(kTargets * 2 * kTargetSectors * 512)) != 0) {
      bench::Die(fmt::format("create {}: {}", backing, std::strerror(errno)));
    }
  }
  dm::LoopOptions lo;
  lo.allow_buffered = true;
  auto loop = bench::Check(dm::LoopDevice::Attach(backing, lo), "attach loop");
  unlink(backing.c_str());
  const std::string device = dm::DeviceMapper::DeviceString(loop.dev());
  std::vector<Extent> extents;
  for (uint64_t i = 0; i < kTargets; ++i) {
    extents.push_back({i * 2 * kTargetSectors, kTargetSectors});
  }
  const dm::Table grown = BuildTable(extents, device);
  extents.pop_back();
  const dm::Table small = BuildTable(extents, device);
  const std::string table_file = dir + "/dm-bench-grow-table";
  {
    std::ofstream out(table_file);
    for (const auto& t : grown.targets()) {
      out << t->start() << ' ' << t->length() << ' ' << t->type() << ' ' << t->params() << '\n';
    }
    if (!out) bench::Die("write " + table_file);
  }
  dm::DeviceMapper dm;
  const std::string name = fmt::format("imaged-bench-grow-{}", getpid());
  const std::string node = bench::Check(dm.Create(name, small), "dm create");
  std::vector<double> ours, peer;
  {
    PauseProbe probe(node);
    auto measure = [&](std::vector<double>& into, const std::function<void()>& grow) {
      bench::Check(dm.ReplaceTable(name, small), "shrink back");
      const double from = bench::Now();
      grow();
      const double to = bench::Now();
      into.push_back(probe.LongestReadOverlapping(from, to) * 1000);
    };
    auto by_us = [&] { bench::Check(dm.ReplaceTable(name, grown), "replace table"); };
    auto by_dmsetup = [&] {
      Run({"dmsetup", "reload", name, table_file});
      Run({"dmsetup", "suspend", name});
      Run({"dmsetup", "resume", name});
    };
    for (int rep = 0; rep < reps; ++rep) {
      if (rep % 2 == 0) {
        measure(ours, by_us);
        measure(peer, by_dmsetup);
      } else {
        measure(peer, by_dmsetup);
        measure(ours, by_us);
      }
    }
  }
  bench::Check(dm.Remove(name), "dm remove");
  unlink(table_file.c_str());
  for (const auto& [side, pauses] : {std::pair{"ours", &ours}, std::pair{"peer", &peer}}) {
    fmt::print("{{\"row\": \"grow_pause\", \"side\": \"{}\", \"ms\": {:.3f}, \"reps\": {}}}\n",
               side, P99(*pauses), pauses->size());
  }
  return 0;
}

int RunLoop(const bench::Args& args) {
  const std::string file = args.Str("file");
  const int reps = static_cast<int>(args.Size("reps", 3));
  auto ours = [&] {
    dm::LoopOptions lo;
    lo.direct_io = true;
    double t0 = bench::Now();
    auto loop = bench::Check(dm::LoopDevice::Attach(file, lo), "attach loop");
    double t1 = bench::Now();
    if (!loop.direct_io()) bench::Die("loop attached without direct I/O");
    bench::Check(loop.Detach(), "detach loop");
    double t2 = bench::Now();
    Sample("loop_attach", "ours", t1 - t0);
    Sample("loop_detach", "ours", t2 - t1);
  };
  auto peer = [&] {
    double t0 = bench::Now();
    std::string dev = Run({"losetup", "--direct-io=on", "-f", "--show", file});
    double t1 = bench::Now();
    while (!dev.empty() && dev.back() == '\n') dev.pop_back();
    Run({"losetup", "-d", dev});
    double t2 = bench::Now();
    Sample("loop_attach", "peer", t1 - t0);
    Sample("loop_detach", "peer", t2 - t1);
  };
  for (int rep = 0; rep < reps; ++rep) {
    if (rep % 2 == 0) {
      ours();
      peer();
    } else {
      peer();
      ours();
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) bench::Die("usage: imaged_dm_bench dm|loop --key value...");
  bench::Args args(argc, argv, 2);
  const std::string mode = argv[1];
  if (mode == "dm") return RunDm(args);
  if (mode == "loop") return RunLoop(args);
  if (mode == "grow") return RunGrow(args);
  bench::Die("unknown mode " + mode);
}
