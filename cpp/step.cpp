#include "step.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "chunks.hpp"
#include "fpenv.hpp"
#include "reduction.hpp"

namespace fusedoptim {
namespace {

// Chunks start on multiples of kChunkBytes / itemsize elements, so they split pass 1 in whole blocks.
static_assert(kChunkBytes / 8 % kBlock == 0 && kChunkBytes / 4 % kBlock == 0 && kChunkBytes / 2 % kBlock == 0);

// Pass 1 over every tensor's blocks on the step's threads, each block's sums into their own
// slot; then, per tensor, the sums combined in the one fixed order, passed to the hook if any,
// and turned into its scalars; then pass 2, chunked like any rule. So no result depends on the thread count or the split.
void run_two_pass(const RuleKernels& rule, int layout, std::size_t itemsize, const std::vector<Tensor>& tensors,
                  const double* planned, unsigned flags, const SumsHook& hook) {
  const std::size_t n = tensors.size(), sums = rule.num_sums, count = rule.num_scalars;
  std::vector<std::size_t> offset(n + 1, 0);  // where each tensor's block sums start
  for (std::size_t i = 0; i < n; ++i) offset[i + 1] = offset[i] + sums * num_blocks(tensors[i].size);
  std::vector<double> block_sums(offset[n]);
  std::vector<double> scalars(n * count, std::nan(""));  // each tensor's: the planned ones, then its own
  for (std::size_t i = 0; i < n; ++i) std::copy(planned, planned + rule.num_planned, scalars.begin() + i * count);
  auto index = [&](const Tensor& t) { return static_cast<std::size_t>(&t - tensors.data()); };

  const FirstPassFn first_pass = rule.first_pass[layout];
  for_each_chunk(tensors, itemsize, [&](const Tensor& t, std::size_t begin, std::size_t end) {
    const std::size_t i = index(t);
    first_pass(t, begin / kBlock, (end + kBlock - 1) / kBlock, scalars.data() + i * count, flags,
               block_sums.data() + offset[i], num_blocks(t.size));
  });
  std::vector<double> tensor_sums(n * sums);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t blocks = num_blocks(tensors[i].size);
    for (std::size_t k = 0; k < sums; ++k)
      tensor_sums[i * sums + k] = combine_pairwise(block_sums.data() + offset[i] + k * blocks, blocks);
  }
  if (hook) hook(tensor_sums.data(), n, sums);
  for (std::size_t i = 0; i < n; ++i) rule.between_passes(tensor_sums.data() + i * sums, scalars.data() + i * count);
  const RangeFn update = rule.range[layout];
  for_each_chunk(tensors, itemsize, [&](const Tensor& t, std::size_t begin, std::size_t end) {
    update(t, begin, end, scalars.data() + index(t) * count, flags);
  });
}

}  // namespace

void run_step(const RuleKernels& rule, int layout, std::size_t itemsize, const std::vector<Tensor>& tensors,
              const double* planned, unsigned flags, const SumsHook& between_passes) {
  const ContractFpEnv contract;  // the pool's workers hold one too
  if (rule.num_sums) return run_two_pass(rule, layout, itemsize, tensors, planned, flags, between_passes);
  const RangeFn range = rule.range[layout];
  for_each_chunk(tensors, itemsize, [&](const Tensor& t, std::size_t begin, std::size_t end) {
    range(t, begin, end, planned, flags);
  });
}

}  // namespace fusedoptim
