// --format auto names what it sees: images of formats imaged does not read are refused by
// name (never imported as raw bytes), a broken sparse or qcow header is refused naming the
// broken field, and --format raw still takes any file as its own bytes.
#include <gmock/gmock.h>

#include "import_test_util.h"

namespace imaged::import::test {
namespace {

using ::testing::HasSubstr;

void PutBe16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v >> 8);
  b[at + 1] = static_cast<uint8_t>(v);
}
void PutBe32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
void PutLe16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}
void PutLe32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put(Bytes& b, size_t at, std::string_view text) {
  std::memcpy(&b[at], text.data(), text.size());
}

// A well-formed Android sparse image: one RAW chunk of two 4 KiB blocks.
Bytes SparseImage() {
  Bytes b(28 + 12 + 8192, 0x5a);
  PutLe32(b, 0, 0xed26ff3a);
  PutLe16(b, 4, 1);
  PutLe16(b, 6, 0);
  PutLe16(b, 8, 28);
  PutLe16(b, 10, 12);
  PutLe32(b, 12, 4096);
  PutLe32(b, 16, 2);
  PutLe32(b, 20, 1);
  PutLe32(b, 24, 0);
  PutLe16(b, 28, 0xCAC1);
  PutLe16(b, 30, 0);
  PutLe32(b, 32, 2);
  PutLe32(b, 36, 12 + 8192);
  return b;
}

class DetectTest : public ::testing::Test {
 protected:
  fs::path P(const std::string& name) { return dir_.path() / name; }

  // `qemu-img create -f <format> [options] <name> 1M`.
  fs::path Create(const std::string& format, const std::string& name,
                  std::vector<std::string> options = {}) {
    std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", format};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.push_back(P(name));
    argv.push_back("1M");
    Tool(argv);
    return P(name);
  }
  fs::path Write(const std::string& name, const Bytes& bytes) {
    WriteAll(P(name), bytes);
    return P(name);
  }

  // Auto-detection refuses `path` as `format`, naming `evidence`; from a stream prefix too
  // unless only the end of the file tells; --format raw imports the file's own bytes.
  void ExpectRefusedAs(const fs::path& path, std::string_view format, std::string_view evidence,
                       bool seen_in_prefix = true) {
    const std::string name =
        fmt::format("unsupported format {} (convert it, or pass --format raw)", format);
    auto source = FileSource::Open(path);
    ASSERT_TRUE(source) << source.error().ToString();
    auto detected = DetectFormat(**source);
    ASSERT_FALSE(detected) << path << " detected as " << FormatName(*detected);
    EXPECT_EQ(detected.error().code, EOPNOTSUPP) << detected.error().ToString();
    EXPECT_THAT(detected.error().ToString(), HasSubstr(name));
    EXPECT_THAT(detected.error().ToString(), HasSubstr(evidence));

    Bytes bytes = ReadAll(path);
    Bytes prefix(bytes.begin(), bytes.begin() + std::min(bytes.size(), kDetectPrefixBytes));
    auto from_prefix = DetectFormat(prefix);
    if (seen_in_prefix) {
      ASSERT_FALSE(from_prefix) << "the prefix was detected as " << FormatName(*from_prefix);
      EXPECT_EQ(from_prefix.error().ToString(), detected.error().ToString());
    } else {
      ASSERT_TRUE(from_prefix) << from_prefix.error().ToString();
      EXPECT_EQ(*from_prefix, Format::Raw);
    }

    auto out = Import(path);
    ASSERT_FALSE(out.stats) << "auto import unexpectedly succeeded";
    EXPECT_EQ(out.calls, 0u) << "something was written: " << out.stats.error().ToString();

    auto raw = Import(path, {}, Format::Raw);
    ASSERT_TRUE(raw.stats) << raw.stats.error().ToString();
    EXPECT_EQ(raw.bytes, bytes) << "--format raw must import the file's own bytes";
  }

  // Auto-detection takes `bytes` for the format of their magic, whose reader then refuses
  // them with `code`, naming `needle`, before anything is written (never raw).
  void ExpectBrokenHeaderRefused(const Bytes& bytes, int code, std::string_view needle) {
    auto out = Import(Write("broken.img", bytes));
    ASSERT_FALSE(out.stats) << "import unexpectedly succeeded (as raw?)";
    std::string text = out.stats.error().ToString();
    EXPECT_EQ(out.stats.error().code, code) << text;
    EXPECT_THAT(text, HasSubstr(needle));
    EXPECT_EQ(out.calls, 0u) << text;
  }

  imaged::test::TempDir dir_;
};

// ---- formats imaged does not read ------------------------------------------------------

TEST_F(DetectTest, VmdkSparseExtentIsRefusedByName) {
  ExpectRefusedAs(Create("vmdk", "a.vmdk"), "vmdk", "\"KDMV\"");
  ExpectRefusedAs(Create("vmdk", "s.vmdk", {"-o", "subformat=streamOptimized"}), "vmdk",
                  "\"KDMV\"");
}

TEST_F(DetectTest, VmdkVersion3SparseExtentIsRefusedByName) {
  Bytes b(4096, 0);
  Put(b, 0, "COWD");
  PutLe32(b, 4, 1);
  ExpectRefusedAs(Write("cowd.vmdk", b), "vmdk", "\"COWD\"");
}

TEST_F(DetectTest, VmdkTextDescriptorIsRefusedByName) {
  fs::path descriptor = Create("vmdk", "m.vmdk", {"-o", "subformat=monolithicFlat"});
  ExpectRefusedAs(descriptor, "vmdk", "text descriptor");
  // What qemu's probe also takes: comment lines, then a version line (CRLF line ends).
  std::string text = "# written by hand\r\n   \r\nversion=2\r\ncreateType=\"vmfs\"\r\n";
  ExpectRefusedAs(Write("hand.vmdk", Bytes(text.begin(), text.end())), "vmdk", "text descriptor");
}

TEST_F(DetectTest, VhdxIsRefusedByName) {
  ExpectRefusedAs(Create("vhdx", "a.vhdx"), "vhdx", "\"vhdxfile\"");
}

TEST_F(DetectTest, VdiIsRefusedByName) {
  fs::path vdi = Create("vdi", "a.vdi");
  ExpectRefusedAs(vdi, "vdi", "signature 0xbeda107f at offset 64");
  // The "<<< ... >>>" banner alone still names it.
  Bytes b = ReadAll(vdi);
  PutLe32(b, 0x40, 0);
  ExpectRefusedAs(Write("banner.vdi", b), "vdi", "\"<<< QEMU VM Virtual Disk Image >>>\"");
}

TEST_F(DetectTest, DynamicVhdIsRefusedByName) {
  ExpectRefusedAs(Create("vpc", "d.vhd"), "vpc", "\"conectix\" at offset 0");
}

TEST_F(DetectTest, FixedVhdIsRefusedByItsFooter) {
  fs::path vhd = Create("vpc", "f.vhd", {"-o", "subformat=fixed"});
  const uint64_t footer = fs::file_size(vhd) - 512;
  ExpectRefusedAs(vhd, "vpc",
                  fmt::format("fixed-size VHD footer \"conectix\" at offset {}", footer),
                  /*seen_in_prefix=*/false);
}

TEST_F(DetectTest, RawEndingInAnInvalidVhdFooterIsRaw) {
  Bytes b(8192, 0x11);
  Put(b, b.size() - 512, "conectix");  // the checksum at +64 does not match
  auto out = Import(Write("a.raw", b));
  ASSERT_TRUE(out.stats) << out.stats.error().ToString();
  EXPECT_EQ(out.bytes, b);
}

TEST_F(DetectTest, QedIsRefusedByName) {
  ExpectRefusedAs(Create("qed", "a.qed"), "qed", "\"QED\\0\"");
}

TEST_F(DetectTest, ParallelsIsRefusedByName) {
  fs::path image = Create("parallels", "a.hds");
  ExpectRefusedAs(image, "parallels", "\"WithouFreSpacExt\"");
  Bytes b = ReadAll(image);
  Put(b, 0, "WithoutFreeSpace");
  ExpectRefusedAs(Write("old.hds", b), "parallels", "\"WithoutFreeSpace\"");
}

TEST_F(DetectTest, LuksIsRefusedByName) {
  // qemu-img times its PBKDF on the CPU clock and gives up ("Unable to get accurate CPU usage")
  // when a busy machine hands it too little CPU in the window: that is the tool's, not ours.
  const std::vector<std::string> argv = {
      "qemu-img", "create", "-q", "-f", "luks", "--object", "secret,id=sec0,data=imaged",
      "-o", "key-secret=sec0,iter-time=10", P("a.luks").string(), "1M"};
  imaged::test::CommandResult made;
  for (int attempt = 0; attempt < 5; ++attempt) {
    made = imaged::test::RunCommand(argv);
    if (made.exit_code == 0 || made.err.find("accurate CPU usage") == std::string::npos) break;
  }
  ASSERT_EQ(made.exit_code, 0) << "qemu-img failed: " << made.err;
  const fs::path luks = P("a.luks");
  ExpectRefusedAs(luks, "luks", "LUKS1");
  Bytes b = ReadAll(luks);
  PutBe16(b, 6, 2);  // a LUKS2 header starts the same way
  ExpectRefusedAs(Write("a2.luks", b), "luks", "LUKS2");
}

TEST_F(DetectTest, UnrecognisedBytesAreRaw) {
  Bytes b(4096, 0);
  Put(b, 0, "# not a descriptor\nno version line here\n");
  auto f = DetectFormat(b);
  ASSERT_TRUE(f) << f.error().ToString();
  EXPECT_EQ(*f, Format::Raw);
}

// ---- magics of the formats imaged reads, with a broken header --------------------------

TEST_F(DetectTest, SparseMagicWithBrokenHeaderIsRefusedNamingTheField) {
  Bytes b = SparseImage();
  PutLe16(b, 8, 0);
  ExpectBrokenHeaderRefused(b, EINVAL, "file_hdr_sz 0 at offset 8");
  b = SparseImage();
  PutLe32(b, 12, 0);
  ExpectBrokenHeaderRefused(b, EINVAL, "blk_sz 0 at offset 12");
  b = SparseImage();
  PutLe16(b, 4, 0);
  ExpectBrokenHeaderRefused(b, EOPNOTSUPP, "major version 0 at offset 4");
}

TEST_F(DetectTest, SparseMagicInATruncatedHeaderIsRefused) {
  Bytes b = SparseImage();
  b.resize(20);
  ExpectBrokenHeaderRefused(b, EINVAL, "sparse header");
  b.resize(4);
  ExpectBrokenHeaderRefused(b, EINVAL, "sparse header");
}

TEST_F(DetectTest, QcowMagicWithBrokenHeaderIsRefusedNamingTheField) {
  Bytes b = ReadAll(Create("qcow2", "a.qcow2"));
  PutBe32(b, 20, 40);
  ExpectBrokenHeaderRefused(b, EINVAL, "cluster_bits 40 at offset 20");
  b = ReadAll(Create("qcow", "a.qcow"));
  b[33] = 30;
  ExpectBrokenHeaderRefused(b, EINVAL, "l2_bits 30 at offset 33");
  b.resize(6);
  ExpectBrokenHeaderRefused(b, EINVAL, "no version field");
}

}  // namespace
}  // namespace imaged::import::test
