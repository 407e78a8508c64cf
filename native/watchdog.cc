// The deadlock watchdog for uffds read on the JavaScript thread (event-loop
// FaultHandler, events(), readEvents()). When that thread touches an absent
// page of a range only it serves, it sleeps in the kernel forever and nothing
// can tell the user why. A watchdog thread sees it: the loop has not ticked
// for the threshold, the JavaScript thread sleeps in handle_userfault (its
// /proc wchan), and a uffd it reads has messages waiting. Then the process is
// hung for good; the watchdog names the address and the rule, and aborts,
// exactly as the native resolver's guard does.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "addon_state.h"
#include "args.h"
#include "uffd_abi.h"

namespace {

constexpr uint64_t kTickMs = 50;

uint64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

struct Watchdog {
  pid_t js_tid = 0;
  std::atomic<uint64_t> heartbeat_ms{0};
  uv_timer_t* timer = nullptr;
  std::thread thread;
  int stop_fd = -1;
  std::mutex mu;
  std::map<int, uint64_t> watched;  // uffd -> threshold (ms)
};

bool SleepsInUserfault(pid_t tid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/task/%d/wchan", static_cast<int>(tid));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[64] = {};
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  return n > 0 && strncmp(buf, "handle_userfault", 16) == 0;
}

[[noreturn]] void Fatal(const Watchdog& w, int uffd, uint64_t stalled_ms) {
  // The process is lost: reading the messages costs nothing now, and names the page.
  std::vector<struct uffd_msg> msgs(64);
  ssize_t n = read(uffd, msgs.data(), msgs.size() * sizeof(struct uffd_msg));
  unsigned long long address = 0;
  bool own = false;
  for (ssize_t i = 0; n > 0 && i < n / static_cast<ssize_t>(sizeof(struct uffd_msg)); i++) {
    const struct uffd_msg& m = msgs[static_cast<size_t>(i)];
    if (m.event != UFFD_EVENT_PAGEFAULT) continue;
    if (!own || static_cast<pid_t>(m.arg.pagefault.feat.ptid) == w.js_tid) address = m.arg.pagefault.address;
    if (static_cast<pid_t>(m.arg.pagefault.feat.ptid) == w.js_tid) own = true;
  }
  fprintf(stderr,
          "userfaultfd: FATAL: the JavaScript thread (tid %d) has been blocked for %llu ms in a page fault on "
          "address 0x%llx%s, a page of a range registered with userfaultfd %d, which only this thread reads. "
          "JavaScript cannot run while its own thread is blocked in the fault: the process would hang forever. "
          "Rule: the thread that resolves faults must not touch absent pages of the ranges it serves (mark them "
          "present first, touch them from another thread, or use FaultHandler's native mode). "
          "Aborting (deadlockWatchdogMs: 0 turns this watchdog off).\n",
          static_cast<int>(w.js_tid), static_cast<unsigned long long>(stalled_ms), address,
          own ? "" : " (or the first fault waiting on it)", uffd);
  fflush(stderr);
  abort();
}

void Run(Watchdog* w) {
  struct pollfd stop = {w->stop_fd, POLLIN, 0};
  for (;;) {
    if (poll(&stop, 1, static_cast<int>(kTickMs) * 2) != 0) return;
    const uint64_t stalled = NowMs() - w->heartbeat_ms.load(std::memory_order_acquire);
    std::map<int, uint64_t> watched;
    {
      std::lock_guard<std::mutex> lock(w->mu);
      watched = w->watched;
    }
    for (const auto& [uffd, threshold] : watched) {
      if (stalled < threshold) continue;
      struct pollfd p = {uffd, POLLIN, 0};
      if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN)) continue;
      // A loop busy in JavaScript also stops ticking; only a thread asleep in
      // a userfault cannot come back by itself.
      if (!SleepsInUserfault(w->js_tid)) continue;
      Fatal(*w, uffd, stalled);
    }
  }
}

void Beat(uv_timer_t* timer) {
  static_cast<Watchdog*>(timer->data)->heartbeat_ms.store(NowMs(), std::memory_order_release);
}

void Stop(Watchdog* w) {
  if (w->thread.joinable()) {
    uint64_t one = 1;
    ssize_t ignored = write(w->stop_fd, &one, sizeof(one));
    (void)ignored;
    w->thread.join();
  }
  if (w->stop_fd >= 0) close(w->stop_fd);
  w->stop_fd = -1;
  if (w->timer) {
    uv_timer_stop(w->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(w->timer), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    w->timer = nullptr;
  }
}

Watchdog* Get(Napi::Env env) {
  AddonState* state = AddonState::Of(env);
  if (state->watchdog) return static_cast<Watchdog*>(state->watchdog);
  auto* w = new Watchdog();
  w->js_tid = state->js_thread_tid;
  w->heartbeat_ms = NowMs();
  state->watchdog = w;
  state->AddStopper(w, [state, w] {
    Stop(w);
    state->watchdog = nullptr;
    delete w;
  });
  return w;
}

bool Start(Napi::Env env, Watchdog* w) {
  if (w->thread.joinable()) return true;
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  w->timer = new uv_timer_t();
  uv_timer_init(loop, w->timer);
  w->timer->data = w;
  uv_timer_start(w->timer, Beat, kTickMs, kTickMs);
  // The heartbeat must not keep the process alive on its own.
  uv_unref(reinterpret_cast<uv_handle_t*>(w->timer));
  w->heartbeat_ms = NowMs();
  w->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->stop_fd < 0) return false;
  w->thread = std::thread(Run, w);
  return true;
}

// watchdogWatch(uffd, thresholdMs) -> 0 | -errno
Napi::Value Watch(const Napi::CallbackInfo& info) {
  int fd;
  int64_t threshold;
  if (!args::Fd(info, 0, &fd) || !args::Int(info, 1, &threshold)) return info.Env().Undefined();
  if (threshold <= 0) return args::Fail(info, "expected a positive threshold"), info.Env().Undefined();
  Watchdog* w = Get(info.Env());
  {
    std::lock_guard<std::mutex> lock(w->mu);
    w->watched[fd] = static_cast<uint64_t>(threshold);
  }
  return args::Result(info.Env(), Start(info.Env(), w) ? 0 : -errno);
}

// watchdogUnwatch(uffd): idempotent. With nothing left to watch the thread
// and the heartbeat stop, so an idle loop is not woken for nothing.
Napi::Value Unwatch(const Napi::CallbackInfo& info) {
  int fd;
  if (!args::Fd(info, 0, &fd)) return info.Env().Undefined();
  AddonState* state = AddonState::Of(info.Env());
  if (auto* w = static_cast<Watchdog*>(state->watchdog)) {
    bool idle;
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->watched.erase(fd);
      idle = w->watched.empty();
    }
    if (idle) Stop(w);
  }
  return info.Env().Undefined();
}

}  // namespace

void InitWatchdog(Napi::Env env, Napi::Object exports) {
  exports.Set("watchdogWatch", Napi::Function::New(env, Watch, "watchdogWatch"));
  exports.Set("watchdogUnwatch", Napi::Function::New(env, Unwatch, "watchdogUnwatch"));
}
