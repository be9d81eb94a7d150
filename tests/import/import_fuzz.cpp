// libFuzzer target: bytes -> reader -> every run drained into a null sink (deferred reads
// included). Built three times with IMPORT_FUZZ_FORMAT = Sparse, Qcow1 or Qcow2.
#include <cstddef>
#include <cstdint>

#include "fuzz_drain.h"
#include "import/reader.h"
#include "import/source.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imaged::import;
  MemorySource source({data, size});
  ReaderOptions options;
  options.max_data_run = 1 << 20;
  // Both ways of handing over stored data (the manager's import defers the reads); the choice
  // comes from the input so each corpus entry keeps its path.
  options.defer_data_reads = size > 0 && (data[size - 1] & 1) != 0;
  auto reader = OpenReader(source, Format::IMPORT_FUZZ_FORMAT, options);
  if (reader) fuzz::Drain(**reader);
  return 0;
}
