// The kernel's dm-verity maps what this library builds: inside the guest (label vm), a loop
// holds the data and, after it, the hash area; a verity target over it reads every block back,
// and a byte changed in the file underneath makes exactly that block (or exactly the blocks
// under a damaged hash block) read as EIO, with the status turned to corrupt.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "bytes.h"
#include "dm_fixture.h"
#include "imaged/common/file_io.h"
#include "imaged/common/unique_fd.h"
#include "verity/hash_tree.h"
#include "vm/vm_env.h"

namespace imaged::verity {
namespace {

namespace fs = std::filesystem;
using test::Pattern;
using test::ScopedDm;
using test::SparseLoop;

constexpr uint32_t kBlock = 4096;
constexpr uint64_t kDataBlocks = 1000;  // two levels: 8 level-0 blocks under one top block
constexpr uint64_t kDataBytes = kDataBlocks * kBlock;

class VerityVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IMAGED_REQUIRE_DEVICE_MAPPER();
    char templ[] = "/tmp/verity_vm.XXXXXX";
    ASSERT_NE(mkdtemp(templ), nullptr);
    dir_ = templ;
    params_.data_blocks = kDataBlocks;
    params_.block_size = kBlock;
    params_.salt = {0x5a, 0x17, 0x00, 0xff};
    params_.uuid[0] = 1;
    const uint64_t area = HashAreaBytes(kDataBytes, kBlock).value();
    loop_.emplace(dir_ / "image", kDataBytes + area);
    fd_ = UniqueFd(open(loop_->file().c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd_.valid());
    const auto data = Pattern<std::vector<uint8_t>>(kDataBytes, 11);
    ASSERT_TRUE(FullPWrite(fd_.get(), data.data(), data.size(), 0));
    const ReadAt read = [this](uint64_t offset, std::span<uint8_t> out) {
      return FullPRead(fd_.get(), out.data(), out.size(), offset);
    };
    const WriteAt write = [this](uint64_t offset, std::span<const uint8_t> in) {
      return FullPWrite(fd_.get(), in.data(), in.size(), kDataBytes + offset);
    };
    auto root = BuildHashArea(params_, read, write);
    ASSERT_TRUE(root) << root.error().ToString();
    root_ = *root;
    geometry_ = ComputeGeometry(kDataBlocks, kBlock).value();
  }

  void TearDown() override {
    loop_.reset();
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Data and hashes on the one loop, the tree after the superblock that follows the data.
  dm::Table VerityTable() const {
    dm::Table table;
    table.Emplace<dm::VerityTarget>(0, dm::VerityConfig{.data_device = loop_->dm_device(),
                                                        .hash_device = loop_->dm_device(),
                                                        .block_size = kBlock,
                                                        .data_blocks = kDataBlocks,
                                                        .hash_start_block = kDataBlocks + 1,
                                                        .root_hash_hex = ToHex(root_),
                                                        .salt_hex = ToHex(params_.salt)});
    table.set_readonly(true);
    return table;
  }

  std::string Name(const std::string& suffix) const {
    return "imaged-test-verity-" + std::to_string(getpid()) + suffix;
  }

  void FlipByte(uint64_t file_offset) {
    uint8_t b = 0;
    ASSERT_TRUE(FullPRead(fd_.get(), &b, 1, file_offset));
    b ^= 0x40;
    ASSERT_TRUE(FullPWrite(fd_.get(), &b, 1, file_offset));
  }

  // Reads every block of `device` with O_DIRECT (past any cache): the blocks that fail with
  // EIO; the others must hold the data.
  std::set<uint64_t> BlocksThatFail(const std::string& device) {
    const auto want = Pattern<std::vector<uint8_t>>(kDataBytes, 11);
    UniqueFd dev(open(device.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
    EXPECT_TRUE(dev.valid()) << device << ": " << strerror(errno);
    auto buf = test::Aligned(kBlock);
    std::set<uint64_t> failed;
    for (uint64_t b = 0; b < kDataBlocks; ++b) {
      const ssize_t n = pread(dev.get(), buf.get(), kBlock, static_cast<off_t>(b * kBlock));
      if (n < 0 && errno == EIO) {
        failed.insert(b);
        continue;
      }
      EXPECT_EQ(n, static_cast<ssize_t>(kBlock)) << "block " << b << ": " << strerror(errno);
      EXPECT_EQ(std::memcmp(buf.get(), want.data() + b * kBlock, kBlock), 0) << "block " << b;
    }
    return failed;
  }

  bool Corrupt(const std::string& name) {
    auto status = dm::DeviceMapper().GetStatus(name);
    EXPECT_TRUE(status && status->size() == 1);
    if (!status || status->empty()) return false;
    auto corrupt = dm::VerityStatusCorrupt((*status)[0].params);
    EXPECT_TRUE(corrupt) << (*status)[0].params;
    return corrupt && *corrupt;
  }

  fs::path dir_;
  Params params_;
  std::optional<SparseLoop> loop_;
  UniqueFd fd_;
  Digest root_{};
  Geometry geometry_;
};

TEST_F(VerityVmTest, TheKernelReadsWhatWeHashedAndFailsExactlyTheChangedBlock) {
  {
    ScopedDm verity(Name("-intact"), VerityTable());
    EXPECT_TRUE(BlocksThatFail(verity.path()).empty());
    EXPECT_FALSE(Corrupt(verity.name()));
    // The kernel may let root open a read-only device for writing; the write itself fails.
    UniqueFd writable(open(verity.path().c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
    if (writable.valid()) {
      auto block = test::Aligned(kBlock, 'w');
      EXPECT_EQ(pwrite(writable.get(), block.get(), kBlock, 0), -1);
      EXPECT_TRUE(errno == EPERM || errno == EROFS) << strerror(errno);
    } else {
      EXPECT_EQ(errno, EROFS);
    }
  }
  FlipByte(777 * kBlock + 123);
  ScopedDm verity(Name("-data"), VerityTable());
  EXPECT_EQ(BlocksThatFail(verity.path()), std::set<uint64_t>{777});
  EXPECT_TRUE(Corrupt(verity.name()));
}

TEST_F(VerityVmTest, ADamagedHashBlockFailsTheBlocksUnderIt) {
  // Level-0 block 3 holds the hashes of data blocks 384..511.
  FlipByte(kDataBytes + (geometry_.level_first_block[0] + 3) * kBlock + 40);
  ScopedDm verity(Name("-hash"), VerityTable());
  std::set<uint64_t> under;
  for (uint64_t b = 3 * 128; b < 4 * 128; ++b) under.insert(b);
  EXPECT_EQ(BlocksThatFail(verity.path()), under);
  EXPECT_TRUE(Corrupt(verity.name()));
}

TEST_F(VerityVmTest, AWrongRootHashFailsEveryBlock) {
  root_[0] ^= 1;
  ScopedDm verity(Name("-root"), VerityTable());
  EXPECT_EQ(BlocksThatFail(verity.path()).size(), kDataBlocks);
}

}  // namespace
}  // namespace imaged::verity
