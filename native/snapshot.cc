// Live snapshot: an image of memory at one instant, taken while writers keep
// running, the way QEMU's background snapshot works. Every page of the views
// is write-protected (synchronous uffd-wp) in one pass; then a copier thread
// writes the pages to a file chunk by chunk, un-protecting each chunk once it
// is saved, while the wp-sync reader thread (wp_sync.cc) answers a writer
// that faults on a page not saved yet: it saves that page first, then lifts
// its protection, which wakes the writer. A page is never writable before it
// is saved, so the file holds each page as it was when the protection went on.
//
// The instant is the end of the protect pass, not the moment each page was
// protected: the reader starts only after the pass, so a write to a page
// already protected sleeps until then, and the pages protected later cannot
// receive a write that followed it.
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "clock.h"
#include "addon_state.h"
#include "args.h"
#include "handles.h"
#include "uffd_abi.h"
#include "wp_sync.h"

namespace {

// Pages the copier saves and un-protects per hold of the reader's lock: a
// faulting writer waits for at most one such chunk to be written.
constexpr uint64_t kChunkPages = 64;

// Slots of the stats the completion callback receives, exported as snapshotLayout.
enum Stat { kPages, kBytes, kSavedByFault, kWriteFaults, kBlockedTotalNs, kBlockedMaxNs, kProtectNs, kCopyNs, kStatCount };

struct Snapshot {
  wp_sync::Tracker reader;
  std::vector<uint32_t> saved;  // the reader's bitmap: bit set = page in the file and writable
  int32_t status[wp_sync::kStatusSlots] = {};
  int file_fd = -1;
  std::thread copier;
  std::atomic<bool> cancel{false};
  std::atomic<uint64_t> saved_by_fault{0};
  uint64_t protect_ns = 0;
  uint64_t started_ns = 0;
  Napi::ThreadSafeFunction done;
  std::vector<MappingRecord*> pins;
  AddonState* state = nullptr;
  bool stopped = false;
};

struct Outcome {
  int error;
  double stats[kStatCount];
};

int WriteAll(int fd, uint64_t address, uint64_t length, uint64_t offset) {
  while (length > 0) {
    ssize_t n = pwrite(fd, reinterpret_cast<const void*>(address), length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    address += n;
    length -= n;
    offset += n;
  }
  return 0;
}

int Protect(int uffd, const wp_sync::Region& r, bool on) {
  struct uffdio_writeprotect wp = {};
  wp.range.start = r.address;
  wp.range.len = r.length;
  wp.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
  return ioctl(uffd, uffd_abi::kWriteprotect, &wp) == 0 ? 0 : errno;
}

// Saves the chunk's pages the reader has not saved (its bits are clear), then
// un-protects the whole chunk in one ioctl, which also wakes any writer that
// faulted in it meanwhile and waits behind the lock.
int CopyChunk(Snapshot* s, const wp_sync::Region& r, uint64_t first, uint64_t count) {
  wp_sync::Tracker* t = &s->reader;
  const uint64_t ps = t->page_size;
  std::lock_guard<std::mutex> hold(t->lock);
  uint64_t p = 0;
  while (p < count) {
    if (wp_sync::Marked(t, r.first_bit + first + p)) {
      p++;
      continue;
    }
    const uint64_t run = p;
    while (p < count && !wp_sync::Marked(t, r.first_bit + first + p)) p++;
    if (int err = WriteAll(s->file_fd, r.address + (first + run) * ps, (p - run) * ps, (r.first_bit + first + run) * ps)) return err;
    for (uint64_t q = run; q < p; q++) wp_sync::MarkBit(t, r.first_bit + first + q);
  }
  struct uffdio_writeprotect wp = {};
  wp.range.start = r.address + first * ps;
  wp.range.len = count * ps;
  wp.mode = 0;
  return ioctl(t->uffd, uffd_abi::kWriteprotect, &wp) == 0 ? 0 : errno;
}

void Copy(Snapshot* s) {
  wp_sync::Tracker* t = &s->reader;
  int err = 0;
  uint64_t pages = 0;
  for (const wp_sync::Region& r : t->regions) {
    const uint64_t count = r.length / t->page_size;
    pages += count;
    for (uint64_t first = 0; first < count && err == 0; first += kChunkPages) {
      if (s->cancel.load()) err = ECANCELED;
      else if (int failed = __atomic_load_n(&s->status[wp_sync::kFailure], __ATOMIC_SEQ_CST)) err = failed;
      else err = CopyChunk(s, r, first, std::min(kChunkPages, count - first));
    }
    if (err) break;
  }
  if (err == 0) err = __atomic_load_n(&s->status[wp_sync::kFailure], __ATOMIC_SEQ_CST);
  auto* outcome = new Outcome{err, {}};
  outcome->stats[kPages] = static_cast<double>(pages);
  outcome->stats[kBytes] = static_cast<double>(pages * t->page_size);
  outcome->stats[kSavedByFault] = static_cast<double>(s->saved_by_fault.load());
  outcome->stats[kWriteFaults] = static_cast<double>(static_cast<uint32_t>(__atomic_load_n(&s->status[wp_sync::kFaults], __ATOMIC_SEQ_CST)));
  outcome->stats[kBlockedTotalNs] = static_cast<double>(t->served_ns_total.load());
  outcome->stats[kBlockedMaxNs] = static_cast<double>(t->served_ns_max.load());
  outcome->stats[kProtectNs] = static_cast<double>(s->protect_ns);
  outcome->stats[kCopyNs] = static_cast<double>(MonotonicNs() - s->started_ns);
  // Non-blocking: a stop on the JavaScript thread may be joining this thread.
  napi_status queued = s->done.NonBlockingCall(outcome, [](Napi::Env env, Napi::Function cb, Outcome* o) {
    Napi::Float64Array stats = Napi::Float64Array::New(env, kStatCount);
    std::copy(o->stats, o->stats + kStatCount, stats.Data());
    const int error = o->error;
    delete o;
    cb.Call({Napi::Number::New(env, error), stats});
  });
  if (queued != napi_ok) delete outcome;  // the environment is closing: nobody waits
  s->done.Release();
}

// Cancels the copier and joins it, lifts every protection (waking any
// writer), stops the reader and drops the pins. Idempotent; on the
// JavaScript thread (stop, finalizer, teardown).
void StopSnapshot(Snapshot* s) {
  if (s->stopped) return;
  s->stopped = true;
  s->cancel.store(true);
  if (s->copier.joinable()) s->copier.join();
  wp_sync::Stop(&s->reader, true);
  if (s->file_fd >= 0) close(s->file_fd);
  s->file_fd = -1;
  for (MappingRecord* rec : s->pins) ReleaseMappingPin(rec);
  s->pins.clear();
  if (s->state) s->state->RemoveStopper(s);
  s->state = nullptr;
}

MappingRecord* MappingOf(AddonState* state, uint64_t address, uint64_t length) {
  for (auto& entry : state->mappings) {
    MappingRecord* rec = entry.second;
    if (!rec->unmapped && address >= rec->address && length <= rec->length && address - rec->address <= rec->length - length) return rec;
  }
  return nullptr;
}

// snapshotStart(uffd, pageSize, regions: Float64Array [address, length, firstPage] * n,
//               fileFd, done(error, stats: Float64Array)) -> handle | -errno.
// The views must be registered write-protect with `uffd`, which must have no
// other reader. Protects them all before returning: that is the instant the
// file will show.
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  int uffd = -1, file_fd = -1;
  uint64_t page_size = 0;
  if (!args::Fd(info, 0, &uffd) || !args::U64(info, 1, &page_size)) return env.Undefined();
  if (page_size == 0 || (page_size & (page_size - 1)) != 0) return args::Fail(info, "expected a power-of-two page size"), env.Undefined();
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[2].As<Napi::TypedArray>().ElementLength() % 3 != 0 || info[2].As<Napi::TypedArray>().ElementLength() == 0)
    return args::Fail(info, "expected regions as a Float64Array of [address, length, firstPage] triples"), env.Undefined();
  if (!args::Fd(info, 3, &file_fd)) return env.Undefined();
  if (!info[4].IsFunction()) return args::Fail(info, "expected a completion callback"), env.Undefined();

  auto s = std::make_unique<Snapshot>();
  wp_sync::Tracker* t = &s->reader;
  t->page_size = page_size;
  Napi::Float64Array regions = info[2].As<Napi::Float64Array>();
  uint64_t bits = 0;
  for (size_t i = 0; i + 2 < regions.ElementLength(); i += 3) {
    wp_sync::Region r{static_cast<uint64_t>(regions[i]), static_cast<uint64_t>(regions[i + 1]), static_cast<uint64_t>(regions[i + 2])};
    // Native code reads these pages: only mappings this environment made.
    MappingRecord* rec = MappingOf(state, r.address, r.length);
    if (!rec || r.length == 0 || r.address % page_size || r.length % page_size || r.first_bit != bits) return args::Result(env, -EFAULT);
    s->pins.push_back(rec);
    t->regions.push_back(r);
    bits += r.length / page_size;
  }
  s->saved.assign((bits + 31) / 32, 0);
  t->bitmap = s->saved.data();
  t->bits = bits;
  t->status = s->status;
  Snapshot* raw = s.get();
  t->before_unprotect = [raw](uint64_t page, uint64_t bit) {
    int err = WriteAll(raw->file_fd, page, raw->reader.page_size, bit * raw->reader.page_size);
    if (err == 0) raw->saved_by_fault.fetch_add(1);
    return err;
  };
  s->file_fd = fcntl(file_fd, F_DUPFD_CLOEXEC, 3);
  if (s->file_fd < 0) return args::Result(env, -errno);

  // Protect everything before any fault is answered (see the top of the file).
  const uint64_t t0 = MonotonicNs();
  for (size_t i = 0; i < t->regions.size(); i++) {
    if (int err = Protect(uffd, t->regions[i], true)) {
      for (size_t j = 0; j < i; j++) Protect(uffd, t->regions[j], false);
      close(s->file_fd);
      return args::Result(env, -err);
    }
  }
  s->protect_ns = MonotonicNs() - t0;
  s->started_ns = MonotonicNs();
  if (int err = wp_sync::Launch(t, uffd)) {
    for (const wp_sync::Region& r : t->regions) Protect(uffd, r, false);
    close(s->file_fd);
    return args::Result(env, -err);
  }
  for (MappingRecord* rec : s->pins) rec->pins++;
  s->done = Napi::ThreadSafeFunction::New(env, info[4].As<Napi::Function>(), "userfaultfd:snapshot", 0, 1);
  s->state = state;
  s->copier = std::thread(Copy, raw);
  state->AddStopper(raw, [raw] { StopSnapshot(raw); });
  s.release();
  return handles::Wrap<Snapshot>(env, raw, handles::kSnapshot, [](Napi::Env, Snapshot* snap) {
    StopSnapshot(snap);
    delete snap;
  });
}

// snapshotStop(handle): cancels a snapshot still copying (its callback then
// reports ECANCELED) or releases a finished one. Idempotent.
Napi::Value Stop(const Napi::CallbackInfo& info) {
  if (Snapshot* s = handles::Unwrap<Snapshot>(info, 0, handles::kSnapshot, "expected a snapshot handle")) StopSnapshot(s);
  return info.Env().Undefined();
}

Napi::Value Layout(Napi::Env env) {
  Napi::Object stats = Napi::Object::New(env);
  stats.Set("pages", Napi::Number::New(env, kPages));
  stats.Set("bytes", Napi::Number::New(env, kBytes));
  stats.Set("savedByFault", Napi::Number::New(env, kSavedByFault));
  stats.Set("writeFaults", Napi::Number::New(env, kWriteFaults));
  stats.Set("blockedTotalNs", Napi::Number::New(env, kBlockedTotalNs));
  stats.Set("blockedMaxNs", Napi::Number::New(env, kBlockedMaxNs));
  stats.Set("protectNs", Napi::Number::New(env, kProtectNs));
  stats.Set("copyNs", Napi::Number::New(env, kCopyNs));
  stats.Set("count", Napi::Number::New(env, kStatCount));
  return stats;
}

}  // namespace

void InitSnapshot(Napi::Env env, Napi::Object exports) {
  exports.Set("snapshotLayout", Layout(env));
  exports.Set("snapshotStart", Napi::Function::New(env, Start, "snapshotStart"));
  exports.Set("snapshotStop", Napi::Function::New(env, Stop, "snapshotStop"));
}
