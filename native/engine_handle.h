// The engine behind a fault engine handle, for native code outside the
// engine's own JavaScript surface that works on it off the JavaScript thread
// (run_fill.cc). The shared pointer keeps the engine; the handle itself (and
// with it the present bitmap's memory) must be kept referenced by the caller.
#pragma once

#include <napi.h>

#include <memory>

#include "engine.h"

// The engine of the handle in argument `i`, or null with a pending TypeError.
std::shared_ptr<engine::Engine> SharedEngine(const Napi::CallbackInfo& info, size_t i);
