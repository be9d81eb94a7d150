// What filesystem an image holds, and how large that filesystem says it is, from its
// superblock: shrink refuses to cut a filesystem short, and resize --fs picks the tool that
// grows it. ext4 (and ext2/3), xfs and f2fs; anything else is "none found". The bytes come from
// an image a client wrote, so every field is checked before it is used.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace imaged::fsprobe {

struct Filesystem {
  std::string type;         // "ext4", "xfs", "f2fs" (ext2/3 report as "ext4": one tool family)
  uint64_t size_bytes = 0;  // what the superblock says the filesystem spans
};

// The first kProbeBytes of the image (fewer if the image is smaller) are enough for every
// superblock probed.
inline constexpr size_t kProbeBytes = 64 * 1024;

// nullopt when no superblock of a known filesystem is found, or the one found is not sane.
std::optional<Filesystem> Probe(std::span<const uint8_t> head);

}  // namespace imaged::fsprobe
