// The manager's crash points (the mechanism and its environment variables are in
// imaged/common/crash_point.h; the grow.* points are in fiemap/split_file.cpp). Points
// (operation.step, in the order they are hit):
//   create.checked          checks done, nothing durable yet
//   create.set_metadata_written  a new set's first (empty) lp_metadata written, no pieces yet
//   create.piece_progress   each progress report while pieces are allocated and written
//   create.pieces_done      pieces and list file written, no lp_metadata entry
//   create.lp_written       lp_metadata names the image (before any zero-fill)
//   create.done             everything done, before the reply
//   delete.checked          not mapped, nothing changed yet
//   delete.lp_removed       lp_metadata entry gone, files still there
//   delete.files_removed    pieces and list file gone, status/lock files remain
//   map.status_dm           dm entry recorded in <name>.status, dm device not created
//   map.loop_recorded       loop:/dev/loopN recorded, LOOP_CONFIGURE not yet done
//   map.loop_attached       a loop configured and recorded
//   map.dm_created          dm device over the loops created
//   map.done                mapped, before the reply
//   unmap.dm_removed        the dm device is gone, loops still attached
//   unmap.loop_detached     after each loop detach
//   unmap.status_removed    status file gone, allocation not yet restored
//   unmap.done              unmapped, before the reply
//   resize.checked          checks done, nothing durable yet
//   grow.piece_created      after each new piece (SplitFiemap::Grow)
//   grow.list_written       list file names the new pieces, lp_metadata not yet grown
//   resize.lp_written       lp_metadata has the new size (a mapped image's device not yet)
//   grow.loop_recorded      mapped split image: a new piece's loop recorded, not configured
//   resize.device_grown     a mapped image's device has the new size, the intent remains
//   shrink.checked          checks done (unmapped, no filesystem cut), nothing durable yet
//   shrink.lp_written       lp_metadata has the smaller size, pieces not yet cut
//   shrink.pieces_cut       list file and pieces cut, the intent remains
//   import.marked           <name>.incomplete written, image not yet created
//   import.created          image created (empty), no data copied
//   import.copy_progress    each progress report while data is copied
//   import.copied           data copied and synced, the incomplete marker still there
//   import.done             marker removed, before the reply
//   zero_fill.progress      each progress report while zeros are written
// And in Directory::AtomicWrite (lp_metadata, status and list files), with the same variables:
//   atomic.temp_written     temp file written and fsynced, not renamed
//   atomic.renamed          renamed over the target, directory not fsynced
#pragma once

#include "imaged/common/crash_point.h"
