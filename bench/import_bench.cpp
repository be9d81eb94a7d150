// imaged_import_bench --source FILE --target PATH [--via lib|single-pass|manager]
//                     [--data-dir D --metadata-dir M --name N]   (manager)
// Imports FILE (format by magic) into a freshly created image and prints one JSON line with
// the total and a breakdown. The timing includes creating the target, as simg2img and qemu-img
// also create theirs, and ends when the data is durable (fsync).
//   lib          what ImageManager::Import does: SplitFiemap::Create (allocated and zeroed),
//                then O_DIRECT writes of the data runs only (zero runs are skipped).
//   single-pass  experiment: fallocate without zeroing, then O_DIRECT writes of every run,
//                data and zeros, so each byte is written once; extents validated at the end
//                with FiemapWriter::Open. One piece only (no split).
//   pipelined    experiment: single-pass, plus the source is read and decoded on a second
//                thread while the first writes (4 buffers of 4 MiB in flight), so reading
//                overlaps writing. Needs 4 KiB-aligned runs (the bench's images have them).
//   manager      ImageManager::Import (lp_metadata, locks and all), when built with it.
#include <fcntl.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include <fiemap/fiemap_writer.h>
#include <fiemap/split_file.h>
#include <imaged/common/unique_fd.h>
#include <import/reader.h>
#include <import/source.h>
#include <import/writer.h>

#ifdef IMAGED_BENCH_HAVE_MANAGER
#include <manager/image_manager.h>
#endif

#include "bench_util.h"

using namespace imaged;

namespace {

constexpr size_t kZeroChunk = 4 << 20;

const uint8_t* Zeros() {
  static uint8_t* zeros = [] {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, kZeroChunk));
    std::memset(p, 0, kZeroChunk);
    return p;
  }();
  return zeros;
}

// Accumulates the time spent inside the wrapped reader's Next() (read + decode).
class TimedReader : public import::ImageReader {
 public:
  explicit TimedReader(import::ImageReader& inner) : inner_(inner) {}
  import::Format format() const override { return inner_.format(); }
  uint64_t virtual_size() const override { return inner_.virtual_size(); }
  Result<std::optional<import::Run>> Next() override {
    double t = bench::Now();
    auto r = inner_.Next();
    seconds += bench::Now() - t;
    return r;
  }
  double seconds = 0;

 private:
  import::ImageReader& inner_;
};

// Copy() hands out 4096-aligned writes from an aligned buffer (the images here are
// 4096-aligned), which O_DIRECT takes as they are.
class PwriteSink : public import::RunSink {
 public:
  using WriteFn = std::function<Result<void>(const void*, size_t, uint64_t)>;
  PwriteSink(WriteFn write, uint64_t size) : write_(std::move(write)), size_(size) {}
  Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override {
    double t = bench::Now();
    auto r = write_(data.data(), data.size(), offset);
    seconds += bench::Now() - t;
    bytes_data += data.size();
    return r;
  }
  Result<void> WriteZeroes(uint64_t offset, uint64_t length) override {
    double t = bench::Now();
    bytes_zero += length;
    while (length > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(length, kZeroChunk));
      IMAGED_TRY(write_(Zeros(), n, offset));
      offset += n;
      length -= n;
    }
    seconds += bench::Now() - t;
    return Ok();
  }
  uint64_t size() const override { return size_; }
  double seconds = 0;
  uint64_t bytes_data = 0, bytes_zero = 0;

 private:
  WriteFn write_;
  uint64_t size_;
};

struct Opened {
  std::unique_ptr<import::FileSource> source;
  std::unique_ptr<import::ImageReader> reader;
};

Opened OpenSource(const std::string& path) {
  Opened o;
  o.source = bench::Check(import::FileSource::Open(path), "open source");
  auto format = bench::Check(import::DetectFormat(*o.source), "detect format");
  o.reader = bench::Check(import::OpenReader(*o.source, format), "open reader");
  return o;
}

uint64_t Align4k(uint64_t v) { return (v + 4095) / 4096 * 4096; }

void PrintLib(double total, double open_s, double create_s, const TimedReader& reader,
              const PwriteSink& sink, double copy_s, double sync_s) {
  fmt::print("{{\"seconds\": {:.6f}, \"open_s\": {:.6f}, \"create_s\": {:.6f}, "
             "\"copy_s\": {:.6f}, \"read_decode_s\": {:.6f}, \"write_s\": {:.6f}, "
             "\"sync_s\": {:.6f}, \"bytes_data\": {}, \"bytes_zero_written\": {}}}\n",
             total, open_s, create_s, copy_s, reader.seconds, sink.seconds, sync_s,
             sink.bytes_data, sink.bytes_zero);
}

int RunLib(const bench::Args& args) {
  const double t0 = bench::Now();
  Opened o = OpenSource(args.Str("source"));
  const double t1 = bench::Now();
  auto split = bench::Check(
      fiemap::SplitFiemap::Create(bench::Check(Directory::Open(Dirname(args.Str("target"))), "open"),
                                  Basename(args.Str("target")), Align4k(o.reader->virtual_size()),
                                  {}),
      "create target");
  bench::Check(split.OpenForIo(/*direct=*/true), "open target");
  const double t2 = bench::Now();
  TimedReader reader(*o.reader);
  PwriteSink sink([&](const void* p, size_t n, uint64_t off) { return split.PWrite(p, n, off); },
                  split.size());
  import::CopyOptions copy;
  copy.target_is_zeroed = true;
  bench::Check(import::Copy(reader, sink, {}, copy), "copy");
  const double t3 = bench::Now();
  bench::Check(split.Sync(), "sync");
  const double t4 = bench::Now();
  PrintLib(t4 - t0, t1 - t0, t2 - t1, reader, sink, t3 - t2, t4 - t3);
  return 0;
}

// A new O_DIRECT file of `size` bytes, allocated but not written (the experiments write it).
UniqueFd CreateAllocatedTarget(const std::string& target, uint64_t size) {
  UniqueFd fd(open(target.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0600));
  if (!fd) bench::Die(fmt::format("create {}: {}", target, std::strerror(errno)));
  if (fallocate(fd.get(), 0, 0, static_cast<off_t>(size)) != 0) {
    bench::Die(fmt::format("fallocate {}: {}", target, std::strerror(errno)));
  }
  return fd;
}

int RunSinglePass(const bench::Args& args) {
  const double t0 = bench::Now();
  Opened o = OpenSource(args.Str("source"));
  const double t1 = bench::Now();
  const std::string target = args.Str("target");
  const uint64_t size = Align4k(o.reader->virtual_size());
  UniqueFd fd = CreateAllocatedTarget(target, size);
  const double t2 = bench::Now();
  TimedReader reader(*o.reader);
  PwriteSink sink(
      [&](const void* p, size_t n, uint64_t off) -> Result<void> {
        if (pwrite(fd.get(), p, n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
          return ErrnoError("pwrite {} at {}", n, off);
        }
        return Ok();
      },
      size);
  import::CopyOptions copy;
  copy.target_is_zeroed = false;
  bench::Check(import::Copy(reader, sink, {}, copy), "copy");
  const double t3 = bench::Now();
  if (fsync(fd.get()) != 0) bench::Die(fmt::format("fsync: {}", std::strerror(errno)));
  // Proves every extent ended up written (FiemapWriter rejects unwritten ones).
  bench::Check(fiemap::FiemapWriter::Open(bench::Check(Directory::Open(Dirname(target)), "open"),
                                          Basename(target)),
               "validate extents");
  const double t4 = bench::Now();
  PrintLib(t4 - t0, t1 - t0, t2 - t1, reader, sink, t3 - t2, t4 - t3);
  return 0;
}

// A bounded hand-off between the reading and the writing thread.
struct Chunk {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint8_t* data = nullptr;  // null: zeros; else a pool buffer to give back
  bool end = false;
};

class ChunkQueue {
 public:
  void Push(Chunk c) {
    std::lock_guard lock(mu_);
    q_.push_back(c);
    cv_.notify_all();
  }
  Chunk Pop() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !q_.empty(); });
    Chunk c = q_.front();
    q_.pop_front();
    return c;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> q_;
};

int RunPipelined(const bench::Args& args) {
  constexpr size_t kBuf = 4 << 20;
  constexpr int kBuffers = 4;
  const double t0 = bench::Now();
  Opened o = OpenSource(args.Str("source"));
  const double t1 = bench::Now();
  const std::string target = args.Str("target");
  const uint64_t size = Align4k(o.reader->virtual_size());
  UniqueFd fd = CreateAllocatedTarget(target, size);
  const double t2 = bench::Now();

  ChunkQueue full, free_buffers;
  std::vector<std::unique_ptr<uint8_t, decltype(&std::free)>> pool;
  for (int i = 0; i < kBuffers; ++i) {
    pool.emplace_back(static_cast<uint8_t*>(std::aligned_alloc(4096, kBuf)), &std::free);
    free_buffers.Push({0, 0, pool.back().get(), false});
  }
  double read_s = 0;
  std::thread producer([&] {
    Chunk cur;
    auto flush = [&] {
      if (cur.data && cur.length) full.Push(cur);
      else if (cur.data) free_buffers.Push(cur);
      cur = {};
    };
    uint64_t end = 0;
    while (true) {
      double t = bench::Now();
      auto run = bench::Check(o.reader->Next(), "read");
      read_s += bench::Now() - t;
      if (!run) break;
      if (run->offset % 4096 || run->length % 4096) bench::Die("pipelined: unaligned run");
      end = run->offset + run->length;
      if (run->kind == import::Run::Kind::Zero) {
        flush();
        full.Push({run->offset, run->length, nullptr, false});
        continue;
      }
      auto data = run->data;
      uint64_t off = run->offset;
      while (!data.empty()) {
        if (cur.data && (cur.offset + cur.length != off || cur.length == kBuf)) flush();
        if (!cur.data) cur = {off, 0, free_buffers.Pop().data, false};
        size_t n = std::min<size_t>(data.size(), kBuf - cur.length);
        std::memcpy(cur.data + cur.length, data.data(), n);
        cur.length += n;
        off += n;
        data = data.subspan(n);
      }
    }
    flush();
    if (end < size) full.Push({end, size - end, nullptr, false});
    full.Push({0, 0, nullptr, true});
  });
  double write_s = 0;
  uint64_t bytes_data = 0, bytes_zero = 0;
  while (true) {
    Chunk c = full.Pop();
    if (c.end) break;
    double t = bench::Now();
    for (uint64_t done = 0; done < c.length;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(c.length - done, c.data ? kBuf : kZeroChunk));
      const void* p = c.data ? c.data + done : Zeros();
      if (pwrite(fd.get(), p, n, static_cast<off_t>(c.offset + done)) != static_cast<ssize_t>(n)) {
        bench::Die(fmt::format("pwrite: {}", std::strerror(errno)));
      }
      done += n;
    }
    write_s += bench::Now() - t;
    (c.data ? bytes_data : bytes_zero) += c.length;
    if (c.data) free_buffers.Push(c);
  }
  producer.join();
  const double t3 = bench::Now();
  if (fsync(fd.get()) != 0) bench::Die(fmt::format("fsync: {}", std::strerror(errno)));
  bench::Check(fiemap::FiemapWriter::Open(bench::Check(Directory::Open(Dirname(target)), "open"),
                                          Basename(target)),
               "validate extents");
  const double t4 = bench::Now();
  fmt::print("{{\"seconds\": {:.6f}, \"open_s\": {:.6f}, \"create_s\": {:.6f}, "
             "\"copy_s\": {:.6f}, \"read_decode_s\": {:.6f}, \"write_s\": {:.6f}, "
             "\"sync_s\": {:.6f}, \"bytes_data\": {}, \"bytes_zero_written\": {}}}\n",
             t4 - t0, t1 - t0, t2 - t1, t3 - t2, read_s, write_s, t4 - t3, bytes_data,
             bytes_zero);
  return 0;
}

#ifdef IMAGED_BENCH_HAVE_MANAGER
int RunManager(const bench::Args& args) {
  const double t0 = bench::Now();
  ManagerOptions options;
  options.data_dir = args.Str("data-dir");
  options.metadata_dir = args.Str("metadata-dir");
  options.strategy = MapStrategy::kLoop;
  auto manager = bench::Check(ImageManager::Open(options), "open manager");
  auto info = bench::Check(manager->Import(args.Str("name", "bench"), args.Str("source"), {}),
                           "import");
  const double t1 = bench::Now();
  fmt::print("{{\"seconds\": {:.6f}, \"size\": {}, \"extents\": {}}}\n", t1 - t0,
             info.size_bytes, info.extents);
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  bench::Args args(argc, argv, 1);
  if (args.Has("list-modes")) {
#ifdef IMAGED_BENCH_HAVE_MANAGER
    fmt::print("lib single-pass pipelined manager\n");
#else
    fmt::print("lib single-pass pipelined\n");
#endif
    return 0;
  }
  const std::string via = args.Str("via", "lib");
  if (via == "lib") return RunLib(args);
  if (via == "single-pass") return RunSinglePass(args);
  if (via == "pipelined") return RunPipelined(args);
#ifdef IMAGED_BENCH_HAVE_MANAGER
  if (via == "manager") return RunManager(args);
#endif
  bench::Die(fmt::format("--via {}: not available in this build", via));
}
