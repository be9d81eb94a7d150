// Every name of an image set, in one place: what an image's files, devices and locks are
// called, and which names are the set's own. The data dir holds `<image>.img` (the list file)
// and its pieces `<image>.img.NNNN`; the metadata dir holds `lp_metadata` and its previous
// generation `lp_metadata.prev`, `<image>.status` (the devices of a mapped image),
// `<image>.intent` (an operation on the image under way: manager/intent.h) and the lock
// directory `.locks/`. Image names never start with '.', so no image's file
// can be a temp file (`.imaged-tmp.*`), the lock directory or one of the set's own locks
// (`.locks/.daemon`, `.locks/.set`, `.locks/.lp_metadata`), whatever the image is called;
// each kind of image file has its own suffix, so no image's file is another image's either.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "imaged/common/result.h"

namespace imaged::imageset {

// `[A-Za-z0-9_.-]{1,35}`, not starting with '.': 35 because liblp's name field is 36 bytes with
// a terminating NUL, so lp_metadata stays readable by liblp itself. EINVAL with the reason.
Result<void> ValidateImageName(std::string_view name);
// Whether an lp_metadata partition is one of imaged's images: its name is one imaged could
// have made. Other liblp tools' partitions in the same lp_metadata are listed and kept, but
// imaged never maps, changes or deletes them.
bool IsImageName(std::string_view name);

// ---- data dir ----
std::string ListFileName(std::string_view image);  // "<image>.img"

struct DataFile {
  enum class Kind { kList, kPiece };
  Kind kind = Kind::kList;
  std::string image;
  size_t piece = 0;  // for kPiece
};
// What a data-dir entry is: the list file or a piece of an image with a valid name, or nullopt
// (temp files, foreign files).
std::optional<DataFile> ClassifyDataFile(std::string_view file);

// ---- metadata dir ----
inline constexpr std::string_view kLpMetadataFile = "lp_metadata";
// The lp_metadata before the last change, kept for rebuilding a lost or damaged one.
inline constexpr std::string_view kLpMetadataPrevFile = "lp_metadata.prev";
std::string StatusFileName(std::string_view image);  // "<image>.status"
std::string IntentFileName(std::string_view image);  // "<image>.intent"

struct MetadataFile {
  enum class Kind { kStatus, kIntent };
  Kind kind = Kind::kStatus;
  std::string image;
};
// What a metadata-dir entry is, or nullopt (lp_metadata and its previous generation, temp
// files, the lock dir, foreign files).
std::optional<MetadataFile> ClassifyMetadataFile(std::string_view file);

// ---- locks (in the metadata dir's kLockDir) ----
inline constexpr std::string_view kLockDir = ".locks";
inline constexpr std::string_view kDaemonLock = ".daemon";           // one daemon per set
inline constexpr std::string_view kSetLock = ".set";                 // shared by operations
inline constexpr std::string_view kLpMetadataLock = ".lp_metadata";  // around lp_metadata edits
std::string ImageLockName(std::string_view image);                   // "<image>"

// ---- device-mapper ----
// `<prefix><image>`; EINVAL when the prefix could not make a valid dm name.
std::string DmName(std::string_view prefix, std::string_view image);
Result<void> ValidateDmPrefix(std::string_view prefix);

}  // namespace imaged::imageset
