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

// How the resolver waits: `threads` readers of the one uffd (when one
// thread cannot keep up with many faulting threads), and a bounded spin: after
// serving a batch, keep reading without sleeping for up to `spin_us`
// microseconds, so that a fault arriving meanwhile does not pay the wake-up
// of a sleeping thread on another CPU. The window restarts with every
// message, so the spin lasts only while faults keep arriving.
struct Tuning {
  int threads = 1;
  uint64_t spin_us = 0;
};

// Starts the threads. `keep_alive` (the bitmap's typed array) stays referenced
// until every thread has released the function, so the memory they read
// lives as long as they do. Returns null with *err set when it cannot start.
std::shared_ptr<Thread> Start(Napi::Env env, AddonState* state, std::shared_ptr<engine::Engine> engine,
                              const engine::Guard& guard, const Tuning& tuning, Napi::Function on_records,
                              Napi::Value keep_alive, int* err);
// CPU time the running threads have used so far (0 once stopped: Stop adds
// their total to the engine's counter).
uint64_t CpuNs(const std::shared_ptr<Thread>& thread);
// Wakes the threads to retry deferred faults now.
void Kick(const std::shared_ptr<Thread>& thread);
// Stops and joins the threads. Idempotent.
void Stop(const std::shared_ptr<Thread>& thread);

}  // namespace resolver
