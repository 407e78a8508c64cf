// The synchronous write-protect dirty tracker's reader thread (wp_sync.cc).
#pragma once

#include <napi.h>

namespace wp_sync {
void Init(Napi::Env env, Napi::Object exports);
}
