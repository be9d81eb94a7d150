// The part qcow v1 and qcow2 share: walk guest clusters in order, turn each cluster's mapping
// into segments (zero, host range, compressed cluster), merge neighbours (zero runs freely,
// host ranges while physically contiguous up to max_data_run) and read the data on demand.
// Memory: one L2 table, one window of the L1 table, one data buffer and one cluster of
// decompression space; with deferred decompression none of the last, and each decoding thread
// one compressed cluster's input (and a scratch cluster for one that straddles buffers).
#pragma once

#include <algorithm>
#include <deque>
#include <optional>
#include <vector>

#include "internal.h"

namespace imaged::import {

class ClusterReader : public ImageReader, public ClusterDecoder {
 public:
  uint64_t virtual_size() const override { return vsize_; }
  // A compressed cluster handed over undecoded: `key` is its L2 entry.
  Result<void> DecodeCluster(uint64_t key, uint64_t guest, std::span<uint8_t> out) const override {
    return Decompress(key, guest, out);
  }
  Result<std::optional<Run>> Next() override;
  // Maps every cluster without reading data: all metadata errors surface here, before any run.
  Result<void> Validate();

 protected:
  struct Segment {
    enum class Type { Zero, Host, Compressed } type;
    uint64_t guest = 0;
    uint64_t len = 0;
    uint64_t host = 0;   // Host: file offset of the first byte
    uint64_t entry = 0;  // Compressed: the raw L2 entry
  };

  ClusterReader(Source& source, const ReaderOptions& options, uint64_t vsize,
                unsigned cluster_bits);

  // Maps the guest range starting at the cluster-aligned `pos` (at least one cluster, or a
  // whole unallocated L2 range) through Add() and returns the position after it.
  virtual Result<uint64_t> MapStep(uint64_t pos) = 0;
  // Decompresses one compressed cluster (its L2 entry) into `out` (cluster_size bytes). Safe
  // to call from several threads at once (ReaderOptions::defer_decompression).
  virtual Result<void> Decompress(uint64_t entry, uint64_t guest, std::span<uint8_t> out) const = 0;

  void Add(const Segment& segment);
  // Entry `index` of an L1 table of `count` big-endian u64 at `offset`, read in windows.
  Result<uint64_t> L1Entry(uint64_t offset, uint64_t count, uint64_t index);
  // The L2 table at `offset` of `bytes` bytes (cached: the walk is sequential).
  Result<const uint8_t*> L2Table(uint64_t offset, size_t bytes);

  Source& src_;
  ReaderOptions options_;
  uint64_t vsize_;
  unsigned cluster_bits_;
  uint64_t cluster_size_;

 private:
  Result<std::optional<Run>> Materialize(Segment s);

  bool validating_ = false;
  uint64_t pos_ = 0;
  std::optional<Segment> pending_;
  std::deque<Segment> ready_;
  std::vector<uint8_t> buf_;    // Host data
  std::vector<uint8_t> cbuf_;   // one decompressed cluster
  std::vector<uint64_t> l1win_;
  uint64_t l1win_start_ = 0;
  std::vector<uint8_t> l2_;
  uint64_t l2_offset_ = 0;  // 0: nothing cached (an L2 table never sits at offset 0)
};

}  // namespace imaged::import
