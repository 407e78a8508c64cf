// Native toucher threads: touch pages of a mapping this environment created,
// timing each first touch with the monotonic clock. Tests use them to fault
// from a real thread whose id is known; the benchmark uses them so that the
// latency it reports is measured by the faulting thread itself.
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "clock.h"
#include "teardown_join.h"
#include "addon_state.h"
#include "args.h"

namespace {

struct TouchJob {
  uintptr_t base;
  size_t page_size;
  std::vector<uint32_t> pages;
  int write_value;  // -1: read the first byte of each page
  int cpu;          // -1: no pinning
  std::vector<double> latency_ns;
  uint64_t checksum = 0;
  pid_t tid = 0;
  std::thread thread;
  Napi::ThreadSafeFunction tsfn;
  MappingRecord* mapping = nullptr;
  bool pinned = false;  // JavaScript thread only: whoever unpins first clears it
  // Keeps the ArrayBuffer's finalizer away; a raw napi_ref because the job
  // may be freed on the toucher thread, where no N-API call is allowed.
  napi_ref buffer_ref = nullptr;
  // Teardown handshake: `finished` once the touches are done; `abandoned`
  // when teardown gave up waiting, after which the thread must not use
  // `tsfn` (the environment frees it).
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  bool abandoned = false;
};

// Runs on the JavaScript thread, once: by the report or by teardown.
void Unpin(napi_env env, TouchJob* job) {
  if (job->pinned) {
    job->pinned = false;
    ReleaseMappingPin(job->mapping);
  }
  if (job->buffer_ref) {
    napi_delete_reference(env, job->buffer_ref);
    job->buffer_ref = nullptr;
  }
}

void Run(std::shared_ptr<TouchJob> job) {
  job->tid = static_cast<pid_t>(syscall(SYS_gettid));
  if (job->cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(job->cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
  }
  job->latency_ns.resize(job->pages.size());
  for (size_t i = 0; i < job->pages.size(); i++) {
    volatile uint8_t* p = reinterpret_cast<volatile uint8_t*>(job->base + static_cast<uintptr_t>(job->pages[i]) * job->page_size);
    uint64_t t0 = MonotonicNs();
    if (job->write_value >= 0)
      *p = static_cast<uint8_t>(job->write_value);
    else
      job->checksum += *p;
    job->latency_ns[i] = static_cast<double>(MonotonicNs() - t0);
  }
  {
    std::lock_guard<std::mutex> lock(job->mu);
    job->finished = true;
    if (job->abandoned) return;
  }
  job->cv.notify_all();
  job->tsfn.BlockingCall([job](Napi::Env env, Napi::Function cb) {
    Napi::Float64Array lat = Napi::Float64Array::New(env, job->latency_ns.size());
    std::copy(job->latency_ns.begin(), job->latency_ns.end(), lat.Data());
    Napi::Object result = Napi::Object::New(env);
    result.Set("threadId", Napi::Number::New(env, job->tid));
    result.Set("latencyNs", lat);
    result.Set("checksum", Napi::Number::New(env, static_cast<double>(job->checksum)));
    Unpin(env, job.get());
    if (AddonState* s = AddonState::Of(env)) s->RemoveJoiner(job.get());
    cb.Call({result});
  });
  job->tsfn.Release();
}

// touchStart(mappingBuffer, pageSize, pages: Uint32Array, writeValue, cpu, callback)
// The buffer must be a live mapping this environment created; it is pinned
// (munmap answers EBUSY) and kept alive until the thread has reported.
Napi::Value TouchStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  uint64_t page_size = 0;
  int64_t write_value = -1, cpu = -1;
  if (!info[0].IsArrayBuffer()) return args::Fail(info, "expected a mapping's ArrayBuffer"), env.Undefined();
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  auto found = state->mappings.find(reinterpret_cast<uintptr_t>(ab.Data()));
  if (ab.IsDetached() || found == state->mappings.end()) return args::Result(env, -EFAULT);
  uint64_t address = found->first;
  if (!args::U64(info, 1, &page_size) || !info[2].IsTypedArray() ||
      !args::Int(info, 3, &write_value) || !args::Int(info, 4, &cpu) || !info[5].IsFunction())
    return env.Undefined();
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint32_array) return args::Fail(info, "expected a Uint32Array"), env.Undefined();
  auto job = std::make_shared<TouchJob>();
  job->base = address;
  job->page_size = page_size;
  job->write_value = static_cast<int>(write_value);
  job->cpu = static_cast<int>(cpu);
  const uint32_t* pages = ta.As<Napi::Uint32Array>().Data();
  job->pages.assign(pages, pages + ta.ElementLength());
  uint32_t max_page = 0;
  for (uint32_t pg : job->pages) max_page = pg > max_page ? pg : max_page;
  if (page_size == 0 || !state->OwnsRange(address, (static_cast<uint64_t>(max_page) + 1) * page_size))
    return args::Result(env, -EFAULT);
  job->mapping = found->second;
  job->mapping->pins++;
  job->pinned = true;
  napi_create_reference(env, ab, 1, &job->buffer_ref);
  // The finalizer runs on the JavaScript thread after the toucher released
  // the function (or, at teardown, after the joiner), so the join below
  // waits only for the thread to return.
  job->tsfn = Napi::ThreadSafeFunction::New(
      env, info[5].As<Napi::Function>(), "userfaultfd:toucher", 0, 1, [job](Napi::Env) {
        if (job->thread.joinable()) job->thread.join();
      });
  // At teardown a toucher may be blocked in a fault nobody will resolve. It
  // is joined after the environment's fds are closed: releasing the uffd
  // lets the fault through, the thread finishes its pages on memory that is
  // still mapped, and only then is the pin dropped.
  napi_env raw_env = env;
  std::weak_ptr<TouchJob> weak = job;
  state->AddJoiner(job.get(), [weak, raw_env] {
    auto j = weak.lock();
    if (!j) return;
    if (JoinWithinBound(j.get())) Unpin(raw_env, j.get());  // else the pin stays: the mapping outlives the thread
  });
  job->thread = std::thread(Run, job);
  return args::Result(env, 0);
}

}  // namespace

void InitThreads(Napi::Env env, Napi::Object exports) {
  exports.Set("touchStart", Napi::Function::New(env, TouchStart, "touchStart"));
}
