// Generation writers, for tests of live snapshots: native threads that keep
// writing pages of a mapping in one global order. Write number s goes to page
// (s * stride) mod pages and stores [s / pages + 1, page] (two u64) at the
// page's start. One write happens at a time (a mutex orders them), so memory
// at any instant holds exactly the first N writes for some N, and a checker
// can tell from an image alone whether it shows one instant, and which.
#include <errno.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "addon_state.h"
#include "args.h"
#include "handles.h"

namespace {

struct Writers {
  uintptr_t base = 0;
  uint64_t page_size = 0;
  uint64_t pages = 0;
  uint64_t stride = 1;
  std::mutex order;
  std::atomic<uint64_t> started{0};    // writes begun (the next write's number)
  std::atomic<uint64_t> completed{0};  // writes finished
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  MappingRecord* mapping = nullptr;
  AddonState* state = nullptr;
  bool joined = false;
};

void Run(Writers* w) {
  for (;;) {
    std::lock_guard<std::mutex> hold(w->order);
    if (w->stop.load()) return;
    const uint64_t s = w->started.load();
    w->started.store(s + 1);
    const uint64_t page = (s * w->stride) % w->pages;
    volatile uint64_t* at = reinterpret_cast<volatile uint64_t*>(w->base + page * w->page_size);
    at[0] = s / w->pages + 1;  // may sleep in a write-protect fault
    at[1] = page;
    w->completed.store(s + 1);
  }
}

// On the JavaScript thread (stop, finalizer) or at teardown after the uffds
// are closed, when no fault can hold a writer any more.
void Join(Writers* w) {
  if (w->joined) return;
  w->joined = true;
  w->stop.store(true);
  for (std::thread& t : w->threads)
    if (t.joinable()) t.join();
  if (w->mapping) ReleaseMappingPin(w->mapping);
  w->mapping = nullptr;
  if (w->state) w->state->RemoveJoiner(w);
  w->state = nullptr;
}

// genWritersStart(mappingBuffer, pageSize, threads, stride) -> handle | -errno
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  uint64_t page_size = 0, threads = 0, stride = 0;
  if (!info[0].IsArrayBuffer()) return args::Fail(info, "expected a mapping's ArrayBuffer"), env.Undefined();
  if (!args::U64(info, 1, &page_size) || !args::U64(info, 2, &threads) || !args::U64(info, 3, &stride)) return env.Undefined();
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  auto found = state->mappings.find(reinterpret_cast<uintptr_t>(ab.Data()));
  if (ab.IsDetached() || found == state->mappings.end()) return args::Result(env, -EFAULT);
  MappingRecord* rec = found->second;
  if (page_size < 16 || (page_size & (page_size - 1)) || rec->length < page_size || threads == 0 || threads > 64 || stride == 0)
    return args::Result(env, -EINVAL);
  auto w = std::make_unique<Writers>();
  w->base = rec->address;
  w->page_size = page_size;
  w->pages = rec->length / page_size;
  w->stride = stride;
  w->mapping = rec;
  rec->pins++;
  w->state = state;
  Writers* raw = w.release();
  for (uint64_t i = 0; i < threads; i++) raw->threads.emplace_back(Run, raw);
  state->AddJoiner(raw, [raw] {
    raw->state = nullptr;
    Join(raw);
  });
  return handles::Wrap<Writers>(env, raw, handles::kGenWriters, [](Napi::Env, Writers* writers) {
    Join(writers);
    delete writers;
  });
}

// genWritersProgress(handle) -> [started, completed]; never waits for a writer.
Napi::Value Progress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Writers* w = handles::Unwrap<Writers>(info, 0, handles::kGenWriters, "expected a generation writers handle");
  if (!w) return env.Undefined();
  const uint64_t completed = w->completed.load();
  const uint64_t started = w->started.load();
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, static_cast<double>(started)));
  out.Set(1u, Napi::Number::New(env, static_cast<double>(completed)));
  return out;
}

// genWritersStop(handle) -> writes completed. Joins the threads. Idempotent.
Napi::Value Stop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Writers* w = handles::Unwrap<Writers>(info, 0, handles::kGenWriters, "expected a generation writers handle");
  if (!w) return env.Undefined();
  Join(w);
  return Napi::Number::New(env, static_cast<double>(w->completed.load()));
}

}  // namespace

void InitGenWriters(Napi::Env env, Napi::Object exports) {
  exports.Set("genWritersStart", Napi::Function::New(env, Start, "genWritersStart"));
  exports.Set("genWritersProgress", Napi::Function::New(env, Progress, "genWritersProgress"));
  exports.Set("genWritersStop", Napi::Function::New(env, Stop, "genWritersStop"));
}
