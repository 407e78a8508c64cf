// Wires the concerns together and owns the per-environment lifecycle.
#include <sys/syscall.h>
#include <unistd.h>

#include "addon_state.h"

namespace {

constexpr size_t kScratchSlots = 8;

// Runs when the environment (main thread or a worker) is torn down: stop
// pollers and native threads first, since they use the fds, then close fds.
void Cleanup(void* arg) {
  auto* state = static_cast<AddonState*>(arg);
  auto stoppers = std::move(state->stoppers);
  for (auto& entry : stoppers) entry.second();
  for (int fd : state->owned_fds) close(fd);
  state->owned_fds.clear();
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
  InitFdPassing(env, exports);
  InitEngine(env, exports);
  InitWatchdog(env, exports);
  InitDirtyTracking(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(userfaultfd, Init)
