// Dirty tracking by synchronous uffd-wp faults, for kernels without WP_ASYNC
// and PAGEMAP_SCAN (5.7+ anonymous, 5.19+ shmem). Every first write to a
// protected page stops the writer and sends a message; this thread reads it,
// sets the page's bit in a bitmap over a SharedArrayBuffer, and clears the
// protection of that one page, which wakes the writer. Reading on a native
// thread (not the event loop) means a write from the JavaScript thread itself
// is served too instead of deadlocking. The thread never calls JavaScript:
// results are the shared bitmap and a shared status array, read by collect().
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <time.h>

#include <memory>

#include "clock.h"
#include "addon_state.h"
#include "args.h"
#include "handles.h"
#include "uffd_abi.h"
#include "wp_sync.h"

namespace wp_sync {
namespace {

// A collect protects a whole region again in one ioctl rather than run by run
// when it has more than one run per this many pages (measured: one run's
// ioctl and a 1 GiB walk cost the same at a few hundred runs).
constexpr uint64_t kRunsPerWholeProtect = 512;

// The page's bit, or UINT64_MAX outside every region.
uint64_t BitOf(const Tracker* t, uint64_t page) {
  for (const Region& r : t->regions)
    if (page >= r.address && page - r.address < r.length) return r.first_bit + (page - r.address) / t->page_size;
  return UINT64_MAX;
}

void Bump(Tracker* t, Status slot) { __atomic_fetch_add(&t->status[slot], 1, __ATOMIC_SEQ_CST); }

void Run(Tracker* t) {
  std::vector<struct uffd_msg> msgs(64);
  struct pollfd fds[2] = {{t->uffd, POLLIN, 0}, {t->stop_fd, POLLIN, 0}};
  for (;;) {
    int rc = poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      __atomic_store_n(&t->status[kFailure], errno, __ATOMIC_SEQ_CST);
      return;
    }
    if (fds[1].revents) return;
    if (fds[0].revents & (POLLERR | POLLNVAL)) {
      __atomic_store_n(&t->status[kFailure], (fds[0].revents & POLLNVAL) ? EBADF : EIO, __ATOMIC_SEQ_CST);
      return;
    }
    ssize_t n = read(t->uffd, msgs.data(), msgs.size() * sizeof(struct uffd_msg));
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      __atomic_store_n(&t->status[kFailure], errno, __ATOMIC_SEQ_CST);
      return;
    }
    const uint64_t read_at = MonotonicNs();
    for (size_t i = 0; i < static_cast<size_t>(n) / sizeof(struct uffd_msg); i++) {
      const struct uffd_msg& m = msgs[i];
      if (m.event != UFFD_EVENT_PAGEFAULT || !(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)) {
        // Not ours to resolve; the tracker only reads uffds with WP-only ranges.
        Bump(t, kForeign);
        continue;
      }
      const uint64_t page = m.arg.pagefault.address & ~(t->page_size - 1);
      Bump(t, kFaults);
      std::lock_guard<std::mutex> hold(t->lock);
      const uint64_t bit = BitOf(t, page);
      if (t->before_unprotect && bit != UINT64_MAX && !Marked(t, bit))
        if (int err = t->before_unprotect(page, bit)) __atomic_store_n(&t->status[kFailure], err, __ATOMIC_SEQ_CST);
      // Marked before the writer can go on: a write that has completed is
      // always in the bitmap.
      if (bit != UINT64_MAX) MarkBit(t, bit);
      struct uffdio_writeprotect wp = {};
      wp.range.start = page;
      wp.range.len = t->page_size;
      wp.mode = 0;  // clear the protection and wake the writer
      if (ioctl(t->uffd, uffd_abi::kWriteprotect, &wp) != 0 && errno != ENOENT)
        __atomic_store_n(&t->status[kFailure], errno, __ATOMIC_SEQ_CST);
      const uint64_t waited = MonotonicNs() - read_at;
      t->served_ns_total.fetch_add(waited);
      uint64_t max = t->served_ns_max.load();
      while (waited > max && !t->served_ns_max.compare_exchange_weak(max, waited)) {
      }
    }
  }
}

}  // namespace

// `unprotect`: lift the protection of every region first, which wakes any
// writer waiting on it. JavaScript's stop() does that itself; a tracker that
// was garbage-collected while tracking has nobody else to do it, and with the
// thread gone a write to a still-protected page would sleep forever.
void Stop(Tracker* t, bool unprotect) {
  if (t->stopped) return;
  t->stopped = true;
  if (unprotect) {
    for (const Region& r : t->regions) {
      struct uffdio_writeprotect wp = {};
      wp.range.start = r.address;
      wp.range.len = r.length;
      wp.mode = 0;
      ioctl(t->uffd, uffd_abi::kWriteprotect, &wp);  // ENOENT: already unregistered, nobody waits
    }
  }
  uint64_t one = 1;
  ssize_t ignored = write(t->stop_fd, &one, sizeof(one));
  (void)ignored;
  if (t->thread.joinable()) t->thread.join();
  close(t->stop_fd);
  close(t->uffd);
  t->stop_fd = t->uffd = -1;
  if (t->state) t->state->RemoveStopper(t);
}

int Launch(Tracker* t, int uffd) {
  // A descriptor of its own: JavaScript may close its uffd (and the number
  // be reused) while the thread still polls it, or before a finalizer runs.
  t->uffd = fcntl(uffd, F_DUPFD_CLOEXEC, 3);
  if (t->uffd < 0) return errno;
  t->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->stop_fd < 0) {
    int err = errno;
    close(t->uffd);
    t->uffd = -1;
    return err;
  }
  t->thread = std::thread(Run, t);
  return 0;
}

namespace {

bool SharedInt32(Napi::Env env, Napi::Value v, size_t min_length) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) return false;
  if (v.As<Napi::TypedArray>().ElementLength() < min_length) return false;
  // A SharedArrayBuffer cannot be detached or transferred while the thread writes it.
  bool shared = false;
  napi_value global_sab;
  napi_get_named_property(env, env.Global(), "SharedArrayBuffer", &global_sab);
  napi_instanceof(env, v.As<Napi::TypedArray>().ArrayBuffer(), global_sab, &shared);
  return shared;
}

// wpSyncStart(uffd, pageSize, regions: Float64Array [address, length, firstBit] * n,
//             bitmap: Int32Array (shared), status: Int32Array (shared)) -> handle | -errno
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int uffd = -1;
  uint64_t page_size = 0;
  if (!args::Fd(info, 0, &uffd) || !args::U64(info, 1, &page_size)) return env.Undefined();
  if (page_size == 0 || (page_size & (page_size - 1)) != 0) return args::Fail(info, "expected a power-of-two page size"), env.Undefined();
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[2].As<Napi::TypedArray>().ElementLength() % 3 != 0)
    return args::Fail(info, "expected regions as a Float64Array of [address, length, firstBit] triples"), env.Undefined();
  if (!SharedInt32(env, info[3], 1)) return args::Fail(info, "expected the bitmap as an Int32Array over a SharedArrayBuffer"), env.Undefined();
  if (!SharedInt32(env, info[4], kStatusSlots)) return args::Fail(info, "expected the status as an Int32Array over a SharedArrayBuffer"), env.Undefined();
  auto t = std::make_unique<Tracker>();
  t->page_size = page_size;
  Napi::Float64Array regions = info[2].As<Napi::Float64Array>();
  for (size_t i = 0; i + 2 < regions.ElementLength(); i += 3)
    t->regions.push_back({static_cast<uint64_t>(regions[i]), static_cast<uint64_t>(regions[i + 1]), static_cast<uint64_t>(regions[i + 2])});
  Napi::Int32Array bitmap = info[3].As<Napi::Int32Array>();
  t->bitmap = reinterpret_cast<uint32_t*>(bitmap.Data());
  t->bits = static_cast<uint64_t>(bitmap.ElementLength()) * 32;
  t->status = info[4].As<Napi::Int32Array>().Data();
  t->bitmap_ref = Napi::Persistent(info[3]);
  t->status_ref = Napi::Persistent(info[4]);
  if (int err = Launch(t.get(), uffd)) return args::Result(env, -err);
  t->state = AddonState::Of(env);
  Tracker* raw = t.release();
  // At environment teardown the thread is joined before the uffd is closed.
  raw->state->AddStopper(raw, [raw] {
    raw->state = nullptr;
    Stop(raw, false);  // the uffd is closed next, which lifts the protection
  });
  return handles::Wrap<Tracker>(env, raw, handles::kWpSync, [](Napi::Env, Tracker* tracker) {
    Stop(tracker, true);
    delete tracker;
  });
}

// wpSyncCollect(handle, reset, out: Uint32Array) -> 0 | -errno. Copies the
// bitmap into `out`; with `reset`, zeroes it and write-protects the pages
// taken, all under the lock the thread holds from mark to un-protect. Without
// the lock a page marked just before the take but un-protected just after it
// would be reported now, stay writable, and its write (after this collect
// returned) would never be reported.
Napi::Value Collect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Tracker* t = handles::Unwrap<Tracker>(info, 0, handles::kWpSync, "expected a wp-sync tracker handle");
  if (!t) return env.Undefined();
  const bool reset = info[1].ToBoolean();
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
      static_cast<uint64_t>(info[2].As<Napi::TypedArray>().ElementLength()) * 32 < t->bits)
    return args::Fail(info, "expected a Uint32Array as long as the bitmap"), env.Undefined();
  uint32_t* out = info[2].As<Napi::Uint32Array>().Data();
  std::lock_guard<std::mutex> hold(t->lock);
  const uint64_t words = t->bits / 32;
  for (uint64_t i = 0; i < words; i++)
    out[i] = reset ? __atomic_exchange_n(&t->bitmap[i], 0u, __ATOMIC_SEQ_CST) : __atomic_load_n(&t->bitmap[i], __ATOMIC_SEQ_CST);
  if (!reset) return args::Result(env, 0);
  for (const Region& r : t->regions) {
    const uint64_t pages = r.length / t->page_size;
    std::vector<std::pair<uint64_t, uint64_t>> runs;  // [first page, end page)
    uint64_t p = 0;
    while (p < pages) {
      if (!(out[(r.first_bit + p) / 32] & (1u << ((r.first_bit + p) % 32)))) {
        p++;
        continue;
      }
      const uint64_t first = p;
      while (p < pages && (out[(r.first_bit + p) / 32] & (1u << ((r.first_bit + p) % 32)))) p++;
      runs.emplace_back(first, p);
    }
    // Under the lock the pages without a bit are exactly the protected ones,
    // so protecting the whole region changes the same pages. Each ioctl pays
    // a TLB flush; past a few hundred runs one walk of the region is cheaper.
    if (runs.size() > pages / kRunsPerWholeProtect + 1) runs.assign(1, {0, pages});
    for (const auto& run : runs) {
      struct uffdio_writeprotect wp = {};
      wp.range.start = r.address + run.first * t->page_size;
      wp.range.len = (run.second - run.first) * t->page_size;
      wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
      if (ioctl(t->uffd, uffd_abi::kWriteprotect, &wp) != 0) return args::Result(env, -errno);
    }
  }
  return args::Result(env, 0);
}

// wpSyncStop(handle): stops and joins the thread. Idempotent.
Napi::Value StopTracker(const Napi::CallbackInfo& info) {
  if (Tracker* t = handles::Unwrap<Tracker>(info, 0, handles::kWpSync, "expected a wp-sync tracker handle")) Stop(t, false);
  return info.Env().Undefined();
}

Napi::Value Layout(Napi::Env env) {
  Napi::Object status = Napi::Object::New(env);
  status.Set("failure", Napi::Number::New(env, kFailure));
  status.Set("faults", Napi::Number::New(env, kFaults));
  status.Set("foreign", Napi::Number::New(env, kForeign));
  status.Set("slots", Napi::Number::New(env, kStatusSlots));
  return status;
}

}  // namespace

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("wpSyncStatusLayout", Layout(env));
  exports.Set("wpSyncStart", Napi::Function::New(env, Start, "wpSyncStart"));
  exports.Set("wpSyncCollect", Napi::Function::New(env, Collect, "wpSyncCollect"));
  exports.Set("wpSyncStop", Napi::Function::New(env, StopTracker, "wpSyncStop"));
}

}  // namespace wp_sync
