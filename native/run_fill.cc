// Working-set replay off the JavaScript thread, for content in a local file
// (a snapshot image, a memfd): a batch of runs is copied into the backing,
// marked present and mapped into every view by a few native threads at once.
// Each page costs a copy and a share of a CONTINUE, a few microseconds of
// kernel time that one thread cannot overlap; with the guest not yet running,
// the other CPUs are idle, so threads shorten a restore's prefetch.
//
// JavaScript claims the batch's pages before it starts (a fault on one waits
// for the batch), sets control[cancel] to stop early (runs not begun report
// -ECANCELED), and gets one callback with a result per run: the pages made
// present, or -errno (the run is then left to its faults).
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "addon_state.h"
#include "args.h"
#include "engine_handle.h"

namespace {

// Slots of the control array shared with JavaScript (runFillLayout names them).
enum ControlSlot : int { kCancel = 0, kSlots = 1 };
constexpr int kMaxThreads = 16;

struct FillJob {
  std::shared_ptr<engine::Engine> engine;
  int backing_fd = -1;  // duplicates: JavaScript closing its own cannot pull them away mid-copy
  int source_fd = -1;
  uint64_t source_offset = 0;
  uint64_t page_size = 0;
  bool map = true;
  std::vector<uint32_t> runs;  // first page, count, ...
  std::vector<double> results;
  std::atomic<size_t> next{0};
  std::atomic<int> running{0};
  // Cleared for good when the kernel refuses to copy between these files.
  std::atomic<bool> in_kernel_copy{true};
  int32_t* control = nullptr;
  std::vector<std::thread> threads;
  Napi::ThreadSafeFunction tsfn;
  napi_ref handle_ref = nullptr;  // keeps the engine handle, and so the present bitmap, alive
  napi_ref control_ref = nullptr;

  ~FillJob() {
    if (backing_fd >= 0) close(backing_fd);
    if (source_fd >= 0) close(source_fd);
  }
};

void JoinAll(FillJob* job) {
  for (std::thread& t : job->threads)
    if (t.joinable() && t.get_id() != std::this_thread::get_id()) t.join();
}

void Unref(napi_env env, FillJob* job) {
  for (napi_ref* ref : {&job->handle_ref, &job->control_ref}) {
    if (*ref) napi_delete_reference(env, *ref);
    *ref = nullptr;
  }
}

bool Cancelled(const FillJob* job) { return __atomic_load_n(&job->control[kCancel], __ATOMIC_ACQUIRE) != 0; }

// Copies backing bytes [offset, offset + length) from the source: in the
// kernel when it can (no user buffer, one call), else read then write.
int CopyContent(FillJob* job, uint64_t offset, uint64_t length, std::vector<uint8_t>* buffer) {
  if (job->in_kernel_copy.load(std::memory_order_relaxed)) {
    loff_t in = static_cast<loff_t>(job->source_offset + offset), out = static_cast<loff_t>(offset);
    uint64_t left = length;
    while (left > 0) {
      ssize_t n = copy_file_range(job->source_fd, &in, job->backing_fd, &out, left, 0);
      if (n > 0) {
        left -= static_cast<uint64_t>(n);
        continue;
      }
      if (n == 0) return -ENODATA;  // the source ends before the run
      if (errno == EINTR) continue;
      if ((errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS) && left == length) {
        job->in_kernel_copy.store(false, std::memory_order_relaxed);
        break;
      }
      return -errno;
    }
    if (left == 0) return 0;
  }
  buffer->resize(length);
  for (uint64_t done = 0; done < length;) {
    ssize_t n = pread(job->source_fd, buffer->data() + done, length - done, static_cast<off_t>(job->source_offset + offset + done));
    if (n == 0) return -ENODATA;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += static_cast<uint64_t>(n);
  }
  for (uint64_t done = 0; done < length;) {
    ssize_t n = pwrite(job->backing_fd, buffer->data() + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += static_cast<uint64_t>(n);
  }
  return 0;
}

// 0, or -errno when a run is empty or reaches past the backing (it would
// grow the file instead of failing).
int CheckRuns(const FillJob& job, int backing_fd) {
  struct stat st;
  if (fstat(backing_fd, &st) != 0) return -errno;
  for (size_t i = 0; i < job.runs.size(); i += 2) {
    const uint64_t end = (static_cast<uint64_t>(job.runs[i]) + job.runs[i + 1]) * job.page_size;
    if (job.runs[i + 1] == 0 || end > static_cast<uint64_t>(st.st_size)) return -EINVAL;
  }
  return 0;
}

double FillRun(FillJob* job, uint32_t first, uint32_t count, std::vector<uint8_t>* buffer) {
  const uint64_t offset = static_cast<uint64_t>(first) * job->page_size;
  const uint64_t length = static_cast<uint64_t>(count) * job->page_size;
  if (int rc = CopyContent(job, offset, length, buffer)) return rc;
  // Content first, then the bits: the engine maps whatever is marked.
  for (uint64_t p = first; p < static_cast<uint64_t>(first) + count; p++) job->engine->MarkPresent(p);
  // A view that cannot be mapped now is left to fault: its page is present, so the fault maps it.
  if (job->map) job->engine->MapPresent(offset, length);
  return count;
}

void Work(std::shared_ptr<FillJob> job) {
  std::vector<uint8_t> buffer;
  const size_t runs = job->runs.size() / 2;
  for (;;) {
    size_t i = job->next.fetch_add(1, std::memory_order_relaxed);
    if (i >= runs) break;
    job->results[i] = Cancelled(job.get()) ? -ECANCELED : FillRun(job.get(), job->runs[2 * i], job->runs[2 * i + 1], &buffer);
  }
  if (job->running.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // The last thread reports for all, its descriptors closed first: when
  // JavaScript hears of the batch, nothing of it is left open.
  close(job->backing_fd);
  close(job->source_fd);
  job->backing_fd = job->source_fd = -1;
  job->tsfn.BlockingCall([job](Napi::Env env, Napi::Function cb) {
    Napi::Float64Array out = Napi::Float64Array::New(env, job->results.size());
    for (size_t i = 0; i < job->results.size(); i++) out[i] = job->results[i];
    Unref(env, job.get());
    if (AddonState* s = AddonState::Of(env)) s->RemoveStopper(job.get());
    cb.Call({out});
  });
  job->tsfn.Release();
}

// The arguments both entry points share: (engine, backingFd, sourceFd,
// sourceOffset, runs) into `job` (engine, page size, source offset, runs).
bool ReadBatch(const Napi::CallbackInfo& info, FillJob* job, int* backing_fd, int* source_fd) {
  job->engine = SharedEngine(info, 0);
  Napi::Uint32Array runs;
  if (!job->engine || !args::Fd(info, 1, backing_fd) || !args::Fd(info, 2, source_fd) || !args::U64(info, 3, &job->source_offset) ||
      !args::RunPairs(info, 4, &runs))
    return false;
  job->page_size = job->engine->page_size();
  job->runs.assign(runs.Data(), runs.Data() + runs.ElementLength());
  return true;
}

// engineFillRuns(engine, backingFd, sourceFd, sourceOffset, runs: Uint32Array
// [first, count, ...], threads, map, control: Int32Array over a
// SharedArrayBuffer, callback(results: Float64Array)) -> 0 | -errno.
Napi::Value FillRuns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonState* state = AddonState::Of(env);
  auto job = std::make_shared<FillJob>();
  int backing_fd, source_fd;
  int64_t threads, map;
  if (!ReadBatch(info, job.get(), &backing_fd, &source_fd) || !args::Int(info, 5, &threads) || !args::Int(info, 6, &map))
    return env.Undefined();
  if (!info[7].IsTypedArray() || info[7].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      info[7].As<Napi::TypedArray>().ElementLength() < kSlots || !args::OverShared(env, info[7].As<Napi::TypedArray>()))
    return args::Fail(info, "expected a control Int32Array of runFillLayout.slots over a SharedArrayBuffer"), env.Undefined();
  if (!info[8].IsFunction()) return args::Fail(info, "expected a callback"), env.Undefined();
  if (threads < 1 || threads > kMaxThreads) return args::Fail(info, "expected 1 to 16 threads"), env.Undefined();
  if (int rc = CheckRuns(*job, backing_fd)) return args::Result(env, rc);
  job->map = map != 0;
  job->results.assign(job->runs.size() / 2, 0);
  job->backing_fd = fcntl(backing_fd, F_DUPFD_CLOEXEC, 0);
  job->source_fd = job->backing_fd < 0 ? -1 : fcntl(source_fd, F_DUPFD_CLOEXEC, 0);
  if (job->source_fd < 0) return args::Result(env, -errno);
  job->control = info[7].As<Napi::Int32Array>().Data();
  napi_create_reference(env, info[0], 1, &job->handle_ref);
  napi_create_reference(env, info[7], 1, &job->control_ref);
  FillJob* raw = job.get();
  job->tsfn = Napi::ThreadSafeFunction::New(env, info[8].As<Napi::Function>(), "userfaultfd:run-fill", 0, 1,
                                            [job](Napi::Env) { JoinAll(job.get()); });
  // Teardown: runs not begun are skipped; a run in progress is a copy and a
  // CONTINUE, neither of which waits on anyone.
  napi_env raw_env = env;
  std::weak_ptr<FillJob> weak = job;
  state->AddStopper(raw, [weak, raw_env] {
    auto j = weak.lock();
    if (!j) return;
    __atomic_store_n(&j->control[kCancel], 1, __ATOMIC_RELEASE);
    JoinAll(j.get());
    Unref(raw_env, j.get());
  });
  const size_t wanted = std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(job->runs.size() / 2, 1));
  job->running.store(static_cast<int>(wanted));
  for (size_t t = 0; t < wanted; t++) job->threads.emplace_back(Work, job);
  return args::Result(env, 0);
}

// engineFillRunsNow(engine, backingFd, sourceFd, sourceOffset, runs, map)
// -> Float64Array: the same on the calling thread, for a small batch beside
// a running guest (the CPUs are the guest's; nothing needs claiming, as the
// runs are present before the loop reads another fault).
Napi::Value FillRunsNow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FillJob job;
  int backing_fd, source_fd;
  int64_t map;
  if (!ReadBatch(info, &job, &backing_fd, &source_fd) || !args::Int(info, 5, &map)) return env.Undefined();
  job.map = map != 0;
  if (int rc = CheckRuns(job, backing_fd)) return args::Result(env, rc);
  // Borrowed for the call: nothing outlives it.
  job.backing_fd = backing_fd;
  job.source_fd = source_fd;
  int32_t never = 0;
  job.control = &never;
  std::vector<uint8_t> buffer;
  Napi::Float64Array out = Napi::Float64Array::New(env, job.runs.size() / 2);
  for (size_t i = 0; i < job.runs.size() / 2; i++) out[i] = FillRun(&job, job.runs[2 * i], job.runs[2 * i + 1], &buffer);
  job.backing_fd = job.source_fd = -1;
  return out;
}

}  // namespace

void InitRunFill(Napi::Env env, Napi::Object exports) {
  exports.Set("engineFillRuns", Napi::Function::New(env, FillRuns, "engineFillRuns"));
  exports.Set("engineFillRunsNow", Napi::Function::New(env, FillRunsNow, "engineFillRunsNow"));
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("cancel", Napi::Number::New(env, kCancel));
  layout.Set("slots", Napi::Number::New(env, kSlots));
  layout.Set("maxThreads", Napi::Number::New(env, kMaxThreads));
  exports.Set("runFillLayout", layout);
}
