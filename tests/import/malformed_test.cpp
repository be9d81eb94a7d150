// Malformed and hostile images are refused with a clear error and nothing written.
#include <gmock/gmock.h>
#include <zlib.h>

#include "import_test_util.h"

namespace imaged::import::test {
namespace {

using ::testing::HasSubstr;

void PutBe32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
void PutBe64(Bytes& b, size_t at, uint64_t v) {
  PutBe32(b, at, static_cast<uint32_t>(v >> 32));
  PutBe32(b, at + 4, static_cast<uint32_t>(v));
}
uint64_t GetBe64(const Bytes& b, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | b[at + i];
  return v;
}

class MalformedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    raw_path_ = dir_.path() / "src.raw";
    raw_ = MakeRawImage(raw_path_);
  }
  fs::path P(const std::string& name) { return dir_.path() / name; }

  Bytes Convert(const std::vector<std::string>& args, const std::string& fmt) {
    std::vector<std::string> argv = {"qemu-img", "convert", "-f", "raw", "-O", fmt};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back(raw_path_);
    argv.push_back(P("base." + fmt));
    auto r = imaged::test::RunCommand(argv);
    // qemu-img 7.2 exits 1 after a complete compressed qcow v1 conversion.
    EXPECT_TRUE(r.exit_code == 0 || fmt == "qcow") << r.err;
    return ReadAll(P("base." + fmt));
  }

  void ExpectRejected(const Bytes& image, int code, std::string_view needle,
                      std::optional<Format> format = std::nullopt) {
    fs::path path = P("bad.img");
    WriteAll(path, image);
    ExpectRejected(path, code, needle, format);
  }
  void ExpectRejected(const fs::path& path, int code, std::string_view needle,
                      std::optional<Format> format = std::nullopt) {
    auto out = Import(path, {}, format);
    ASSERT_FALSE(out.stats) << "import unexpectedly succeeded";
    std::string text = out.stats.error().ToString();
    EXPECT_EQ(out.stats.error().code, code) << text;
    EXPECT_THAT(text, HasSubstr(needle));
    EXPECT_EQ(out.calls, 0u) << "something was written before: " << text;
  }

  // Offset of the L2 table mapping guest cluster 0 of a qcow2 image.
  static uint64_t Qcow2FirstL2(const Bytes& b) {
    return GetBe64(b, GetBe64(b, 40)) & 0x00fffffffffffe00ull;
  }
  // Index of the first L2 entry (in the first table) matching `pred`.
  static size_t FindEntry(const Bytes& b, uint64_t l2, size_t entries, auto pred) {
    for (size_t i = 0; i < entries; ++i)
      if (pred(GetBe64(b, l2 + 8 * i))) return i;
    ADD_FAILURE() << "no matching L2 entry";
    return 0;
  }

  imaged::test::TempDir dir_;
  fs::path raw_path_;
  Bytes raw_;
};

// ---- detection --------------------------------------------------------------------------

TEST_F(MalformedTest, QcowMagicWithUnknownVersionIsNotTakenForRaw) {
  Bytes b = Convert({}, "qcow2");
  PutBe32(b, 4, 4);
  ExpectRejected(b, EOPNOTSUPP, "unsupported version 4");
}

TEST_F(MalformedTest, TinyFileIsRaw) {
  Bytes b = {'Q', 'F'};
  MemorySource src(b);
  auto f = DetectFormat(src);
  ASSERT_TRUE(f);
  EXPECT_EQ(*f, Format::Raw);
}

// ---- qcow2 header -------------------------------------------------------------------------

TEST_F(MalformedTest, Qcow2EncryptionIsRefused) {
  for (uint32_t method : {1u, 2u}) {
    Bytes b = Convert({}, "qcow2");
    PutBe32(b, 32, method);
    ExpectRejected(b, EOPNOTSUPP, "encrypted");
  }
}

TEST_F(MalformedTest, Qcow2BackingFileIsRefusedAndNeverOpened) {
  Convert({}, "qcow2");
  Tool({"qemu-img", "create", "-q", "-f", "qcow2", "-b", P("base.qcow2"), "-F", "qcow2",
        P("overlay.qcow2")});
  ExpectRejected(P("overlay.qcow2"), EOPNOTSUPP, "backing file");
}

TEST_F(MalformedTest, Qcow2ExternalDataFileIsRefused) {
  Tool({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=" + P("d.raw").string(),
        P("ext.qcow2"), "1M"});
  ExpectRejected(P("ext.qcow2"), EOPNOTSUPP, "external data file");
}

TEST_F(MalformedTest, Qcow2UnknownIncompatibleFeatureIsRefused) {
  Bytes b = Convert({}, "qcow2");
  b[79] |= 1 << 5;
  ExpectRejected(b, EOPNOTSUPP, "unknown incompatible features 0x20");
}

TEST_F(MalformedTest, Qcow2CorruptBitIsRefused) {
  Bytes b = Convert({}, "qcow2");
  b[79] |= 1 << 1;
  ExpectRejected(b, EINVAL, "marked corrupt");
}

TEST_F(MalformedTest, Qcow2ClusterBitsOutOfRangeAreRefused) {
  for (uint32_t bits : {8u, 22u, 63u}) {
    Bytes b = Convert({}, "qcow2");
    PutBe32(b, 20, bits);
    ExpectRejected(b, EINVAL, fmt::format("cluster_bits {} at offset 20", bits));
  }
}

TEST_F(MalformedTest, Qcow2ExtendedL2NeedsClustersOf16KiB) {
  Bytes b = Convert({"-o", "extended_l2=on"}, "qcow2");
  PutBe32(b, 20, 13);
  ExpectRejected(b, EINVAL, "outside 14..21");
}

TEST_F(MalformedTest, Qcow2RefcountOrderAbove6IsRefused) {
  Bytes b = Convert({}, "qcow2");
  PutBe32(b, 96, 7);
  ExpectRejected(b, EINVAL, "refcount_order 7");
}

TEST_F(MalformedTest, Qcow2BadHeaderLengthIsRefused) {
  for (uint32_t len : {100u, 108u}) {
    Bytes b = Convert({}, "qcow2");
    PutBe32(b, 100, len);
    ExpectRejected(b, EINVAL, fmt::format("header_length {}", len));
  }
}

TEST_F(MalformedTest, Qcow2UnknownCompressionTypeIsRefused) {
  Bytes b = Convert({"-o", "compression_type=zstd"}, "qcow2");
  b[104] = 2;
  ExpectRejected(b, EINVAL, "compression_type 2");
}

TEST_F(MalformedTest, Qcow2CompressionBitWithoutTypeIsRefused) {
  Bytes b = Convert({}, "qcow2");
  b[79] |= 1 << 3;
  ExpectRejected(b, EINVAL, "disagrees with incompatible bit 3");
}

TEST_F(MalformedTest, Qcow2CompressionTypeWithoutBitIsRefused) {
  Bytes b = Convert({"-o", "compression_type=zstd"}, "qcow2");
  b[79] &= static_cast<uint8_t>(~(1 << 3));
  ExpectRejected(b, EINVAL, "disagrees with incompatible bit 3");
}

TEST_F(MalformedTest, Qcow2TooBigIsRefused) {
  Bytes b = Convert({}, "qcow2");
  PutBe64(b, 24, uint64_t{1} << 62);
  ExpectRejected(b, EINVAL, "too big");
}

TEST_F(MalformedTest, Qcow2HugeL1IsRefusedWithoutBeingRead) {
  Bytes b = Convert({}, "qcow2");
  PutBe64(b, 24, uint64_t{1} << 60);  // needs 2^31 L1 entries = 16 GiB of L1
  PutBe32(b, 36, 0x7fffffff);
  ExpectRejected(b, EINVAL, "l1_size 2147483647");
}

TEST_F(MalformedTest, Qcow2L1TooSmallForSizeIsRefused) {
  Bytes b = Convert({}, "qcow2");
  PutBe64(b, 24, uint64_t{1} << 40);
  ExpectRejected(b, EINVAL, "too small");
}

TEST_F(MalformedTest, Qcow2UnalignedL1IsRefused) {
  Bytes b = Convert({}, "qcow2");
  PutBe64(b, 40, GetBe64(b, 40) + 512);
  ExpectRejected(b, EINVAL, "not cluster-aligned");
}

TEST_F(MalformedTest, Qcow2VersionTwoHeaderWithV3FieldsIsStillV2) {
  // A v2 header is 72 bytes: bytes after it are not feature bits.
  Bytes b = Convert({"-o", "compat=0.10"}, "qcow2");
  ASSERT_GT(b.size(), 80u);
  auto out = Import(P("base.qcow2"));
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
}

// ---- qcow2 tables ----------------------------------------------------------------------------

TEST_F(MalformedTest, Qcow2L1ReservedBitsAreRefused) {
  Bytes b = Convert({}, "qcow2");
  uint64_t l1 = GetBe64(b, 40);
  PutBe64(b, l1, GetBe64(b, l1) | 0x100);
  ExpectRejected(b, EINVAL, "L1 entry");
}

TEST_F(MalformedTest, Qcow2L2TableBeyondEndOfFileIsRefused) {
  Bytes b = Convert({}, "qcow2");
  uint64_t l1 = GetBe64(b, 40);
  PutBe64(b, l1, (uint64_t{1} << 63) | (uint64_t{1} << 40));
  ExpectRejected(b, EINVAL, "beyond the end of the file");
}

TEST_F(MalformedTest, Qcow2L2ReservedBitsAreRefused) {
  Bytes b = Convert({}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  PutBe64(b, l2, GetBe64(b, l2) | (uint64_t{1} << 57));
  ExpectRejected(b, EINVAL, "reserved bits set");
}

TEST_F(MalformedTest, Qcow2ZeroFlagInVersion2IsRefused) {
  Bytes b = Convert({"-o", "compat=0.10"}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  PutBe64(b, l2, GetBe64(b, l2) | 1);
  ExpectRejected(b, EINVAL, "reserved bits set");
}

TEST_F(MalformedTest, Qcow2UnalignedDataOffsetIsRefused) {
  Bytes b = Convert({}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  PutBe64(b, l2, GetBe64(b, l2) + 512);
  ExpectRejected(b, EINVAL, "not cluster-aligned");
}

TEST_F(MalformedTest, Qcow2DataBeyondEndOfFileIsRefused) {
  Bytes b = Convert({}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  PutBe64(b, l2, (uint64_t{1} << 63) | (uint64_t{1} << 40));
  ExpectRejected(b, EINVAL, "beyond the end of the file");
}

TEST_F(MalformedTest, Qcow2SubclusterBothAllocatedAndZeroIsRefused) {
  Bytes b = Convert({"-o", "extended_l2=on"}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  PutBe64(b, l2 + 8, GetBe64(b, l2 + 8) | (uint64_t{1} << 32));  // zero bit of subcluster 0
  ExpectRejected(b, EINVAL, "both allocated and zero");
}

TEST_F(MalformedTest, Qcow2CompressedDataBeyondEndOfFileIsRefused) {
  Bytes b = Convert({"-c"}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  size_t i = FindEntry(b, l2, 8192, [](uint64_t e) { return e & (uint64_t{1} << 62); });
  // 64 KiB clusters: the offset is bits 0..53.
  uint64_t e = GetBe64(b, l2 + 8 * i);
  PutBe64(b, l2 + 8 * i, (e & ~((uint64_t{1} << 54) - 1)) | (uint64_t{1} << 40));
  ExpectRejected(b, EINVAL, "beyond the end of the file");
}

TEST_F(MalformedTest, Qcow2CompressedClusterTooShortIsRefused) {
  Bytes b = Convert({"-c"}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  size_t i = FindEntry(b, l2, 8192, [](uint64_t e) { return e & (uint64_t{1} << 62); });
  uint64_t e = GetBe64(b, l2 + 8 * i);
  PutBe64(b, l2 + 8 * i, e & ~(uint64_t{0xff} << 54));  // one sector of deflate data only
  WriteAll(P("bad.img"), b);
  auto out = Import(P("bad.img"));
  ASSERT_FALSE(out.stats);
  EXPECT_EQ(out.stats.error().code, EINVAL);
  EXPECT_THAT(out.stats.error().ToString(), HasSubstr("not the cluster size 65536"));
}

// A compressed cluster whose stream would expand to 32 MiB yields exactly one cluster.
TEST_F(MalformedTest, Qcow2DecompressionBombStopsAtClusterSize) {
  Bytes b = Convert({"-c"}, "qcow2");
  uint64_t l2 = Qcow2FirstL2(b);
  size_t i = FindEntry(b, l2, 8192, [](uint64_t e) { return e & (uint64_t{1} << 62); });
  Bytes zeros(32 << 20, 0), bomb(1 << 20);
  z_stream s{};
  ASSERT_EQ(deflateInit2(&s, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), Z_OK);
  s.next_in = zeros.data();
  s.avail_in = static_cast<uInt>(zeros.size());
  s.next_out = bomb.data();
  s.avail_out = static_cast<uInt>(bomb.size());
  ASSERT_EQ(deflate(&s, Z_FINISH), Z_STREAM_END);
  bomb.resize(s.total_out);
  deflateEnd(&s);
  ASSERT_LT(bomb.size(), 128u * 512);
  uint64_t at = (b.size() + 511) / 512 * 512;
  b.resize(at);
  b.insert(b.end(), bomb.begin(), bomb.end());
  uint64_t nsec = (bomb.size() + 511) / 512 - 1;
  PutBe64(b, l2 + 8 * i, (uint64_t{1} << 62) | nsec << 54 | at);
  WriteAll(P("bomb.img"), b);
  auto out = Import(P("bomb.img"));
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
  Bytes expected = raw_;
  std::memset(&expected[i * 65536], 0, 65536);
  EXPECT_EQ(out.bytes, expected);
}

// ---- qcow v1 ---------------------------------------------------------------------------

TEST_F(MalformedTest, QcowEncryptionIsRefused) {
  Bytes b = Convert({}, "qcow");
  PutBe32(b, 36, 1);
  ExpectRejected(b, EOPNOTSUPP, "encrypted");
}

TEST_F(MalformedTest, QcowBackingFileIsRefusedAndNeverOpened) {
  Tool({"qemu-img", "create", "-q", "-f", "qcow", "-b", raw_path_, "-F", "raw", P("ov.qcow")});
  ExpectRejected(P("ov.qcow"), EOPNOTSUPP, "backing file");
}

TEST_F(MalformedTest, QcowClusterBitsOutOfRangeAreRefused) {
  for (uint8_t bits : {8, 17}) {
    Bytes b = Convert({}, "qcow");
    b[32] = bits;
    ExpectRejected(b, EINVAL, "outside 9..16");
  }
}

TEST_F(MalformedTest, QcowL2BitsOutOfRangeAreRefused) {
  for (uint8_t bits : {5, 14}) {
    Bytes b = Convert({}, "qcow");
    b[33] = bits;
    ExpectRejected(b, EINVAL, "outside 6..13");
  }
}

TEST_F(MalformedTest, QcowTinySizeIsRefused) {
  Bytes b = Convert({}, "qcow");
  PutBe64(b, 24, 1);
  ExpectRejected(b, EINVAL, "too small");
}

TEST_F(MalformedTest, QcowL1OverflowIsRefused) {
  Bytes b = Convert({}, "qcow");
  PutBe64(b, 24, UINT64_MAX - 10);
  ExpectRejected(b, EINVAL, "too large");
  PutBe64(b, 24, uint64_t{1} << 50);
  ExpectRejected(b, EINVAL, "limit");
}

TEST_F(MalformedTest, QcowUnalignedDataOffsetIsRefused) {
  Bytes b = Convert({}, "qcow");
  uint64_t l2 = GetBe64(b, GetBe64(b, 40));
  PutBe64(b, l2, GetBe64(b, l2) + 7);
  ExpectRejected(b, EINVAL, "not 512-aligned");
}

TEST_F(MalformedTest, QcowDataBeyondEndOfFileIsRefused) {
  Bytes b = Convert({}, "qcow");
  uint64_t l2 = GetBe64(b, GetBe64(b, 40));
  PutBe64(b, l2, uint64_t{1} << 40);
  ExpectRejected(b, EINVAL, "beyond the end of the file");
}

TEST_F(MalformedTest, QcowCompressedDataBeyondEndOfFileIsRefused) {
  Bytes b = Convert({"-c"}, "qcow");
  uint64_t l2 = GetBe64(b, GetBe64(b, 40));
  size_t i = FindEntry(b, l2, 512, [](uint64_t e) { return e >> 63; });
  uint64_t e = GetBe64(b, l2 + 8 * i);
  // 4 KiB clusters: offset in bits 0..50.
  PutBe64(b, l2 + 8 * i, (e & ~((uint64_t{1} << 51) - 1)) | (uint64_t{1} << 45));
  ExpectRejected(b, EINVAL, "beyond the end of the file");
}

TEST_F(MalformedTest, QcowTruncatedL1IsRefused) {
  Bytes b = Convert({}, "qcow");
  b.resize(56);
  ExpectRejected(b, EINVAL, "beyond the end of the file");
}

TEST_F(MalformedTest, TruncatedHeadersAreRefused) {
  Bytes b = Convert({}, "qcow2");
  b.resize(64);
  ExpectRejected(b, EINVAL, "shorter than the 72-byte header");
  Bytes q = Convert({}, "qcow");
  q.resize(40);
  ExpectRejected(q, EINVAL, "shorter than the 48-byte header");
}

// ---- the target ----------------------------------------------------------------------------

TEST_F(MalformedTest, ImageLargerThanTargetIsRefusedBeforeWriting) {
  Convert({}, "qcow2");
  auto source = FileSource::Open(P("base.qcow2"));
  ASSERT_TRUE(source);
  auto reader = OpenReader(**source, Format::Qcow2);
  ASSERT_TRUE(reader);
  MemorySink sink(raw_.size() - 4096);
  auto r = Copy(**reader, sink, nullptr);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EFBIG);
  EXPECT_THAT(r.error().message, HasSubstr("image is larger than the target"));
  EXPECT_TRUE(sink.calls.empty());
}

}  // namespace
}  // namespace imaged::import::test
