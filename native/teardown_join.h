// Teardown's join of a native thread that works on a pinned mapping (the
// touchers and writers): the job says `finished` under its mutex when the
// thread is done. A released uffd lets its faults through at once, so only a
// fault held by a uffd that another owner keeps open can outlast the bound;
// that thread is then marked `abandoned` (it must not touch the environment
// any more) and left running on a mapping that stays pinned, and so mapped,
// for the life of the process.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

constexpr auto kTeardownJoinBound = std::chrono::seconds(5);

// Returns true when the thread finished and was joined (the caller may unpin);
// false when it was abandoned and detached (the pin must stay).
template <typename Job>
bool JoinWithinBound(Job* job) {
  bool finished;
  {
    std::unique_lock<std::mutex> lock(job->mu);
    finished = job->cv.wait_for(lock, kTeardownJoinBound, [&] { return job->finished; });
    if (!finished) job->abandoned = true;
  }
  if (!finished) {
    if (job->thread.joinable()) job->thread.detach();
    return false;
  }
  if (job->thread.joinable()) job->thread.join();
  return true;
}
