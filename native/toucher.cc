// Native toucher threads: touch pages of a mapping this environment created,
// timing each first touch with the monotonic clock. Tests use them to fault
// from a real thread whose id is known; the benchmark uses them so that the
// latency it reports is measured by the faulting thread itself.
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

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
  std::atomic<bool> done{false};
  std::thread thread;
  Napi::ThreadSafeFunction tsfn;
  MappingRecord* mapping = nullptr;
  // Keeps the ArrayBuffer's finalizer away; a raw napi_ref because the job
  // may be freed on the toucher thread, where no N-API call is allowed.
  napi_ref buffer_ref = nullptr;
};

inline uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
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
    uint64_t t0 = NowNs();
    if (job->write_value >= 0)
      *p = static_cast<uint8_t>(job->write_value);
    else
      job->checksum += *p;
    job->latency_ns[i] = static_cast<double>(NowNs() - t0);
  }
  job->done = true;
  job->tsfn.BlockingCall([job](Napi::Env env, Napi::Function cb) {
    Napi::Float64Array lat = Napi::Float64Array::New(env, job->latency_ns.size());
    std::copy(job->latency_ns.begin(), job->latency_ns.end(), lat.Data());
    Napi::Object result = Napi::Object::New(env);
    result.Set("threadId", Napi::Number::New(env, job->tid));
    result.Set("latencyNs", lat);
    result.Set("checksum", Napi::Number::New(env, static_cast<double>(job->checksum)));
    job->mapping->pins--;
    napi_delete_reference(env, job->buffer_ref);
    job->buffer_ref = nullptr;
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
  napi_create_reference(env, ab, 1, &job->buffer_ref);
  // The finalizer runs on the JavaScript thread after the toucher released
  // the function, so the join below waits only for the thread to return.
  job->tsfn = Napi::ThreadSafeFunction::New(
      env, info[5].As<Napi::Function>(), "userfaultfd:toucher", 0, 1, [job](Napi::Env e) {
        if (job->thread.joinable()) job->thread.join();
        if (AddonState* s = e.GetInstanceData<AddonState>()) s->RemoveStopper(job.get());
      });
  std::weak_ptr<TouchJob> weak = job;
  state->AddStopper(job.get(), [weak] {
    // At teardown a toucher may still be blocked in a fault that nobody will
    // resolve; it owns its job, so it is detached rather than joined.
    if (auto j = weak.lock())
      if (!j->done && j->thread.joinable()) j->thread.detach();
  });
  job->thread = std::thread(Run, job);
  return args::Result(env, 0);
}

}  // namespace

void InitThreads(Napi::Env env, Napi::Object exports) {
  exports.Set("touchStart", Napi::Function::New(env, TouchStart, "touchStart"));
}
