// imaged-init: maps imaged's images from lp_metadata at early boot (initramfs), before the data
// filesystem is mounted; the daemon adopts the devices later. See docs/boot.md.
#include <iostream>
#include <string>
#include <vector>

#include "init/commands.h"
#include "init/options.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  imaged::init::ParsedArgs parsed = imaged::init::ParseArgs(args);
  if (!parsed.run) {
    (parsed.exit_code == 0 ? std::cout : std::cerr) << parsed.text;
    return parsed.exit_code;
  }
  return imaged::init::Run(parsed.options, std::cout, std::cerr);
}
