// Readiness of a descriptor on the environment's own libuv loop, so that it
// works the same on the main thread and inside worker_threads. In read mode
// the poller drains up to one buffer of userfaultfd messages per wake-up
// straight into a JavaScript-owned ArrayBuffer and calls back with the count:
// no allocation per fault. In notify mode it only reports readiness (used for
// sockets that carry file descriptors).
#include <errno.h>
#include <unistd.h>
#include <uv.h>

#include <memory>

#include "addon_state.h"
#include "args.h"
#include "handles.h"
#include "uffd_abi.h"

namespace {

struct Poller {
  uv_poll_t handle;
  Napi::Env env;
  int fd;
  bool read_messages;
  uint8_t* buffer = nullptr;
  size_t capacity = 0;
  bool active = true;
  Napi::FunctionReference callback;
  Napi::ObjectReference buffer_ref;
  Napi::AsyncContext* context;

  // libuv needs the handle until uv_close's callback, JavaScript may keep the
  // External after that: each holds a reference, the last one frees.
  std::shared_ptr<Poller> self;

  Poller(Napi::Env e, int f) : env(e), fd(f), context(nullptr) {}
};

using Handle = std::shared_ptr<Poller>;

void OnClosed(uv_handle_t* h) { static_cast<Poller*>(h->data)->self.reset(); }

void Stop(Poller* p) {
  if (!p->active) return;
  p->active = false;
  AddonState::Of(p->env)->RemoveStopper(p);
  uv_poll_stop(&p->handle);
  p->callback.Reset();
  p->buffer_ref.Reset();
  delete p->context;
  p->context = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), OnClosed);
}

void OnReadable(uv_poll_t* h, int status, int events) {
  Poller* p = static_cast<Poller*>(h->data);
  if (!p->active) return;
  double result = 0;
  if (status < 0) {
    result = status;  // libuv statuses are -errno on Linux
  } else if (events & UV_DISCONNECT) {
    result = -EPIPE;
  } else if (p->read_messages) {
    ssize_t n = read(p->fd, p->buffer, p->capacity);
    if (n < 0 && errno == EAGAIN) return;  // another reader (readEvents) won the race
    result = n < 0 ? -errno : static_cast<double>(n / uffd_abi::kMsgSize);
  }
  Napi::HandleScope scope(p->env);
  Napi::Value arg = Napi::Number::New(p->env, result);
  // MakeCallback runs the microtask queue afterwards, so promises the
  // callback settles make progress before the next wake-up.
  p->callback.MakeCallback(p->env.Global(), {arg}, *p->context);
  if (p->env.IsExceptionPending()) {
    Napi::Error err = p->env.GetAndClearPendingException();
    napi_fatal_exception(p->env, err.Value());
  }
}

// pollerStart(fd, arrayBuffer | null, callback) -> External handle | -errno
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!args::Fd(info, 0, &fd)) return env.Undefined();
  if (!info[2].IsFunction()) return args::Fail(info, "expected a callback"), env.Undefined();
  bool read_messages = info[1].IsArrayBuffer();
  Handle owner = std::make_shared<Poller>(env, fd);
  Poller* p = owner.get();
  p->read_messages = read_messages;
  if (read_messages) {
    Napi::ArrayBuffer ab = info[1].As<Napi::ArrayBuffer>();
    p->capacity = ab.ByteLength() / uffd_abi::kMsgSize * uffd_abi::kMsgSize;
    if (p->capacity == 0) return args::Fail(info, "buffer smaller than one message"), env.Undefined();
    p->buffer = static_cast<uint8_t*>(ab.Data());
    p->buffer_ref = Napi::Persistent(ab.As<Napi::Object>());
  }
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  int rc = uv_poll_init(loop, &p->handle, fd);
  if (rc != 0) return args::Result(env, rc);
  p->handle.data = p;
  p->self = owner;
  p->callback = Napi::Persistent(info[2].As<Napi::Function>());
  p->context = new Napi::AsyncContext(env, "userfaultfd:poll");
  rc = uv_poll_start(&p->handle, UV_READABLE | UV_DISCONNECT, OnReadable);
  if (rc != 0) {
    p->active = false;
    p->callback.Reset();
    p->buffer_ref.Reset();
    delete p->context;
    p->context = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&p->handle), OnClosed);
    return args::Result(env, rc);
  }
  std::weak_ptr<Poller> weak = owner;
  AddonState::Of(env)->AddStopper(p, [weak] {
    if (Handle h = weak.lock()) Stop(h.get());
  });
  return handles::Wrap(env, new Handle(owner), handles::kPoller, [](Napi::Env, Handle* h) { delete h; });
}

// A stopped poller stays allocated while its External lives, so every call
// on it after pollerStop (a second stop, a ref) finds `active` false and
// does nothing, however often JavaScript repeats it.
Poller* PollerOf(const Napi::CallbackInfo& info) {
  Handle* h = handles::Unwrap<Handle>(info, 0, handles::kPoller, "expected a poller handle");
  return h ? h->get() : nullptr;
}

Napi::Value StopPoller(const Napi::CallbackInfo& info) {
  if (Poller* p = PollerOf(info)) Stop(p);
  return info.Env().Undefined();
}

Napi::Value RefPoller(const Napi::CallbackInfo& info) {
  Poller* p = PollerOf(info);
  if (!p || !p->active) return info.Env().Undefined();
  if (info[1].ToBoolean())
    uv_ref(reinterpret_cast<uv_handle_t*>(&p->handle));
  else
    uv_unref(reinterpret_cast<uv_handle_t*>(&p->handle));
  return info.Env().Undefined();
}

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) {
  exports.Set("pollerStart", Napi::Function::New(env, Start, "pollerStart"));
  exports.Set("pollerStop", Napi::Function::New(env, StopPoller, "pollerStop"));
  exports.Set("pollerRef", Napi::Function::New(env, RefPoller, "pollerRef"));
}
