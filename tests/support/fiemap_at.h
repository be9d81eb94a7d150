// Tests name files by path; the libraries name them inside an open Directory. These open the
// path's directory and call the library with the file's name, so a test reads as before.
#pragma once

#include <string>
#include <vector>

#include "fiemap/fiemap_writer.h"
#include "fiemap/split_file.h"
#include "imaged/common/file_io.h"

namespace imaged::test {

inline Result<fiemap::FiemapWriter> CreateAt(const std::string& path, uint64_t size,
                                             const fiemap::FiemapWriter::CreateOptions& options) {
  auto dir = IMAGED_TRY(Directory::Open(Dirname(path)));
  return fiemap::FiemapWriter::Create(dir, Basename(path), size, options);
}
inline Result<fiemap::FiemapWriter> CreateAt(const std::string& path, uint64_t size,
                                             const Progress& progress = {}) {
  fiemap::FiemapWriter::CreateOptions options;
  options.progress = progress;
  return CreateAt(path, size, options);
}
inline Result<fiemap::FiemapWriter> OpenAt(const std::string& path) {
  auto dir = IMAGED_TRY(Directory::Open(Dirname(path)));
  return fiemap::FiemapWriter::Open(dir, Basename(path));
}
inline Result<fiemap::SplitFiemap> CreateSplitAt(const std::string& list_path, uint64_t size,
                                                 const fiemap::SplitFiemap::CreateOptions& o) {
  auto dir = IMAGED_TRY(Directory::Open(Dirname(list_path)));
  return fiemap::SplitFiemap::Create(dir, Basename(list_path), size, o);
}
inline Result<fiemap::SplitFiemap> OpenSplitAt(const std::string& list_path) {
  auto dir = IMAGED_TRY(Directory::Open(Dirname(list_path)));
  return fiemap::SplitFiemap::Open(dir, Basename(list_path));
}
inline Result<void> RemoveSplitAt(const std::string& list_path) {
  auto dir = IMAGED_TRY(Directory::Open(Dirname(list_path)));
  return fiemap::SplitFiemap::Remove(dir, Basename(list_path));
}
// Full paths of the pieces the list file names.
inline Result<std::vector<std::string>> ListPiecesAt(const std::string& list_path) {
  auto dir = IMAGED_TRY(Directory::Open(Dirname(list_path)));
  auto names = IMAGED_TRY(fiemap::SplitFiemap::ListPieces(dir, Basename(list_path)));
  for (auto& n : names) n = dir.PathOf(n);
  return names;
}

}  // namespace imaged::test
