#include "step.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "chunks.hpp"
#include "fpenv.hpp"
#include "reduction.hpp"

namespace fusedoptim {
namespace {

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
  // Cut in whole blocks: a block's sums come from one call, in the one order.
  for_each_chunk(tensors, itemsize, [&](const Tensor& t, std::size_t begin, std::size_t end) {
    const std::size_t i = index(t);
    first_pass(t, begin / kBlock, num_blocks(end), scalars.data() + i * count, flags,
               block_sums.data() + offset[i], num_blocks(t.size));
  }, kBlock);
  std::vector<double> tensor_sums(n * sums);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t blocks = num_blocks(tensors[i].size);
    for (std::size_t k = 0; k < sums; ++k)
      tensor_sums[i * sums + k] = combine_pairwise(block_sums.data() + offset[i] + k * blocks, blocks);
  }
  if (hook) hook(tensor_sums.data(), n, sums);
  for (std::size_t i = 0; i < n; ++i) rule.between_passes(tensor_sums.data() + i * sums, scalars.data() + i * count);
  const RangeFn update = rule.range[layout];
  for_each_piece(tensors, itemsize, [&](const Piece<Tensor>& p, const Piece<Tensor>* next) {
    update(*p.item, p.begin, p.end, scalars.data() + index(*p.item) * count, flags, next);
  });
}

// Whether `b`'s every operand starts where `a`'s ends, stored alike, stepped with the same modes:
// b continues a, as consecutive views of flat buffers do.
bool continues(const Tensor& a, const Tensor& b) {
  auto follows = [&](const void* first, Dtype dtype, const void* second) {
    return static_cast<const char*>(first) + a.size * itemsize(dtype) == second;
  };
  if (a.param_dtype != b.param_dtype || a.grad_dtype != b.grad_dtype || a.rounding != Rounding::nearest ||
      b.rounding != Rounding::nearest || a.grad_scale != b.grad_scale || a.compensation || b.compensation ||
      !follows(a.param, a.param_dtype, b.param) || !follows(a.grad, a.grad_dtype, b.grad) ||
      (a.master || b.master) && !(a.master && b.master && follows(a.master, Dtype::float32, b.master)))
    return false;
  for (int k = 0; k < kMaxStates; ++k) {
    if (!a.state[k] && !b.state[k]) continue;
    if (!a.state[k] || !b.state[k] || a.state_dtype[k] != b.state_dtype[k] ||
        !follows(a.state[k], a.state_dtype[k], b.state[k]))
      return false;
  }
  return true;
}

// The tensors with each run of consecutive ones (continues) as one tensor. A one-pass rule steps
// every element alike whatever tensor it is in, so this changes no result; it spares the kernel a
// head, a tail and a restart of the prefetchers per tensor of a flat arena.
std::vector<Tensor> coalesced(const std::vector<Tensor>& tensors) {
  std::vector<Tensor> runs;
  for (const Tensor& t : tensors) {
    if (!runs.empty() && continues(runs.back(), t))
      runs.back().size += t.size;
    else
      runs.push_back(t);
  }
  return runs;
}

}  // namespace

void run_step(const RuleKernels& rule, int layout, std::size_t itemsize, const std::vector<Tensor>& tensors,
              const double* planned, unsigned flags, const SumsHook& between_passes) {
  const ContractFpEnv contract;  // the pool's workers hold one too
  if (rule.num_sums) return run_two_pass(rule, layout, itemsize, tensors, planned, flags, between_passes);
  const RangeFn range = rule.range[layout];
  const std::vector<Tensor> runs = coalesced(tensors);
  for_each_piece(tensors.size() == runs.size() ? tensors : runs, itemsize, [&](const Piece<Tensor>& p, const Piece<Tensor>* next) {
    range(*p.item, p.begin, p.end, planned, flags, next);
  });
}

bool run_unscale(const std::vector<Grad>& grads, double inv_scale) {
  const ContractFpEnv contract;
  const UnscaleFn unscale = active_isa().unscale;
  std::atomic<bool> found{false};
  // Chunks of 4-byte elements whatever the dtypes: a chunk's size changes no result.
  for_each_chunk(grads, sizeof(float), [&](const Grad& g, std::size_t begin, std::size_t end) {
    if (unscale(g, begin, end, inv_scale)) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

}  // namespace fusedoptim
