// Power cuts, block by block (issue 20; vm label, inside the guest via tests/vm/run). The crash
// trials SIGKILL the daemon, but the page cache survives a SIGKILL, so they cannot show what a
// power cut leaves. Here, as in xfstests' generic log-writes tests, the metadata and the data
// filesystem sit on one dm-log-writes device (two dm-linear partitions of it), which logs every
// write in the order the disk completed it. The real daemon, driven by the real imagectl, runs
// a fresh set through create (its first image), a split create, raw and sparse imports, a
// grow, map, an online grow, unmap, a delete, and a SIGKILL mid-import with a restart; a log
// mark follows each acknowledged operation. Then the log is replayed forward, once, onto a
// fresh device; at each point checked, a throw-away snapshot of the replay is mounted and
// recovered under another dm prefix (so nothing of the logged run, all unmapped by then, can be
// touched), and then:
//   - lp_metadata, as the cut left it, parses (or is absent);
//   - recovery accepts the set; list and validate agree; no stray file, lock or device;
//   - every image is complete (size and content as written; mapping it works) or absent with
//     no piece left, and nothing acknowledged before the cut (per the marks) is lost;
//   - no status file names a device that does not exist.
// Which points: every flush/FUA entry after which the metadata fs has committed a transaction
// (the stretch before it holds a FUA write there: jbd2's commit block). The flush jbd2 sends
// just before each commit block leaves the metadata fs as the previous commit did (ext4 ignores
// a transaction without its commit block, and imaged never rewrites a metadata file in place),
// so those points are sampled with the data fs's: an evenly spaced subset
// (IMAGED_POWER_CUT_OTHER_POINTS, default 4; IMAGED_POWER_CUT_ALL=1 checks every point).
// Recovery is the real daemon's startup at an evenly spaced few of the points, the last among
// them (IMAGED_POWER_CUT_DAEMON_POINTS, default 3), and the same ImageManager::Open + Recover
// in this process at the rest: under UML each process start costs a second or more.
// IMAGED_POWER_CUT_MAX_FAILED (default 3) failing points end the checks.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <tuple>

#include "../vm/vm_env.h"
#include "dir.h"
#include "dm_fixture.h"
#include "log_writes.h"
#include "manager/image_manager.h"
#include "metadata/lp_metadata.h"
#include "metadata/status_file.h"
#include "reliability_util.h"

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kFsBytes = 32 * kMiB;  // each filesystem
constexpr uint64_t kLogBytes = 192 * kMiB;
constexpr uint64_t kCowBytes = 32 * kMiB;
// ext4 as small as it gets without the 1 KiB blocks of mke2fs' "small" type; no discards to
// log, no lazy init thread writing behind the test's back (the device starts as zeros anyway).
const std::vector<std::string> kMkfs = {"-b", "4096", "-E",
                                        "nodiscard,lazy_itable_init=1,lazy_journal_init=1"};
const char* kMountOptions = "noinit_itable";
const char* kSetupMark = "setup";
const char* kStepMark = "step:";

// What an image holds, or that it is absent.
struct Content {
  bool present = false;
  uint64_t size = 0;
  uint64_t hash = 0;
  bool operator==(const Content&) const = default;
};
const Content kAbsent{};
using Model = std::map<std::string, Content>;

std::string Describe(const Content& c) {
  return c.present ? fmt::format("{} bytes, hash {:#x}", c.size, c.hash) : "absent";
}

// One client operation, and what the set holds once it is acknowledged.
struct Step {
  std::string what;
  Model after;
  std::string image;  // the image it changes (mapped at the checks)
};

uint64_t EnvCount(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : fallback;
}

// A set after its startup recovery ran on what a power cut left, as the checks see it.
class RecoveredSet {
 public:
  virtual ~RecoveredSet() = default;
  // Recovery accepted the set; it lists and validates, and nothing else is in its directories.
  virtual std::map<std::string, ImageState> ExpectConsistent(const std::string& ctx) = 0;
  virtual void ExpectMaps(const std::string& name, const std::string& ctx) = 0;
  virtual const std::string& data_dir() const = 0;
};

// The real daemon, started on the set (its startup runs the recovery), and imagectl.
class DaemonRecovered : public RecoveredSet {
 public:
  DaemonRecovered(const std::string& data_dir, const std::string& metadata_dir,
                  const std::filesystem::path& run, std::string dm_prefix)
      : set_(data_dir, metadata_dir, run, {"--dm-prefix", dm_prefix, "--max-piece-size", "1M"}),
        dm_prefix_(std::move(dm_prefix)) {}
  bool Start() { return set_.Start(); }
  std::map<std::string, ImageState> ExpectConsistent(const std::string& ctx) override {
    auto health = set_.Ctl({"health"});
    EXPECT_EQ(health.exit_code, 0)
        << ctx << ": recovery refused the set: " << health.out << health.err;
    return test::ExpectConsistent(set_, ctx, dm_prefix_);
  }
  void ExpectMaps(const std::string& name, const std::string& ctx) override {
    auto map = set_.Ctl({"map", name});
    EXPECT_EQ(map.exit_code, 0) << ctx << ": map " << name << ": " << map.err;
    if (map.exit_code != 0) return;
    auto unmap = set_.Ctl({"unmap", name});
    EXPECT_EQ(unmap.exit_code, 0) << ctx << ": unmap " << name << ": " << unmap.err;
  }
  const std::string& data_dir() const override { return set_.data_dir(); }

 private:
  DaemonSet set_;
  std::string dm_prefix_;
};

// The manager in this process, opened and recovered as the daemon's startup does it
// (imaged/daemon/main.cpp OpenAndRecover): the same checks without starting a daemon and
// imagectl several times per point, which under UML costs up to a second or more each time.
class ManagerRecovered : public RecoveredSet {
 public:
  ManagerRecovered(const std::string& data_dir, const std::string& metadata_dir,
                   const std::string& dm_prefix) {
    options_.data_dir = data_dir;
    options_.metadata_dir = metadata_dir;
    options_.dm_prefix = dm_prefix;
    options_.max_piece_size = kMiB;
    options_.list_refresh_interval = std::chrono::milliseconds(0);
  }
  std::map<std::string, ImageState> ExpectConsistent(const std::string& ctx) override {
    std::map<std::string, ImageState> images;
    auto m = ImageManager::Open(options_);
    EXPECT_TRUE(m) << ctx << ": open: " << m.error().ToString();
    if (!m) return images;
    manager_ = std::move(*m);
    auto report = manager_->Recover();
    EXPECT_TRUE(report) << ctx << ": recovery: " << report.error().ToString();
    if (!report) return images;
    EXPECT_FALSE(report->refused) << ctx << ": recovery refused the set: " << *report->refused;
    if (report->refused) return images;
    auto list = manager_->List();
    EXPECT_TRUE(list) << ctx << ": list: " << list.error().ToString();
    if (!list) return images;
    for (const auto& i : *list) images[i.name] = {i.size_bytes, i.mapped_device.value_or("")};
    auto validate = manager_->Validate();
    EXPECT_TRUE(validate) << ctx << ": validate: " << validate.error().ToString();
    for (const auto& v : validate ? *validate : std::vector<ValidationResult>{}) {
      EXPECT_TRUE(v.ok) << ctx << ": " << v.name << ": " << v.problem;
    }
    ExpectOnlyListedImages(images, options_.data_dir, options_.metadata_dir, ctx,
                           options_.dm_prefix);
    return images;
  }
  void ExpectMaps(const std::string& name, const std::string& ctx) override {
    auto map = manager_->Map(name);
    EXPECT_TRUE(map) << ctx << ": map " << name << ": " << map.error().ToString();
    if (!map) return;
    auto unmap = manager_->Unmap(name);
    EXPECT_TRUE(unmap) << ctx << ": unmap " << name << ": " << unmap.error().ToString();
  }
  const std::string& data_dir() const override { return options_.data_dir; }

 private:
  ManagerOptions options_;
  std::unique_ptr<ImageManager> manager_;
};

// Failures so far in this test (HasFailure() cannot tell whether the last check added one).
int FailureCount() {
  const auto* result = ::testing::UnitTest::GetInstance()->current_test_info()->result();
  int n = 0;
  for (int i = 0; i < result->total_part_count(); ++i) n += result->GetTestPartResult(i).failed();
  return n;
}

class PowerCutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_REQUIRE_DEVICE_MAPPER();
    IMAGED_SKIP_UNLESS_ROOT();
    IMAGED_SKIP_UNLESS_FS("ext4");
    if (!HaveProgram("img2simg")) GTEST_SKIP() << "img2simg is not installed";
    devices_ = "powercut-" + std::to_string(getpid());
    prefix_ = "pc" + std::to_string(getpid());
  }

  // ---- the logged run ----

  // log-writes over the disk, logging to the log; the two filesystems are its halves.
  void BuildLoggedDisk() {
    disk_.emplace(work_.path() / "disk.img", 2 * kFsBytes);
    log_.emplace(work_.path() / "log.img", kLogBytes);
    dm::Table t;
    t.Emplace<dm::RawTarget>(0, disk_->sectors(), "log-writes",
                             disk_->dm_device() + " " + log_->dm_device());
    logged_.emplace(devices_ + "-log", t);
    meta_part_.emplace(devices_ + "-meta", Half(logged_->dm_device(), 0));
    data_part_.emplace(devices_ + "-data", Half(logged_->dm_device(), 1));
  }
  static dm::Table Half(const std::string& device, int which) {
    dm::Table t;
    t.Emplace<dm::LinearTarget>(0, kFsBytes / 512, device, which * kFsBytes / 512);
    return t;
  }
  void Mark(const std::string& label) {
    auto r = logged_->Message("mark " + label);
    ASSERT_TRUE(r) << r.error().ToString();
  }

  // The set's directories exist and are durable before the daemon first starts.
  void MakeFilesystems() {
    MkfsExt4(meta_part_->path(), kMkfs);
    MkfsExt4(data_part_->path(), kMkfs);
    meta_mnt_.emplace(meta_part_->path(), work_.path() / "meta", "ext4", kMountOptions);
    data_mnt_.emplace(data_part_->path(), work_.path() / "data", "ext4", kMountOptions);
    std::filesystem::create_directory(meta_mnt_->Path("metadata"));
    std::filesystem::create_directory(data_mnt_->Path("data"));
    sync();
    Mark(kSetupMark);
  }

  // Sources: raw and sparse (with a hole) images of 2 MiB, a 3 MiB raw for the killed import.
  void MakeSources() {
    const std::string dir = work_.path().string();
    std::string raw = Pattern(2 * kMiB, 5);
    WriteFile(dir + "/raw.img", raw);
    std::string sparse = Pattern(2 * kMiB, 6);
    std::fill(sparse.begin() + kMiB / 2, sparse.begin() + kMiB, '\0');
    WriteFile(dir + "/sparse.raw", sparse);
    auto simg = RunCommand({"img2simg", dir + "/sparse.raw", dir + "/sparse.simg"});
    ASSERT_EQ(simg.exit_code, 0) << simg.err;
    WriteFile(dir + "/big.img", Pattern(3 * kMiB, 7));
    raw_ = {true, 2 * kMiB, BytesHash(raw)};
    sparse_ = {true, 2 * kMiB, BytesHash(sparse)};
    grown_raw_ = {true, 3 * kMiB, BytesHash(raw + std::string(kMiB, '\0'))};
  }

  std::unique_ptr<DaemonSet> OriginalSet() {
    return std::make_unique<DaemonSet>(
        data_mnt_->Path("data"), meta_mnt_->Path("metadata"), work_.path() / "run",
        std::vector<std::string>{"--dm-prefix", prefix_ + "-", "--max-piece-size", "1M"});
  }

  // Runs `args`; once acknowledged, records the step and marks the log after it.
  void Acked(DaemonSet& set, std::vector<std::string> args, const std::string& image,
             Content after) {
    auto r = set.Ctl(args);
    ASSERT_EQ(r.exit_code, 0) << args[0] << " " << image << ": " << r.err;
    Record(args[0] + " " + image, image, after);
  }
  void Record(const std::string& what, const std::string& image, Content after) {
    Model model = steps_.empty() ? Model{} : steps_.back().after;
    model[image] = after;
    steps_.push_back({what, model, image});
    Mark(kStepMark + std::to_string(steps_.size()));
  }

  void RunOperations() {
    auto set = OriginalSet();
    ASSERT_TRUE(set->Start()) << "the daemon does not start on a fresh set";
    const std::string dir = work_.path().string();
    const auto zeros = [](uint64_t n) { return Content{true, n, BytesHash(std::string(n, '\0'))}; };
    Acked(*set, {"create", "first", "1M"}, "first", zeros(kMiB));
    Acked(*set, {"create", "split", "3M"}, "split", zeros(3 * kMiB));
    Acked(*set, {"import", dir + "/raw.img", "raw"}, "raw", raw_);
    Acked(*set, {"import", dir + "/sparse.simg", "sparse"}, "sparse", sparse_);
    Acked(*set, {"resize", "raw", "3M"}, "raw", grown_raw_);
    Acked(*set, {"map", "split"}, "split", zeros(3 * kMiB));
    Acked(*set, {"resize", "split", "+1M"}, "split", zeros(4 * kMiB));  // online
    Acked(*set, {"unmap", "split"}, "split", zeros(4 * kMiB));
    Acked(*set, {"delete", "sparse"}, "sparse", kAbsent);
    ASSERT_FALSE(HasFailure());
    // Killed half way through copying: never acknowledged, so it must never appear.
    set->Stop();
    ASSERT_TRUE(set->Start({"IMAGED_CRASH_AT=import.copy_progress:2"}));
    auto killed = set->Ctl({"import", dir + "/big.img", "killed"});
    EXPECT_NE(killed.exit_code, 0) << "the import was not interrupted";
    const int status = set->daemon()->Stop();
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
    Record("import killed", "killed", kAbsent);
    ASSERT_TRUE(set->Start()) << "the daemon does not restart after the kill";
    Record("restart", "killed", kAbsent);
    set->Stop();
  }

  // Everything the run made durable reaches the log: unmount, then remove the log-writes
  // device (its destructor logs the last entries and the super block).
  void EndLoggedRun() {
    meta_mnt_.reset();
    data_mnt_.reset();
    meta_part_.reset();
    data_part_.reset();
    auto removed = logged_->Remove();
    ASSERT_TRUE(removed) << removed.error().ToString();
    logged_.reset();
    disk_.reset();
    for (const auto& dm : DmNames()) {
      EXPECT_NE(dm.rfind(prefix_ + "-", 0), 0u) << "the logged run left " << dm << " mapped";
    }
  }

  // ---- replay and checks ----

  struct Point {
    uint64_t entry;          // a flush/FUA entry: replayed up to and including it
    size_t acked;            // steps acknowledged before it
    bool by_daemon = false;  // recovered by a real daemon, not by the manager in-process
  };

  // Which flush points to check, and how many there are of each kind.
  struct Plan {
    std::vector<Point> points;
    size_t flush_points = 0;  // after the setup mark: all of them are replayed
    size_t commits = 0;       // the metadata fs committed a transaction there: all checked
    size_t unchanged = 0;     // nothing written since the previous point: the same state
  };

  Plan PlanPoints(const LogWrites& log) {
    Plan plan;
    const uint64_t setup = log.FindMark(kSetupMark).value_or(0);
    std::vector<Point> other_points;
    uint64_t previous = setup;
    size_t acked = 0;
    const auto marks = log.Marks();
    auto next_mark = marks.begin();
    for (uint64_t entry : log.FlushPoints()) {
      if (entry <= setup) continue;
      for (; next_mark != marks.end() && *next_mark < entry; ++next_mark) {
        if (log.entries()[*next_mark].mark.rfind(kStepMark, 0) == 0) ++acked;
      }
      const uint64_t from = std::exchange(previous, entry) + 1;
      ++plan.flush_points;
      if (!log.WritesWithin(from, entry + 1, 0, 2 * kFsBytes)) {
        ++plan.unchanged;
      } else if (log.WritesWithin(from, entry + 1, 0, kFsBytes, kLogFua)) {
        ++plan.commits;
        plan.points.push_back({entry, acked});
      } else {
        other_points.push_back({entry, acked});
      }
    }
    const uint64_t want = EnvCount("IMAGED_POWER_CUT_ALL", 0) == 1
                              ? other_points.size()
                              : EnvCount("IMAGED_POWER_CUT_OTHER_POINTS", 4);
    const size_t n = std::min<size_t>(want, other_points.size());
    for (size_t i = 0; i < n; ++i) {
      plan.points.push_back(other_points[(i + 1) * other_points.size() / n - 1]);  // the last is in
    }
    std::sort(plan.points.begin(), plan.points.end(),
              [](const Point& a, const Point& b) { return a.entry < b.entry; });
    // The real daemon at an evenly spaced few, the last among them; the manager at the rest.
    const size_t daemons =
        std::min<size_t>(EnvCount("IMAGED_POWER_CUT_DAEMON_POINTS", 3), plan.points.size());
    for (size_t i = 0; i < daemons; ++i) {
      plan.points[(i + 1) * plan.points.size() / daemons - 1].by_daemon = true;
    }
    return plan;
  }

  // A snapshot of the replay so far, split like the logged disk, both filesystems mounted (their
  // journal replay and the recovery write into the snapshot, never into the replay); torn down
  // when the check is over.
  struct Snapshot {
    Snapshot(const std::string& name, const SparseLoop& replay, const SparseLoop& cow,
             const std::filesystem::path& dir)
        : snap(name + "-snap", SnapshotTable(replay, cow)),
          meta_part(name + "-rmeta", Half(snap.dm_device(), 0)),
          data_part(name + "-rdata", Half(snap.dm_device(), 1)),
          meta(meta_part.path(), dir / "meta", "ext4", kMountOptions),
          data(data_part.path(), dir / "data", "ext4", kMountOptions) {}
    static dm::Table SnapshotTable(const SparseLoop& replay, const SparseLoop& cow) {
      // Non-persistent ("N"): the COW device starts empty at every check.
      dm::Table t;
      t.Emplace<dm::RawTarget>(0, replay.sectors(), "snapshot",
                               replay.dm_device() + " " + cow.dm_device() + " N 8");
      return t;
    }
    ScopedDm snap, meta_part, data_part;
    ScopedMount meta, data;
  };

  void CheckPoint(const Point& p, const SparseLoop& replay, const SparseLoop& cow) {
    const std::string ctx = fmt::format(
        "power cut at entry {} (after {} acknowledged step{}{}; recovered by {})", p.entry, p.acked,
        p.acked == 1 ? "" : "s", p.acked > 0 ? ": " + steps_[p.acked - 1].what : std::string(),
        p.by_daemon ? "the daemon" : "the manager in-process");
    SCOPED_TRACE(ctx);
    const std::filesystem::path dir = work_.path() / ("check" + std::to_string(p.entry));
    Snapshot snap(devices_, replay, cow, dir);
    const std::string data_dir = snap.data.Path("data");
    const std::string metadata_dir = snap.meta.Path("metadata");
    ExpectLpMetadataParses(metadata_dir, ctx);
    // Its own dm prefix: it can never take over or tear down a device of the logged run.
    const std::string dm_prefix = prefix_ + "r-";
    std::unique_ptr<RecoveredSet> set;
    if (p.by_daemon) {
      auto daemon =
          std::make_unique<DaemonRecovered>(data_dir, metadata_dir, dir / "run", dm_prefix);
      ASSERT_TRUE(daemon->Start()) << ctx << ": the daemon does not start";
      set = std::move(daemon);
    } else {
      set = std::make_unique<ManagerRecovered>(data_dir, metadata_dir, dm_prefix);
    }
    auto images = set->ExpectConsistent(ctx);
    ExpectStatusFilesNameLiveDevices(metadata_dir, ctx);
    ExpectImagesAsAcknowledged(*set, images, p, ctx);
  }

  // lp_metadata is only ever replaced whole, so the cut leaves one that parses, or none yet.
  void ExpectLpMetadataParses(const std::string& metadata_dir, const std::string& ctx) {
    if (!std::filesystem::exists(metadata_dir + "/lp_metadata")) return;
    auto md = metadata::ReadImageFile(OpenDir(metadata_dir), "lp_metadata");
    EXPECT_TRUE(md) << ctx << ": lp_metadata as the cut left it: " << md.error().ToString();
  }

  void ExpectStatusFilesNameLiveDevices(const std::string& metadata_dir, const std::string& ctx) {
    for (const auto& f : ListDirNames(metadata_dir)) {
      if (!f.ends_with(".status")) continue;
      auto entries = metadata::ParseStatus(ReadFileOrEmpty(metadata_dir + "/" + f));
      EXPECT_TRUE(entries) << ctx << ": " << f << ": " << entries.error().ToString();
      if (!entries) continue;
      for (const auto& e : *entries) {
        const std::string dev = e.kind == metadata::StatusEntry::Kind::Dm
                                    ? dm::DeviceMapper::DevicePath(e.value)
                                    : e.value;
        struct stat st {};
        EXPECT_TRUE(stat(dev.c_str(), &st) == 0 && S_ISBLK(st.st_mode))
            << ctx << ": " << f << " names " << dev << ", which does not exist";
      }
    }
  }

  // Each image as the acknowledged steps left it, or as the step in flight leaves it; an image
  // such a step changed maps.
  void ExpectImagesAsAcknowledged(RecoveredSet& set,
                                  const std::map<std::string, ImageState>& images, const Point& p,
                                  const std::string& ctx) {
    const Model none;
    const Model& acked = p.acked > 0 ? steps_[p.acked - 1].after : none;
    const Model& in_flight = p.acked < steps_.size() ? steps_[p.acked].after : acked;
    for (const auto& [name, st] : images) {
      EXPECT_TRUE(in_flight.count(name) || acked.count(name)) << ctx << ": unknown image " << name;
    }
    for (const auto& [name, expect] : in_flight) {
      const bool changed_near = (p.acked > 0 && steps_[p.acked - 1].image == name) ||
                                (p.acked < steps_.size() && steps_[p.acked].image == name);
      // Only an image's own steps write its blocks, so its bytes are hashed at the points
      // around them and at the daemon's points (the last among them); elsewhere it must be
      // there at its size, with the extents lp_metadata records (validate).
      const bool hashed = changed_near || p.by_daemon;
      Content now;
      if (auto it = images.find(name); it != images.end()) {
        const uint64_t size = it->second.size;
        now = {true, size, hashed ? ImageHash(set.data_dir(), name, size).value_or(0) : 0};
      }
      const auto is = [&](const Content& want) {
        return hashed ? now == want : now.present == want.present && now.size == want.size;
      };
      const Content before = acked.count(name) ? acked.at(name) : kAbsent;
      EXPECT_TRUE(is(before) || is(expect))
          << ctx << ": \"" << name << "\" is " << Describe(now) << "; acknowledged "
          << Describe(before) << ", in flight " << Describe(expect);
      // Mapping re-reads the extents (validate compared them already): once per content an
      // image is seen with, and through the daemon at its points.
      const bool new_content = hashed && mapped_.insert({name, now.size, now.hash}).second;
      if (now.present && (new_content || (p.by_daemon && changed_near))) {
        set.ExpectMaps(name, ctx);
      }
    }
  }

  TempDir work_;
  std::string devices_;  // the test's own dm devices: <devices_>-log, ...
  std::string prefix_;   // the daemons': <prefix_>-<image> in the logged run, <prefix_>r- after
  Content raw_, sparse_, grown_raw_;
  std::vector<Step> steps_;
  std::set<std::tuple<std::string, uint64_t, uint64_t>> mapped_;  // (image, size, hash) mapped
  std::optional<SparseLoop> disk_, log_;
  std::optional<ScopedDm> logged_, meta_part_, data_part_;
  std::optional<ScopedMount> meta_mnt_, data_mnt_;
};

TEST_F(PowerCutTest, EveryFlushPointRecoversWithNothingAcknowledgedLost) {
  const auto started = std::chrono::steady_clock::now();
  BuildLoggedDisk();
  ASSERT_NO_FATAL_FAILURE(MakeFilesystems());
  ASSERT_NO_FATAL_FAILURE(MakeSources());
  ASSERT_NO_FATAL_FAILURE(RunOperations());
  ASSERT_NO_FATAL_FAILURE(EndLoggedRun());
  const auto logged = std::chrono::steady_clock::now();

  auto log = LogWrites::Open(log_->file());
  ASSERT_TRUE(log) << log.error().ToString();
  ASSERT_EQ(log->Marks().size(), steps_.size() + 2) << "a mark is missing (setup, steps, end)";
  const Plan plan = PlanPoints(*log);
  ASSERT_FALSE(plan.points.empty());

  SparseLoop replay(work_.path() / "replay.img", 2 * kFsBytes);
  SparseLoop cow(work_.path() / "cow.img", kCowBytes);
  UniqueFd target(open(replay.file().c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(target.valid());
  uint64_t next = 0;
  size_t checked = 0, failed = 0;
  const uint64_t max_failed = EnvCount("IMAGED_POWER_CUT_MAX_FAILED", 3);
  for (const Point& p : plan.points) {
    auto r = log->Replay(next, p.entry + 1, target.get());
    ASSERT_TRUE(r) << r.error().ToString();
    next = p.entry + 1;
    const int failures_before = FailureCount();
    CheckPoint(p, replay, cow);
    ++checked;
    if (FailureCount() != failures_before && ++failed == max_failed) {
      break;  // a few broken states are enough to debug
    }
  }
  const auto done = std::chrono::steady_clock::now();
  const auto secs = [](auto d) { return std::chrono::duration<double>(d).count(); };
  RecordProperty("log_entries", static_cast<int>(log->entries().size()));
  RecordProperty("flush_points", static_cast<int>(plan.flush_points));
  RecordProperty("points_checked", static_cast<int>(checked));
  const auto by_daemon = std::count_if(plan.points.begin(), plan.points.begin() + checked,
                                       [](const Point& p) { return p.by_daemon; });
  std::printf(
      "[power-cut] %zu log entries, %zu flush points replayed (%zu metadata-fs commits, "
      "%zu wrote nothing), %zu checked (%ld by the daemon; logged run %.1f s, checks %.1f s)\n",
      log->entries().size(), plan.flush_points, plan.commits, plan.unchanged, checked,
      static_cast<long>(by_daemon), secs(logged - started), secs(done - logged));
}

}  // namespace
}  // namespace imaged::test
