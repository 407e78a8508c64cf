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
// Only the environment's JavaScript thread (and its teardown) touches it.
struct MappingRecord {
  uintptr_t address;
  size_t length;
  bool unmapped;
  AddonState* state;  // null once the environment is torn down
  int pins;           // native threads touching it; munmap refuses while > 0
  // The ArrayBuffer is gone but a pin was still held (teardown, a thread that
  // could not be joined): the last ReleaseMappingPin unmaps and frees.
  bool finalized;
};

// Drops one pin taken by a native thread; unmaps a mapping whose finalizer
// already ran and deferred to this.
void ReleaseMappingPin(MappingRecord* rec);

struct AddonState {
  // Thread id of the JavaScript thread of this environment: the deadlock
  // guard compares faulting thread ids against it.
  pid_t js_thread_tid = 0;

  // Descriptors this environment owns; closed by the cleanup hook.
  std::set<int> owned_fds;

  // Live mappings by start address. The ArrayBuffer finalizer and explicit
  // unmap both go through this table so that a mapping is unmapped once.
  std::unordered_map<uintptr_t, MappingRecord*> mappings;

  // Teardown phases, in this order (see Cleanup in addon.cc):
  // stoppers run before fds are closed: pollers, and threads that read a
  // uffd and can be told to stop (resolver, engine);
  // joiners run after fds are closed: threads that may be blocked in a fault
  // and only return once the uffd is released (touchers), before any mapping
  // they touch is unmapped.
  std::unordered_map<void*, std::function<void()>> stoppers;
  std::unordered_map<void*, std::function<void()>> joiners;

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
  void AddJoiner(void* key, std::function<void()> fn) { joiners[key] = std::move(fn); }
  void RemoveJoiner(void* key) { joiners.erase(key); }
};

// Each concern registers its exports here; addon.cc calls them in order.
void InitFdOps(Napi::Env env, Napi::Object exports);
void InitUffd(Napi::Env env, Napi::Object exports);
void InitMemfd(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);
void InitThreads(Napi::Env env, Napi::Object exports);
void InitWriter(Napi::Env env, Napi::Object exports);
void InitFdPassing(Napi::Env env, Napi::Object exports);
void InitEngine(Napi::Env env, Napi::Object exports);
void InitRunFill(Napi::Env env, Napi::Object exports);
void InitWatchdog(Napi::Env env, Napi::Object exports);
void InitDirtyTracking(Napi::Env env, Napi::Object exports);
void InitSnapshot(Napi::Env env, Napi::Object exports);
void InitGenWriters(Napi::Env env, Napi::Object exports);
void CleanupMappings(AddonState* state);
