// Building and verifying a hash tree. Level 0 (one hash per data block: nearly all the work)
// is split into batches hashed on every core; each batch's level-0 blocks have a fixed place in
// the hash area, so batches finish in any order. The levels above are 1/128 of level 0 and
// are built in memory after it.
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "verity/hash_tree.h"

namespace imaged::verity {
namespace {

// About this much data per batch: large enough that a batch is one big read, small enough that
// every core gets batches and the buffers stay small.
constexpr uint64_t kBatchDataBytes = 4 << 20;
// Threads when the caller does not say: past a few, the disk rather than SHA-256 is the limit,
// and each thread holds a batch (8 threads: 32 MiB).
constexpr unsigned kMaxDefaultThreads = 8;
constexpr size_t kBufferAlign = 4096;

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint8_t, FreeDeleter>;

Result<Buffer> AllocateAligned(size_t bytes) {
  Buffer buffer(static_cast<uint8_t*>(
      std::aligned_alloc(kBufferAlign, (bytes + kBufferAlign - 1) / kBufferAlign * kBufferAlign)));
  if (!buffer) return MakeError(ENOMEM, "allocate {} bytes for verity", bytes);
  return buffer;
}

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

// SHA-256(salt || block), one per thread: the salted state is computed once and copied.
class Hasher {
 public:
  static Result<Hasher> Make(std::span<const uint8_t> salt) {
    Hasher h;
    h.salted_.reset(EVP_MD_CTX_new());
    h.work_.reset(EVP_MD_CTX_new());
    if (!h.salted_ || !h.work_ || EVP_DigestInit_ex(h.salted_.get(), EVP_sha256(), nullptr) != 1 ||
        EVP_DigestUpdate(h.salted_.get(), salt.data(), salt.size()) != 1) {
      return MakeError(ENOMEM, "set up SHA-256");
    }
    return h;
  }

  Result<Digest> Hash(std::span<const uint8_t> block) {
    Digest digest;
    unsigned int length = 0;
    if (EVP_MD_CTX_copy_ex(work_.get(), salted_.get()) != 1 ||
        EVP_DigestUpdate(work_.get(), block.data(), block.size()) != 1 ||
        EVP_DigestFinal_ex(work_.get(), digest.data(), &length) != 1 || length != kDigestSize) {
      return MakeError(ENOMEM, "SHA-256 of a {}-byte block", block.size());
    }
    return digest;
  }

 private:
  Hasher() = default;
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> salted_;
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> work_;
};

// Fills `block` with the hashes of `children` (consecutive blocks of `child_size` bytes), then
// zeros: one hash block of the tree.
Result<void> HashChildren(Hasher& hasher, const uint8_t* children, size_t count, size_t child_size,
                          std::span<uint8_t> block) {
  std::memset(block.data(), 0, block.size());
  for (size_t k = 0; k < count; ++k) {
    const Digest d = IMAGED_TRY(hasher.Hash({children + k * child_size, child_size}));
    std::memcpy(block.data() + k * kDigestSize, d.data(), kDigestSize);
  }
  return Ok();
}

// Level i's blocks (i >= 1) from the hashes of level i-1's blocks.
std::vector<uint8_t> BlocksOfHashes(const std::vector<Digest>& hashes, uint64_t blocks,
                                    uint32_t block_size) {
  std::vector<uint8_t> out(blocks * block_size, 0);
  for (size_t c = 0; c < hashes.size(); ++c) {
    std::memcpy(out.data() + c * kDigestSize, hashes[c].data(), kDigestSize);
  }
  return out;
}

// Hashes of consecutive blocks.
Result<std::vector<Digest>> HashBlocks(Hasher& hasher, std::span<const uint8_t> blocks,
                                       uint32_t block_size) {
  std::vector<Digest> hashes(blocks.size() / block_size);
  for (size_t j = 0; j < hashes.size(); ++j) {
    hashes[j] = IMAGED_TRY(hasher.Hash(blocks.subspan(j * block_size, block_size)));
  }
  return hashes;
}

bool AllZero(std::span<const uint8_t> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

// What the level-0 pass learns about each level-0 block.
struct LevelZero {
  std::vector<Digest> hashes;  // of each level-0 block (as computed when building, as stored
                               // when verifying)
  // Verifying only: per level-0 block, the first data block whose hash differs from its entry
  // (UINT64_MAX: none), and whether the block's padding is zero.
  std::vector<uint64_t> first_bad_data;
  std::vector<uint8_t> padding_ok;
};

// One walk over the data: builds level 0 (writing it through `write`) or checks it against
// what `stored` reads.
class LevelZeroPass {
 public:
  LevelZeroPass(const Params& params, const Geometry& geometry, const ReadAt& data,
                const WriteAt* write, const ReadAt* stored, const WalkOptions& options)
      : params_(params),
        geometry_(geometry),
        data_(data),
        write_(write),
        stored_(stored),
        options_(options),
        per_block_(uint64_t{geometry.hashes_per_block}),
        batch_blocks_(std::max<uint64_t>(1, kBatchDataBytes / (per_block_ * params.block_size))),
        level0_blocks_(geometry.level_blocks[0]),
        batches_((level0_blocks_ + batch_blocks_ - 1) / batch_blocks_),
        total_bytes_(params.data_blocks * params.block_size) {
    result_.hashes.resize(level0_blocks_);
    if (stored_) {
      result_.first_bad_data.assign(level0_blocks_, UINT64_MAX);
      result_.padding_ok.assign(level0_blocks_, 1);
    }
  }

  Result<LevelZero> Run() {
    unsigned threads = options_.threads
                           ? options_.threads
                           : std::min(std::thread::hardware_concurrency(), kMaxDefaultThreads);
    threads = static_cast<unsigned>(std::clamp<uint64_t>(threads, 1, batches_));
    std::vector<std::thread> workers;
    for (unsigned t = 1; t < threads; ++t) workers.emplace_back([this] { Work(); });
    Work();
    for (auto& w : workers) w.join();
    if (failed_) return error_;
    return std::move(result_);
  }

 private:
  void Work() {
    auto outcome = WorkBatches();
    if (!outcome) Fail(std::move(outcome).error());
  }

  Result<void> WorkBatches() {
    Hasher hasher = IMAGED_TRY(Hasher::Make(params_.salt));
    const size_t bs = params_.block_size;
    Buffer data = IMAGED_TRY(AllocateAligned(batch_blocks_ * per_block_ * bs));
    Buffer built = IMAGED_TRY(AllocateAligned(batch_blocks_ * bs));
    Buffer stored = stored_ ? IMAGED_TRY(AllocateAligned(batch_blocks_ * bs)) : Buffer();
    for (uint64_t b = next_batch_++; b < batches_ && !failed_; b = next_batch_++) {
      IMAGED_TRY(Batch(b, hasher, data.get(), built.get(), stored.get()));
    }
    return Ok();
  }

  Result<void> Batch(uint64_t batch, Hasher& hasher, uint8_t* data, uint8_t* built,
                     uint8_t* stored) {
    const size_t bs = params_.block_size;
    const uint64_t first = batch * batch_blocks_;  // level-0 block
    const uint64_t count = std::min(batch_blocks_, level0_blocks_ - first);
    const uint64_t first_data = first * per_block_;
    const uint64_t data_count = std::min(count * per_block_, params_.data_blocks - first_data);
    IMAGED_TRY_CTX(data_(first_data * bs, {data, data_count * bs}), "read data block {}",
                   first_data);
    for (uint64_t j = 0; j < count; ++j) {
      const uint64_t children = ChildrenOf(j, data_count);
      IMAGED_TRY(
          HashChildren(hasher, data + j * per_block_ * bs, children, bs, {built + j * bs, bs}));
    }
    const uint64_t at = (geometry_.level_first_block[0] + first) * bs;
    const std::span<uint8_t> level0{built, count * bs};
    if (write_) {
      IMAGED_TRY_CTX((*write_)(at, level0), "write verity hash block {}", at / bs);
    } else {
      IMAGED_TRY_CTX((*stored_)(at, {stored, count * bs}), "read verity hash block {}", at / bs);
      Compare(first, count, data_count, built, stored);
    }
    const uint8_t* hashed = write_ ? built : stored;
    for (uint64_t j = 0; j < count; ++j) {
      result_.hashes[first + j] = IMAGED_TRY(hasher.Hash({hashed + j * bs, bs}));
    }
    return Report(data_count * bs);
  }

  // How many of a batch's `data_count` data blocks level-0 block `j` of the batch hashes.
  uint64_t ChildrenOf(uint64_t j, uint64_t data_count) const {
    return std::min(per_block_, data_count - j * per_block_);
  }

  // Entry by entry: a differing entry is a data block that changed (if the hash block itself
  // proves sound); differing bytes after the entries are damaged padding.
  void Compare(uint64_t first, uint64_t count, uint64_t data_count, const uint8_t* built,
               const uint8_t* stored) {
    const size_t bs = params_.block_size;
    for (uint64_t j = 0; j < count; ++j) {
      const uint64_t children = ChildrenOf(j, data_count);
      const uint8_t* a = built + j * bs;
      const uint8_t* s = stored + j * bs;
      for (uint64_t k = 0; k < children; ++k) {
        if (std::memcmp(a + k * kDigestSize, s + k * kDigestSize, kDigestSize) != 0) {
          result_.first_bad_data[first + j] = (first + j) * per_block_ + k;
          break;
        }
      }
      const size_t used = children * kDigestSize;
      result_.padding_ok[first + j] = AllZero({s + used, bs - used});
    }
  }

  Result<void> Report(uint64_t bytes) {
    std::lock_guard lock(progress_mutex_);
    done_bytes_ += bytes;
    if (options_.progress && !options_.progress(done_bytes_, total_bytes_)) {
      return MakeError(ECANCELED, "verity hashing cancelled");
    }
    return Ok();
  }

  void Fail(Error error) {
    std::lock_guard lock(error_mutex_);
    if (!failed_) error_ = std::move(error);
    failed_ = true;
  }

  const Params& params_;
  const Geometry& geometry_;
  const ReadAt& data_;
  const WriteAt* write_;
  const ReadAt* stored_;
  const WalkOptions& options_;
  const uint64_t per_block_;     // data blocks under one level-0 block
  const uint64_t batch_blocks_;  // level-0 blocks per batch
  const uint64_t level0_blocks_;
  const uint64_t batches_;
  const uint64_t total_bytes_;

  LevelZero result_;  // each batch writes only its own elements
  std::atomic<uint64_t> next_batch_{0};
  std::mutex progress_mutex_;
  uint64_t done_bytes_ = 0;
  std::mutex error_mutex_;
  std::atomic<bool> failed_{false};
  Error error_;
};

// An image of one block has no tree: its root hash is the block's hash.
Result<Digest> HashOnlyBlock(const Params& params, const ReadAt& data, const WalkOptions& options) {
  Hasher hasher = IMAGED_TRY(Hasher::Make(params.salt));
  Buffer block = IMAGED_TRY(AllocateAligned(params.block_size));
  IMAGED_TRY_CTX(data(0, {block.get(), params.block_size}), "read data block 0");
  const Digest root = IMAGED_TRY(hasher.Hash({block.get(), params.block_size}));
  if (options.progress && !options.progress(params.block_size, params.block_size)) {
    return MakeError(ECANCELED, "verity hashing cancelled");
  }
  return root;
}

// The superblock padded to one block, as it starts the hash area.
Result<Buffer> SuperblockBlock(const Params& params) {
  Buffer block = IMAGED_TRY(AllocateAligned(params.block_size));
  std::memset(block.get(), 0, params.block_size);
  const auto sb = EncodeSuperblock(params);
  std::memcpy(block.get(), sb.data(), sb.size());
  return block;
}

Result<Buffer> ReadBlocks(const ReadAt& read, uint64_t first, uint64_t count, uint32_t bs) {
  Buffer blocks = IMAGED_TRY(AllocateAligned(count * bs));
  IMAGED_TRY_CTX(read(first * bs, {blocks.get(), count * bs}), "read verity hash block {}", first);
  return blocks;
}

}  // namespace

Result<Digest> BuildHashArea(const Params& params, const ReadAt& data, const WriteAt& hash,
                             const WalkOptions& options) {
  IMAGED_TRY(ValidateParams(params));
  const Geometry g = IMAGED_TRY(ComputeGeometry(params.data_blocks, params.block_size));
  const uint32_t bs = params.block_size;
  const Buffer sb = IMAGED_TRY(SuperblockBlock(params));
  IMAGED_TRY_CTX(hash(0, {sb.get(), bs}), "write verity superblock");
  if (g.level_blocks.empty()) return HashOnlyBlock(params, data, options);

  LevelZero zero = IMAGED_TRY(LevelZeroPass(params, g, data, &hash, nullptr, options).Run());
  Hasher hasher = IMAGED_TRY(Hasher::Make(params.salt));
  std::vector<Digest> below = std::move(zero.hashes);
  for (size_t i = 1; i < g.level_blocks.size(); ++i) {
    std::vector<uint8_t> level = BlocksOfHashes(below, g.level_blocks[i], bs);
    IMAGED_TRY_CTX(hash(g.level_first_block[i] * bs, level), "write verity hash level {}", i);
    below = IMAGED_TRY(HashBlocks(hasher, level, bs));
  }
  return below.at(0);  // the top level's one block
}

Result<VerifyReport> VerifyHashArea(const Params& params, const Digest& root, const ReadAt& data,
                                    const ReadAt& hash, const WalkOptions& options) {
  IMAGED_TRY(ValidateParams(params));
  const Geometry g = IMAGED_TRY(ComputeGeometry(params.data_blocks, params.block_size));
  const uint32_t bs = params.block_size;
  VerifyReport report;
  const Buffer want_sb = IMAGED_TRY(SuperblockBlock(params));
  const Buffer have_sb = IMAGED_TRY(ReadBlocks(hash, 0, 1, bs));
  if (std::memcmp(want_sb.get(), have_sb.get(), bs) != 0) report.first_bad_hash_block = 0;

  if (g.level_blocks.empty()) {
    if (IMAGED_TRY(HashOnlyBlock(params, data, options)) != root) report.first_bad_data_block = 0;
    report.ok = !report.first_bad_hash_block && !report.first_bad_data_block;
    return report;
  }

  LevelZero zero = IMAGED_TRY(LevelZeroPass(params, g, data, nullptr, &hash, options).Run());
  Hasher hasher = IMAGED_TRY(Hasher::Make(params.salt));
  const size_t levels = g.level_blocks.size();
  // hashes[i]: of each stored block of level i; stored[i]: level i's blocks as stored (i >= 1).
  std::vector<std::vector<Digest>> hashes(levels);
  std::vector<Buffer> stored(levels);
  hashes[0] = std::move(zero.hashes);
  for (size_t i = 1; i < levels; ++i) {
    stored[i] = IMAGED_TRY(ReadBlocks(hash, g.level_first_block[i], g.level_blocks[i], bs));
    hashes[i] = IMAGED_TRY(HashBlocks(hasher, {stored[i].get(), g.level_blocks[i] * bs}, bs));
  }

  // Top down: a block is sound when its parent is and the parent's entry is the block's hash
  // (the top's parent is the root). The first unsound block whose parent is sound is where the
  // damage is; data is judged only under sound level-0 blocks.
  const auto blame = [&report](uint64_t hash_block) {
    report.first_bad_hash_block =
        std::min(report.first_bad_hash_block.value_or(UINT64_MAX), hash_block);
  };
  report.root_differs = hashes[levels - 1][0] != root;
  std::vector<uint8_t> sound(1, !report.root_differs);
  for (size_t i = levels - 1; i > 0; --i) {
    const size_t used = hashes[i - 1].size() * kDigestSize;
    const uint8_t* entries = stored[i].get();
    // Only a level's last block has padding after its entries.
    if (sound.back() && !AllZero({entries + used, g.level_blocks[i] * bs - used})) {
      blame(g.level_first_block[i] + g.level_blocks[i] - 1);
    }
    std::vector<uint8_t> child_sound(hashes[i - 1].size());
    for (size_t c = 0; c < child_sound.size(); ++c) {
      const bool match =
          std::memcmp(entries + c * kDigestSize, hashes[i - 1][c].data(), kDigestSize) == 0;
      child_sound[c] = sound[c / g.hashes_per_block] && match;
      if (sound[c / g.hashes_per_block] && !match) blame(g.level_first_block[i - 1] + c);
    }
    sound = std::move(child_sound);
  }
  for (size_t j = 0; j < sound.size(); ++j) {
    if (!sound[j]) continue;
    if (!zero.padding_ok[j]) blame(g.level_first_block[0] + j);
    if (zero.first_bad_data[j] != UINT64_MAX && !report.first_bad_data_block) {
      report.first_bad_data_block = zero.first_bad_data[j];
    }
  }
  report.ok = !report.root_differs && !report.first_bad_hash_block && !report.first_bad_data_block;
  return report;
}

}  // namespace imaged::verity
