// One step of a rule over a list of tensors, on the step's threads: the host side of every rule,
// compiled once at the baseline level; the arithmetic runs in the active ISA level's kernels.
#pragma once
#include <cstddef>
#include <functional>
#include <vector>

#include "dispatch.hpp"

namespace fusedoptim {

// Between the passes of a two-pass rule, on the calling thread: `sums` holds each tensor's
// num_sums sums (row i for tensor i), which the hook may replace, e.g. by their totals across
// the processes that each hold a shard of the tensor. A hook that throws leaves pass 1's state
// updates done and the params untouched.
using SumsHook = std::function<void(double* sums, std::size_t num_tensors, std::size_t num_sums)>;

// `planned` holds the rule's num_planned scalars (already rounded to the compute dtype);
// `layout` indexes the rule's kernels (dispatch.hpp's layout_of) and `itemsize` is the params'
// element size in bytes, which sets how many elements a thread's chunk holds.
void run_step(const RuleKernels& rule, int layout, std::size_t itemsize, const std::vector<Tensor>& tensors,
              const double* planned, unsigned flags, const SumsHook& between_passes = {});

}  // namespace fusedoptim
