// Global-norm gradient clipping (fusedoptim.clip_grad_norm_): what its per-ISA kernels
// (isa_norms.cpp) and its host side (norms.cpp) share. A plain layout, no code.
#pragma once
#include <cstddef>

namespace fusedoptim {

// The kernels at one ISA level, indexed by the array's dtype: 0 float32, 1 float64.
struct NormKernels {
  // Each block's sum of squares (reduction.hpp), for blocks [first, last) of an array of `size`
  // elements, block b's into sums[b].
  void (*block_sums[2])(const void* x, std::size_t size, std::size_t first, std::size_t last, double* sums);
  // x[i] = x[i] * factor for i in [begin, end), the factor rounded once to the array's dtype.
  void (*scale[2])(void* x, std::size_t begin, std::size_t end, double factor);
};

}  // namespace fusedoptim
