// Security (host): names with path tricks are refused by the library and the API; the socket and
// the files imaged writes are not open to others; a qcow backing file is never opened; hostile
// qcow2 tables and compressed clusters do not blow up the daemon's memory.
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>

#include "imageset/names.h"
#include "manager/image_manager.h"
#include "reliability_util.h"

namespace imaged::test {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr const char* kPython = "/usr/bin/python3";

std::vector<std::string> BadNames() {
  return {"../x",
          "a/b",
          std::string("a\0b", 3),
          std::string(300, 'n'),
          ".hidden",
          "..",
          ".",
          "",
          "a b",
          "x\n",
          "/abs",
          std::string(36, 'n')};
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_SKIP_UNLESS_FS("ext4");
    fs_.emplace("ext4", 192 * kMiB);
    set_ = std::make_unique<DaemonSet>(fs_->Path("data"), (dir_.path() / "metadata").string(),
                                       dir_.path() / "run",
                                       std::vector<std::string>{"--strategy", "loop"});
    ASSERT_TRUE(set_->Start());
  }
  void TearDown() override {
    if (set_ && set_->daemon() && set_->daemon()->ready()) {
      if (auto list = set_->CtlJson({"list"})) {
        for (const auto& i : *list) {
          if (!i["mapped_device"].get<std::string>().empty()) {
            set_->Ctl({"unmap", i["name"].get<std::string>()});
          }
        }
      }
    }
    set_.reset();
  }
  static uint64_t VmHwmKiB(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6));
    }
    return 0;
  }

  TempDir dir_;
  std::optional<LoopFilesystem> fs_;
  std::unique_ptr<DaemonSet> set_;
};

TEST_F(SecurityTest, ManagerRefusesNamesWithPathTricks) {
  ManagerOptions o;
  o.data_dir = fs_->Path("direct");
  o.metadata_dir = (dir_.path() / "direct-metadata").string();
  o.strategy = MapStrategy::kLoop;
  auto m = ImageManager::Open(o);
  ASSERT_TRUE(m) << m.error().ToString();
  for (const auto& name : BadNames()) {
    EXPECT_FALSE(imageset::ValidateImageName(name)) << name;
    auto created = (*m)->Create(name, kMiB, {});
    ASSERT_FALSE(created) << name;
    EXPECT_EQ(created.error().code, EINVAL) << name;
    for (auto op : {0, 1, 2, 3}) {
      Result<void> r = op == 0   ? (*m)->Delete(name)
                       : op == 1 ? (*m)->Unmap(name)
                       : op == 2 ? (*m)->Resize(name, 2 * kMiB)
                                 : (*m)->ZeroFill(name, 0);
      ASSERT_FALSE(r) << name << " op " << op;
      EXPECT_EQ(r.error().code, EINVAL) << name << " op " << op;
    }
    auto mapped = (*m)->Map(name);
    ASSERT_FALSE(mapped);
    EXPECT_EQ(mapped.error().code, EINVAL) << name;
  }
  EXPECT_TRUE(ListDirNames(o.data_dir).empty());
  // Nothing outside the data dir either (`../x` would land in the mount point).
  for (const auto& f : ListDirNames(fs_->mount_point())) {
    EXPECT_TRUE(f == "direct" || f == "data" || f == "lost+found") << "created: " << f;
  }
}

TEST_F(SecurityTest, ApiRefusesNamesWithPathTricksNulAndNonUtf8WithAReason) {
  if (RunCommand({kPython, "-c", "import grpc, grpc_tools"}).exit_code != 0) {
    GTEST_SKIP() << "python3-grpcio / python3-grpc-tools not installed";
  }
  const std::string gen = (dir_.path() / "py").string();
  std::filesystem::create_directories(gen);
  auto protoc =
      RunCommand({kPython, "-m", "grpc_tools.protoc", "-I", PROTO_DIR, "--python_out=" + gen,
                  "--grpc_python_out=" + gen, std::string(PROTO_DIR) + "/imaged.proto"});
  ASSERT_EQ(protoc.exit_code, 0) << protoc.err;
  // Each bad name through every state-changing RPC that takes a name: INVALID_ARGUMENT.
  const std::string script = R"(
import sys, grpc
sys.path.insert(0, sys.argv[1])
import imaged_pb2 as pb, imaged_pb2_grpc
stub = imaged_pb2_grpc.ImagedStub(grpc.insecure_channel('unix:' + sys.argv[2]))
names = [b'../x', b'a/b', b'a\x00b', b'n' * 300, b'.hidden', b'..', b'', b'x\n', b'/abs',
         b'n' * 36, b'\xff\xfe', 'caf\u00e9'.encode()]
calls = {
  'create': lambda n: list(stub.CreateImage(pb.CreateImageRequest(name=n, size_bytes=1 << 20))),
  'delete': lambda n: stub.DeleteImage(pb.ImageRequest(name=n)),
  'map': lambda n: stub.MapImage(pb.MapImageRequest(name=n)),
  'unmap': lambda n: stub.UnmapImage(pb.ImageRequest(name=n)),
  'disable': lambda n: stub.DisableImage(pb.ImageRequest(name=n)),
  'info': lambda n: stub.GetImage(pb.ImageRequest(name=n)),
}
for n in names:
  for op, call in calls.items():
    try:
      call(n)
      print('ACCEPTED', op, repr(n))
    except grpc.RpcError as e:
      if e.code() != grpc.StatusCode.INVALID_ARGUMENT or not e.details():
        print('WRONG', op, repr(n), e.code().name, repr(e.details()))
print('images', len(stub.ListImages(pb.ListImagesRequest()).images))
)";
  auto r = RunCommand({kPython, "-c", script, gen, set_->socket()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.find("ACCEPTED"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("WRONG"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("images 0"), std::string::npos) << r.out;
  for (const auto& f : ListDirNames(fs_->mount_point())) {
    EXPECT_TRUE(f == "data" || f == "lost+found") << "created: " << f;
  }
}

TEST_F(SecurityTest, SocketAndFilesAreNotOpenToOthers) {
  ASSERT_EQ(set_->Ctl({"create", "perm", "2M"}).exit_code, 0);
  auto mapped = set_->Ctl({"map", "perm"});
  ASSERT_EQ(mapped.exit_code, 0) << mapped.err;
  auto mode = [](const std::string& p) {
    struct stat st {};
    EXPECT_EQ(lstat(p.c_str(), &st), 0) << p;
    return st.st_mode & 07777;
  };
  EXPECT_EQ(mode(set_->socket()), 0660u);
  const std::string md = set_->metadata_dir();
  EXPECT_EQ(mode(md + "/lp_metadata") & 0022, 0u) << "lp_metadata writable by others";
  EXPECT_EQ(mode(md + "/perm.status") & 0022, 0u) << "status file writable by others";
  EXPECT_EQ(mode(md) & 0022, 0u) << "metadata dir writable by others";
  EXPECT_EQ(mode(set_->data_dir()) & 0022, 0u) << "data dir writable by others";
  EXPECT_EQ(mode(set_->data_dir() + "/perm.img.0000"), 0600u) << "pieces are 0600";
  EXPECT_EQ(mode(set_->data_dir() + "/perm.img") & 0027, 0u) << "list file";
  for (const auto& f : ListDirNames(md)) {
    EXPECT_EQ(mode(md + "/" + f) & 0002, 0u) << f << " is world-writable";
  }
  const std::string device = mapped.out.substr(0, mapped.out.find('\n'));
  EXPECT_EQ(mode(device) & 0006, 0u) << device << " open to others";
  EXPECT_EQ(set_->Ctl({"unmap", "perm"}).exit_code, 0);
}

// The secret lives in its own directory, watched for any open or read.
class BackingFileTest : public SecurityTest {
 protected:
  void SetUp() override {
    SecurityTest::SetUp();
    if (HasFatalFailure() || IsSkipped()) return;
    if (!HaveProgram("qemu-img")) GTEST_SKIP() << "qemu-img is not installed";
    secret_dir_ = (dir_.path() / "secret").string();
    std::filesystem::create_directories(secret_dir_);
    secret_ = secret_dir_ + "/secret.raw";
    WriteFile(secret_, Pattern(kMiB, 42));
  }
  // Imports `image` and returns the inotify events seen on the secret meanwhile.
  std::vector<std::string> ImportWatched(const std::string& image, CommandResult* result) {
    int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    EXPECT_GE(in, 0);
    const uint32_t mask = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE;
    EXPECT_GE(inotify_add_watch(in, secret_dir_.c_str(), mask), 0);
    EXPECT_GE(inotify_add_watch(in, secret_.c_str(), mask), 0);
    *result = set_->Ctl({"import", image, "hostile"});
    std::vector<std::string> events;
    alignas(inotify_event) char buf[4096];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0) {
      for (char* p = buf; p < buf + n;) {
        auto* e = reinterpret_cast<inotify_event*>(p);
        events.push_back(std::string(e->len ? e->name : "secret") + " mask " +
                         std::to_string(e->mask));
        p += sizeof(inotify_event) + e->len;
      }
    }
    close(in);
    return events;
  }
  std::string secret_dir_, secret_;
};

TEST_F(BackingFileTest, Qcow2BackingFileIsRefusedAndNeverOpened) {
  const std::string image = (dir_.path() / "overlay.qcow2").string();
  auto made = RunCommand(
      {"qemu-img", "create", "-q", "-f", "qcow2", "-b", secret_, "-F", "raw", image, "1M"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  CommandResult r;
  auto events = ImportWatched(image, &r);
  EXPECT_NE(r.exit_code, 0) << "an image with a backing file was imported";
  EXPECT_NE(r.err.find("backing"), std::string::npos) << r.err;
  EXPECT_TRUE(events.empty()) << "the secret was touched: " << events.front();
  EXPECT_EQ(set_->Ctl({"info", "hostile"}).exit_code, 5);
}

TEST_F(BackingFileTest, Qcow1BackingFileIsRefusedAndNeverOpened) {
  const std::string image = (dir_.path() / "overlay.qcow").string();
  auto made =
      RunCommand({"qemu-img", "create", "-q", "-f", "qcow", "-b", secret_, "-F", "raw", image});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  CommandResult r;
  auto events = ImportWatched(image, &r);
  EXPECT_NE(r.exit_code, 0) << "an image with a backing file was imported";
  EXPECT_NE(r.err.find("backing"), std::string::npos) << r.err;
  EXPECT_TRUE(events.empty()) << "the secret was touched: " << events.front();
  EXPECT_EQ(set_->Ctl({"info", "hostile"}).exit_code, 5);
}

// Peak RSS of the daemon across a hostile import stays bounded whatever the file claims.
constexpr uint64_t kMaxGrowthKiB = 64 * 1024;

TEST_F(SecurityTest, HugeL1TableDoesNotBlowUpTheDaemonsMemory) {
  if (!HaveProgram("qemu-img")) GTEST_SKIP() << "qemu-img is not installed";
  // 1 PiB virtual with 512-byte clusters: an L1 table of 2^32 entries (32 GiB) if taken at its
  // word. qemu-img refuses to write that, so write a small image and patch its header.
  const std::string image = (dir_.path() / "huge-l1.qcow2").string();
  ASSERT_EQ(
      RunCommand({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", image, "1M"})
          .exit_code,
      0);
  {
    std::fstream f(image, std::ios::in | std::ios::out | std::ios::binary);
    auto put64 = [&](std::streamoff at, uint64_t v) {
      f.seekp(at);
      for (int i = 7; i >= 0; --i) f.put(static_cast<char>(v >> (8 * i)));
    };
    auto put32 = [&](std::streamoff at, uint32_t v) {
      f.seekp(at);
      for (int i = 3; i >= 0; --i) f.put(static_cast<char>(v >> (8 * i)));
    };
    put64(24, 1ull << 50);   // size
    put32(36, 0x7fffffffu);  // l1_size
  }
  const uint64_t before = VmHwmKiB(set_->daemon()->pid());
  auto r = set_->Ctl({"import", image, "huge"});
  EXPECT_NE(r.exit_code, 0);
  const uint64_t after = VmHwmKiB(set_->daemon()->pid());
  ASSERT_GT(after, 0u) << "daemon died";
  EXPECT_LT(after - before, kMaxGrowthKiB) << "VmHWM " << before << " -> " << after << " KiB";
  std::printf("[memory] huge L1: VmHWM %llu -> %llu KiB\n", (unsigned long long)before,
              (unsigned long long)after);
}

TEST_F(SecurityTest, CompressedClustersDoNotBlowUpTheDaemonsMemory) {
  if (!HaveProgram("qemu-img")) GTEST_SKIP() << "qemu-img is not installed";
  // 96 MiB of one repeated byte in 2 MiB compressed clusters: a small file that inflates ~10x,
  // with each cluster inflating to 2 MiB at once.
  const std::string raw = (dir_.path() / "bomb.raw").string();
  WriteFile(raw, std::string(96 * kMiB, 'A'));
  const std::string image = (dir_.path() / "bomb.qcow2").string();
  auto made = RunCommand({"qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o",
                          "cluster_size=2M", raw, image});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  unlink(raw.c_str());
  struct stat st {};
  ASSERT_EQ(stat(image.c_str(), &st), 0);
  EXPECT_LT(st.st_size, 16 * static_cast<off_t>(kMiB));
  const uint64_t before = VmHwmKiB(set_->daemon()->pid());
  auto r = set_->Ctl({"import", image, "bomb"});
  EXPECT_EQ(r.exit_code, 0) << r.err;  // a valid image: imported, in bounded memory
  const uint64_t after = VmHwmKiB(set_->daemon()->pid());
  ASSERT_GT(after, 0u) << "daemon died";
  EXPECT_LT(after - before, kMaxGrowthKiB) << "VmHWM " << before << " -> " << after << " KiB";
  std::printf("[memory] compressed 96 MiB: VmHWM %llu -> %llu KiB\n", (unsigned long long)before,
              (unsigned long long)after);
  EXPECT_EQ(set_->Ctl({"delete", "bomb"}).exit_code, 0);
}

}  // namespace
}  // namespace imaged::test
