// Native writer threads: a guest workload for live migration. A thread keeps
// writing a generation counter into pages of a mapping this environment
// created, at a capped rate, most writes into a hot set scattered over the
// mapping and the rest sweeping through it. JavaScript pauses and resumes it
// through a shared Int32Array, so that "the guest stopped writing" is a fact
// the thread acknowledged, not a hope.
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "clock.h"
#include "teardown_join.h"
#include "addon_state.h"
#include "args.h"

namespace {

// Slots of the control array shared with JavaScript (lib/writer.ts reads
// these names from writerControlLayout).
enum ControlSlot : int { kCommand = 0, kPaused = 1, kWrites = 2, kSlots = 3 };
enum Command : int32_t { kRun = 0, kPause = 1, kStop = 2 };

struct WriterJob {
  uintptr_t base;
  size_t page_size;
  uint32_t pages;
  uint32_t hot_pages;
  double hot_share;
  double writes_per_second;  // 0: as fast as possible
  uint32_t word;             // which 32-bit word of a page carries the counter
  uint32_t seed;
  int32_t* control;
  uint64_t writes = 0;
  pid_t tid = 0;
  std::thread thread;
  Napi::ThreadSafeFunction tsfn;
  MappingRecord* mapping = nullptr;
  bool pinned = false;
  napi_ref mapping_ref = nullptr;
  napi_ref control_ref = nullptr;
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  bool abandoned = false;
};

void Unpin(napi_env env, WriterJob* job) {
  if (job->pinned) {
    job->pinned = false;
    ReleaseMappingPin(job->mapping);
  }
  for (napi_ref* ref : {&job->mapping_ref, &job->control_ref}) {
    if (*ref) napi_delete_reference(env, *ref);
    *ref = nullptr;
  }
}

inline void SleepNs(uint64_t ns) {
  struct timespec ts = {static_cast<time_t>(ns / 1000000000ull), static_cast<long>(ns % 1000000000ull)};
  nanosleep(&ts, nullptr);
}

void Run(std::shared_ptr<WriterJob> job) {
  job->tid = static_cast<pid_t>(syscall(SYS_gettid));
  int32_t* ctl = job->control;
  uint32_t rng = job->seed | 1;
  auto next = [&rng] {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
  };
  uint32_t cold = 0;
  uint32_t generation = 0;
  // Writes since the rate clock last restarted (it restarts after a pause,
  // so a paused writer does not catch up in a burst).
  uint64_t since_start = 0;
  uint64_t started = MonotonicNs();
  for (;;) {
    int32_t command = __atomic_load_n(&ctl[kCommand], __ATOMIC_SEQ_CST);
    if (command == kStop) break;
    if (command == kPause) {
      // No write is in progress here: acknowledging now is the promise.
      __atomic_store_n(&ctl[kPaused], 1, __ATOMIC_SEQ_CST);
      SleepNs(100000);
      since_start = 0;
      started = MonotonicNs();
      continue;
    }
    __atomic_store_n(&ctl[kPaused], 0, __ATOMIC_SEQ_CST);
    if (job->writes_per_second > 0) {
      double due_ns = static_cast<double>(since_start) / job->writes_per_second * 1e9;
      double elapsed_ns = static_cast<double>(MonotonicNs() - started);
      if (due_ns > elapsed_ns) {
        // Short naps, so a pause or stop is seen within a millisecond.
        SleepNs(static_cast<uint64_t>(due_ns - elapsed_ns < 1e6 ? due_ns - elapsed_ns : 1e6));
        continue;
      }
      // Behind by more than 10 ms (a write waited on a fault): the rate is
      // a cap, not a debt, so a stalled writer does not burst to catch up.
      if (elapsed_ns > due_ns + 1e7) {
        since_start = 0;
        started = MonotonicNs();
      }
    }
    uint32_t page;
    if (static_cast<double>(next()) / 4294967296.0 < job->hot_share)
      page = static_cast<uint32_t>((static_cast<uint64_t>(next() % job->hot_pages) * 40503u) % job->pages);
    else
      page = cold = cold + 1 >= job->pages ? 0 : cold + 1;
    volatile uint32_t* word = reinterpret_cast<volatile uint32_t*>(job->base + static_cast<uintptr_t>(page) * job->page_size) + job->word;
    *word = ++generation;
    job->writes++;
    since_start++;
    __atomic_store_n(&ctl[kWrites], static_cast<int32_t>(job->writes), __ATOMIC_RELAXED);
  }
  {
    std::lock_guard<std::mutex> lock(job->mu);
    job->finished = true;
    if (job->abandoned) return;
  }
  job->cv.notify_all();
  job->tsfn.BlockingCall([job](Napi::Env env, Napi::Function cb) {
    Napi::Object result = Napi::Object::New(env);
    result.Set("threadId", Napi::Number::New(env, job->tid));
    result.Set("writes", Napi::Number::New(env, static_cast<double>(job->writes)));
    Unpin(env, job.get());
    if (AddonState* s = AddonState::Of(env)) s->RemoveJoiner(job.get());
    cb.Call({result});
  });
  job->tsfn.Release();
}

// writerStart(mappingBuffer, pageSize, params: Float64Array, control: Int32Array, callback)
// params: [hotPages, hotShare, writesPerSecond, word, seed]. The mapping is
// pinned (munmap answers EBUSY) until the thread has reported; it stops when
// control[command] is set to stop, or at teardown.
Napi::Value WriterStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  uint64_t page_size = 0;
  if (!info[0].IsArrayBuffer()) return args::Fail(info, "expected a mapping's ArrayBuffer"), env.Undefined();
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  auto found = state->mappings.find(reinterpret_cast<uintptr_t>(ab.Data()));
  if (ab.IsDetached() || found == state->mappings.end()) return args::Result(env, -EFAULT);
  if (!args::U64(info, 1, &page_size) || !info[2].IsTypedArray() || !info[3].IsTypedArray() || !info[4].IsFunction())
    return args::Fail(info, "expected (mapping, pageSize, Float64Array, Int32Array, callback)"), env.Undefined();
  Napi::TypedArray params_ta = info[2].As<Napi::TypedArray>();
  Napi::TypedArray control_ta = info[3].As<Napi::TypedArray>();
  if (params_ta.TypedArrayType() != napi_float64_array || params_ta.ElementLength() < 5)
    return args::Fail(info, "expected 5 parameters in a Float64Array"), env.Undefined();
  if (control_ta.TypedArrayType() != napi_int32_array || control_ta.ElementLength() < kSlots)
    return args::Fail(info, "expected a control Int32Array of writerControlLayout.slots"), env.Undefined();
  const double* params = params_ta.As<Napi::Float64Array>().Data();
  size_t length = found->second->length;
  if (page_size == 0 || length < page_size || params[0] < 1 || params[3] < 0 || params[3] * 4 + 4 > static_cast<double>(page_size))
    return args::Result(env, -EINVAL);
  auto job = std::make_shared<WriterJob>();
  job->base = found->first;
  job->page_size = page_size;
  job->pages = static_cast<uint32_t>(length / page_size);
  job->hot_pages = static_cast<uint32_t>(params[0]) < job->pages ? static_cast<uint32_t>(params[0]) : job->pages;
  job->hot_share = params[1];
  job->writes_per_second = params[2];
  job->word = static_cast<uint32_t>(params[3]);
  job->seed = static_cast<uint32_t>(params[4]);
  job->control = control_ta.As<Napi::Int32Array>().Data();
  job->mapping = found->second;
  job->mapping->pins++;
  job->pinned = true;
  napi_create_reference(env, ab, 1, &job->mapping_ref);
  napi_create_reference(env, control_ta, 1, &job->control_ref);
  job->tsfn = Napi::ThreadSafeFunction::New(
      env, info[4].As<Napi::Function>(), "userfaultfd:writer", 0, 1, [job](Napi::Env) {
        if (job->thread.joinable()) job->thread.join();
      });
  // Teardown: tell the thread to stop; a write blocked in a fault returns
  // once the environment's uffds are closed (joiners run after that).
  napi_env raw_env = env;
  std::weak_ptr<WriterJob> weak = job;
  state->AddJoiner(job.get(), [weak, raw_env] {
    auto j = weak.lock();
    if (!j) return;
    __atomic_store_n(&j->control[kCommand], static_cast<int32_t>(kStop), __ATOMIC_SEQ_CST);
    if (JoinWithinBound(j.get())) Unpin(raw_env, j.get());  // else the pin stays: the mapping outlives the thread
  });
  job->thread = std::thread(Run, job);
  return args::Result(env, 0);
}

}  // namespace

void InitWriter(Napi::Env env, Napi::Object exports) {
  exports.Set("writerStart", Napi::Function::New(env, WriterStart, "writerStart"));
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("command", Napi::Number::New(env, kCommand));
  layout.Set("paused", Napi::Number::New(env, kPaused));
  layout.Set("writes", Napi::Number::New(env, kWrites));
  layout.Set("slots", Napi::Number::New(env, kSlots));
  layout.Set("run", Napi::Number::New(env, kRun));
  layout.Set("pause", Napi::Number::New(env, kPause));
  layout.Set("stop", Napi::Number::New(env, kStop));
  exports.Set("writerControlLayout", layout);
}
