// Command line of imaged-init: what to do, on which metadata dir, with which safety checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "imaged/common/result.h"

namespace imaged::init {

enum class Command { kMap, kUnmap, kList };

// kAuto verifies when the data disk holds an unmounted, cleanly unmounted ext2/3/4 filesystem and
// skips (with a warning) otherwise; kOn refuses to map anything it cannot verify.
enum class VerifyMode { kAuto, kOn, kOff };

struct Options {
  Command command = Command::kList;
  std::string metadata_dir;
  std::string data_device;  // empty: resolve from lp_metadata's block-device entry
  VerifyMode verify = VerifyMode::kAuto;
  bool readonly = false;  // map every image read-only
  std::string prefix = "imaged-";
  bool write_status = false;  // record dm:<name> in <metadata_dir>/<name>.status
  // Directory of the image files relative to the data filesystem's root, e.g. "/images".
  // Empty: search for <name>.img breadth-first, at most search_depth directories deep.
  std::string data_path_in_fs;
  int search_depth = 3;
  uint64_t fs_offset = 0;  // bytes from the start of the disk to the filesystem
  // Also map the whole data disk as dm-linear device <passthrough>, so the data filesystem can
  // still be mounted (from /dev/mapper/<passthrough>) once images hold the disk: the kernel lets
  // dm devices share a disk but refuses a mount of a disk that dm holds (EBUSY).
  std::string passthrough;
  bool json = false;
  std::vector<std::string> names;  // empty: every image in lp_metadata
};

// What the command line asked for: options to run, or a text to print and an exit status
// (help: 0 on stdout; usage errors: 2 on stderr).
struct ParsedArgs {
  bool run = false;
  Options options;
  int exit_code = 0;
  std::string text;
};

// args[0] is the program name.
ParsedArgs ParseArgs(const std::vector<std::string>& args);

}  // namespace imaged::init
