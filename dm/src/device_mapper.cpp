#include "dm/device_mapper.h"

#include <dirent.h>
#include <libdevmapper.h>
#include <linux/dm-ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>

namespace imaged::dm {
namespace {

// libdevmapper keeps process-wide state (node operation stack, cookies, log function), so every
// call into it runs under this lock.
std::mutex g_mutex;

// The last error libdevmapper logged on this thread, for errors that carry no errno.
thread_local std::string t_last_log;
thread_local int t_last_errno = 0;

// Level constants from libdevmapper's internal log.h; the high bits are flags.
constexpr int kLogLevelMask = 0x0f;
constexpr int kLogErr = 3;

void LogToBuffer(int level, const char* /*file*/, int /*line*/, int dm_errno, const char* format,
                 ...) {
  if ((level & kLogLevelMask) > kLogErr) return;
  t_last_errno = dm_errno;
  char buf[512];
  va_list ap;
  va_start(ap, format);
  vsnprintf(buf, sizeof(buf), format, ap);
  va_end(ap);
  t_last_log = buf;
}

void InitLibrary() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Errors come back as values; libdevmapper must not print to our stderr.
    dm_log_with_errno_init(LogToBuffer);
    // Names are validated by us and passed verbatim: "auto" mangling would hex-escape
    // characters udev dislikes, so the kernel's name would differ from the caller's.
    dm_set_name_mangling_mode(DM_STRING_MANGLING_NONE);
    // Without a running udevd nothing would ever complete a udev cookie: let libdevmapper
    // create and remove the /dev/mapper nodes itself (DM_DISABLE_UDEV=1 does the same).
    if (access("/run/udev/control", F_OK) != 0) dm_udev_set_sync_support(0);
  });
}

struct TaskDeleter {
  void operator()(dm_task* t) const { dm_task_destroy(t); }
};
using Task = std::unique_ptr<dm_task, TaskDeleter>;

Result<Task> NewTask(int type, const std::string& name, std::string_view what) {
  Task task(dm_task_create(type));
  if (!task) return MakeError(ENOMEM, "{} \"{}\": dm_task_create", what, name);
  if (!name.empty() && !dm_task_set_name(task.get(), name.c_str())) {
    return MakeError(EINVAL, "{} \"{}\": dm_task_set_name", what, name);
  }
  return task;
}

Error TaskError(dm_task* task, std::string_view what, const std::string& name) {
  std::string where = name.empty() ? std::string(what) : fmt::format("{} \"{}\"", what, name);
  int code = dm_task_get_errno(task);
  if (code != 0) return Error{code, where};
  // Create-with-table runs inner tasks whose errno only reaches the log text, which ends with
  // ": <strerror>" (the log callback's errno argument is just -1).
  std::string log = t_last_log;
  code = t_last_errno > 0 ? t_last_errno : 0;
  for (int e = 1; code == 0 && e < 134; ++e) {
    std::string suffix = fmt::format(": {}", std::strerror(e));
    if (log.size() > suffix.size() &&
        log.compare(log.size() - suffix.size(), suffix.size(), suffix) == 0) {
      code = e;
    }
  }
  if (code == 0) code = EIO;
  std::string suffix = fmt::format(": {}", std::strerror(code));
  if (log.size() > suffix.size() &&
      log.compare(log.size() - suffix.size(), suffix.size(), suffix) == 0) {
    log.resize(log.size() - suffix.size());  // ToString() appends it again
  }
  return Error{code, log.empty() ? where : fmt::format("{}: {}", where, log)};
}

// Runs the task. Tasks that change device nodes take a udev cookie; dm_udev_wait then either
// waits for udev or (without udev) performs the node operations itself.
Result<void> Run(dm_task* task, std::string_view what, const std::string& name, bool with_cookie) {
  t_last_log.clear();
  t_last_errno = 0;
  uint32_t cookie = 0;
  if (with_cookie && !dm_task_set_cookie(task, &cookie, 0)) {
    return MakeError(EIO, "{} \"{}\": dm_task_set_cookie", what, name);
  }
  bool ok = dm_task_run(task) != 0;
  Error error;
  if (!ok) error = TaskError(task, what, name);
  if (with_cookie) dm_udev_wait(cookie);
  if (!ok) return error;
  return Ok();
}

Result<void> AddTargets(dm_task* task, const Table& table, const std::string& name) {
  for (const auto& target : table.targets()) {
    std::string type = target->type();
    std::string params = target->params();
    if (!dm_task_add_target(task, target->start(), target->length(), type.c_str(),
                            params.c_str())) {
      return MakeError(ENOMEM, "dm table for \"{}\": add target at sector {}", name,
                       target->start());
    }
  }
  return Ok();
}

Result<std::optional<DeviceInfo>> InfoOfTask(dm_task* task, const std::string& name);

Result<std::optional<DeviceInfo>> InfoLocked(const std::string& name) {
  Task task = IMAGED_TRY(NewTask(DM_DEVICE_INFO, name, "dm info"));
  return InfoOfTask(task.get(), name);
}

Result<std::optional<DeviceInfo>> InfoOfTask(dm_task* task, const std::string& name) {
  IMAGED_TRY(Run(task, "dm info", name, false));
  dm_info info{};
  if (!dm_task_get_info(task, &info)) return MakeError(EIO, "dm info \"{}\"", name);
  if (!info.exists) return std::optional<DeviceInfo>();
  DeviceInfo out;
  const char* real_name = dm_task_get_name(task);
  out.name = real_name ? real_name : name;
  const char* uuid = dm_task_get_uuid(task);
  out.uuid = uuid ? uuid : "";
  out.dev = makedev(info.major, info.minor);
  out.open_count = info.open_count;
  out.target_count = info.target_count;
  out.active = info.live_table != 0;
  out.suspended = info.suspended != 0;
  out.readonly = info.read_only != 0;
  out.deferred_remove = info.deferred_remove != 0;
  return std::optional<DeviceInfo>(std::move(out));
}

Result<void> RemoveLocked(const std::string& name, const RemoveOptions& options) {
  std::chrono::milliseconds backoff(5);
  for (int attempt = 0;; ++attempt) {
    Task task = IMAGED_TRY(NewTask(DM_DEVICE_REMOVE, name, "dm remove"));
    if (options.deferred && !dm_task_deferred_remove(task.get())) {
      return MakeError(EIO, "dm remove \"{}\": dm_task_deferred_remove", name);
    }
    auto result = Run(task.get(), "dm remove", name, true);
    if (result) return Ok();
    int code = result.error().code;
    if (code == ENXIO && options.ignore_missing) return Ok();
    if (code != EBUSY || attempt >= options.retries) return result;
    // Busy is often a short-lived opener (udev's blkid probe): back off and retry.
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  }
}

// Waits for the node libdevmapper or udev creates, bounded by `timeout`.
Result<void> WaitForNode(const std::string& path, dev_t dev, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode) && st.st_rdev == dev) return Ok();
    if (std::chrono::steady_clock::now() >= deadline) {
      return MakeError(ETIMEDOUT, "wait {} ms for \"{}\" ({})", timeout.count(), path,
                       DeviceMapper::DeviceString(dev));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Result<std::vector<TargetInfo>> TargetsLocked(int type, const std::string& name,
                                              std::string_view what) {
  Task task = IMAGED_TRY(NewTask(type, name, what));
  IMAGED_TRY(Run(task.get(), what, name, false));
  dm_info info{};
  if (!dm_task_get_info(task.get(), &info)) return MakeError(EIO, "{} \"{}\"", what, name);
  if (!info.exists) return MakeError(ENXIO, "{} \"{}\"", what, name);
  std::vector<TargetInfo> out;
  void* next = nullptr;
  do {
    uint64_t start = 0, length = 0;
    char* target_type = nullptr;
    char* params = nullptr;
    next = dm_get_next_target(task.get(), next, &start, &length, &target_type, &params);
    if (target_type == nullptr) break;  // no live table
    out.push_back(TargetInfo{start, length, target_type, params ? params : ""});
  } while (next != nullptr);
  return out;
}

}  // namespace

DeviceMapper::DeviceMapper() {
  InitLibrary();
}

Result<void> DeviceMapper::ValidateName(std::string_view name) {
  if (name.empty()) return MakeError(EINVAL, "dm name is empty");
  if (name.size() >= DM_NAME_LEN) {
    return MakeError(EINVAL, "dm name \"{}...\" is {} bytes, more than {}", name.substr(0, 16),
                     name.size(), DM_NAME_LEN - 1);
  }
  if (name == "." || name == "..") return MakeError(EINVAL, "dm name \"{}\" is reserved", name);
  for (char c : name) {
    if (c == '/') return MakeError(EINVAL, "dm name \"{}\" contains '/'", name);
    if (c < 0x21 || c > 0x7e) {
      return MakeError(EINVAL, "dm name contains byte 0x{:02x} (only printable ASCII, no spaces)",
                       static_cast<unsigned char>(c));
    }
  }
  return Ok();
}

Result<void> DeviceMapper::ValidateUuid(std::string_view uuid) {
  if (uuid.size() >= DM_UUID_LEN) {
    return MakeError(EINVAL, "dm uuid is {} bytes, more than {}", uuid.size(), DM_UUID_LEN - 1);
  }
  for (char c : uuid) {
    if (c < 0x21 || c > 0x7e) {
      return MakeError(EINVAL, "dm uuid contains byte 0x{:02x} (only printable ASCII, no spaces)",
                       static_cast<unsigned char>(c));
    }
  }
  return Ok();
}

std::string DeviceMapper::DevicePath(const std::string& name) {
  return "/dev/mapper/" + name;
}

std::string DeviceMapper::DeviceString(dev_t dev) {
  return fmt::format("{}:{}", major(dev), minor(dev));
}

Result<std::string> DeviceMapper::Create(const std::string& name, const Table& table,
                                         const CreateOptions& options) {
  IMAGED_TRY_CTX(ValidateName(name), "create dm device");
  IMAGED_TRY_CTX(ValidateUuid(options.uuid), "create dm device \"{}\"", name);
  IMAGED_TRY_CTX(table.Validate(), "create dm device \"{}\"", name);
  std::lock_guard lock(g_mutex);
  // The kernel says EBUSY for a taken name; say what it means.
  if (IMAGED_TRY(InfoLocked(name))) {
    return MakeError(EEXIST, "create dm device \"{}\"", name);
  }
  Task task = IMAGED_TRY(NewTask(DM_DEVICE_CREATE, name, "create dm device"));
  if (!options.uuid.empty() && !dm_task_set_uuid(task.get(), options.uuid.c_str())) {
    return MakeError(EINVAL, "create dm device \"{}\": dm_task_set_uuid", name);
  }
  if ((options.readonly || table.readonly()) && !dm_task_set_ro(task.get())) {
    return MakeError(EIO, "create dm device \"{}\": dm_task_set_ro", name);
  }
  IMAGED_TRY(AddTargets(task.get(), table, name));
  // With a table, libdevmapper creates, loads and resumes, and removes the device itself when
  // the load or resume fails.
  IMAGED_TRY(Run(task.get(), "create dm device", name, true));

  std::string path = DevicePath(name);
  auto finish = [&]() -> Result<void> {
    dm_info info{};
    if (!dm_task_get_info(task.get(), &info) || !info.exists) {
      return MakeError(EIO, "create dm device \"{}\": no device after create", name);
    }
    if (options.timeout.count() > 0) {
      IMAGED_TRY(WaitForNode(path, makedev(info.major, info.minor), options.timeout));
    }
    return Ok();
  };
  if (auto done = finish(); !done) {
    (void)RemoveLocked(name,
                       RemoveOptions{.retries = 5, .deferred = false, .ignore_missing = true});
    return std::move(done).error().Wrap(fmt::format("create dm device \"{}\"", name));
  }
  return path;
}

Result<void> DeviceMapper::Load(const std::string& name, const Table& table) {
  IMAGED_TRY_CTX(ValidateName(name), "load dm table");
  IMAGED_TRY_CTX(table.Validate(), "load dm table into \"{}\"", name);
  std::lock_guard lock(g_mutex);
  Task task = IMAGED_TRY(NewTask(DM_DEVICE_RELOAD, name, "load dm table into"));
  if (table.readonly() && !dm_task_set_ro(task.get())) {
    return MakeError(EIO, "load dm table into \"{}\": dm_task_set_ro", name);
  }
  IMAGED_TRY(AddTargets(task.get(), table, name));
  return Run(task.get(), "load dm table into", name, false);
}

Result<void> DeviceMapper::Suspend(const std::string& name) {
  IMAGED_TRY_CTX(ValidateName(name), "suspend dm device");
  std::lock_guard lock(g_mutex);
  Task task = IMAGED_TRY(NewTask(DM_DEVICE_SUSPEND, name, "suspend dm device"));
  return Run(task.get(), "suspend dm device", name, false);
}

Result<void> DeviceMapper::Resume(const std::string& name) {
  IMAGED_TRY_CTX(ValidateName(name), "resume dm device");
  std::lock_guard lock(g_mutex);
  Task task = IMAGED_TRY(NewTask(DM_DEVICE_RESUME, name, "resume dm device"));
  return Run(task.get(), "resume dm device", name, true);
}

Result<void> DeviceMapper::ReplaceTable(const std::string& name, const Table& table) {
  IMAGED_TRY(Load(name, table));
  // Resume swaps the loaded table in (suspending first itself if that failed here).
  (void)Suspend(name);
  if (auto resumed = Resume(name); !resumed) {
    // The kernel checks a table's limits (e.g. a target past its device's end) only here; the
    // refused table is dropped, and a second resume brings the old one back live.
    Error e = std::move(resumed).error();
    if (auto again = Resume(name); !again) {
      e.message += fmt::format(" (and {} stays suspended: {})", name, again.error().ToString());
    }
    return e;
  }
  // What users see is the device's size: it must be the new table's.
  uint64_t live_sectors = 0;
  for (const auto& target : IMAGED_TRY(GetTable(name))) live_sectors += target.length;
  if (live_sectors != table.num_sectors()) {
    return MakeError(EIO, "replace the table of {}: {} sectors live, {} loaded", name,
                     live_sectors, table.num_sectors());
  }
  return Ok();
}

Result<void> DeviceMapper::Remove(const std::string& name, const RemoveOptions& options) {
  IMAGED_TRY_CTX(ValidateName(name), "remove dm device");
  std::lock_guard lock(g_mutex);
  return RemoveLocked(name, options);
}

Result<std::optional<DeviceInfo>> DeviceMapper::Info(const std::string& name) {
  IMAGED_TRY_CTX(ValidateName(name), "dm info");
  std::lock_guard lock(g_mutex);
  return InfoLocked(name);
}

Result<std::optional<DeviceInfo>> DeviceMapper::InfoByDev(dev_t dev) {
  std::string what = DeviceString(dev);
  std::lock_guard lock(g_mutex);
  Task task = IMAGED_TRY(NewTask(DM_DEVICE_INFO, "", "dm info"));
  if (!dm_task_set_major(task.get(), major(dev)) || !dm_task_set_minor(task.get(), minor(dev))) {
    return MakeError(EINVAL, "dm info {}: set device number", what);
  }
  return InfoOfTask(task.get(), what);
}

Result<std::vector<DeviceInfo>> DeviceMapper::List() {
  std::lock_guard lock(g_mutex);
  std::vector<std::string> names;
  {
    // libdevmapper grows the ioctl buffer until every name fits (AOSP stops at 256).
    Task task = IMAGED_TRY(NewTask(DM_DEVICE_LIST, "", "list dm devices"));
    IMAGED_TRY(Run(task.get(), "list dm devices", "", false));
    dm_names* entry = dm_task_get_names(task.get());
    if (entry != nullptr && entry->dev != 0) {
      while (true) {
        names.emplace_back(entry->name);
        if (entry->next == 0) break;
        entry = reinterpret_cast<dm_names*>(reinterpret_cast<char*>(entry) + entry->next);
      }
    }
  }
  std::vector<DeviceInfo> out;
  out.reserve(names.size());
  for (const auto& name : names) {
    auto info = IMAGED_TRY(InfoLocked(name));
    if (info) out.push_back(std::move(*info));  // skip devices removed since the listing
  }
  return out;
}

Result<std::vector<TargetInfo>> DeviceMapper::GetTable(const std::string& name) {
  IMAGED_TRY_CTX(ValidateName(name), "dm table");
  std::lock_guard lock(g_mutex);
  return TargetsLocked(DM_DEVICE_TABLE, name, "dm table of");
}

Result<std::vector<TargetInfo>> DeviceMapper::GetStatus(const std::string& name) {
  IMAGED_TRY_CTX(ValidateName(name), "dm status");
  std::lock_guard lock(g_mutex);
  return TargetsLocked(DM_DEVICE_STATUS, name, "dm status of");
}

Result<std::vector<std::string>> DeviceMapper::GetTargetTypes() {
  std::lock_guard lock(g_mutex);
  Task task = IMAGED_TRY(NewTask(DM_DEVICE_LIST_VERSIONS, "", "list dm target types"));
  IMAGED_TRY(Run(task.get(), "list dm target types", "", false));
  std::vector<std::string> out;
  dm_versions* v = dm_task_get_versions(task.get());
  while (v != nullptr) {
    out.emplace_back(v->name);
    if (v->next == 0) break;
    v = reinterpret_cast<dm_versions*>(reinterpret_cast<char*>(v) + v->next);
  }
  return out;
}

Result<std::vector<std::string>> DeviceMapper::GetUnderlyingDevices(const std::string& name) {
  auto info = IMAGED_TRY(Info(name));
  if (!info) return MakeError(ENXIO, "underlying devices of dm device \"{}\"", name);
  std::string dir = fmt::format("/sys/dev/block/{}/slaves", DeviceString(info->dev));
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (!d) return ErrnoError("underlying devices of dm device \"{}\": open {}", name, dir);
  std::vector<std::string> out;
  while (dirent* e = readdir(d.get())) {
    if (e->d_name[0] == '.') continue;
    out.emplace_back(e->d_name);
  }
  return out;
}

}  // namespace imaged::dm
