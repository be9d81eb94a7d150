// The dm-log-writes reader on synthetic logs written the way the kernel writes them (super
// block, one block per entry, the data blocks after it, a mark's name inside its entry block):
// entries and flags as logged, replay in log order, and malformed logs refused, never trusted.
#include "log_writes.h"

#include <endian.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>

#include "bytes.h"
#include "imaged/common/file_io.h"
#include "process.h"

namespace imaged::test {
namespace {

// Writes a log in the kernel's layout; each field can be spoiled on purpose.
class LogBuilder {
 public:
  explicit LogBuilder(uint32_t sector_size = 512) : sector_size_(sector_size) {}

  LogBuilder& Write(uint64_t sector, const std::string& data, uint64_t flags = 0) {
    return Entry(sector, data.size() / sector_size_, flags, 0, "", data);
  }
  LogBuilder& Flush() { return Entry(0, 0, kLogFlush, 0, "", ""); }
  LogBuilder& Discard(uint64_t sector, uint64_t nr_sectors) {
    return Entry(sector, nr_sectors, kLogDiscard, 0, "", "");
  }
  LogBuilder& Mark(const std::string& name) { return Entry(0, 0, kLogMark, name.size(), name, ""); }
  // Any entry: `inline_bytes` after the struct in its block, `data` in the blocks after it.
  LogBuilder& Entry(uint64_t sector, uint64_t nr_sectors, uint64_t flags, uint64_t data_len,
                    const std::string& inline_bytes, const std::string& data) {
    std::string block(sector_size_, '\0');
    Put64(block, 0, sector);
    Put64(block, 8, nr_sectors);
    Put64(block, 16, flags);
    Put64(block, 24, data_len);
    block.replace(32, inline_bytes.size(), inline_bytes);
    body_ += block + data;
    ++entries_;
    return *this;
  }

  std::string Bytes(uint64_t magic = kLogWritesMagic, uint64_t version = kLogWritesVersion) const {
    return Bytes(magic, version, entries_, sector_size_);
  }
  std::string Bytes(uint64_t magic, uint64_t version, uint64_t nr_entries,
                    uint32_t sector_size) const {
    std::string super(sector_size_, '\0');
    Put64(super, 0, magic);
    Put64(super, 8, version);
    Put64(super, 16, nr_entries);
    const uint32_t le = htole32(sector_size);
    std::memcpy(super.data() + 24, &le, sizeof(le));
    return super + body_;
  }

 private:
  static void Put64(std::string& block, size_t at, uint64_t v) {
    const uint64_t le = htole64(v);
    std::memcpy(block.data() + at, &le, sizeof(le));
  }
  uint32_t sector_size_;
  std::string body_;
  uint64_t entries_ = 0;
};

class LogWritesTest : public ::testing::Test {
 protected:
  std::string Save(const std::string& bytes, const std::string& name = "log") {
    const std::string path = (dir_.path() / name).string();
    WriteBytes(path, bytes);
    return path;
  }
  static void WriteBytes(const std::string& path, const std::string& bytes) {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid());
    if (bytes.empty()) return;
    ASSERT_TRUE(FullPWrite(fd.get(), bytes.data(), bytes.size(), 0));
  }
  // A zero-filled target file of `bytes`, open read-write.
  UniqueFd Target(uint64_t bytes) {
    const std::string path = (dir_.path() / "target").string();
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(bytes)), 0);
    return fd;
  }
  static std::string Read(int fd, uint64_t offset, size_t bytes) {
    std::string out(bytes, '\0');
    EXPECT_TRUE(FullPRead(fd, out.data(), bytes, offset));
    return out;
  }
  // The error Open gives for `bytes`, which must be refused as EINVAL.
  std::string Refusal(const std::string& bytes) {
    auto log = LogWrites::Open(Save(bytes));
    EXPECT_FALSE(log) << "a malformed log was accepted";
    if (log) return {};
    EXPECT_EQ(log.error().code, EINVAL) << log.error().ToString();
    return log.error().ToString();
  }

  TempDir dir_;
};

TEST_F(LogWritesTest, ReadsEntriesFlagsAndMarksInLogOrder) {
  const std::string a = Pattern(1024, 1);
  LogBuilder b;
  b.Write(8, a).Flush().Mark("after-a").Write(2, Pattern(512, 2), kLogFua | kLogMetadata);
  b.Discard(100, 16).Mark("end");
  auto log = LogWrites::Open(Save(b.Bytes()));
  ASSERT_TRUE(log) << log.error().ToString();
  EXPECT_EQ(log->sector_size(), 512u);
  const auto& e = log->entries();
  ASSERT_EQ(e.size(), 6u);
  EXPECT_EQ(e[0].sector, 8u);
  EXPECT_EQ(e[0].nr_sectors, 2u);
  EXPECT_EQ(e[0].data_offset, 1024u);  // the super block's, then the entry's own block
  EXPECT_TRUE(e[1].is_flush_point());
  EXPECT_EQ(e[2].mark, "after-a");
  EXPECT_EQ(e[3].flags, kLogFua | kLogMetadata);
  EXPECT_EQ(e[3].data_offset, 512u * 7);  // a mark takes one block, a flush one
  EXPECT_TRUE(e[4].is_discard());
  EXPECT_EQ(log->FlushPoints(), (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(log->Marks(), (std::vector<uint64_t>{2, 5}));
  EXPECT_EQ(log->FindMark("end"), 5u);
  EXPECT_EQ(log->FindMark("missing"), std::nullopt);
}

TEST_F(LogWritesTest, CountsSectorsInTheLoggedDevicesBlockSize) {
  LogBuilder b(4096);
  b.Write(3, Pattern(8192, 3)).Mark("m");
  auto log = LogWrites::Open(Save(b.Bytes()));
  ASSERT_TRUE(log) << log.error().ToString();
  ASSERT_EQ(log->entries().size(), 2u);
  EXPECT_EQ(log->entries()[0].nr_sectors, 2u);
  EXPECT_EQ(log->entries()[1].data_offset, 4096u * 5);
  UniqueFd target = Target(64 << 10);
  ASSERT_TRUE(log->Replay(0, 2, target.get()));
  EXPECT_EQ(Read(target.get(), 3 * 4096, 8192), Pattern(8192, 3));
}

TEST_F(LogWritesTest, ReplaysInLogOrderAndInSteps) {
  LogBuilder b;
  b.Write(0, Pattern(2048, 1)).Flush().Write(2, Pattern(512, 2)).Discard(0, 1).Flush();
  auto log = LogWrites::Open(Save(b.Bytes()));
  ASSERT_TRUE(log) << log.error().ToString();
  UniqueFd target = Target(8192);
  ASSERT_TRUE(log->Replay(0, 2, target.get()));
  EXPECT_EQ(Read(target.get(), 0, 2048), Pattern(2048, 1));
  ASSERT_TRUE(log->Replay(2, 5, target.get()));
  const std::string first = Pattern(2048, 1);
  std::string expect =
      std::string(512, '\0') + first.substr(512, 512) + Pattern(512, 2) + first.substr(1536);
  EXPECT_EQ(Read(target.get(), 0, 2048), expect);
  EXPECT_EQ(Read(target.get(), 2048, 6144), std::string(6144, '\0'));
}

TEST_F(LogWritesTest, KnowsWhichRangeAStretchWrote) {
  LogBuilder b;
  b.Write(0, Pattern(512, 1)).Flush().Write(16, Pattern(1024, 2)).Flush();
  b.Write(32, Pattern(512, 3), kLogFua);
  auto log = LogWrites::Open(Save(b.Bytes()));
  ASSERT_TRUE(log) << log.error().ToString();
  EXPECT_TRUE(log->WritesWithin(0, 2, 0, 512));
  EXPECT_FALSE(log->WritesWithin(0, 4, 0, 1 << 20, kLogFua));
  EXPECT_TRUE(log->WritesWithin(0, 5, 0, 1 << 20, kLogFua));
  EXPECT_FALSE(log->WritesWithin(0, 5, 0, 16384, kLogFua));
  EXPECT_FALSE(log->WritesWithin(0, 2, 512, 1 << 20));
  EXPECT_TRUE(log->WritesWithin(2, 4, 8192 + 1023, 8192 + 1024));
  EXPECT_FALSE(log->WritesWithin(2, 4, 0, 8192));
}

TEST_F(LogWritesTest, RefusesAReplayPastTheTargetsEnd) {
  LogBuilder b;
  b.Write(0, Pattern(512, 1)).Write(15, Pattern(1024, 2));
  auto log = LogWrites::Open(Save(b.Bytes()));
  ASSERT_TRUE(log) << log.error().ToString();
  UniqueFd target = Target(8192);
  auto r = log->Replay(0, 2, target.get());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().ToString().find("entry 1"), std::string::npos) << r.error().ToString();
  EXPECT_FALSE(log->Replay(1, 3, target.get()));
  EXPECT_FALSE(log->Replay(2, 1, target.get()));
}

TEST_F(LogWritesTest, RefusesWhatIsNotALog) {
  auto missing = LogWrites::Open((dir_.path() / "none").string());
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  Refusal("");
  Refusal(std::string(100, 'x'));
  EXPECT_NE(Refusal(std::string(4096, '\0')).find("bad magic"), std::string::npos);
}

TEST_F(LogWritesTest, RefusesABadSuperBlock) {
  LogBuilder b;
  b.Write(0, Pattern(512, 1));
  EXPECT_NE(Refusal(b.Bytes(kLogWritesMagic + 1)).find("bad magic"), std::string::npos);
  EXPECT_NE(Refusal(b.Bytes(kLogWritesMagic, 2)).find("version 2"), std::string::npos);
  for (uint32_t size : {0u, 256u, 1000u, 1u << 20}) {
    EXPECT_NE(Refusal(b.Bytes(kLogWritesMagic, 1, 1, size)).find("sector size"), std::string::npos)
        << size;
  }
  EXPECT_NE(Refusal(b.Bytes(kLogWritesMagic, 1, uint64_t{1} << 60, 512)).find("cannot fit"),
            std::string::npos);
  // More entries than were written: the next one would be read past the end.
  EXPECT_NE(Refusal(b.Bytes(kLogWritesMagic, 1, 2, 512)).find("entry 1"), std::string::npos);
}

TEST_F(LogWritesTest, RefusesMalformedEntries) {
  const auto refusal_of = [&](auto&& build) {
    LogBuilder b;
    b.Write(0, Pattern(512, 1));
    build(b);
    return Refusal(b.Bytes());
  };
  EXPECT_NE(
      refusal_of([](LogBuilder& b) { b.Entry(0, 0, 1 << 5, 0, "", ""); }).find("unknown flags"),
      std::string::npos);
  EXPECT_NE(refusal_of([](LogBuilder& b) {
              b.Entry(0, 1, kLogMark, 1, "m", std::string(512, 'd'));
            }).find("mark that writes"),
            std::string::npos);
  EXPECT_NE(refusal_of([](LogBuilder& b) {
              b.Entry(0, 0, kLogMark, 481, "m", "");
            }).find("longer than its block"),
            std::string::npos);
  EXPECT_NE(refusal_of([](LogBuilder& b) {
              b.Entry(0, 1, 0, 7, "", std::string(512, 'd'));
            }).find("data_len 7"),
            std::string::npos);
  // The data of the last entry is cut short.
  EXPECT_NE(refusal_of([](LogBuilder& b) {
              b.Entry(0, 4, 0, 0, "", std::string(512, 'd'));
            }).find("past the end"),
            std::string::npos);
  EXPECT_NE(refusal_of([](LogBuilder& b) {
              b.Entry(~uint64_t{0} - 1, 4, kLogDiscard, 0, "", "");
            }).find("overflows"),
            std::string::npos);
}

}  // namespace
}  // namespace imaged::test
