// Why a pool of std::threads and not OpenMP: the torch wheel ships its own libgomp, and two
// OpenMP runtimes in one process each start a full team and oversubscribe the cores. Each worker
// sleeps on a futex word of its own (std::atomic<int>::wait), so a job wakes only the workers it
// uses and an idle pool costs nothing.
//
// Waking a sleeping thread is slow on a VM: ~20 us from the notify to the worker running (2-vCPU
// KVM guest on Zen 3; 50 us and more when the other vCPU is busy), as long as a small step. Three
// things keep that off a step's critical path: the caller starts on the chunks at once and takes
// whatever a late worker has not; it withdraws the offers that no worker has taken by the time it
// has run out of chunks, so it never waits for a wake-up that comes after the work is done; and
// every thread polls for kSpin before it sleeps, so back-to-back jobs (LAMB's two passes, a step
// per param group, a training loop's next step when it comes soon) find the workers awake.
#include "parallel.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "fpenv.hpp"

namespace fusedoptim {
namespace {

// About one wake-up: polling longer than the sleep it avoids would not pay. So an idle core
// spends at most this much CPU after every job; a caller polls only for the last chunks of its
// workers, which normally end within a chunk's time of its own.
constexpr auto kSpin = std::chrono::microseconds(50);

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls `done` until it holds or `limit` has passed; returns its last value.
template <class Done>
bool poll(const Done& done, std::chrono::microseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (unsigned k = 1;; ++k) {
    if (done()) return true;
    cpu_relax();
    if (k % 32 == 0 && std::chrono::steady_clock::now() >= deadline) return done();
  }
}

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

// On a cache line of its own, so that waking one worker touches no other's line.
struct alignas(64) Worker {
  // Bumped once for every job offered to this worker, and once to end it; the worker sleeps on it.
  std::atomic<int> ticket{0};
  // The job on offer: whoever swaps it for null first owns it, the worker (to run it) or the
  // caller (to withdraw it).
  std::atomic<Job*> offer{nullptr};
  std::atomic<bool> stop{false};  // set before the bump that ends the worker
  std::thread thread;
};

class Pool {
 public:
  // Held while a job runs or the pool resizes, and across fork() (see below). Whoever holds it
  // never waits for the GIL, so a thread that holds the GIL may wait for it.
  std::mutex busy;

  // With busy held: runs `job` on the caller and the first `helpers` workers, starting the
  // missing ones (as many as the system allows: the thread count changes no result).
  void run(Job& job, int helpers) {
    while (size() < helpers && start()) {
    }
    helpers = std::min(helpers, size());
    pending_.store(helpers, std::memory_order_relaxed);
    for (int k = 0; k < helpers; ++k) {
      workers_[k]->offer.store(&job, std::memory_order_release);
      wake(*workers_[k]);
    }
    offers_ += helpers;
    job.work();
    // Every chunk is taken: a worker that has not taken its offer yet would find nothing to do.
    for (int k = 0; k < helpers; ++k)
      if (workers_[k]->offer.exchange(nullptr, std::memory_order_acq_rel))
        pending_.fetch_sub(1, std::memory_order_relaxed);
    if (!poll([this] { return pending_.load(std::memory_order_acquire) == 0; }, kSpin))
      for (int left; (left = pending_.load(std::memory_order_acquire)) != 0;) pending_.wait(left);
  }

  // With busy held: ends every worker beyond the first `keep`.
  void shrink(int keep) {
    while (size() > keep) {
      Worker& w = *workers_.back();
      w.stop.store(true, std::memory_order_relaxed);
      wake(w);
      w.thread.join();
      workers_.pop_back();
    }
  }

  int size() const { return static_cast<int>(workers_.size()); }  // with busy held
  long long offers() const { return offers_; }  // with busy held

 private:
  static void wake(Worker& w) {
    w.ticket.fetch_add(1, std::memory_order_release);
    w.ticket.notify_one();
  }

  bool start() {
    auto w = std::make_unique<Worker>();
    try {
      w->thread = std::thread([this, worker = w.get()] { serve(*worker); });
    } catch (const std::system_error&) {
      return false;
    }
    workers_.push_back(std::move(w));
    return true;
  }

  void serve(Worker& w) {
    for (int seen = 0;;) {
      if (!poll([&] { return w.ticket.load(std::memory_order_acquire) != seen; }, kSpin))
        w.ticket.wait(seen, std::memory_order_acquire);
      // A withdrawn offer leaves its bump behind: catch up with every bump so far at once.
      seen = w.ticket.load(std::memory_order_acquire);
      if (w.stop.load(std::memory_order_relaxed)) return;
      if (Job* job = w.offer.exchange(nullptr, std::memory_order_acq_rel)) {
        {
          const ContractFpEnv contract;
          job->work();
        }
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
      }
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<int> pending_{0};  // helpers that took the current job and have not finished it
  long long offers_ = 0;         // with busy held
};

// Never destroyed: workers may still be asleep in it when the process exits.
Pool* pool = nullptr;
std::mutex pool_creation;  // guards `pool`
std::atomic<int> threads_setting{1};

Pool* existing_pool() {
  std::lock_guard<std::mutex> lock(pool_creation);
  return pool;
}

// A fork copies only the forking thread, and with it every lock as it was at that instant. So
// the prepare handler takes both locks, waiting for a job or resize in flight to end: at the
// fork no other thread is inside the pool, and nothing the child inherits is half-changed. The
// child then frees the creation lock and forgets the pool, whose workers it does not have (the
// pool is leaked, its busy lock with it); its first parallel step starts a new one.
void before_fork() {
  pool_creation.lock();
  if (pool) pool->busy.lock();
}
void after_fork_in_parent() {
  if (pool) pool->busy.unlock();
  pool_creation.unlock();
}
void after_fork_in_child() {
  pool = nullptr;
  pool_creation.unlock();
}
[[maybe_unused]] const int fork_handlers = pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);

}  // namespace

int num_threads() { return threads_setting.load(std::memory_order_relaxed); }

void set_num_threads(int threads) {
  threads_setting.store(threads, std::memory_order_relaxed);
  if (Pool* p = existing_pool()) {
    std::lock_guard<std::mutex> lock(p->busy);
    p->shrink(num_threads() - 1);
  }
}

void parallel_for(std::size_t num_chunks, int threads, ChunkFn body, void* context) {
  Job job{body, context, num_chunks};
  if (num_chunks <= 1 || threads <= 1 || num_threads() == 1) return job.work();
  Pool* p;
  {
    std::lock_guard<std::mutex> lock(pool_creation);
    if (!pool) pool = new Pool;
    p = pool;
  }
  std::unique_lock<std::mutex> lock(p->busy, std::try_to_lock);
  if (!lock.owns_lock()) return job.work();  // one job at a time; a concurrent caller runs its job alone
  // The setting is read with busy held, after any set_num_threads that shrank the pool before
  // us: so the pool never grows past what the current setting needs.
  const std::size_t used = std::min<std::size_t>({static_cast<std::size_t>(num_threads()),
                                                  static_cast<std::size_t>(threads), num_chunks});
  p->run(job, static_cast<int>(used) - 1);
}

void hold_pool_locks(std::chrono::milliseconds duration) {
  std::lock_guard<std::mutex> creation(pool_creation);  // the order before_fork takes them in
  if (!pool) pool = new Pool;
  std::lock_guard<std::mutex> lock(pool->busy);
  std::this_thread::sleep_for(duration);
}

PoolStats pool_stats() {
  Pool* p = existing_pool();
  if (!p) return {0, 0};
  std::lock_guard<std::mutex> lock(p->busy);
  return {p->size(), p->offers()};
}

}  // namespace fusedoptim
