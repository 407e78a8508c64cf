// Wires the concerns together and owns the per-environment lifecycle.
#include <sys/syscall.h>
#include <unistd.h>

#include "addon_state.h"

namespace {

constexpr size_t kScratchSlots = 8;

// Runs when the environment (main thread or a worker) is torn down. The
// order is what keeps a faulting thread from touching unmapped memory:
//  1. stoppers: pollers and the threads that read a uffd (resolver, engine)
//     stop and are joined while the fds they use are still open;
//  2. the owned fds close; releasing a uffd wakes every thread blocked in a
//     fault on it, and the retried fault is an ordinary one;
//  3. joiners: toucher threads, now unblocked, finish their pages and are
//     joined (a thread whose fault is held by a uffd someone else still has
//     open is left with its mapping pinned, never unmapped under it);
//  4. mappings are handed to their ArrayBuffers' finalizers, which unmap
//     only what no thread still pins.
void Cleanup(void* arg) {
  auto* state = static_cast<AddonState*>(arg);
  auto stoppers = std::move(state->stoppers);
  state->stoppers.clear();
  for (auto& entry : stoppers) entry.second();
  for (int fd : state->owned_fds) close(fd);
  state->owned_fds.clear();
  auto joiners = std::move(state->joiners);
  state->joiners.clear();
  for (auto& entry : joiners) entry.second();
  CleanupMappings(state);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* state = new AddonState();
  state->js_thread_tid = static_cast<pid_t>(syscall(SYS_gettid));
  env.SetInstanceData<AddonState>(state);
  napi_add_env_cleanup_hook(env, Cleanup, state);

  Napi::Float64Array scratch = Napi::Float64Array::New(env, kScratchSlots);
  state->scratch = scratch.Data();
  state->scratch_ref = Napi::Persistent(scratch);
  exports.Set("scratch", scratch);

  InitFdOps(env, exports);
  InitUffd(env, exports);
  InitMemfd(env, exports);
  InitPoller(env, exports);
  InitThreads(env, exports);
  InitWriter(env, exports);
  InitFdPassing(env, exports);
  InitEngine(env, exports);
  InitWatchdog(env, exports);
  InitDirtyTracking(env, exports);
  InitSnapshot(env, exports);
  InitGenWriters(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(userfaultfd, Init)
