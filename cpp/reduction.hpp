// The one order in which a rule that reduces over a whole tensor (LAMB's norms) sums, shared by
// every ISA level's first pass (isa_kernels.cpp), the host side that combines its blocks (step.cpp),
// and the NumPy reference (reference._sum_of_squares), which the extension's exported constants
// are checked against at import.
//
// Such a rule (one that declares `num_sums`) steps a tensor in two passes over blocks of kBlock
// elements. Pass 1 (`first_pass`) updates the state and returns, per element, the values whose
// squares the tensor sums; each block's sums are written out. Between the passes, the host side
// combines the block sums and the rule's `between_passes` turns them into per-tensor scalars,
// which follow the planned ones in `S`. Pass 2 (`update`) is elementwise, like any other rule.
//
// The order, the same on every ISA level and for any split of the blocks across threads:
//  - element i adds its square, in double, to lane i % kLanes of its block, in index order;
//  - a block's lanes fold in halves: lane j += lane j + 8, then + 4, + 2, + 1;
//  - block results combine pairwise in rounds, (b0 + b1), (b2 + b3), ..., an odd last one
//    carried to the next round, until one is left.
// Double keeps float32 squares exact and their sums far more accurate than float would.
//
// Constants and declarations only: a function defined here would be compiled once per ISA level
// with that level's flags, and the linker could keep any one copy for every caller. A block's
// lanes run at an ISA level (square_sums.hpp); combining the blocks is host work (reduction.cpp).
#pragma once
#include <cstddef>

namespace fusedoptim {

inline constexpr std::size_t kLanes = 16;    // a multiple of every vector width
inline constexpr std::size_t kBlock = 1024;  // a multiple of kLanes: a full block is whole vectors

// The blocks of a tensor of `size` elements, the last one possibly partial.
std::size_t num_blocks(std::size_t size);

// Combines n sums in place, pairwise in rounds: (x0 + x1), (x2 + x3), ..., an odd last one carried
// to the next round, until one is left; 0 when there are none. Blocks into a tensor's sum, and
// tensors into a list's (clip_grad_norm_), as reference._combine_pairwise does.
double combine_pairwise(double* x, std::size_t n);

}  // namespace fusedoptim
