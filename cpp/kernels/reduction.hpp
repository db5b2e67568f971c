// Rules that reduce over a whole tensor (LAMB's norms) and the one order of their sums.
//
// Such a rule (one that declares `num_sums`) steps a tensor in two passes over blocks of kBlock
// elements. Pass 1 (`first_pass`) updates the state and returns, per element, the values whose
// squares the tensor sums; each block's sums are written out. Between the passes, the host side
// combines the block sums and the rule's `between_passes` turns them into per-tensor scalars,
// which follow the planned ones in `S`. Pass 2 (`update`) is elementwise, like any other rule.
//
// The summation order, the same on every ISA level and for any split of the blocks across
// threads (mirrored by reference._sum_of_squares):
//  - element i adds its square, in double, to lane i % kLanes of its block, in index order;
//  - a block's lanes fold in halves: lane j += lane j + 8, then + 4, + 2, + 1;
//  - block results combine pairwise in rounds, (b0 + b1), (b2 + b3), ..., an odd last one
//    carried to the next round, until one is left.
// Double keeps float32 squares exact and their sums far more accurate than float would.
#pragma once
#include <cstddef>

namespace fusedoptim {

inline constexpr std::size_t kLanes = 16;    // a multiple of every vector width
inline constexpr std::size_t kBlock = 1024;  // a multiple of kLanes: a full block is whole vectors

template <class Rule>
concept TwoPass = requires { Rule::num_sums; };

// How many scalars the host plan supplies.
template <class Rule>
constexpr int planned_scalars() {
  if constexpr (TwoPass<Rule>) return Rule::S::planned;
  else return Rule::S::count;
}

// `static`, not merely inline: every ISA's translation unit compiles these with its own -m flags,
// and the linker may keep any one copy of an inline function for all callers, so an AVX-512
// build of them could end up in the baseline path.
static inline std::size_t num_blocks(std::size_t size) { return (size + kBlock - 1) / kBlock; }

static inline double fold_lanes(double* lanes) {
  for (std::size_t half = kLanes / 2; half > 0; half /= 2)
    for (std::size_t j = 0; j < half; ++j) lanes[j] = lanes[j] + lanes[j + half];
  return lanes[0];
}

// Combines n block results in place; 0 when there are none.
static inline double combine_blocks(double* x, std::size_t n) {
  if (n == 0) return 0.0;
  for (; n > 1; n = (n + 1) / 2) {
    for (std::size_t j = 0; j < n / 2; ++j) x[j] = x[2 * j] + x[2 * j + 1];
    if (n % 2) x[n / 2] = x[n - 1];
  }
  return x[0];
}

}  // namespace fusedoptim
