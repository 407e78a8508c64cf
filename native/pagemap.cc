// PAGEMAP_SCAN (Linux 6.7+) on /proc/<pid>/pagemap: which pages of a range
// were written since they were last write-protected (uffd-wp in async mode),
// and re-protecting exactly those in the same walk. The dirty tracker's fast
// path; the kernel ABI is spelled out here because Debian 12's 6.1 headers
// predate it.
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <linux/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <vector>

#include "addon_state.h"
#include "args.h"
#include "wp_sync.h"

// Kernel ABI (include/uapi/linux/fs.h, 6.7), defined here when the build
// host's headers predate it: Debian 12 ships 6.1 headers. The values are
// fixed ABI; the static_asserts pin them either way.
#ifndef PAGEMAP_SCAN
struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};
struct pm_scan_arg {
  __u64 size;
  __u64 flags;
  __u64 start;
  __u64 end;
  __u64 walk_end;
  __u64 vec;
  __u64 vec_len;
  __u64 max_pages;
  __u64 category_inverted;
  __u64 category_mask;
  __u64 category_anyof_mask;
  __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif
#ifndef PM_SCAN_WP_MATCHING
#define PM_SCAN_WP_MATCHING (1 << 0)
#endif
#ifndef PM_SCAN_CHECK_WPASYNC
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#endif
#ifndef PAGE_IS_WRITTEN
#define PAGE_IS_WRITTEN (1 << 1)
#endif

static_assert(sizeof(struct page_region) == 24, "page_region");
static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg");
static_assert(offsetof(struct pm_scan_arg, walk_end) == 32, "pm_scan_arg.walk_end");
static_assert(offsetof(struct pm_scan_arg, return_mask) == 88, "pm_scan_arg.return_mask");
static_assert(PAGEMAP_SCAN == 0xC0606610, "PAGEMAP_SCAN request code");

namespace {

// Regions per ioctl: the kernel stops the walk when the vector is full and
// says where (walk_end); a bigger vector only saves ioctls on scattered sets.
constexpr size_t kVecLen = 4096;

// pagemapOpen(pid) -> fd | -errno. pid 0 is this process. Opening another
// process's pagemap needs ptrace-read access to it, checked at open.
Napi::Value Open(const Napi::CallbackInfo& info) {
  int64_t pid;
  if (!args::Int(info, 0, &pid)) return info.Env().Undefined();
  if (pid < 0 || pid > INT32_MAX) return args::Fail(info, "expected a pid"), info.Env().Undefined();
  char path[48];
  if (pid == 0)
    snprintf(path, sizeof(path), "/proc/self/pagemap");
  else
    snprintf(path, sizeof(path), "/proc/%lld/pagemap", static_cast<long long>(pid));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return args::Result(info.Env(), -errno);
  AddonState::Of(info.Env())->owned_fds.insert(fd);
  return args::Result(info.Env(), fd);
}

// pagemapScanWritten(fd, start, end, reprotect) -> Float64Array [start, end] * n
// of written runs | -errno. With `reprotect` the same walk write-protects what
// it reports (PM_SCAN_WP_MATCHING), so a write after a page was reported
// faults again and shows up in the next scan; nothing falls between the two.
// CHECK_WPASYNC makes a range not registered uffd-wp async an error (EPERM)
// instead of an empty answer.
Napi::Value ScanWritten(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint64_t start, end;
  if (!args::Fd(info, 0, &fd) || !args::U64(info, 1, &start) || !args::U64(info, 2, &end)) return env.Undefined();
  const bool reprotect = info[3].ToBoolean();
  if (end < start) return args::Fail(info, "expected start <= end"), env.Undefined();
  std::vector<struct page_region> vec(kVecLen);
  std::vector<double> runs;
  uint64_t at = start;
  // End of the pages reported so far. Without PM_SCAN_WP_MATCHING a walk can
  // say it stopped (walk_end) before the end of regions it already reported,
  // and the next walk reports them again: each page is counted once.
  uint64_t covered = start;
  while (at < end) {
    struct pm_scan_arg arg = {};
    arg.size = sizeof(arg);
    arg.flags = PM_SCAN_CHECK_WPASYNC | (reprotect ? PM_SCAN_WP_MATCHING : 0);
    arg.start = at;
    arg.end = end;
    arg.vec = reinterpret_cast<uintptr_t>(vec.data());
    arg.vec_len = vec.size();
    arg.category_mask = PAGE_IS_WRITTEN;
    arg.return_mask = PAGE_IS_WRITTEN;
    int n = ioctl(fd, PAGEMAP_SCAN, &arg);
    if (n < 0) {
      if (errno == EINTR) continue;
      return args::Result(env, -errno);
    }
    for (int i = 0; i < n; i++) {
      const uint64_t from = std::max<uint64_t>(vec[i].start, covered);
      if (vec[i].end <= from) continue;
      // Adjacent regions split only by a vector boundary are one run.
      if (!runs.empty() && runs.back() == static_cast<double>(from))
        runs.back() = static_cast<double>(vec[i].end);
      else {
        runs.push_back(static_cast<double>(from));
        runs.push_back(static_cast<double>(vec[i].end));
      }
      covered = vec[i].end;
    }
    const uint64_t next = std::max<uint64_t>(arg.walk_end, covered);
    if (next <= at) break;  // no progress: never spin
    at = next;
  }
  Napi::Float64Array out = Napi::Float64Array::New(env, runs.size());
  std::copy(runs.begin(), runs.end(), out.Data());
  return out;
}

}  // namespace

void InitDirtyTracking(Napi::Env env, Napi::Object exports) {
  exports.Set("pagemapOpen", Napi::Function::New(env, Open, "pagemapOpen"));
  exports.Set("pagemapScanWritten", Napi::Function::New(env, ScanWritten, "pagemapScanWritten"));
  wp_sync::Init(env, exports);
}
