// Image names end up in file names, dm device names and liblp's 36-byte name field.
#include <string_view>

#include "internal.h"
#include "manager/image_manager.h"
#include "metadata/lp_metadata.h"

namespace imaged {

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
    if (!ok) {
      if (c == '\0') return MakeError(EINVAL, "image name contains a NUL byte at {}", i);
      if (c == '/') return MakeError(EINVAL, "image name \"{}\" contains '/'", name);
      return MakeError(EINVAL,
                       "image name \"{}\" contains {:#04x} at {}; allowed: A-Z a-z 0-9 _ . -", name,
                       static_cast<unsigned char>(c), i);
    }
  }
  if (name.front() == '.') {
    return MakeError(EINVAL, "image name \"{}\" starts with '.'", name);
  }
  // The set's own files live next to `<name>.lock` and `<name>.status`.
  if (name == manager::kLpMetadataName) {
    return MakeError(EINVAL, "image name \"{}\" is reserved", name);
  }
  return Ok();
}

}  // namespace imaged
