// Per-environment state. Every Node environment (main thread, each
// worker_thread) that loads the addon gets its own AddonState through
// SetInstanceData; nothing lives in statics, so a worker that exits closes
// only what it opened and joins only the threads it started.
#pragma once

#include <napi.h>

#include <functional>
#include <mutex>
#include <set>
#include <unordered_map>

struct AddonState;

// One mmap made by this environment. Freed by the ArrayBuffer's finalizer;
// `unmapped` tells that finalizer an explicit munmap already happened.
struct MappingRecord {
  uintptr_t address;
  size_t length;
  bool unmapped;
  AddonState* state;  // null once the environment is torn down
  int pins;           // native threads touching it; munmap refuses while > 0
};

struct AddonState {
  // Thread id of the JavaScript thread of this environment: the deadlock
  // guard compares faulting thread ids against it.
  pid_t js_thread_tid = 0;

  // Descriptors this environment owns; closed by the cleanup hook.
  std::set<int> owned_fds;

  // Live mappings by start address. The ArrayBuffer finalizer and explicit
  // unmap both go through this table so that a mapping is unmapped once.
  std::unordered_map<uintptr_t, MappingRecord*> mappings;

  // Stop callbacks of pollers and native threads, run before fds are closed.
  std::unordered_map<void*, std::function<void()>> stoppers;

  // The deadlock watchdog (watchdog.cc), created when a uffd read on this
  // environment's JavaScript thread is first watched.
  void* watchdog = nullptr;

  // Scratch slots the hot path writes side results into (bytes done after a
  // partial CONTINUE/COPY), so that no call allocates a result object.
  double* scratch = nullptr;
  Napi::Reference<Napi::Float64Array> scratch_ref;

  // True when [address, address+length) lies inside one live mapping this
  // environment created: native code touches no other user memory.
  bool OwnsRange(uintptr_t address, size_t length) const {
    for (const auto& entry : mappings) {
      const MappingRecord* rec = entry.second;
      if (address >= rec->address && length <= rec->length && address - rec->address <= rec->length - length) return true;
    }
    return false;
  }

  static AddonState* Of(Napi::Env env) { return env.GetInstanceData<AddonState>(); }
  void AddStopper(void* key, std::function<void()> fn) { stoppers[key] = std::move(fn); }
  void RemoveStopper(void* key) { stoppers.erase(key); }
};

// Each concern registers its exports here; addon.cc calls them in order.
void InitFdOps(Napi::Env env, Napi::Object exports);
void InitUffd(Napi::Env env, Napi::Object exports);
void InitMemfd(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);
void InitThreads(Napi::Env env, Napi::Object exports);
void InitFdPassing(Napi::Env env, Napi::Object exports);
void InitEngine(Napi::Env env, Napi::Object exports);
void InitWatchdog(Napi::Env env, Napi::Object exports);
void InitDirtyTracking(Napi::Env env, Napi::Object exports);
void CleanupMappings(AddonState* state);
