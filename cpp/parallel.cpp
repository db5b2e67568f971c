// Why a pool of std::threads and not OpenMP: the torch wheel ships its own libgomp, and two
// OpenMP runtimes in one process each start a full team and oversubscribe the cores. Workers
// sleep on a futex (std::atomic::wait) between steps, so an idle pool costs nothing.
#include "parallel.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "fpenv.hpp"

namespace fusedoptim {
namespace {

struct Job {
  ChunkFn body;
  void* context;
  std::size_t num_chunks;
  std::atomic<std::size_t> next{0};

  // Chunks are handed out one at a time, so a thread slowed by a neighbour on a shared
  // machine simply takes fewer of them.
  void work() {
    for (std::size_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < num_chunks;) body(context, c);
  }
};

class Pool {
 public:
  // Runs `job` on the caller and `helpers` workers.
  void run(Job& job, int helpers) {
    while (static_cast<int>(workers_.size()) < helpers) {
      const int index = static_cast<int>(workers_.size());
      // The ticket before this job's: loaded in the new thread, it might already be this job's.
      const std::uint64_t seen = ticket_.load(std::memory_order_relaxed);
      workers_.emplace_back([this, index, seen] { serve(index, seen); });
      workers_.back().detach();  // the pool lives until exit (or a fork forgets it)
    }
    job_ = &job;
    pending_.store(helpers, std::memory_order_relaxed);
    const std::uint64_t generation = (ticket_.load(std::memory_order_relaxed) >> 16) + 1;
    ticket_.store(generation << 16 | static_cast<std::uint64_t>(helpers), std::memory_order_release);
    ticket_.notify_all();
    job.work();
    for (int left; (left = pending_.load(std::memory_order_acquire)) != 0;) pending_.wait(left);
  }

  std::mutex busy;  // one job at a time; a concurrent caller runs its job alone

 private:
  void serve(int index, std::uint64_t seen) {
    for (;;) {
      ticket_.wait(seen, std::memory_order_acquire);
      seen = ticket_.load(std::memory_order_acquire);
      if (index >= static_cast<int>(seen & 0xffff)) continue;
      {
        const ContractFpEnv contract;
        job_->work();
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  // Generation << 16 | helpers, in one word so a worker never pairs one job's number with
  // another's helper count. job_ is stable while any helper of the current job is pending.
  std::atomic<std::uint64_t> ticket_{0};
  std::atomic<int> pending_{0};
  Job* job_ = nullptr;
};

// Never destroyed: detached workers may still be asleep in it when the process exits.
Pool* pool = nullptr;
std::mutex pool_creation;

std::atomic<int> threads_setting{1};

// A forked child has none of the parent's workers (and maybe a held lock): start afresh.
const bool fork_handler = [] {
  pthread_atfork(nullptr, nullptr, [] { pool = nullptr; });
  return true;
}();

}  // namespace

int num_threads() { return threads_setting.load(std::memory_order_relaxed); }

void set_num_threads(int threads) { threads_setting.store(std::clamp(threads, 1, kMaxThreads), std::memory_order_relaxed); }

void parallel_for(std::size_t num_chunks, int threads, ChunkFn body, void* context) {
  Job job{body, context, num_chunks};
  const int helpers = static_cast<int>(std::min<std::size_t>(std::clamp(threads, 1, kMaxThreads), num_chunks)) - 1;
  if (helpers <= 0) return job.work();
  Pool* p;
  {
    std::lock_guard<std::mutex> lock(pool_creation);
    if (!pool) pool = new Pool;
    p = pool;
  }
  std::unique_lock<std::mutex> lock(p->busy, std::try_to_lock);
  if (!lock.owns_lock()) return job.work();
  p->run(job, helpers);
}

}  // namespace fusedoptim
