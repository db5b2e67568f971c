// The host side of a two-pass rule (kernels/reduction.hpp) over a step's tensors.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "chunks.hpp"
#include "dispatch.hpp"

namespace fusedoptim {

// Chunks start on multiples of kChunkBytes / itemsize elements, so they split pass 1 in whole blocks.
static_assert(kChunkBytes / sizeof(double) % kBlock == 0 && kChunkBytes / sizeof(float) % kBlock == 0);

// Pass 1 over every tensor's blocks on the step's threads, each block's sums into their own
// slot; then, per tensor, the sums combined in the one fixed order and turned into its scalars;
// then pass 2, chunked like any rule. So no result depends on the thread count or the split.
template <class Rule>
void step_two_pass(ReduceFn first_pass, KernelFn update, const std::vector<Tensor>& tensors, std::size_t itemsize,
                   const double* planned, unsigned flags) {
  const std::size_t n = tensors.size();
  std::vector<std::size_t> offset(n + 1, 0);  // where each tensor's block sums start
  for (std::size_t i = 0; i < n; ++i) offset[i + 1] = offset[i] + Rule::num_sums * num_blocks(tensors[i].size);
  std::vector<double> block_sums(offset[n]);
  std::vector<std::array<double, Rule::S::count>> scalars(n);
  for (auto& s : scalars) std::fill(std::copy(planned, planned + Rule::S::planned, s.begin()), s.end(), std::nan(""));
  auto index = [&](const Tensor& t) { return static_cast<std::size_t>(&t - tensors.data()); };

  for_each_chunk(tensors, itemsize, [&](const Tensor& t, std::size_t begin, std::size_t end) {
    const std::size_t i = index(t);
    first_pass(t, begin / kBlock, (end + kBlock - 1) / kBlock, scalars[i].data(), flags, block_sums.data() + offset[i]);
  });
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t blocks = num_blocks(tensors[i].size);
    double sums[Rule::num_sums];
    for (int k = 0; k < Rule::num_sums; ++k) sums[k] = combine_blocks(block_sums.data() + offset[i] + k * blocks, blocks);
    Rule::between_passes(sums, scalars[i].data());
  }
  for_each_chunk(tensors, itemsize, [&](const Tensor& t, std::size_t begin, std::size_t end) {
    update(t, begin, end, scalars[index(t)].data(), flags);
  });
}

}  // namespace fusedoptim
