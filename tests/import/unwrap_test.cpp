// Compressed and archived images made by the stock tools (gzip, xz, zstd, bzip2, zip) import
// bit-exact as what the tools unpack; damaged ones fail with the error that names why.
#include "import/unwrap.h"

#include "import_test_util.h"

namespace imaged::import::test {
namespace {

class UnwrapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    raw_path_ = P("disk.img");
    raw_ = MakeRawImage(raw_path_);
  }
  fs::path P(const std::string& name) { return dir_.path() / name; }

  // Runs a shell command line in the test's directory (the tools' own pipes and redirections).
  void Sh(const std::string& line) {
    Tool({"sh", "-c", fmt::format("cd '{}' && {}", dir_.path().string(), line)});
  }

  // Detects the wrapping, opens the reader and copies into memory, as the manager does
  // (small buffers, several writes in flight).
  ImportOutcome ImportWrapped(const fs::path& path, Wrapping expected,
                              const UnwrapOptions& options = {}) {
    ImportOutcome out;
    auto source = FileSource::Open(path);
    if (!source) {
      out.stats = source.error();
      return out;
    }
    auto wrapping = DetectWrapping(**source);
    EXPECT_TRUE(wrapping && *wrapping == expected) << path;
    auto reader = OpenUnwrappedReader(**source, expected, options);
    if (!reader) {
      out.stats = reader.error();
      return out;
    }
    CopyOptions copy;
    copy.buffer_size = 64 << 10;
    copy.max_in_flight = 4;
    out = CopyToMemory(**reader, copy);
    if (out.stats) {
      EXPECT_EQ((*reader)->input_position(), (*source)->size()) << path;
    }
    return out;
  }

  void ExpectImports(const std::string& file, Wrapping wrapping, const Bytes& expected) {
    SCOPED_TRACE(file);
    auto out = ImportWrapped(P(file), wrapping);
    ASSERT_TRUE(out.stats) << out.stats.error().ToString();
    EXPECT_EQ(out.virtual_size, expected.size());
    EXPECT_TRUE(out.bytes == expected);
  }

  Error ExpectFails(const std::string& file, Wrapping wrapping, const UnwrapOptions& options = {}) {
    auto out = ImportWrapped(P(file), wrapping, options);
    EXPECT_FALSE(out.stats) << file << " imported";
    return out.stats ? Error{} : out.stats.error();
  }

  imaged::test::TempDir dir_;
  fs::path raw_path_;
  Bytes raw_;
};

TEST_F(UnwrapTest, EveryStockCompressorsRawImageImportsAsItsToolUnpacksIt) {
  Sh("gzip -k disk.img && xz -k -T1 disk.img && zstd -q -k disk.img && bzip2 -k disk.img");
  ExpectImports("disk.img.gz", Wrapping::Gzip, raw_);
  ExpectImports("disk.img.xz", Wrapping::Xz, raw_);
  ExpectImports("disk.img.zst", Wrapping::Zstd, raw_);
  ExpectImports("disk.img.bz2", Wrapping::Bzip2, raw_);
  // pzstd writes independent frames, each behind a skippable frame that gives its size.
  Sh("pzstd -q -p 2 disk.img -o disk.img.pzst");
  ExpectImports("disk.img.pzst", Wrapping::Zstd, raw_);
}

TEST_F(UnwrapTest, AZipHoldingOneImageImportsThatImageEvenWrittenFromAPipe) {
  // A directory entry beside the file is not a second file.
  Sh("mkdir d && zip -q disk.zip d disk.img");
  ExpectImports("disk.zip", Wrapping::Zip, raw_);
  // From stdin zip cannot seek back: sizes follow the data (a data descriptor) and the central
  // directory, which libarchive's seekable reader trusts, holds them.
  Sh("cat disk.img | zip -q piped.zip -");
  ExpectImports("piped.zip", Wrapping::Zip, raw_);
}

TEST_F(UnwrapTest, AnAndroidSparseImageInsideAStreamImportsWithoutMeasuring) {
  Sh("img2simg disk.img disk.simg && xz -k -T1 disk.simg && gzip -k disk.simg && "
     "zip -q simg.zip disk.simg");
  // img2simg pads the image to its 4 KiB blocks with zeros.
  Bytes padded = raw_;
  padded.resize((raw_.size() + 4095) / 4096 * 4096, 0);
  ExpectImports("disk.simg.xz", Wrapping::Xz, padded);
  ExpectImports("disk.simg.gz", Wrapping::Gzip, padded);
  ExpectImports("simg.zip", Wrapping::Zip, padded);
}

TEST_F(UnwrapTest, ConcatenatedGzipMembersAreOneStreamAsGzipReadsThem) {
  Bytes second = MakeRawImage(P("second.img"), 100000);
  Sh("gzip -k disk.img second.img && cat disk.img.gz second.img.gz > both.gz");
  Bytes both = raw_;
  both.insert(both.end(), second.begin(), second.end());
  ExpectImports("both.gz", Wrapping::Gzip, both);
}

TEST_F(UnwrapTest, AGzipTrailerThatDisagreesIsAChecksumErrorNotWrongData) {
  Sh("gzip -k disk.img");
  Bytes gz = ReadAll(P("disk.img.gz"));
  gz[gz.size() - 8] ^= 1;  // the CRC32 (libarchive would not look at it)
  WriteAll(P("crc.gz"), gz);
  Error e = ExpectFails("crc.gz", Wrapping::Gzip);
  EXPECT_EQ(e.code, EBADMSG) << e.ToString();
  EXPECT_NE(e.message.find("incorrect data check"), std::string::npos) << e.ToString();
}

TEST_F(UnwrapTest, TruncatedStreamsAndBytesPastTheEndFail) {
  Sh("gzip -k disk.img && xz -k -T1 disk.img && zstd -q -k disk.img && bzip2 -k disk.img");
  for (const auto& [file, wrapping] : {std::pair{"disk.img.gz", Wrapping::Gzip},
                                       {"disk.img.xz", Wrapping::Xz},
                                       {"disk.img.zst", Wrapping::Zstd},
                                       {"disk.img.bz2", Wrapping::Bzip2}}) {
    SCOPED_TRACE(file);
    Bytes whole = ReadAll(P(file));
    WriteAll(P("cut"),
             Bytes(whole.begin(), whole.begin() + static_cast<ptrdiff_t>(whole.size() / 2)));
    EXPECT_EQ(ExpectFails("cut", wrapping).code, EINVAL);
  }
  Bytes gz = ReadAll(P("disk.img.gz"));
  gz.insert(gz.end(), {'j', 'u', 'n', 'k'});
  WriteAll(P("junk.gz"), gz);
  Error e = ExpectFails("junk.gz", Wrapping::Gzip);
  EXPECT_EQ(e.code, EINVAL) << e.ToString();
}

TEST_F(UnwrapTest, ADamagedHeaderIsNeverImportedAsTheCompressedBytes) {
  Sh("xz -k -T1 disk.img");
  Bytes xz = ReadAll(P("disk.img.xz"));
  xz[7] ^= 0xff;  // stream flags: the header's CRC32 no longer matches
  WriteAll(P("bad.xz"), xz);
  EXPECT_EQ(ExpectFails("bad.xz", Wrapping::Xz).code, EINVAL);
}

TEST_F(UnwrapTest, AZipMustHoldExactlyOneFile) {
  MakeRawImage(P("other.img"), 8192);
  Sh("zip -q two.zip disk.img other.img");
  Error e = ExpectFails("two.zip", Wrapping::Zip);
  EXPECT_EQ(e.code, EINVAL);
  EXPECT_NE(e.message.find("holds 2 files (disk.img, other.img)"), std::string::npos)
      << e.ToString();
  Sh("mkdir empty && zip -q -r dirs.zip empty");
  e = ExpectFails("dirs.zip", Wrapping::Zip);
  EXPECT_NE(e.message.find("holds no file"), std::string::npos) << e.ToString();
}

TEST_F(UnwrapTest, QcowInsideAStreamIsRefusedWithTheCommandThatUnpacksIt) {
  Sh("qemu-img convert -q -f raw -O qcow2 disk.img disk.qcow2 && gzip -k disk.qcow2");
  Error e = ExpectFails("disk.qcow2.gz", Wrapping::Gzip);
  EXPECT_EQ(e.code, EOPNOTSUPP);
  EXPECT_NE(e.message.find("gzip -dc FILE > IMAGE"), std::string::npos) << e.ToString();
}

TEST_F(UnwrapTest, AnExplicitFormatAppliesToTheImageInside) {
  Sh("gzip -k disk.img");
  UnwrapOptions options;
  options.format = Format::Sparse;
  EXPECT_EQ(ExpectFails("disk.img.gz", Wrapping::Gzip, options).code, EINVAL);
}

TEST_F(UnwrapTest, MeasuringStopsAtTheSpaceThereIsAndCanBeCancelled) {
  Sh("gzip -k disk.img && zip -q disk.zip disk.img");
  UnwrapOptions small;
  small.max_size = raw_.size() - 1;
  EXPECT_EQ(ExpectFails("disk.img.gz", Wrapping::Gzip, small).code, ENOSPC);
  EXPECT_EQ(ExpectFails("disk.zip", Wrapping::Zip, small).code, ENOSPC);  // recorded size

  UnwrapOptions cancelled;
  uint64_t reports = 0;
  cancelled.count_progress = [&](uint64_t done, uint64_t total) {
    EXPECT_LE(done, total);
    return ++reports < 1;
  };
  EXPECT_EQ(ExpectFails("disk.img.gz", Wrapping::Gzip, cancelled).code, ECANCELED);
}

TEST(DetectWrappingTest, MagicsAndLookalikes) {
  auto detect = [](std::string_view bytes) {
    return DetectWrapping({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  };
  using namespace std::literals;
  EXPECT_EQ(detect("\x1f\x8b\x08\0\0\0\0\0\0\3"sv), Wrapping::Gzip);
  EXPECT_EQ(detect("\xfd"
                   "7zXZ\0\0\4"sv),
            Wrapping::Xz);
  EXPECT_EQ(detect("\x28\xb5\x2f\xfd\x24\0"sv), Wrapping::Zstd);
  EXPECT_EQ(detect("\x50\x2a\x4d\x18\4\0\0\0"sv), Wrapping::Zstd);  // skippable frame
  EXPECT_EQ(detect("BZh91AY&SY"sv), Wrapping::Bzip2);
  EXPECT_EQ(detect("BZh9\x17\x72\x45\x38\x50\x90"sv), Wrapping::Bzip2);  // empty stream
  EXPECT_EQ(detect("BZh9 is text"sv), Wrapping::None);
  EXPECT_EQ(detect("PK\3\4\x14\0"sv), Wrapping::Zip);
  EXPECT_EQ(detect("PK\5\6\0\0"sv), Wrapping::Zip);
  EXPECT_EQ(detect("\x1f\x8b"sv), Wrapping::None);  // too short to tell
  EXPECT_EQ(detect("\xeb\x3c\x90mkfs.fat"sv), Wrapping::None);
  EXPECT_EQ(detect(""sv), Wrapping::None);
}

}  // namespace
}  // namespace imaged::import::test
