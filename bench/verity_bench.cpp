// imaged_verity_bench build|verify --data FILE --hash FILE [--root HEX]
// build: hashes FILE (read with O_DIRECT, as an image's pieces are) into a veritysetup-layout
// hash area in --hash (created, fsynced), salt and uuid zero so that runs compare; prints the
// root hash in its JSON line. verify: checks --data against --hash and --root.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <imaged/common/file_io.h>
#include <imaged/common/unique_fd.h>
#include <verity/hash_tree.h>

#include "bench_util.h"

using namespace imaged;

namespace {

UniqueFd OpenOrDie(const std::string& path, int flags) {
  UniqueFd fd(open(path.c_str(), flags | O_CLOEXEC, 0600));
  if (!fd.valid()) bench::Die(fmt::format("open {}: {}", path, strerror(errno)));
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) bench::Die("usage: imaged_verity_bench build|verify --data FILE --hash FILE");
  const std::string mode = argv[1];
  bench::Args args(argc, argv, 2);
  UniqueFd data = OpenOrDie(args.Str("data"), O_RDONLY | O_DIRECT);
  struct stat st {};
  if (fstat(data.get(), &st) != 0) bench::Die("fstat data");
  verity::Params params;
  params.block_size = 4096;
  params.data_blocks = static_cast<uint64_t>(st.st_size) / params.block_size;
  params.salt.assign(32, 0);
  const verity::ReadAt read = [&](uint64_t offset, std::span<uint8_t> out) {
    return FullPRead(data.get(), out.data(), out.size(), offset);
  };
  const double start = bench::Now();
  if (mode == "build") {
    UniqueFd hash = OpenOrDie(args.Str("hash"), O_RDWR | O_CREAT | O_TRUNC);
    const verity::WriteAt write = [&](uint64_t offset, std::span<const uint8_t> in) {
      return FullPWrite(hash.get(), in.data(), in.size(), offset);
    };
    const auto root = bench::Check(verity::BuildHashArea(params, read, write), "build");
    if (fsync(hash.get()) != 0) bench::Die("fsync hash");
    fmt::print("{{\"seconds\": {:.6f}, \"root\": \"{}\"}}\n", bench::Now() - start,
               verity::ToHex(root));
    return 0;
  }
  if (mode != "verify") bench::Die("mode must be build or verify");
  UniqueFd hash = OpenOrDie(args.Str("hash"), O_RDONLY);
  const verity::ReadAt read_hash = [&](uint64_t offset, std::span<uint8_t> out) {
    return FullPRead(hash.get(), out.data(), out.size(), offset);
  };
  const auto root_bytes = bench::Check(verity::ParseHex(args.Str("root")), "--root");
  verity::Digest root{};
  if (root_bytes.size() != root.size()) bench::Die("--root is not a SHA-256");
  std::copy(root_bytes.begin(), root_bytes.end(), root.begin());
  const auto report = bench::Check(verity::VerifyHashArea(params, root, read, read_hash), "verify");
  if (!report.ok) bench::Die("verification failed");
  fmt::print("{{\"seconds\": {:.6f}}}\n", bench::Now() - start);
  return 0;
}
