// dm-verity hash trees: byte for byte what `veritysetup format` writes (its superblock, levels
// and root hash), accepted by `veritysetup verify`, and a verifier that names the block that
// changed. veritysetup is the peer: it works on plain files, without root or device-mapper.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "bytes.h"
#include "process.h"
#include "verity/hash_tree.h"

namespace imaged::verity {
namespace {

namespace fs = std::filesystem;
using test::Pattern;
using test::RunCommand;

constexpr char kUuidText[] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const Uuid kUuid = {0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78,
                    0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0};

// Data and hash area held in memory, read and written the way the library asks (several
// threads, disjoint ranges: the vectors are sized once, so no element moves).
struct Disk {
  std::vector<uint8_t> data;
  std::vector<uint8_t> hash;

  ReadAt DataReader() {
    return [this](uint64_t offset, std::span<uint8_t> out) -> Result<void> {
      if (offset + out.size() > data.size()) return MakeError(EIO, "read past the data");
      std::memcpy(out.data(), data.data() + offset, out.size());
      return Ok();
    };
  }
  ReadAt HashReader() {
    return [this](uint64_t offset, std::span<uint8_t> out) -> Result<void> {
      if (offset + out.size() > hash.size()) return MakeError(EIO, "read past the hash area");
      std::memcpy(out.data(), hash.data() + offset, out.size());
      return Ok();
    };
  }
  WriteAt HashWriter() {
    return [this](uint64_t offset, std::span<const uint8_t> in) -> Result<void> {
      if (offset + in.size() > hash.size()) return MakeError(ENOSPC, "write past the hash area");
      std::memcpy(hash.data() + offset, in.data(), in.size());
      return Ok();
    };
  }
};

WalkOptions OnThreads(unsigned threads) {
  WalkOptions options;
  options.threads = threads;
  return options;
}

Params MakeParams(uint64_t blocks, uint32_t block_size, std::vector<uint8_t> salt = {1, 2, 3}) {
  return Params{
      .data_blocks = blocks, .block_size = block_size, .salt = std::move(salt), .uuid = kUuid};
}

Disk MakeDisk(const Params& p, uint32_t seed = 7) {
  Disk disk;
  disk.data = Pattern<std::vector<uint8_t>>(p.data_blocks * p.block_size, seed);
  disk.hash.assign(HashAreaBytes(p.data_blocks * p.block_size, p.block_size).value(), 0xee);
  return disk;
}

Digest Build(const Params& p, Disk& disk, unsigned threads = 2) {
  auto root = BuildHashArea(p, disk.DataReader(), disk.HashWriter(), OnThreads(threads));
  EXPECT_TRUE(root) << root.error().ToString();
  return root ? *root : Digest{};
}

VerifyReport Verify(const Params& p, const Digest& root, Disk& disk) {
  auto report = VerifyHashArea(p, root, disk.DataReader(), disk.HashReader(), OnThreads(2));
  EXPECT_TRUE(report) << report.error().ToString();
  return report ? *report : VerifyReport{};
}

class Scratch {
 public:
  Scratch() {
    char templ[] = "/tmp/verity_test.XXXXXX";
    dir_ = mkdtemp(templ);
  }
  ~Scratch() { fs::remove_all(dir_); }
  fs::path operator/(const std::string& name) const { return dir_ / name; }

 private:
  fs::path dir_;
};

void WriteFile(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string RootFromVeritysetup(const std::string& out) {
  const auto at = out.find("Root hash:");
  if (at == std::string::npos) return "";
  const auto start = out.find_first_not_of(" \t", at + 10);
  return out.substr(start, out.find('\n', start) - start);
}

// ---- the peer ----

struct Shape {
  uint64_t blocks;
  uint32_t block_size;
};

class PeerTest : public ::testing::TestWithParam<Shape> {};

TEST_P(PeerTest, HashAreaIsVeritysetupsByteForByteAndItVerifiesOurs) {
  const Shape shape = GetParam();
  const Params p = MakeParams(shape.blocks, shape.block_size, {0xde, 0xad, 0xbe, 0xef, 0x42});
  Disk disk = MakeDisk(p);
  const Digest root = Build(p, disk);

  Scratch dir;
  WriteFile(dir / "data", disk.data);
  WriteFile(dir / "ours", disk.hash);
  const std::string bs = std::to_string(shape.block_size);
  const auto format = RunCommand({"veritysetup", "format", dir / "data", dir / "theirs",
                                  "--data-block-size=" + bs, "--hash-block-size=" + bs,
                                  "--salt=deadbeef42", std::string("--uuid=") + kUuidText});
  ASSERT_EQ(format.exit_code, 0) << format.err;
  EXPECT_EQ(RootFromVeritysetup(format.out), ToHex(root));
  EXPECT_TRUE(ReadFile(dir / "theirs") == disk.hash) << "hash areas differ";

  const auto verify =
      RunCommand({"veritysetup", "verify", dir / "data", dir / "ours", ToHex(root)});
  EXPECT_EQ(verify.exit_code, 0) << verify.err;
  const auto dump = RunCommand({"veritysetup", "dump", dir / "ours"});
  EXPECT_NE(dump.out.find(std::string("UUID:") + "            \t" + kUuidText), std::string::npos)
      << dump.out;
}

// One block (no levels), one partial and one full level-0 block, the step to a second level, a
// full second level, and trees four levels deep with 512-byte blocks (16 hashes per block).
INSTANTIATE_TEST_SUITE_P(Shapes, PeerTest,
                         ::testing::Values(Shape{1, 4096}, Shape{2, 4096}, Shape{128, 4096},
                                           Shape{129, 4096}, Shape{128 * 128, 4096},
                                           Shape{128 * 128 + 1, 4096}, Shape{1, 512},
                                           Shape{17, 512}, Shape{16 * 16 * 16 + 3, 512},
                                           Shape{5000, 1024}));

TEST(VerityPeer, VeritysetupFindsTheBlockWeWouldName) {
  const Params p = MakeParams(300, 4096);
  Disk disk = MakeDisk(p);
  const Digest root = Build(p, disk);
  disk.data[200 * 4096 + 17] ^= 1;
  Scratch dir;
  WriteFile(dir / "data", disk.data);
  WriteFile(dir / "hash", disk.hash);
  const auto verify =
      RunCommand({"veritysetup", "verify", dir / "data", dir / "hash", ToHex(root)});
  EXPECT_NE(verify.exit_code, 0);
  EXPECT_NE(verify.err.find(std::to_string(200 * 4096)), std::string::npos) << verify.err;
  EXPECT_EQ(Verify(p, root, disk).first_bad_data_block, 200u);
}

// ---- geometry and parameters ----

TEST(VerityGeometry, LevelsSitTopFirstAfterTheSuperblock) {
  const auto g = ComputeGeometry(128 * 128 + 1, 4096);
  ASSERT_TRUE(g);
  EXPECT_EQ(g->hashes_per_block, 128u);
  ASSERT_EQ(g->level_blocks, (std::vector<uint64_t>{129, 2, 1}));
  EXPECT_EQ(g->level_first_block, (std::vector<uint64_t>{4, 2, 1}));
  EXPECT_EQ(g->hash_area_blocks, 133u);
  const auto one = ComputeGeometry(1, 4096);
  ASSERT_TRUE(one);
  EXPECT_TRUE(one->level_blocks.empty());
  EXPECT_EQ(one->hash_area_blocks, 1u);
}

TEST(VerityGeometry, ImpossibleParametersAreRefused) {
  EXPECT_EQ(ComputeGeometry(0, 4096).error().code, EINVAL);
  EXPECT_EQ(ComputeGeometry(10, 8192).error().code, EINVAL);
  EXPECT_EQ(ComputeGeometry(10, 256).error().code, EINVAL);
  EXPECT_EQ(ComputeGeometry(10, 3000).error().code, EINVAL);
  EXPECT_EQ(ComputeGeometry(uint64_t{1} << 60, 4096).error().code, EFBIG);
  EXPECT_EQ(HashAreaBytes(4096 * 3 + 512, 4096).error().code, EINVAL);
  Params p = MakeParams(4, 4096, std::vector<uint8_t>(kMaxSaltSize + 1, 1));
  EXPECT_EQ(ValidateParams(p).error().code, EINVAL);
  // The largest data the geometry accepts still has a tree whose size fits.
  const auto big = ComputeGeometry((uint64_t{1} << 62) / 512, 512);
  ASSERT_TRUE(big) << big.error().ToString();
  EXPECT_GT(big->hash_area_blocks, big->level_blocks[0]);
}

TEST(VeritySuperblock, RoundTripsAndRefusesWhatItCannotMap) {
  const Params p = MakeParams(1234, 4096, std::vector<uint8_t>(kMaxSaltSize, 9));
  const auto sb = EncodeSuperblock(p);
  const auto back = ParseSuperblock(sb);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->data_blocks, 1234u);
  EXPECT_EQ(back->block_size, 4096u);
  EXPECT_EQ(back->salt, p.salt);
  EXPECT_EQ(back->uuid, kUuid);

  auto broken = [&](size_t at, uint8_t value) {
    auto copy = sb;
    copy[at] = value;
    return ParseSuperblock(copy);
  };
  EXPECT_FALSE(broken(0, 'x'));    // signature
  EXPECT_FALSE(broken(8, 2));      // version
  EXPECT_FALSE(broken(12, 0));     // Chrome OS hash type
  EXPECT_FALSE(broken(32, 'm'));   // algorithm
  EXPECT_FALSE(broken(65, 0x20));  // data blocks of 8 KiB + 4 KiB
  EXPECT_FALSE(broken(69, 0x08));  // hash block size differs
  EXPECT_FALSE(broken(81, 0x02));  // salt of 512 bytes
  auto zero_blocks = sb;
  std::fill(zero_blocks.begin() + 72, zero_blocks.begin() + 80, 0);
  EXPECT_FALSE(ParseSuperblock(zero_blocks));
  EXPECT_FALSE(ParseSuperblock(std::span(sb).first(511)));
}

TEST(VerityHex, RoundTripsAndRefusesNonHex) {
  const std::vector<uint8_t> bytes = {0x00, 0x9f, 0xa0, 0xff};
  EXPECT_EQ(ToHex(bytes), "009fa0ff");
  EXPECT_EQ(ParseHex("009FA0ff").value(), bytes);
  EXPECT_FALSE(ParseHex("abc"));
  EXPECT_FALSE(ParseHex("0g"));
  EXPECT_TRUE(ParseHex("").value().empty());
}

// ---- building ----

TEST(VerityBuild, EveryThreadCountBuildsTheSameArea) {
  const Params p = MakeParams(128 * 40 + 3, 4096);
  Disk one = MakeDisk(p);
  Disk many = MakeDisk(p);
  const Digest a = Build(p, one, 1);
  const Digest b = Build(p, many, 7);
  EXPECT_EQ(a, b);
  EXPECT_TRUE(one.hash == many.hash);
}

TEST(VerityBuild, SaltChangesEveryHash) {
  const Params p = MakeParams(10, 4096, {1});
  const Params q = MakeParams(10, 4096, {2});
  Disk a = MakeDisk(p);
  Disk b = MakeDisk(q);
  EXPECT_NE(Build(p, a), Build(q, b));
  const Params empty = MakeParams(10, 4096, {});
  Disk c = MakeDisk(empty);
  EXPECT_EQ(Verify(empty, Build(empty, c), c).ok, true);
}

TEST(VerityBuild, ProgressRisesToOneFinalTotalAndFalseCancels) {
  const Params p = MakeParams(128 * 64, 4096);  // 32 MiB: eight batches
  Disk disk = MakeDisk(p);
  std::mutex mutex;
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  WalkOptions options{.threads = 3, .progress = [&](uint64_t done, uint64_t total) {
                        std::lock_guard lock(mutex);
                        calls.emplace_back(done, total);
                        return true;
                      }};
  ASSERT_TRUE(BuildHashArea(p, disk.DataReader(), disk.HashWriter(), options));
  const uint64_t total = p.data_blocks * p.block_size;
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), std::make_pair(total, total));
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, total);
    if (i > 0) {
      EXPECT_GT(calls[i].first, calls[i - 1].first);
    }
    if (i + 1 < calls.size()) {
      EXPECT_LT(calls[i].first, total);
    }
  }
  options.progress = [](uint64_t, uint64_t) { return false; };
  const auto cancelled = BuildHashArea(p, disk.DataReader(), disk.HashWriter(), options);
  ASSERT_FALSE(cancelled);
  EXPECT_EQ(cancelled.error().code, ECANCELED);
}

TEST(VerityBuild, ReadAndWriteErrorsComeBackWithTheirErrnoAndWhere) {
  const Params p = MakeParams(128 * 64, 4096);
  Disk disk = MakeDisk(p);
  std::atomic<int> reads{0};
  ReadAt failing_read = [&](uint64_t offset, std::span<uint8_t> out) -> Result<void> {
    ++reads;
    if (offset == 8 << 20) return MakeError(EIO, "injected");
    return disk.DataReader()(offset, out);
  };
  const auto read_failed = BuildHashArea(p, failing_read, disk.HashWriter(), OnThreads(2));
  ASSERT_FALSE(read_failed);
  EXPECT_EQ(read_failed.error().code, EIO);
  EXPECT_NE(read_failed.error().message.find("read data block 2048"), std::string::npos)
      << read_failed.error().message;

  WriteAt full = [&](uint64_t offset, std::span<const uint8_t> in) -> Result<void> {
    if (offset > 0) return MakeError(ENOSPC, "injected");
    return disk.HashWriter()(offset, in);
  };
  const auto write_failed = BuildHashArea(p, disk.DataReader(), full, OnThreads(2));
  ASSERT_FALSE(write_failed);
  EXPECT_EQ(write_failed.error().code, ENOSPC);
}

// ---- verifying ----

// 1 KiB blocks (32 hashes each) give three levels over 1.3 MiB.
struct Sealed {
  Params params = MakeParams(32 * 32 + 300, 1024);
  Disk disk = MakeDisk(params);
  Digest root = Build(params, disk);
  Geometry geometry = ComputeGeometry(params.data_blocks, params.block_size).value();

  uint8_t& HashByte(uint64_t block, size_t at) { return disk.hash[block * 1024 + at]; }
  uint8_t& DataByte(uint64_t block, size_t at) { return disk.data[block * 1024 + at]; }
};

TEST(VerityVerify, AnIntactImageIsOk) {
  Sealed s;
  const VerifyReport r = Verify(s.params, s.root, s.disk);
  EXPECT_TRUE(r.ok);
  EXPECT_FALSE(r.first_bad_data_block);
  EXPECT_FALSE(r.first_bad_hash_block);
  EXPECT_FALSE(r.root_differs);
}

TEST(VerityVerify, NamesTheFirstChangedDataBlock) {
  Sealed s;
  s.DataByte(1300, 1023) ^= 0x80;
  s.DataByte(700, 0) ^= 1;
  s.DataByte(31, 100) ^= 1;
  const VerifyReport r = Verify(s.params, s.root, s.disk);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_data_block, 31u);
  EXPECT_FALSE(r.first_bad_hash_block);
  EXPECT_FALSE(r.root_differs);
}

TEST(VerityVerify, ADamagedHashBlockIsBlamedNotTheDataUnderIt) {
  Sealed s;
  const uint64_t level0_block = s.geometry.level_first_block[0] + 5;
  s.HashByte(level0_block, 64) ^= 1;  // the entry of data block 5 * 32 + 2
  const VerifyReport r = Verify(s.params, s.root, s.disk);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_hash_block, level0_block);
  EXPECT_FALSE(r.first_bad_data_block);
}

TEST(VerityVerify, DamageHighInTheTreeIsFoundWhereItIs) {
  Sealed s;
  const uint64_t level1_block = s.geometry.level_first_block[1] + 1;
  s.HashByte(level1_block, 0) ^= 1;
  s.DataByte(32 * 32, 3) ^= 1;  // data under that block: not judged
  const VerifyReport r = Verify(s.params, s.root, s.disk);
  EXPECT_EQ(r.first_bad_hash_block, level1_block);
  EXPECT_FALSE(r.first_bad_data_block);
  EXPECT_FALSE(r.root_differs);
}

TEST(VerityVerify, PaddingSuperblockAndRootAreChecked) {
  {
    Sealed s;
    const uint64_t last = s.geometry.level_first_block[0] + s.geometry.level_blocks[0] - 1;
    s.HashByte(last, 1023) = 1;  // after the entries of the last level-0 block
    EXPECT_EQ(Verify(s.params, s.root, s.disk).first_bad_hash_block, last);
  }
  {
    Sealed s;
    const uint64_t top = s.geometry.level_first_block.back();
    s.HashByte(top, 1000) = 1;  // the top block's padding changes its hash: the root differs
    const VerifyReport r = Verify(s.params, s.root, s.disk);
    EXPECT_TRUE(r.root_differs);
    EXPECT_FALSE(r.ok);
  }
  {
    Sealed s;
    s.HashByte(0, 80) ^= 1;  // the superblock's salt size
    const VerifyReport r = Verify(s.params, s.root, s.disk);
    EXPECT_EQ(r.first_bad_hash_block, 0u);
    EXPECT_FALSE(r.first_bad_data_block);
  }
  {
    Sealed s;
    Digest wrong = s.root;
    wrong[31] ^= 1;
    const VerifyReport r = Verify(s.params, wrong, s.disk);
    EXPECT_TRUE(r.root_differs);
    EXPECT_FALSE(r.first_bad_data_block);
    EXPECT_FALSE(r.ok);
  }
}

TEST(VerityVerify, AOneBlockImageIsCheckedAgainstTheRoot) {
  const Params p = MakeParams(1, 4096);
  Disk disk = MakeDisk(p);
  const Digest root = Build(p, disk);
  EXPECT_TRUE(Verify(p, root, disk).ok);
  disk.data[10] ^= 1;
  const VerifyReport r = Verify(p, root, disk);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.first_bad_data_block, 0u);
}

}  // namespace
}  // namespace imaged::verity
