// The fault engine's JavaScript surface: one tagged handle per engine, one
// call per batch in event-loop mode (engineRead), one call per page a policy
// made present, and the layout constants the TypeScript side reads instead
// of typing them again (engineLayout).
#include <errno.h>
#include <unistd.h>

#include <memory>

#include "addon_state.h"
#include "args.h"
#include "engine.h"
#include "engine_handle.h"
#include "handles.h"
#include "resolver.h"
#include "uffd_abi.h"

namespace {

struct Handle {
  std::shared_ptr<engine::Engine> engine;
  std::shared_ptr<resolver::Thread> thread;
  Napi::Reference<Napi::Value> bitmap;  // the SharedArrayBuffer-backed words the engine reads
  Napi::Reference<Napi::Value> watch;   // the same, for the watched pages (engineWatch)
  std::vector<struct uffd_msg> msgs = std::vector<struct uffd_msg>(engine::kMessages);
  std::vector<double> pending;  // records not yet handed out (more than one call holds)
};

Handle* Of(const Napi::CallbackInfo& info) {
  return handles::Unwrap<Handle>(info, 0, handles::kEngine, "expected a fault engine handle");
}

bool FaultArgs(const Napi::CallbackInfo& info, engine::Fault* f) {
  uint64_t address, flags, tid, time;
  if (!args::U64(info, 1, &address) || !args::U64(info, 2, &flags) || !args::U64(info, 3, &tid) ||
      !args::U64(info, 4, &time))
    return false;
  *f = {address, static_cast<uint32_t>(flags), static_cast<uint32_t>(tid), time, true};
  return true;
}

// After a policy call deferred a fault, the resolver thread (if any) retries it.
Napi::Value Deferring(Handle* h, Napi::Env env, int rc) {
  if (rc == -EAGAIN) resolver::Kick(h->thread);
  return args::Result(env, rc);
}

// engineCreate(uffd, backingFd, pageSize, fill, readAhead, presentWords: Uint32Array over a SharedArrayBuffer)
Napi::Value Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int uffd = -1, backing_fd = -1;
  int64_t backing, page_size, fill, map_ahead;
  if (!args::Fd(info, 0, &uffd) || !args::Int(info, 1, &backing) || !args::Int(info, 2, &page_size) ||
      !args::Int(info, 3, &fill) || !args::Int(info, 4, &map_ahead))
    return env.Undefined();
  if (backing >= 0) backing_fd = static_cast<int>(backing);
  if (page_size <= 0 || (page_size & (page_size - 1)) != 0) return args::Fail(info, "expected a power-of-two page size"), env.Undefined();
  if (fill != 0 && fill != 1) return args::Fail(info, "expected fill 0 (continue) or 1 (copy)"), env.Undefined();
  if (!info[5].IsTypedArray() || info[5].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    return args::Fail(info, "expected the present bitmap as a Uint32Array"), env.Undefined();
  Napi::Uint32Array words = info[5].As<Napi::Uint32Array>();
  if (!args::OverShared(env, words)) return args::Fail(info, "expected the present bitmap over a SharedArrayBuffer"), env.Undefined();
  auto* h = new Handle();
  h->engine = std::make_shared<engine::Engine>(uffd, backing_fd, static_cast<uint64_t>(page_size),
                                               static_cast<engine::Fill>(fill), map_ahead > 0 ? static_cast<uint64_t>(map_ahead) : 0);
  h->engine->SetBitmap(words.Data(), static_cast<uint64_t>(words.ElementLength()) * 32);
  h->bitmap = Napi::Persistent(info[5]);
  return handles::Wrap<Handle>(env, h, handles::kEngine, [](Napi::Env, Handle* handle) {
    resolver::Stop(handle->thread);
    delete handle;
  });
}

// engineAddRegion(h, address, length, offset, pageSize)
Napi::Value AddRegion(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  uint64_t address, length, offset, page_size;
  if (!h || !args::U64(info, 1, &address) || !args::U64(info, 2, &length) || !args::U64(info, 3, &offset) ||
      !args::U64(info, 4, &page_size))
    return info.Env().Undefined();
  if (page_size % h->engine->page_size() != 0)
    return args::Fail(info, "expected a page size that is a multiple of the engine's"), info.Env().Undefined();
  h->engine->AddRegion({address, length, offset, page_size});
  return info.Env().Undefined();
}

// engineRegions(h) -> Float64Array [address, length, offset, pageSize] * n
Napi::Value Regions(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  if (!h) return info.Env().Undefined();
  std::vector<engine::Region> regions = h->engine->Regions();
  Napi::Float64Array out = Napi::Float64Array::New(info.Env(), regions.size() * 4);
  for (size_t i = 0; i < regions.size(); i++) {
    out[i * 4] = static_cast<double>(regions[i].address);
    out[i * 4 + 1] = static_cast<double>(regions[i].length);
    out[i * 4 + 2] = static_cast<double>(regions[i].offset);
    out[i * 4 + 3] = static_cast<double>(regions[i].page_size);
  }
  return out;
}

// engineRead(h, out: Float64Array) -> records written | -errno. Reads what the
// uffd holds (nothing is fine: deferred faults are retried), runs the engine,
// and writes [pending, record...] into `out`; pending > 0 asks for another
// call soon (deferred faults, or records that did not fit).
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Handle* h = Of(info);
  if (!h) return env.Undefined();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    return args::Fail(info, "expected a Float64Array"), env.Undefined();
  Napi::Float64Array out = info[1].As<Napi::Float64Array>();
  const size_t capacity = out.ElementLength() > 0 ? (out.ElementLength() - 1) / engine::kRecordSize : 0;
  if (capacity == 0) return args::Fail(info, "output too small for one record"), env.Undefined();
  engine::Engine& e = *h->engine;
  if (h->pending.size() < capacity * engine::kRecordSize) {
    ssize_t n = read(e.uffd(), h->msgs.data(), h->msgs.size() * sizeof(struct uffd_msg));
    if (n < 0 && errno != EAGAIN && errno != EINTR) return args::Result(env, -errno);
    size_t count = n > 0 ? static_cast<size_t>(n) / sizeof(struct uffd_msg) : 0;
    e.Process(h->msgs.data(), count, engine::Guard{}, &h->pending);
  }
  size_t records = std::min(capacity, h->pending.size() / engine::kRecordSize);
  std::copy(h->pending.begin(), h->pending.begin() + static_cast<std::ptrdiff_t>(records * engine::kRecordSize), out.Data() + 1);
  h->pending.erase(h->pending.begin(), h->pending.begin() + static_cast<std::ptrdiff_t>(records * engine::kRecordSize));
  out[0] = static_cast<double>(h->pending.size() / engine::kRecordSize + (e.HasDeferred() ? 1 : 0));
  return args::Result(env, static_cast<double>(records));
}

// engineServe(h, address, flags, tid, time): the policy made the page present.
Napi::Value Serve(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  engine::Fault f;
  if (!h || !FaultArgs(info, &f)) return info.Env().Undefined();
  return Deferring(h, info.Env(), h->engine->ServePresent(f));
}

// engineCopy(h, address, flags, tid, time, bytes): fill the page with `bytes` (one page).
Napi::Value Copy(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  engine::Fault f;
  if (!h || !FaultArgs(info, &f)) return info.Env().Undefined();
  if (!info[5].IsTypedArray()) return args::Fail(info, "expected the page's bytes"), info.Env().Undefined();
  Napi::TypedArray ta = info[5].As<Napi::TypedArray>();
  if (ta.ByteLength() != h->engine->PageSizeAt(f.address))
    return args::Fail(info, "expected exactly one page (of the faulting view's page size) of bytes"), info.Env().Undefined();
  const uint8_t* bytes = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  return Deferring(h, info.Env(), h->engine->ServeCopy(f, bytes));
}

// engineZero(h, address, flags, tid, time): fill the page with zeros.
Napi::Value Zero(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  engine::Fault f;
  if (!h || !FaultArgs(info, &f)) return info.Env().Undefined();
  return Deferring(h, info.Env(), h->engine->ServeZero(f));
}

// engineMapPresent(h, offset, length): map present pages of a backing range into every view.
Napi::Value MapPresent(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  uint64_t offset, length;
  if (!h || !args::U64(info, 1, &offset) || !args::U64(info, 2, &length)) return info.Env().Undefined();
  return args::Result(info.Env(), h->engine->MapPresent(offset, length));
}

// engineCopyRun(h, offset, bytes): COPY a run of backing pages ahead of its faults.
Napi::Value CopyRun(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  uint64_t offset;
  if (!h || !args::U64(info, 1, &offset)) return info.Env().Undefined();
  if (!info[2].IsTypedArray()) return args::Fail(info, "expected the run's bytes"), info.Env().Undefined();
  if (h->engine->fill() != engine::Fill::kCopy) return args::Result(info.Env(), -EINVAL);
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  const uint64_t ps = h->engine->page_size();
  if (offset % ps != 0 || ta.ByteLength() == 0 || ta.ByteLength() % ps != 0)
    return args::Fail(info, "expected a page-aligned offset and whole pages of bytes"), info.Env().Undefined();
  const uint8_t* bytes = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  return args::Result(info.Env(), static_cast<double>(h->engine->CopyRun(offset, bytes, ta.ByteLength())));
}

// engineCopyRuns(h, image, runs: Uint32Array [first, count, ...]) -> Float64Array:
// CopyRun for each run, its bytes at the same offset of `image` (the whole
// memory at hand): one call for a batch of a replay's runs. A result per
// run, as CopyRun's.
Napi::Value CopyRuns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Handle* h = Of(info);
  if (!h) return env.Undefined();
  if (!info[1].IsTypedArray()) return args::Fail(info, "expected the image's bytes"), env.Undefined();
  Napi::Uint32Array runs;
  if (!args::RunPairs(info, 2, &runs)) return env.Undefined();
  if (h->engine->fill() != engine::Fill::kCopy) return args::Result(env, -EINVAL);
  Napi::TypedArray image = info[1].As<Napi::TypedArray>();
  const uint64_t ps = h->engine->page_size();
  const uint8_t* bytes = static_cast<const uint8_t*>(image.ArrayBuffer().Data()) + image.ByteOffset();
  const size_t n = runs.ElementLength() / 2;
  for (size_t i = 0; i < n; i++)
    if (runs[2 * i + 1] == 0 || (static_cast<uint64_t>(runs[2 * i]) + runs[2 * i + 1]) * ps > image.ByteLength())
      return args::Fail(info, "expected runs of pages inside the image"), env.Undefined();
  Napi::Float64Array out = Napi::Float64Array::New(env, n);
  for (size_t i = 0; i < n; i++) {
    const uint64_t offset = static_cast<uint64_t>(runs[2 * i]) * ps;
    out[i] = static_cast<double>(h->engine->CopyRun(offset, bytes + offset, static_cast<uint64_t>(runs[2 * i + 1]) * ps));
  }
  return out;
}

// engineWatch(h, words: Uint32Array over a SharedArrayBuffer): pages whose first fault is counted.
Napi::Value Watch(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  if (!h) return info.Env().Undefined();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
      !args::OverShared(info.Env(), info[1].As<Napi::Uint32Array>()))
    return args::Fail(info, "expected a Uint32Array over a SharedArrayBuffer"), info.Env().Undefined();
  Napi::Uint32Array words = info[1].As<Napi::Uint32Array>();
  // Set once: a resolver thread may be reading the words already set.
  if (!h->watch.IsEmpty()) return args::Result(info.Env(), -EBUSY);
  h->watch = Napi::Persistent(info[1]);
  h->engine->SetWatch(words.Data(), static_cast<uint64_t>(words.ElementLength()) * 32);
  return args::Result(info.Env(), 0);
}

// enginePoison(h, address, length)
Napi::Value Poison(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  uint64_t address, length;
  if (!h || !args::U64(info, 1, &address) || !args::U64(info, 2, &length)) return info.Env().Undefined();
  return args::Result(info.Env(), h->engine->Poison(address, length));
}

// engineWake(h, address, length)
Napi::Value WakeRange(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  uint64_t address, length;
  if (!h || !args::U64(info, 1, &address) || !args::U64(info, 2, &length)) return info.Env().Undefined();
  return args::Result(info.Env(), h->engine->Wake(address, length));
}

// engineReleaseViews(h): unregister and wake every view.
Napi::Value ReleaseViews(const Napi::CallbackInfo& info) {
  if (Handle* h = Of(info)) h->engine->ReleaseViews();
  return info.Env().Undefined();
}

// enginePoisonAbsent(h)
Napi::Value PoisonAbsent(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  if (!h) return info.Env().Undefined();
  return args::Result(info.Env(), h->engine->PoisonAbsent());
}

// engineStats(h) -> Float64Array [stats (engineLayout.stats), latency buckets]
Napi::Value Stats(const Napi::CallbackInfo& info) {
  Handle* h = Of(info);
  if (!h) return info.Env().Undefined();
  Napi::Float64Array out = Napi::Float64Array::New(info.Env(), engine::kStatCount + engine::kBuckets);
  for (int i = 0; i < engine::kStatCount; i++) out[i] = static_cast<double>(h->engine->Stat(i));
  // Running threads' CPU so far; stopped ones added theirs to the counter.
  out[engine::kResolverCpuNs] += static_cast<double>(resolver::CpuNs(h->thread));
  for (size_t b = 0; b < engine::kBuckets; b++) out[engine::kStatCount + b] = static_cast<double>(h->engine->Bucket(b));
  return out;
}

// engineStartThread(h, loopThreadAction, onRecords[, threads, spinUs]) -> 0 | -errno.
// loopThreadAction: 0 abort, 1 map as-is (the deadlock guard for this env's JS thread).
Napi::Value StartThread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Handle* h = Of(info);
  int64_t action = 0, threads = 1, spin_us = 0;
  if (!h || !args::Int(info, 1, &action)) return env.Undefined();
  if (!info[2].IsFunction()) return args::Fail(info, "expected a callback"), env.Undefined();
  if (info.Length() > 3 && !info[3].IsUndefined() && !args::Int(info, 3, &threads)) return env.Undefined();
  if (info.Length() > 4 && !info[4].IsUndefined() && !args::Int(info, 4, &spin_us)) return env.Undefined();
  if (threads < 1 || threads > 64) return args::Fail(info, "expected 1 to 64 threads"), env.Undefined();
  if (spin_us < 0 || spin_us > 1000000) return args::Fail(info, "expected a spin of 0 to 1000000 us"), env.Undefined();
  if (h->thread) return args::Result(env, -EBUSY);
  AddonState* state = AddonState::Of(env);
  engine::Guard guard{state->js_thread_tid, action == 1};
  int err = 0;
  resolver::Tuning tuning{static_cast<int>(threads), static_cast<uint64_t>(spin_us)};
  h->thread = resolver::Start(env, state, h->engine, guard, tuning, info[2].As<Napi::Function>(), h->bitmap.Value(), &err);
  return args::Result(env, h->thread ? 0 : -err);
}

// engineStopThread(h): stops and joins the resolver thread. Idempotent.
Napi::Value StopThread(const Napi::CallbackInfo& info) {
  if (Handle* h = Of(info)) resolver::Stop(h->thread);
  return info.Env().Undefined();
}

Napi::Object Layout(Napi::Env env) {
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("recordSize", Napi::Number::New(env, engine::kRecordSize));
  layout.Set("recordCapacity", Napi::Number::New(env, engine::kRecordCapacity));
  Napi::Object kinds = Napi::Object::New(env);
  kinds.Set("pagefault", Napi::Number::New(env, static_cast<double>(engine::kPagefault)));
  kinds.Set("fork", Napi::Number::New(env, static_cast<double>(engine::kFork)));
  kinds.Set("remap", Napi::Number::New(env, static_cast<double>(engine::kRemap)));
  kinds.Set("remove", Napi::Number::New(env, static_cast<double>(engine::kRemove)));
  kinds.Set("unmap", Napi::Number::New(env, static_cast<double>(engine::kUnmap)));
  kinds.Set("loopThreadMapped", Napi::Number::New(env, static_cast<double>(engine::kLoopThreadMapped)));
  kinds.Set("readerFailed", Napi::Number::New(env, static_cast<double>(engine::kReaderFailed)));
  kinds.Set("ioctlFailed", Napi::Number::New(env, static_cast<double>(engine::kIoctlFailed)));
  kinds.Set("pagesRemoved", Napi::Number::New(env, static_cast<double>(engine::kPagesRemoved)));
  layout.Set("kinds", kinds);
  Napi::Object stats = Napi::Object::New(env);
  stats.Set("faults", Napi::Number::New(env, static_cast<double>(engine::kFaults)));
  stats.Set("resolved", Napi::Number::New(env, static_cast<double>(engine::kResolved)));
  stats.Set("alreadyPresent", Napi::Number::New(env, static_cast<double>(engine::kAlreadyPresent)));
  stats.Set("mapAheadPages", Napi::Number::New(env, static_cast<double>(engine::kMapAheadPages)));
  stats.Set("loopThreadFaults", Napi::Number::New(env, static_cast<double>(engine::kLoopThreadFaults)));
  stats.Set("deferrals", Napi::Number::New(env, static_cast<double>(engine::kDeferrals)));
  stats.Set("untracked", Napi::Number::New(env, static_cast<double>(engine::kUntracked)));
  stats.Set("poisoned", Napi::Number::New(env, static_cast<double>(engine::kPoisoned)));
  stats.Set("copied", Napi::Number::New(env, static_cast<double>(engine::kCopied)));
  stats.Set("resolverCpuNs", Napi::Number::New(env, static_cast<double>(engine::kResolverCpuNs)));
  stats.Set("watchedTouched", Napi::Number::New(env, static_cast<double>(engine::kWatchedTouched)));
  layout.Set("stats", stats);
  layout.Set("statCount", Napi::Number::New(env, engine::kStatCount));
  Napi::Object buckets = Napi::Object::New(env);
  buckets.Set("linear", Napi::Number::New(env, engine::kLinearBuckets));
  buckets.Set("log", Napi::Number::New(env, engine::kLogBuckets));
  layout.Set("buckets", buckets);
  Napi::Object fill = Napi::Object::New(env);
  fill.Set("continue", Napi::Number::New(env, static_cast<double>(static_cast<int>(engine::Fill::kContinue))));
  fill.Set("copy", Napi::Number::New(env, static_cast<double>(static_cast<int>(engine::Fill::kCopy))));
  layout.Set("fill", fill);
  Napi::Object errnos = Napi::Object::New(env);
  errnos.Set("ENOENT", Napi::Number::New(env, static_cast<double>(ENOENT)));
  errnos.Set("ESRCH", Napi::Number::New(env, static_cast<double>(ESRCH)));
  errnos.Set("EAGAIN", Napi::Number::New(env, static_cast<double>(EAGAIN)));
  errnos.Set("EFAULT", Napi::Number::New(env, static_cast<double>(EFAULT)));
  errnos.Set("EEXIST", Napi::Number::New(env, static_cast<double>(EEXIST)));
  errnos.Set("EINVAL", Napi::Number::New(env, static_cast<double>(EINVAL)));
  errnos.Set("EBUSY", Napi::Number::New(env, static_cast<double>(EBUSY)));
  errnos.Set("EPERM", Napi::Number::New(env, static_cast<double>(EPERM)));
  errnos.Set("ENOMEM", Napi::Number::New(env, static_cast<double>(ENOMEM)));
  errnos.Set("EBADF", Napi::Number::New(env, static_cast<double>(EBADF)));
  errnos.Set("ENOSYS", Napi::Number::New(env, static_cast<double>(ENOSYS)));
  errnos.Set("EACCES", Napi::Number::New(env, static_cast<double>(EACCES)));
  errnos.Set("ENOTTY", Napi::Number::New(env, static_cast<double>(ENOTTY)));
  errnos.Set("EPIPE", Napi::Number::New(env, static_cast<double>(EPIPE)));
  errnos.Set("EIO", Napi::Number::New(env, static_cast<double>(EIO)));
  errnos.Set("ENOSPC", Napi::Number::New(env, static_cast<double>(ENOSPC)));
  layout.Set("errno", errnos);
  return layout;
}

}  // namespace

std::shared_ptr<engine::Engine> SharedEngine(const Napi::CallbackInfo& info, size_t i) {
  Handle* h = handles::Unwrap<Handle>(info, i, handles::kEngine, "expected a fault engine handle");
  return h ? h->engine : nullptr;
}

void InitEngine(Napi::Env env, Napi::Object exports) {
  exports.Set("engineLayout", Layout(env));
  exports.Set("engineCreate", Napi::Function::New(env, Create, "engineCreate"));
  exports.Set("engineAddRegion", Napi::Function::New(env, AddRegion, "engineAddRegion"));
  exports.Set("engineRegions", Napi::Function::New(env, Regions, "engineRegions"));
  exports.Set("engineRead", Napi::Function::New(env, Read, "engineRead"));
  exports.Set("engineServe", Napi::Function::New(env, Serve, "engineServe"));
  exports.Set("engineCopy", Napi::Function::New(env, Copy, "engineCopy"));
  exports.Set("engineZero", Napi::Function::New(env, Zero, "engineZero"));
  exports.Set("engineMapPresent", Napi::Function::New(env, MapPresent, "engineMapPresent"));
  exports.Set("enginePoison", Napi::Function::New(env, Poison, "enginePoison"));
  exports.Set("engineCopyRun", Napi::Function::New(env, CopyRun, "engineCopyRun"));
  exports.Set("engineCopyRuns", Napi::Function::New(env, CopyRuns, "engineCopyRuns"));
  InitRunFill(env, exports);
  exports.Set("engineWatch", Napi::Function::New(env, Watch, "engineWatch"));
  exports.Set("engineWake", Napi::Function::New(env, WakeRange, "engineWake"));
  exports.Set("engineReleaseViews", Napi::Function::New(env, ReleaseViews, "engineReleaseViews"));
  exports.Set("enginePoisonAbsent", Napi::Function::New(env, PoisonAbsent, "enginePoisonAbsent"));
  exports.Set("engineStats", Napi::Function::New(env, Stats, "engineStats"));
  exports.Set("engineStartThread", Napi::Function::New(env, StartThread, "engineStartThread"));
  exports.Set("engineStopThread", Napi::Function::New(env, StopThread, "engineStopThread"));
}
