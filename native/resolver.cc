// The native resolver thread: reads the userfaultfd, runs the fault engine on
// each batch (present pages are mapped here, without JavaScript), and hands
// the records the engine leaves for the policy to JavaScript in batches.
#include "resolver.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "addon_state.h"
#include "uffd_abi.h"

namespace resolver {

struct Thread {
  std::shared_ptr<engine::Engine> engine;
  engine::Guard guard;
  Tuning tuning;
  int stop_fd = -1;
  int kick_fd = -1;
  std::vector<std::thread> threads;
  // Each thread's CPU clock, read from outside: a thread reading its own
  // would pay a system call per wake-up (thread CPU clocks have no vDSO path).
  std::vector<clockid_t> cpu_clocks;
  Napi::ThreadSafeFunction tsfn;
  std::atomic<bool> stopping{false};  // read by spinning threads, which do not poll the stop fd
  bool stopped = false;
  AddonState* state = nullptr;
};

namespace {

using Records = std::vector<double>;

void Deliver(Thread* t, Records* records) {
  if (records->empty()) {
    delete records;
    return;
  }
  napi_status status = t->tsfn.NonBlockingCall(records, [](Napi::Env env, Napi::Function cb, Records* r) {
    std::unique_ptr<Records> owned(r);
    if (env == nullptr || cb.IsEmpty()) return;
    Napi::Float64Array out = Napi::Float64Array::New(env, r->size());
    std::copy(r->begin(), r->end(), out.Data());
    cb.Call({out, Napi::Number::New(env, static_cast<double>(r->size() / engine::kRecordSize))});
  });
  if (status != napi_ok) {
    // The environment is going away: wake the faulters rather than lose them.
    for (size_t i = 0; i + engine::kRecordSize <= records->size(); i += engine::kRecordSize) {
      if ((*records)[i] != engine::kPagefault) continue;
      const uint64_t ps = static_cast<uint64_t>((*records)[i + 6]);
      t->engine->Wake(static_cast<uint64_t>((*records)[i + 1]) & ~(ps - 1), ps);
    }
    delete records;
  }
}

void Drain(int fd) {
  uint64_t value;
  ssize_t ignored = read(fd, &value, sizeof(value));
  (void)ignored;
}

uint64_t Clock(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Reads without sleeping for up to `spin_ns` after the last message. Returns
// the bytes read (> 0), 0 when the window passed with nothing, or -errno.
ssize_t Spin(Thread* t, struct uffd_msg* msgs, size_t bytes, uint64_t spin_ns) {
  const uint64_t until = Clock(CLOCK_MONOTONIC) + spin_ns;
  do {
    ssize_t n = read(t->engine->uffd(), msgs, bytes);
    if (n > 0) return n;
    if (errno != EAGAIN && errno != EINTR) return -errno;
    if (t->stopping.load(std::memory_order_relaxed) || t->engine->HasDeferred()) return 0;
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  } while (Clock(CLOCK_MONOTONIC) < until);
  return 0;
}

void Run(std::shared_ptr<Thread> t) {
  engine::Engine& e = *t->engine;
  std::vector<struct uffd_msg> msgs(engine::kMessages);
  const size_t bytes = msgs.size() * sizeof(struct uffd_msg);
  const uint64_t spin_ns = t->tuning.spin_us * 1000;
  struct pollfd fds[3] = {{e.uffd(), POLLIN, 0}, {t->stop_fd, POLLIN, 0}, {t->kick_fd, POLLIN, 0}};
  int failure = 0;  // errno that ended the loop, reported to JavaScript
  bool served = false;  // the last wake-up served something: worth spinning for the next
  for (;;) {
    if (served && spin_ns > 0) {
      ssize_t n = Spin(t.get(), msgs.data(), bytes, spin_ns);
      if (n < 0) {
        failure = static_cast<int>(-n);
        break;
      }
      if (n > 0) {
        auto* records = new Records();
        e.Process(msgs.data(), static_cast<size_t>(n) / sizeof(struct uffd_msg), t->guard, records);
        Deliver(t.get(), records);
        continue;
      }
    }
    // Deferred faults wait for their event's mm change to finish: retry soon.
    int rc = poll(fds, 3, e.HasDeferred() ? 1 : -1);
    if (rc < 0 && errno != EINTR) {
      failure = errno;
      break;
    }
    if (fds[1].revents) break;
    if (fds[2].revents) Drain(t->kick_fd);
    if (fds[0].revents & (POLLERR | POLLNVAL)) {
      failure = (fds[0].revents & POLLNVAL) ? EBADF : EIO;
      break;
    }
    ssize_t n = 0;
    if (fds[0].revents & POLLIN) {
      // Several threads may wake for one message: the losers read nothing (EAGAIN).
      n = read(e.uffd(), msgs.data(), bytes);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        failure = errno;
        break;
      }
    }
    size_t count = n > 0 ? static_cast<size_t>(n) / sizeof(struct uffd_msg) : 0;
    served = count > 0;
    auto* records = new Records();
    e.Process(msgs.data(), count, t->guard, records);
    Deliver(t.get(), records);
  }
  // JavaScript unregisters and wakes the views when it stops; until then a
  // deferred faulter is woken so that it is not left behind.
  e.WakeDeferred();
  if (failure != 0) {
    // Nobody reads the uffd any more: JavaScript must stop loudly, not hang.
    auto* last = new Records(engine::kRecordSize, 0.0);
    (*last)[0] = engine::kReaderFailed;
    (*last)[1] = failure;
    Deliver(t.get(), last);
  }
  t->tsfn.Release();
}

}  // namespace

std::shared_ptr<Thread> Start(Napi::Env env, AddonState* state, std::shared_ptr<engine::Engine> engine,
                              const engine::Guard& guard, const Tuning& tuning, Napi::Function on_records,
                              Napi::Value keep_alive, int* err) {
  auto t = std::make_shared<Thread>();
  t->engine = std::move(engine);
  t->guard = guard;
  t->tuning = tuning;
  t->state = state;
  t->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->stop_fd < 0 || t->kick_fd < 0) {
    *err = errno;
    if (t->stop_fd >= 0) close(t->stop_fd);
    if (t->kick_fd >= 0) close(t->kick_fd);
    return nullptr;
  }
  napi_ref keep = nullptr;
  napi_create_reference(env, keep_alive, 1, &keep);
  // The finalizer runs on the JavaScript thread once the thread released the
  // function: only then may the memory the thread reads be let go.
  t->tsfn = Napi::ThreadSafeFunction::New(env, on_records, "userfaultfd:resolver", 0, static_cast<size_t>(tuning.threads),
                                          [keep](Napi::Env e) { napi_delete_reference(e, keep); });
  for (int i = 0; i < tuning.threads; i++) {
    t->threads.emplace_back(Run, t);
    clockid_t clock;
    if (pthread_getcpuclockid(t->threads.back().native_handle(), &clock) == 0) t->cpu_clocks.push_back(clock);
  }
  std::weak_ptr<Thread> weak = t;
  state->AddStopper(t.get(), [weak] {
    if (auto s = weak.lock()) {
      s->state = nullptr;
      Stop(s);
    }
  });
  return t;
}

uint64_t CpuNs(const std::shared_ptr<Thread>& t) {
  if (!t || t->stopped) return 0;
  uint64_t total = 0;
  for (clockid_t clock : t->cpu_clocks) total += Clock(clock);
  return total;
}

void Kick(const std::shared_ptr<Thread>& t) {
  if (!t || t->stopped) return;
  uint64_t one = 1;
  ssize_t ignored = write(t->kick_fd, &one, sizeof(one));
  (void)ignored;
}

void Stop(const std::shared_ptr<Thread>& t) {
  if (!t || t->stopped) return;
  // Read before the threads end: an ended thread's clock reads nothing.
  t->engine->AddResolverCpu(CpuNs(t));
  t->stopped = true;
  t->stopping = true;
  uint64_t one = 1;
  ssize_t ignored = write(t->stop_fd, &one, sizeof(one));
  (void)ignored;
  for (std::thread& thread : t->threads)
    if (thread.joinable()) thread.join();
  close(t->stop_fd);
  close(t->kick_fd);
  t->stop_fd = t->kick_fd = -1;
  if (t->state) t->state->RemoveStopper(t.get());
}

}  // namespace resolver
