// A small persistent thread pool and the one way the kernels use it: parallel_for over chunks.
#pragma once
#include <cstddef>

namespace fusedoptim {

inline constexpr int kMaxThreads = 1024;

// Threads a step may use, the calling thread included. fusedoptim sets it at import (from
// $FUSEDOPTIM_NUM_THREADS or the CPUs it may run on; Python validates both); 1 until then.
int num_threads();
void set_num_threads(int threads);  // threads >= 1

// Calls body(context, chunk) once for every chunk in [0, num_chunks) on up to `threads` threads
// (the caller is one of them) and returns when all have run. Which thread runs which chunk
// changes from call to call, so a body must write only its own chunk's memory; a reduction
// keeps one partial per chunk and combines them afterwards in chunk order.
using ChunkFn = void (*)(void* context, std::size_t chunk);
void parallel_for(std::size_t num_chunks, int threads, ChunkFn body, void* context);

template <class F>
void parallel_for(std::size_t num_chunks, int threads, F& body) {
  parallel_for(num_chunks, threads, [](void* f, std::size_t chunk) { (*static_cast<F*>(f))(chunk); }, &body);
}

}  // namespace fusedoptim
