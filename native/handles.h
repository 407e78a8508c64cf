// Opaque handles handed to JavaScript: type-tagged Externals. A handle of the
// wrong kind (an engine handle passed where a poller is expected, a plain
// object, a handle from another addon) is refused with a TypeError instead of
// being reinterpreted as the wrong C++ type.
#pragma once

#include <napi.h>

#include "args.h"

namespace handles {

// One tag per kind of handle. The upper half is constant for this addon, the
// lower half names the kind, so no two kinds (and no other addon's tags) collide.
constexpr uint64_t kAddonTag = 0x75666664'6e6f6465ull;  // "uffdnode"
inline constexpr napi_type_tag kPoller = {kAddonTag, 1};
inline constexpr napi_type_tag kEngine = {kAddonTag, 2};
inline constexpr napi_type_tag kWpSync = {kAddonTag, 3};
inline constexpr napi_type_tag kSnapshot = {kAddonTag, 4};
inline constexpr napi_type_tag kGenWriters = {kAddonTag, 5};

// Wraps `data` in an External tagged `tag`; `finalize` runs when JavaScript
// drops the last reference.
template <typename T, typename Finalizer>
Napi::External<T> Wrap(Napi::Env env, T* data, const napi_type_tag& tag, Finalizer finalize) {
  Napi::External<T> external = Napi::External<T>::New(env, data, finalize);
  napi_type_tag_object(env, external, &tag);
  return external;
}

// The data of argument `i` when it is an External tagged `tag`; otherwise a
// pending TypeError naming `what`, and null.
template <typename T>
T* Unwrap(const Napi::CallbackInfo& info, size_t i, const napi_type_tag& tag, const char* what) {
  Napi::Value value = info[i];
  bool matches = false;
  if (value.IsExternal()) napi_check_object_type_tag(info.Env(), value, &tag, &matches);
  if (!matches) {
    args::Fail(info, what);
    return nullptr;
  }
  return value.As<Napi::External<T>>().Data();
}

}  // namespace handles
