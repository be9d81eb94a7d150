#include "cluster_reader.h"

#include <algorithm>

namespace imaged::import {

namespace {
constexpr uint64_t kL1Window = 4096;  // entries read at a time
}

ClusterReader::ClusterReader(Source& source, const ReaderOptions& options, uint64_t vsize,
                             unsigned cluster_bits)
    : src_(source),
      options_(options),
      vsize_(vsize),
      cluster_bits_(cluster_bits),
      cluster_size_(uint64_t{1} << cluster_bits) {}

void ClusterReader::Add(const Segment& segment) {
  if (validating_ || segment.guest >= vsize_) return;
  Segment s = segment;
  s.len = std::min(s.len, vsize_ - s.guest);
  if (s.len == 0) return;
  if (pending_) {
    Segment& p = *pending_;
    bool zero = p.type == Segment::Type::Zero && s.type == Segment::Type::Zero;
    bool contiguous = p.type == Segment::Type::Host && s.type == Segment::Type::Host &&
                      p.host + p.len == s.host && p.len + s.len <= options_.max_data_run;
    if ((zero || contiguous) && p.guest + p.len == s.guest) {
      p.len += s.len;
      return;
    }
    ready_.push_back(p);
  }
  pending_ = s;
}

Result<uint64_t> ClusterReader::L1Entry(uint64_t offset, uint64_t count, uint64_t index) {
  if (index < l1win_start_ || index >= l1win_start_ + l1win_.size()) {
    l1win_start_ = index - index % kL1Window;
    uint64_t n = std::min(kL1Window, count - l1win_start_);
    std::vector<uint8_t> raw(n * 8);
    IMAGED_TRY_CTX(src_.ReadAt(raw.data(), raw.size(), offset + l1win_start_ * 8),
                   "L1 table at offset {}", offset);
    l1win_.resize(n);
    for (uint64_t i = 0; i < n; ++i) l1win_[i] = Be64(&raw[i * 8]);
  }
  return l1win_[index - l1win_start_];
}

Result<const uint8_t*> ClusterReader::L2Table(uint64_t offset, size_t bytes) {
  if (l2_offset_ != offset || l2_.size() != bytes) {
    l2_offset_ = 0;
    l2_.resize(bytes);
    IMAGED_TRY_CTX(src_.ReadAt(l2_.data(), bytes, offset), "L2 table at offset {}", offset);
    l2_offset_ = offset;
  }
  return l2_.data();
}

Result<void> ClusterReader::Validate() {
  validating_ = true;
  uint64_t pos = 0;
  while (pos < vsize_) {
    auto next = MapStep(pos);
    if (!next) {
      validating_ = false;
      return std::move(next).error();
    }
    pos = *next;
  }
  validating_ = false;
  return Ok();
}

Result<std::optional<Run>> ClusterReader::Next() {
  while (ready_.empty()) {
    if (pos_ >= vsize_) {
      if (!pending_) return std::optional<Run>();
      ready_.push_back(*pending_);
      pending_.reset();
      break;
    }
    pos_ = IMAGED_TRY(MapStep(pos_));
  }
  Segment s = ready_.front();
  ready_.pop_front();
  return Materialize(s);
}

Result<std::optional<Run>> ClusterReader::Materialize(Segment s) {
  Run run;
  run.offset = s.guest;
  switch (s.type) {
    case Segment::Type::Zero:
      run.kind = Run::Kind::Zero;
      run.length = s.len;
      break;
    case Segment::Type::Host: {
      if (s.len > options_.max_data_run) {
        Segment rest = s;
        rest.guest += options_.max_data_run;
        rest.host += options_.max_data_run;
        rest.len -= options_.max_data_run;
        ready_.push_front(rest);
        s.len = options_.max_data_run;
      }
      run.kind = Run::Kind::Data;
      run.length = s.len;
      if (options_.defer_data_reads) {
        run.source = &src_;
        run.source_offset = s.host;
        break;
      }
      buf_.resize(options_.max_data_run);
      IMAGED_TRY_CTX(src_.ReadAt(buf_.data(), s.len, s.host),
                     "data for guest offset {} at file offset {}", s.guest, s.host);
      run.data = {buf_.data(), s.len};
      break;
    }
    case Segment::Type::Compressed:
      run.kind = Run::Kind::Data;
      run.length = s.len;  // the last cluster may be cut at the virtual size
      if (options_.defer_decompression) {
        run.decoder = this;
        run.decode_key = s.entry;
        run.decoded_size = cluster_size_;
        break;
      }
      cbuf_.resize(cluster_size_);
      IMAGED_TRY(Decompress(s.entry, s.guest, cbuf_));
      run.data = {cbuf_.data(), s.len};
      break;
  }
  return std::optional<Run>(run);
}

}  // namespace imaged::import
