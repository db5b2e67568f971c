// The host side of reduction.hpp's order: combining sums pairwise. Compiled once, at the baseline level.
#include "reduction.hpp"

namespace fusedoptim {

std::size_t num_blocks(std::size_t size) { return (size + kBlock - 1) / kBlock; }

double combine_pairwise(double* x, std::size_t n) {
  if (n == 0) return 0.0;
  for (; n > 1; n = (n + 1) / 2) {
    for (std::size_t j = 0; j < n / 2; ++j) x[j] = x[2 * j] + x[2 * j + 1];
    if (n % 2) x[n / 2] = x[n - 1];
  }
  return x[0];
}

}  // namespace fusedoptim
