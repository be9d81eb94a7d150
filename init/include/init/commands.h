// The three imaged-init commands. Each prints one line per image (errors name the image) and
// returns the process exit status: 0 when every requested image succeeded, 1 when some failed
// (the others are still done: one bad image must not keep the rest from booting).
#pragma once

#include <ostream>
#include <string>

#include "imaged/common/result.h"
#include "init/disk.h"
#include "init/options.h"
#include "metadata/lp_metadata.h"

namespace imaged::init {

int RunMap(const Options& options, std::ostream& out, std::ostream& err,
           const DiskLookup& lookup = {});
int RunUnmap(const Options& options, std::ostream& out, std::ostream& err);
int RunList(const Options& options, std::ostream& out, std::ostream& err);
int Run(const Options& options, std::ostream& out, std::ostream& err);

// Names (imageset::DmName) and tables (imageset::TableFromLp) are the daemon's own, so the daemon
// adopts what imaged-init maps.

// `list` output for `md`. `mapped` holds the dm names that exist, or is null when device-mapper
// cannot be asked (shown as "?" / JSON null).
std::string FormatList(const metadata::LpMetadata& md, const std::string& prefix,
                       const std::vector<std::string>* mapped, bool json);

}  // namespace imaged::init
