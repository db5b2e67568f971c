// The host side of a two-pass rule (kernels/reduction.hpp) on one tensor.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "dispatch.hpp"

namespace fusedoptim {

// Both passes are free to split their range across threads: pass 1 in whole blocks (each block's
// sums land in their own slot, so the combined result never depends on the split), pass 2 anywhere.
template <class Rule>
void step_two_pass(ReduceFn first_pass, KernelFn update, const Tensor& t, const double* planned, unsigned flags) {
  const std::size_t blocks = num_blocks(t.size);
  std::vector<double> block_sums(Rule::num_sums * blocks);
  double s[Rule::S::count];
  std::fill(std::copy(planned, planned + Rule::S::planned, s), s + Rule::S::count, std::nan(""));
  first_pass(t, 0, blocks, s, flags, block_sums.data());
  double sums[Rule::num_sums];
  for (int k = 0; k < Rule::num_sums; ++k) sums[k] = combine_blocks(block_sums.data() + k * blocks, blocks);
  Rule::between_passes(sums, s);
  update(t, 0, t.size, s, flags);
}

}  // namespace fusedoptim
