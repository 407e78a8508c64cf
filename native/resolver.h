// The native resolver: a thread that drives the fault engine without the
// event loop. Present pages are mapped on this thread; records for the
// policy reach JavaScript through a ThreadSafeFunction, in batches.
#pragma once

#include <napi.h>

#include <memory>

#include "engine.h"

struct AddonState;

namespace resolver {

struct Thread;

// Starts the thread. `keep_alive` (the bitmap's typed array) stays referenced
// until the thread has released the function, so the memory it reads lives
// as long as the thread. Returns null with *err set when it cannot start.
std::shared_ptr<Thread> Start(Napi::Env env, AddonState* state, std::shared_ptr<engine::Engine> engine,
                              const engine::Guard& guard, Napi::Function on_records, Napi::Value keep_alive, int* err);
// Wakes the thread to retry deferred faults now.
void Kick(const std::shared_ptr<Thread>& thread);
// Stops and joins the thread. Idempotent.
void Stop(const std::shared_ptr<Thread>& thread);

}  // namespace resolver
