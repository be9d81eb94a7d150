// imaged_create_bench --path LIST --size BYTES [--max-piece BYTES]
// Times SplitFiemap::Create (allocate, zero, fsync, FIEMAP) of one image. Prints one JSON line
// with the total and a breakdown taken from the progress callback: `zeroing_s` ends at the
// last progress report before completion, `finish_s` covers fsync, FIEMAP and the list file.
#include <fmt/format.h>

#include <fiemap/split_file.h>

#include "bench_util.h"

using namespace imaged;

int main(int argc, char** argv) {
  bench::Args args(argc, argv, 1);
  const std::string path = args.Str("path");
  const uint64_t size = args.Size("size");

  fiemap::SplitFiemap::CreateOptions options;
  options.max_piece_size = args.Size("max-piece", 0);
  double last_partial = 0;
  options.progress = [&](uint64_t done, uint64_t total) {
    if (done < total) last_partial = bench::Now();
    return true;
  };
  const double start = bench::Now();
  auto dir = bench::Check(Directory::Open(Dirname(path)), "open directory");
  auto split =
      bench::Check(fiemap::SplitFiemap::Create(dir, Basename(path), size, options), "create");
  const double end = bench::Now();
  if (last_partial == 0) last_partial = start;
  fmt::print("{{\"seconds\": {:.6f}, \"zeroing_s\": {:.6f}, \"finish_s\": {:.6f}, "
             "\"pieces\": {}, \"extents\": {}}}\n",
             end - start, last_partial - start, end - last_partial, split.pieces().size(),
             split.extents().size());
  return 0;
}
