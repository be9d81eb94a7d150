// Concurrency (host): 16 clients (real imagectl processes against the real daemon) create, map,
// unmap and delete, half on names of their own, half on two shared names, for
// IMAGED_STRESS_SECONDS (default 15). Every RPC must be answered within a bound (no deadlock),
// the clients on their own names must never fail, and at the end (everything unmapped) there is
// no leaked loop, file or status file and validate is all ok.
#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include "reliability_util.h"

namespace imaged::test {
namespace {

using Clock = std::chrono::steady_clock;

int StressSeconds() {
  const char* v = std::getenv("IMAGED_STRESS_SECONDS");
  return v ? std::max(1, std::atoi(v)) : 15;
}

constexpr int kClients = 16;
constexpr int kOwnNameClients = 8;
// Far above any single operation on 1-4 MiB images; a call this slow means a stuck lock.
constexpr auto kAnswerBound = std::chrono::seconds(60);

TEST(StressTest, SixteenClientsOnOwnAndSharedNames) {
  IMAGED_SKIP_UNLESS_FS("ext4");
  TempDir dir;
  LoopFilesystem fs("ext4", 256ull << 20);
  DaemonSet set(fs.Path("data"), (dir.path() / "metadata").string(), dir.path() / "run",
                {"--strategy", "loop"});
  ASSERT_TRUE(set.Start());

  const auto deadline = Clock::now() + std::chrono::seconds(StressSeconds());
  std::atomic<uint64_t> ops{0}, failures_shared{0};
  std::atomic<int64_t> slowest_ms{0};
  std::mutex mu;
  std::vector<std::string> problems;
  auto problem = [&](std::string p) {
    std::lock_guard<std::mutex> lock(mu);
    if (problems.size() < 20) problems.push_back(std::move(p));
  };
  auto call = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {"--timeout", "120"};
    argv.insert(argv.end(), args.begin(), args.end());
    const auto start = Clock::now();
    CommandResult r = set.Ctl(argv);
    const auto took = Clock::now() - start;
    const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
    int64_t prev = slowest_ms.load();
    while (ms > prev && !slowest_ms.compare_exchange_weak(prev, ms)) {
    }
    ++ops;
    if (took > kAnswerBound) problem(args[0] + " took " + std::to_string(ms) + " ms");
    // Unreachable, denied, cancelled, crashed: never acceptable.
    if (r.exit_code != 0 && r.exit_code != 1 && r.exit_code != 5) {
      problem(args[0] + " " + args[1] + ": exit " + std::to_string(r.exit_code) + ": " + r.err);
    }
    return r;
  };

  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937 rng(static_cast<unsigned>(c) * 7919u + 1);
      if (c < kOwnNameClients) {
        // Own name: the full cycle, every step must succeed.
        const std::string name = "own" + std::to_string(c);
        const std::string size = std::to_string(1 + c % 4) + "M";
        while (Clock::now() < deadline) {
          for (std::vector<std::string> step : {std::vector<std::string>{"create", name, size},
                                                {"map", name},
                                                {"info", name},
                                                {"unmap", name},
                                                {"delete", name}}) {
            auto r = call(step);
            if (r.exit_code != 0) problem("own " + step[0] + " " + name + ": " + r.err);
          }
        }
        return;
      }
      // Shared names: any operation, in any order; failures must be clean refusals.
      const std::vector<std::string> names = {"shared0", "shared1"};
      while (Clock::now() < deadline) {
        const std::string& name = names[rng() % names.size()];
        std::vector<std::string> args;
        switch (rng() % 6) {
          case 0:
            args = {"create", name, "2M"};
            break;
          case 1:
            args = {"map", name};
            break;
          case 2:
            args = {"unmap", name};
            break;
          case 3:
            args = {"delete", name};
            break;
          case 4:
            args = {"zero-fill", name, "64K"};
            break;
          default:
            args = {"info", name};
            break;
        }
        auto r = call(args);
        if (r.exit_code != 0) ++failures_shared;
      }
    });
  }
  for (auto& t : clients) t.join();

  for (const auto& p : problems) ADD_FAILURE() << p;
  // Unmap whatever the shared clients left mapped, then everything must be explainable.
  if (auto list = set.CtlJson({"list"})) {
    for (const auto& i : *list) {
      if (!i["mapped_device"].get<std::string>().empty()) {
        EXPECT_EQ(set.Ctl({"unmap", i["name"].get<std::string>()}).exit_code, 0);
      }
    }
  }
  auto images = ExpectConsistent(set, "after the stress run");
  for (const auto& [name, st] : images) {
    EXPECT_TRUE(st.mapped_device.empty()) << name;
    EXPECT_EQ(set.Ctl({"delete", name}).exit_code, 0) << name;
  }
  EXPECT_TRUE(LoopsUnder(set.data_dir()).empty());
  set.Stop();
  for (const auto& f : ListDirNames(set.data_dir())) ADD_FAILURE() << "left behind: " << f;
  for (const auto& f : ListDirNames(set.metadata_dir())) {
    EXPECT_FALSE(f.ends_with(".status") || f.ends_with(".intent") ||
                 f.rfind(".imaged-tmp.", 0) == 0)
        << "left behind: " << f;
  }
  std::printf(
      "[stress] %d clients, %d s: %llu RPCs (%llu refused on shared names), slowest %lld ms\n",
      kClients, StressSeconds(), (unsigned long long)ops.load(),
      (unsigned long long)failures_shared.load(), (long long)slowest_ms.load());
  RecordProperty("rpcs", static_cast<int>(ops.load()));
}

}  // namespace
}  // namespace imaged::test
