// Android sparse images crafted chunk by chunk: FILL, DONT_CARE, CRC32, odd headers, and
// everything libsparse gets wrong.
#include <gmock/gmock.h>
#include <zlib.h>

#include <thread>

#include "import_test_util.h"

namespace imaged::import::test {
namespace {

using ::testing::HasSubstr;

void PutLe16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}
void PutLe32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// Writes a sparse image and the raw bytes it stands for.
class SparseBuilder {
 public:
  explicit SparseBuilder(uint32_t blk_sz = 4096, uint16_t file_hdr_sz = 28,
                         uint16_t chunk_hdr_sz = 12)
      : blk_sz_(blk_sz), file_hdr_sz_(file_hdr_sz), chunk_hdr_sz_(chunk_hdr_sz) {}

  SparseBuilder& Raw(uint32_t blocks, uint8_t seed) {
    Bytes data(size_t{blocks} * blk_sz_);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + seed);
    Chunk(0xCAC1, blocks, data);
    expected_.insert(expected_.end(), data.begin(), data.end());
    return *this;
  }
  SparseBuilder& Fill(uint32_t blocks, uint32_t pattern) {
    Bytes p(4);
    PutLe32(p, 0, pattern);
    Chunk(0xCAC2, blocks, p);
    for (size_t i = 0; i < size_t{blocks} * blk_sz_; i += 4) expected_.insert(expected_.end(), p.begin(), p.end());
    return *this;
  }
  SparseBuilder& DontCare(uint32_t blocks) {
    Chunk(0xCAC3, blocks, {});
    expected_.resize(expected_.size() + size_t{blocks} * blk_sz_, 0);
    return *this;
  }
  SparseBuilder& Crc(int32_t delta = 0) {
    Bytes v(4);
    PutLe32(v, 0, Crc32() + static_cast<uint32_t>(delta));
    Chunk(0xCAC4, 0, v);
    return *this;
  }
  SparseBuilder& Chunk(uint16_t type, uint32_t blocks, const Bytes& data) {
    Bytes h(chunk_hdr_sz_, 0);
    PutLe16(h, 0, type);
    PutLe32(h, 4, blocks);
    PutLe32(h, 8, static_cast<uint32_t>(chunk_hdr_sz_ + data.size()));
    body_.insert(body_.end(), h.begin(), h.end());
    body_.insert(body_.end(), data.begin(), data.end());
    ++chunks_;
    if (type != 0xCAC4) blocks_ += blocks;
    return *this;
  }
  uint32_t Crc32() const {
    return static_cast<uint32_t>(crc32(0, expected_.data(), static_cast<uInt>(expected_.size())));
  }
  Bytes Build(bool with_checksum = false) const {
    Bytes b(file_hdr_sz_, 0);
    PutLe32(b, 0, 0xed26ff3a);
    PutLe16(b, 4, 1);
    PutLe16(b, 8, file_hdr_sz_);
    PutLe16(b, 10, chunk_hdr_sz_);
    PutLe32(b, 12, blk_sz_);
    PutLe32(b, 16, blocks_);
    PutLe32(b, 20, chunks_);
    PutLe32(b, 24, with_checksum ? Crc32() : 0);
    b.insert(b.end(), body_.begin(), body_.end());
    return b;
  }
  const Bytes& expected() const { return expected_; }

 private:
  uint32_t blk_sz_;
  uint16_t file_hdr_sz_, chunk_hdr_sz_;
  Bytes body_, expected_;
  uint32_t chunks_ = 0, blocks_ = 0;
};

SparseBuilder Typical() {
  SparseBuilder s;
  s.Raw(3, 1).Fill(20, 0xdeadbeef).DontCare(40).Crc().Fill(17, 0).Raw(1, 9).Fill(2, 0x01000000).Crc();
  return s;
}

class SparseTest : public ::testing::Test {
 protected:
  fs::path P(const std::string& name) { return dir_.path() / name; }
  ImportOutcome ImportBytes(const Bytes& b) {
    WriteAll(P("a.simg"), b);
    return Import(P("a.simg"));
  }
  void ExpectRejected(const Bytes& b, int code, std::string_view needle, bool nothing = true) {
    auto out = ImportBytes(b);
    ASSERT_FALSE(out.stats) << "import unexpectedly succeeded";
    std::string text = out.stats.error().ToString();
    EXPECT_EQ(out.stats.error().code, code) << text;
    EXPECT_THAT(text, HasSubstr(needle));
    if (nothing) {
      EXPECT_EQ(out.calls, 0u) << text;
    }
  }
  imaged::test::TempDir dir_;
};

TEST_F(SparseTest, FillDontCareAndCrcChunksImportBitExact) {
  SparseBuilder s = Typical();
  auto out = ImportBytes(s.Build(/*with_checksum=*/true));
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
  EXPECT_EQ(out.bytes, s.expected());
}

TEST_F(SparseTest, Simg2imgAgreesWithTheCraftedImage) {
  SparseBuilder s = Typical();
  WriteAll(P("a.simg"), s.Build());
  Tool({"simg2img", P("a.simg"), P("a.raw")});
  EXPECT_EQ(ReadAll(P("a.raw")), s.expected());
}

TEST_F(SparseTest, LongerFileAndChunkHeadersAreSkipped) {
  SparseBuilder s(4096, 40, 16);
  s.Raw(2, 3).DontCare(5).Fill(1, 0x12345678).Crc();
  auto out = ImportBytes(s.Build(true));
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
  EXPECT_EQ(out.bytes, s.expected());
}

TEST_F(SparseTest, SmallBlockSizeImportsBitExact) {
  SparseBuilder s(1028);  // a multiple of 4 but not of 512: the writer still aligns its writes
  s.Raw(5, 3).DontCare(100).Fill(3, 0xabcdef01).Raw(1, 4);
  auto out = ImportBytes(s.Build(true));
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
  EXPECT_EQ(out.bytes, s.expected());
}

TEST_F(SparseTest, StreamFromPipeImportsBitExact) {
  SparseBuilder s = Typical();
  Bytes image = s.Build(true);
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  std::thread writer([&] {
    size_t done = 0;
    while (done < image.size()) {
      ssize_t n = ::write(fds[1], image.data() + done, std::min<size_t>(1000, image.size() - done));
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::close(fds[1]);
  });
  Bytes prefix(8);
  ASSERT_EQ(::read(fds[0], prefix.data(), 8), 8);
  auto format = DetectFormat(prefix);
  ASSERT_TRUE(format);
  EXPECT_EQ(*format, Format::Sparse);
  FdStream stream(fds[0], prefix);
  auto reader = OpenSparseReader(stream);
  ASSERT_TRUE(reader) << reader.error().ToString();
  MemorySink sink((*reader)->virtual_size());
  auto r = Copy(**reader, sink, nullptr);
  writer.join();
  ::close(fds[0]);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(sink.bytes, s.expected());
}

TEST_F(SparseTest, TruncatedStreamIsRefused) {
  Bytes image = Typical().Build();
  image.resize(image.size() - 100);
  WriteAll(P("t.simg"), image);
  UniqueFd fd(::open(P("t.simg").c_str(), O_RDONLY | O_CLOEXEC));
  FdStream stream(fd.get());
  auto reader = OpenSparseReader(stream);
  ASSERT_TRUE(reader);
  MemorySink sink((*reader)->virtual_size());
  auto r = Copy(**reader, sink, nullptr);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_THAT(r.error().message, HasSubstr("truncated"));
}

TEST_F(SparseTest, WrongCrc32ChunkIsRefused) {
  SparseBuilder s;
  s.Raw(2, 1).Crc(1);
  ExpectRejected(s.Build(), EBADMSG, "CRC32 chunk", false);
}

TEST_F(SparseTest, WrongImageChecksumIsRefused) {
  Bytes b = Typical().Build(true);
  b[24] ^= 1;
  ExpectRejected(b, EBADMSG, "image_checksum", false);
}

TEST_F(SparseTest, ZeroImageChecksumMeansAbsent) {
  SparseBuilder s;
  s.Raw(2, 1);
  auto out = ImportBytes(s.Build(false));
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
}

TEST_F(SparseTest, ZeroBlockSizeIsRefused) {
  Bytes b = Typical().Build();
  PutLe32(b, 12, 0);
  ExpectRejected(b, EINVAL, "blk_sz 0");
}

TEST_F(SparseTest, BlockSizeNotMultipleOf4IsRefused) {
  Bytes b = Typical().Build();
  PutLe32(b, 12, 1002);
  ExpectRejected(b, EINVAL, "blk_sz 1002");
}

TEST_F(SparseTest, MajorVersion2IsRefused) {
  Bytes b = Typical().Build();
  PutLe16(b, 4, 2);
  ExpectRejected(b, EOPNOTSUPP, "major version 2");
}

TEST_F(SparseTest, ShortFileHeaderIsRefused) {
  Bytes b = Typical().Build();
  PutLe16(b, 8, 24);
  ExpectRejected(b, EINVAL, "file_hdr_sz 24");
}

TEST_F(SparseTest, ShortChunkHeaderIsRefused) {
  Bytes b = Typical().Build();
  PutLe16(b, 10, 8);
  ExpectRejected(b, EINVAL, "chunk_hdr_sz 8");
}

TEST_F(SparseTest, UnknownChunkTypeIsRefused) {
  SparseBuilder s;
  s.Raw(1, 1).Chunk(0xCAC5, 1, {}).Raw(1, 2);
  ExpectRejected(s.Build(), EINVAL, "unknown chunk type");
}

TEST_F(SparseTest, ChunkSumBelowTotalBlocksIsRefused) {
  Bytes b = Typical().Build();
  PutLe32(b, 16, 84);  // the chunks hold 83 blocks
  ExpectRejected(b, EINVAL, "add up to 83 blocks");
}

TEST_F(SparseTest, ChunkSumAboveTotalBlocksIsRefused) {
  Bytes b = Typical().Build();
  PutLe32(b, 16, 82);
  ExpectRejected(b, EINVAL, "more than total_blks 82");
}

TEST_F(SparseTest, RawTotalSizeDisagreeingWithChunkSizeIsRefused) {
  SparseBuilder s;
  s.Raw(1, 1).Chunk(0xCAC1, 2, Bytes(4096, 1));
  ExpectRejected(s.Build(), EINVAL, "RAW data is 4096 bytes but chunk_sz 2 blocks");
}

TEST_F(SparseTest, TotalSizeBelowChunkHeaderIsRefused) {
  Bytes b = Typical().Build();
  PutLe32(b, 28 + 8, 4);  // first chunk's total_sz
  ExpectRejected(b, EINVAL, "smaller than the chunk header");
}

TEST_F(SparseTest, FillWithWrongPayloadSizeIsRefused) {
  SparseBuilder s;
  s.Chunk(0xCAC2, 1, Bytes(8, 1));
  ExpectRejected(s.Build(), EINVAL, "FILL data is 8 bytes");
}

TEST_F(SparseTest, TruncatedFileIsRefused) {
  Bytes b = Typical().Build();
  b.resize(b.size() - 3);
  ExpectRejected(b, EINVAL, "truncated");
}

// libsparse multiplies chunk_sz * blk_sz in 32 bits, so a RAW chunk of 4 GiB + 4 KiB looks
// like 4 KiB to it. Here the 64-bit product disagrees with total_sz.
TEST_F(SparseTest, RawChunkOf4GiBIsComputedIn64Bits) {
  SparseBuilder s;
  s.Chunk(0xCAC1, (1u << 20) + 1, Bytes(4096, 7));
  ExpectRejected(s.Build(), EINVAL, "need 4294971392");
}

TEST_F(SparseTest, HugeDontCareAndFillChunksAreAccepted) {
  SparseBuilder s;
  // Chunk() directly: the builder would otherwise materialise 8 GiB of expected bytes.
  s.Raw(1, 1).Chunk(0xCAC3, (1u << 20) + 1, {}).Chunk(0xCAC2, 1u << 20, Bytes(4, 0)).Raw(1, 2);
  Bytes b = s.Build();
  MemorySource src(b);
  auto reader = OpenReader(src, Format::Sparse);
  ASSERT_TRUE(reader) << reader.error().ToString();
  uint64_t expected = (uint64_t{1} << 20) * 2 * 4096 + 3 * 4096;
  EXPECT_EQ((*reader)->virtual_size(), expected);
  uint64_t covered = 0;
  while (true) {
    auto run = (*reader)->Next();
    ASSERT_TRUE(run) << run.error().ToString();
    if (!*run) break;
    EXPECT_EQ((*run)->offset, covered);
    covered += (*run)->length;
  }
  EXPECT_EQ(covered, expected);
}

TEST_F(SparseTest, TrailingBytesAfterTheLastChunkAreIgnored) {
  SparseBuilder s = Typical();
  Bytes b = s.Build();
  b.resize(b.size() + 100, 0xee);
  auto out = ImportBytes(b);
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
  EXPECT_EQ(out.bytes, s.expected());
}

}  // namespace
}  // namespace imaged::import::test
