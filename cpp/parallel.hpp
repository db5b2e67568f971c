// A small persistent thread pool and the one way the kernels use it: parallel_for over chunks.
#pragma once
#include <chrono>
#include <cstddef>

namespace fusedoptim {

// Threads a step may use, the calling thread included. fusedoptim sets it at import (from
// $FUSEDOPTIM_NUM_THREADS or the CPUs it may run on; Python validates both); 1 until then.
int num_threads();
// threads >= 1. Workers beyond what `threads` needs have exited when this returns.
void set_num_threads(int threads);

// Calls body(context, chunk) once for every chunk in [0, num_chunks) on up to `threads` threads
// (at most num_threads(); the caller is one of them) and returns when all have run.
// Which thread runs which chunk changes from call to call, so a body must write only its own
// chunk's memory; a reduction keeps one partial per chunk and combines them afterwards in chunk
// order. Workers run every chunk under ContractFpEnv (fpenv.hpp); the caller's own chunks run in
// the caller's environment, which a step sets with the same guard.
using ChunkFn = void (*)(void* context, std::size_t chunk);
void parallel_for(std::size_t num_chunks, int threads, ChunkFn body, void* context);

template <class F>
void parallel_for(std::size_t num_chunks, int threads, F& body) {
  parallel_for(num_chunks, threads, [](void* f, std::size_t chunk) { (*static_cast<F*>(f))(chunk); }, &body);
}

// For tests: the workers alive, and how many times a job was offered to a worker (a worker
// that wakes after the caller has done every chunk finds the offer withdrawn).
struct PoolStats {
  int workers;
  long long offers;
};
PoolStats pool_stats();
// For tests: holds every lock of the pool for `duration`, as a step or a resize in flight does,
// so that a test can fork at that moment for certain rather than once in thousands of tries.
void hold_pool_locks(std::chrono::milliseconds duration);

}  // namespace fusedoptim
