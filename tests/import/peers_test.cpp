// Images made by the real tools (img2simg, qemu-img, qemu-io) import bit-exact.
#include <openssl/sha.h>

#include <regex>

#include "import_test_util.h"

namespace imaged::import::test {
namespace {

std::string Sha256(const Bytes& b) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(b.data(), b.size(), md);
  std::string hex;
  for (unsigned char c : md) hex += fmt::format("{:02x}", c);
  return hex;
}

// `qemu-img info`'s virtual size of `image`.
uint64_t QemuVirtualSize(const fs::path& image) {
  auto r = imaged::test::RunCommand({"qemu-img", "info", "--output=json", image});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  static const std::regex kSize("\"virtual-size\": *([0-9]+)");
  if (!std::regex_search(r.out, m, kSize)) {
    ADD_FAILURE() << "no virtual-size in " << r.out;
    return 0;
  }
  return std::stoull(m[1]);
}

class PeersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    raw_path_ = dir_.path() / "src.raw";
    raw_ = MakeRawImage(raw_path_);
  }
  fs::path P(const std::string& name) { return dir_.path() / name; }

  // Imports `image` and expects exactly `expected` with the given format.
  void ExpectImports(const fs::path& image, Format format, const Bytes& expected) {
    auto source = FileSource::Open(image);
    ASSERT_TRUE(source) << source.error().ToString();
    auto detected = DetectFormat(**source);
    ASSERT_TRUE(detected) << detected.error().ToString();
    EXPECT_EQ(*detected, format);
    auto out = Import(image);
    ASSERT_TRUE(out.stats) << out.stats.error().ToString();
    EXPECT_EQ(out.virtual_size, expected.size());
    EXPECT_EQ(Sha256(out.bytes), Sha256(expected));

    // As ImageManager::Import reads: stored clusters read and compressed ones decompressed by
    // the writer threads, straight into small write buffers (so runs straddle buffers),
    // several writes in flight; then with buffers of one page (every 64 KiB cluster spans 16
    // of them), and with one synchronous write at a time.
    ReaderOptions deferred;
    deferred.defer_data_reads = true;
    deferred.defer_decompression = true;
    for (const auto& [buffer, in_flight] :
         std::vector<std::pair<size_t, int>>{{64 << 10, 4}, {4096, 4}, {64 << 10, 1}}) {
      CopyOptions pipelined;
      pipelined.max_in_flight = in_flight;
      pipelined.buffer_size = buffer;
      auto out2 = Import(image, deferred, std::nullopt, pipelined);
      ASSERT_TRUE(out2.stats) << out2.stats.error().ToString();
      EXPECT_EQ(Sha256(out2.bytes), Sha256(expected))
          << "deferred, buffers of " << buffer << ", " << in_flight << " in flight";
    }
  }
  void ExpectImports(const fs::path& image, Format format) { ExpectImports(image, format, raw_); }

  imaged::test::TempDir dir_;
  fs::path raw_path_;
  Bytes raw_;
};

TEST_F(PeersTest, RawImportsAsItsOwnBytes) { ExpectImports(raw_path_, Format::Raw); }

TEST_F(PeersTest, RawWithoutZeroDetectionImportsAsItsOwnBytes) {
  ReaderOptions options;
  options.raw_detect_zeros = false;
  auto out = Import(raw_path_, options);
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
  EXPECT_EQ(out.bytes, raw_);
}

TEST_F(PeersTest, Img2simgImportsBitExact) {
  // img2simg pads the last block with zeros; the image is that padded size.
  Tool({"img2simg", raw_path_, P("a.simg")});
  Bytes expected = raw_;
  expected.resize((expected.size() + 4095) / 4096 * 4096, 0);
  ExpectImports(P("a.simg"), Format::Sparse, expected);
}

TEST_F(PeersTest, Img2simgWithSmallBlocksImportsBitExact) {
  Tool({"img2simg", raw_path_, P("a.simg"), "1024"});
  Bytes expected = raw_;
  expected.resize((expected.size() + 1023) / 1024 * 1024, 0);
  ExpectImports(P("a.simg"), Format::Sparse, expected);
}

TEST_F(PeersTest, Img2simgMatchesSimg2img) {
  Tool({"img2simg", raw_path_, P("a.simg")});
  Tool({"simg2img", P("a.simg"), P("back.raw")});
  ExpectImports(P("a.simg"), Format::Sparse, ReadAll(P("back.raw")));
}

TEST_F(PeersTest, QcowV1ImportsBitExact) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow", raw_path_, P("a.qcow")});
  ExpectImports(P("a.qcow"), Format::Qcow1);
}

TEST_F(PeersTest, QcowV1CompressedImportsBitExact) {
  // qemu-img 7.2 exits 1 after writing a complete compressed qcow image; qemu-img compare
  // (qemu's own reader) is the judge of whether the image is good.
  imaged::test::RunCommand(
      {"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow", raw_path_, P("a.qcow")});
  Tool({"qemu-img", "compare", "-f", "raw", "-F", "qcow", raw_path_, P("a.qcow")});
  ExpectImports(P("a.qcow"), Format::Qcow1);
}

// qemu counts 512-byte sectors, so a header size that is not a multiple of 512 (qemu-img
// create rounds it up; other writers need not) is cut down to one: the guest never sees the
// partial sector.
TEST_F(PeersTest, OddQcowSizesRoundDownLikeQemu) {
  for (auto [fmt, format] : {std::pair{"qcow2", Format::Qcow2}, std::pair{"qcow", Format::Qcow1}}) {
    SCOPED_TRACE(fmt);
    const fs::path image = P(std::string("a.") + fmt);
    Tool({"qemu-img", "convert", "-f", "raw", "-O", fmt, raw_path_, image});
    Bytes b = ReadAll(image);
    const uint64_t odd = raw_.size() + 100;  // raw_ is a multiple of 512
    for (int i = 0; i < 8; ++i) b[24 + i] = static_cast<uint8_t>(odd >> (56 - 8 * i));
    WriteAll(image, b);
    ASSERT_EQ(QemuVirtualSize(image), raw_.size());
    Tool({"qemu-img", "convert", "-O", "raw", image, P("back.raw")});
    ExpectImports(image, format, ReadAll(P("back.raw")));
  }
}

TEST_F(PeersTest, Qcow2Compat010ImportsBitExact) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10", raw_path_,
       P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2DeferredRunsNameWhereTheirBytesAreStored) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw_path_, P("a.qcow2")});
  auto source = FileSource::Open(P("a.qcow2"));
  ASSERT_TRUE(source) << source.error().ToString();
  ReaderOptions options;
  options.defer_data_reads = true;
  auto reader = OpenReader(**source, Format::Qcow2, options);
  ASSERT_TRUE(reader) << reader.error().ToString();
  int deferred = 0;
  while (true) {
    auto run = (*reader)->Next();
    ASSERT_TRUE(run) << run.error().ToString();
    if (!*run) break;
    if ((*run)->kind != Run::Kind::Data) continue;
    // Stored clusters only: this image has no compressed ones.
    ASSERT_EQ((*run)->source, source->get()) << "at " << (*run)->offset;
    EXPECT_TRUE((*run)->data.empty());
    Bytes stored((*run)->length);
    ASSERT_TRUE((*source)->ReadAt(stored.data(), stored.size(), (*run)->source_offset));
    EXPECT_TRUE(std::equal(stored.begin(), stored.end(), raw_.begin() + (*run)->offset))
        << "at " << (*run)->offset;
    ++deferred;
  }
  EXPECT_GT(deferred, 0);
}

TEST_F(PeersTest, Qcow2Compat11ImportsBitExact) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw_path_,
       P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2SmallClustersImportBitExact) {
  // 512-byte clusters: 64-entry L2 tables, so the walk crosses many L1 entries.
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=512", raw_path_,
       P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2LargeClustersImportBitExact) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=2M", raw_path_,
       P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2ZlibCompressedImportsBitExact) {
  Tool({"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zlib",
       raw_path_, P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2CompressedLargeClustersImportBitExact) {
  // 2 MiB clusters, compressed: each spans many write buffers, the last is cut at the size.
  Tool({"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=2M", raw_path_,
        P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2ZstdCompressedImportsBitExact) {
  Tool({"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd",
       raw_path_, P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2V2CompressedImportsBitExact) {
  Tool({"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10", raw_path_,
       P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2ExtendedL2ImportsBitExact) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=64k",
       raw_path_, P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2ExtendedL2SubclusterWritesImportBitExact) {
  // Subclusters are 2 KiB: partial writes leave clusters with mixed allocated, zero and
  // unallocated subclusters.
  Tool({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k",
       P("a.qcow2"), "1M"});
  Bytes expected(1 << 20, 0);
  auto write = [&](uint8_t pattern, uint64_t off, uint64_t len) {
    Tool({"qemu-io", "-f", "qcow2", "-c", fmt::format("write -P {} {} {}", pattern, off, len),
         P("a.qcow2")});
    std::memset(&expected[off], pattern, len);
  };
  write(0xab, 2048, 2048);
  write(0xcd, 65536 + 6144, 10240);
  write(0x11, 196608, 65536);
  Tool({"qemu-io", "-f", "qcow2", "-c", "write -z 200704 4096", P("a.qcow2")});
  std::memset(&expected[200704], 0, 4096);
  write(0x22, 1048576 - 2048, 2048);
  ExpectImports(P("a.qcow2"), Format::Qcow2, expected);
}

TEST_F(PeersTest, Qcow2ZeroClustersImportBitExact) {
  // write -z keeps the allocation (ZERO flag plus host offset); with -u it drops it.
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw_path_,
       P("a.qcow2")});
  Tool({"qemu-io", "-f", "qcow2", "-c", "write -z 0 131072", P("a.qcow2")});
  Tool({"qemu-io", "-f", "qcow2", "-c", "write -z -u 327680 131072", P("a.qcow2")});
  Bytes expected = raw_;
  std::memset(&expected[0], 0, 131072);
  std::memset(&expected[327680], 0, 131072);
  ExpectImports(P("a.qcow2"), Format::Qcow2, expected);
}

TEST_F(PeersTest, Qcow2WithSnapshotImportsActiveLayer) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw_path_, P("a.qcow2")});
  Tool({"qemu-img", "snapshot", "-c", "before", P("a.qcow2")});
  Tool({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 65536 65536", P("a.qcow2")});
  Bytes expected = raw_;
  std::memset(&expected[65536], 0x5a, 65536);
  ExpectImports(P("a.qcow2"), Format::Qcow2, expected);
}

TEST_F(PeersTest, Qcow2LazyRefcountsImportBitExact) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "lazy_refcounts=on", raw_path_,
       P("a.qcow2")});
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, Qcow2DirtyBitIsTolerated) {
  Tool({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw_path_, P("a.qcow2")});
  Bytes image = ReadAll(P("a.qcow2"));
  image[79] |= 1;  // incompatible_features bit 0 (big-endian u64 at 72)
  WriteAll(P("a.qcow2"), image);
  ExpectImports(P("a.qcow2"), Format::Qcow2);
}

TEST_F(PeersTest, EmptyQcow2ImportsAsZeros) {
  Tool({"qemu-img", "create", "-q", "-f", "qcow2", P("a.qcow2"), "3M"});
  ExpectImports(P("a.qcow2"), Format::Qcow2, Bytes(3 << 20, 0));
}

}  // namespace
}  // namespace imaged::import::test
