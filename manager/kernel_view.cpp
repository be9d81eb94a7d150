#include "kernel_view.h"

#include "dm/loop_list.h"

namespace imaged::manager {

Result<KernelView> KernelView::Scan(dm::DeviceMapper* dm) {
  KernelView view;
  if (dm) {
    for (auto& d : IMAGED_TRY_CTX(dm->List(), "list device-mapper devices")) {
      view.dm_names_.insert(std::move(d.name));
    }
  }
  for (auto& l : IMAGED_TRY(dm::ListAttachedLoops())) {
    const FileId id{l.backing_dev, l.backing_ino};
    view.file_by_loop_[l.loop_path] = id;
    view.loops_by_file_[id].push_back(std::move(l.loop_path));
  }
  return view;
}

const std::vector<std::string>& KernelView::LoopsOf(const FileId& id) const {
  static const std::vector<std::string> kNone;
  auto it = loops_by_file_.find(id);
  return it == loops_by_file_.end() ? kNone : it->second;
}

std::optional<FileId> KernelView::BackingOf(const std::string& loop_path) const {
  auto it = file_by_loop_.find(loop_path);
  if (it == file_by_loop_.end()) return std::nullopt;
  return it->second;
}

}  // namespace imaged::manager
