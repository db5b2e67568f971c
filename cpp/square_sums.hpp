// The part of reduction.hpp's order that runs at an ISA level: one block's sums of squares, its
// lanes and their fold. Every kernel that reduces goes through it (LAMB's first pass, the norm of
// clip_grad_norm_), so the order is written once. Compiled per ISA level, in that level's namespace.
#pragma once
#include <array>
#include <cstddef>

#include "reduction.hpp"

#ifndef FUSEDOPTIM_ISA_NS
#error "square_sums.hpp is compiled per ISA level: include it from the per-level sources only"
#endif

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// N sums of squares, in double, over elements [begin, end) of one block (begin a multiple of
// kLanes): `wide(i)` gives the N values of elements i .. i + W::width as vectors W, `one(i)` those
// of element i as S (the scalar type). Whole rounds of kLanes elements go through W, each vector
// feeding fixed lanes; the tail, which only a tensor's last block has, feeds its lanes one element
// at a time; then the lanes fold in halves.
template <class W, class S, int N, class Wide, class One>
std::array<double, N> block_square_sums(std::size_t begin, std::size_t end, const Wide& wide, const One& one) {
  constexpr std::size_t groups = kLanes / W::width;
  typename W::SquareSum acc[N][groups];
  for (auto& sums : acc)
    for (auto& a : sums) a = W::SquareSum::zero();
  std::size_t i = begin;
  for (; i + kLanes <= end; i += kLanes)
    for (std::size_t g = 0; g < groups; ++g) {
      const auto values = wide(i + g * W::width);
      for (int k = 0; k < N; ++k) acc[k][g].add(values[k]);
    }
  double lanes[N][kLanes];
  for (int k = 0; k < N; ++k)
    for (std::size_t g = 0; g < groups; ++g) acc[k][g].store(lanes[k] + g * W::width);
  for (; i < end; ++i) {
    const auto values = one(i);
    for (int k = 0; k < N; ++k) {
      typename S::SquareSum lane{lanes[k][i % kLanes]};
      lane.add(values[k]);
      lane.store(&lanes[k][i % kLanes]);
    }
  }
  std::array<double, N> sums;
  for (int k = 0; k < N; ++k) {
    for (std::size_t half = kLanes / 2; half > 0; half /= 2)
      for (std::size_t j = 0; j < half; ++j) lanes[k][j] = lanes[k][j] + lanes[k][j + half];
    sums[k] = lanes[k][0];
  }
  return sums;
}

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
