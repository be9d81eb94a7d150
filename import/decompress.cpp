#include <zlib.h>
#include <zstd.h>

#include "internal.h"

namespace imaged::import {

// Raw deflate with a 4 KiB window, as QEMU writes it for qcow and qcow2. The output buffer is
// exactly one cluster, so no input can make it produce more.
Result<void> InflateRaw(std::span<const uint8_t> in, std::span<uint8_t> out) {
  z_stream s{};
  if (inflateInit2(&s, -12) != Z_OK) return MakeError(ENOMEM, "zlib: inflateInit2 failed");
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = out.data();
  s.avail_out = static_cast<uInt>(out.size());
  int ret = inflate(&s, Z_FINISH);
  uInt left = s.avail_out;
  inflateEnd(&s);
  // Like QEMU: the stream may be cut at the cluster end (Z_BUF_ERROR) as long as the cluster
  // came out whole; trailing input belongs to the next cluster.
  if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR || ret == Z_OK) && left == 0) return Ok();
  if (ret == Z_STREAM_END || ret == Z_BUF_ERROR || ret == Z_OK) {
    return MakeError(EINVAL, "deflate data decompresses to {} bytes, not the cluster size {}",
                     out.size() - left, out.size());
  }
  return MakeError(EINVAL, "deflate data is corrupt (zlib error {})", ret);
}

Result<void> ZstdDecompress(std::span<const uint8_t> in, std::span<uint8_t> out) {
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!ctx) return MakeError(ENOMEM, "zstd: cannot create a context");
  // A cluster is at most 2 MiB, so no legitimate frame needs a larger window; this bounds the
  // decoder's memory whatever the frame header claims.
  ZSTD_DCtx_setParameter(ctx.get(), ZSTD_d_windowLogMax, 21);
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  while (ob.pos < ob.size) {
    size_t in_before = ib.pos, out_before = ob.pos;
    size_t ret = ZSTD_decompressStream(ctx.get(), &ob, &ib);
    if (ZSTD_isError(ret)) {
      return MakeError(EINVAL, "zstd data is corrupt: {}", ZSTD_getErrorName(ret));
    }
    if (ret == 0) break;                                     // frame complete
    if (ib.pos == in_before && ob.pos == out_before) break;  // input exhausted
  }
  if (ob.pos != out.size()) {
    return MakeError(EINVAL, "zstd data decompresses to {} bytes, not the cluster size {}", ob.pos,
                     out.size());
  }
  return Ok();
}

}  // namespace imaged::import
