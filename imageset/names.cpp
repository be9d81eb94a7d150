#include "imageset/names.h"

#include <algorithm>

#include "dm/device_mapper.h"
#include "fiemap/list_file.h"
#include "metadata/lp_metadata.h"

namespace imaged::imageset {
namespace {

constexpr std::string_view kListSuffix = ".img";
constexpr std::string_view kStatusSuffix = ".status";
constexpr std::string_view kIntentSuffix = ".intent";

// The image whose file `file` is when it ends in `suffix`, if that leaves a valid image name.
std::optional<std::string> ImageBefore(std::string_view file, std::string_view suffix) {
  if (!file.ends_with(suffix)) return std::nullopt;
  std::string image(file.substr(0, file.size() - suffix.size()));
  if (!ValidateImageName(image)) return std::nullopt;
  return image;
}

}  // namespace

Result<void> ValidateImageName(std::string_view name) {
  if (name.empty()) return MakeError(EINVAL, "image name is empty");
  if (name.size() > metadata::kMaxNameLength) {
    return MakeError(EINVAL, "image name \"{}\" is {} bytes, more than {} (liblp name field)",
                     name.substr(0, 64), name.size(), metadata::kMaxNameLength);
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (ok) continue;
    if (c == '\0') return MakeError(EINVAL, "image name contains a NUL byte at {}", i);
    if (c == '/') return MakeError(EINVAL, "image name \"{}\" contains '/'", name);
    return MakeError(EINVAL, "image name \"{}\" contains {:#04x} at {}; allowed: A-Z a-z 0-9 _ . -",
                     name, static_cast<unsigned char>(c), i);
  }
  // Names starting with '.' are the set's own (temp files, locks) and hidden files.
  if (name.front() == '.') return MakeError(EINVAL, "image name \"{}\" starts with '.'", name);
  return Ok();
}

bool IsImageName(std::string_view name) {
  return ValidateImageName(name).has_value();
}

std::string ListFileName(std::string_view image) {
  return std::string(image) + std::string(kListSuffix);
}

std::optional<DataFile> ClassifyDataFile(std::string_view file) {
  // A piece: "<list>.NNNN" where <list> is a list file name.
  if (file.size() > 5 && file[file.size() - 5] == '.') {
    const std::string_view list = file.substr(0, file.size() - 5);
    if (auto image = ImageBefore(list, kListSuffix)) {
      if (auto index = fiemap::PieceIndex(file, list)) {
        return DataFile{DataFile::Kind::kPiece, std::move(*image), *index};
      }
    }
  }
  if (auto image = ImageBefore(file, kListSuffix)) {
    return DataFile{DataFile::Kind::kList, std::move(*image), 0};
  }
  return std::nullopt;
}

std::string StatusFileName(std::string_view image) {
  return std::string(image) + std::string(kStatusSuffix);
}

std::string IntentFileName(std::string_view image) {
  return std::string(image) + std::string(kIntentSuffix);
}

std::optional<MetadataFile> ClassifyMetadataFile(std::string_view file) {
  if (auto image = ImageBefore(file, kStatusSuffix)) {
    return MetadataFile{MetadataFile::Kind::kStatus, std::move(*image)};
  }
  if (auto image = ImageBefore(file, kIntentSuffix)) {
    return MetadataFile{MetadataFile::Kind::kIntent, std::move(*image)};
  }
  return std::nullopt;
}

std::string ImageLockName(std::string_view image) {
  return std::string(image);
}

std::string DmName(std::string_view prefix, std::string_view image) {
  return std::string(prefix) + std::string(image);
}

Result<void> ValidateDmPrefix(std::string_view prefix) {
  // The longest image name must still make a valid dm name.
  return dm::DeviceMapper::ValidateName(DmName(prefix, std::string(metadata::kMaxNameLength, 'x')));
}

}  // namespace imaged::imageset
