// Crash-safe whole-file replacement: temp file in the same directory, write, fsync, rename, fsync
// of the directory. A reader sees either the old file or the new one, never a mix.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "imaged/common/result.h"

namespace imaged::metadata {

// Temp files are named `.imaged-tmp.<basename>.XXXXXX` in the target's directory.
inline constexpr const char* kTempFilePrefix = ".imaged-tmp.";

// The steps of AtomicWriteFile, in order. A hook runs before each.
enum class AtomicWriteStep { kCreateTemp, kWrite, kFsyncFile, kRename, kFsyncDir };

// Test-only fault injection. The hook's answer decides what happens before `step`:
//  kContinue: do the step;
//  kFail:     behave as if the step failed with EIO (temp file removed, old file untouched);
//  kCrash:    stop right here leaving everything as a SIGKILL would (temp file left behind).
enum class AtomicWriteAction { kContinue, kFail, kCrash };
struct AtomicWriteHooks {
  std::function<AtomicWriteAction(AtomicWriteStep)> before_step;
};

Result<void> AtomicWriteFile(const std::string& path, std::span<const uint8_t> data,
                             mode_t mode = 0644, const AtomicWriteHooks* hooks = nullptr);

// EFBIG if the file is larger than max_bytes; errors carry the path.
Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path, size_t max_bytes);

// Removes leftover temp files (kTempFilePrefix) in `dir` from writers that died mid-write.
// Call only when no writer can be active in `dir` (e.g. at daemon start under the dir lock).
// Returns the number removed.
Result<size_t> CleanupTempFiles(const std::string& dir);

// fsync of a directory, so a rename/unlink inside it is durable.
Result<void> FsyncDirectory(const std::string& dir);

}  // namespace imaged::metadata
