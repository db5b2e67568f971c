// The kernels of global-norm gradient clipping at one ISA level. Like isa_kernels.cpp, CMake
// compiles this file once per level, with that level's flags and inside its namespace.
#include <algorithm>
#include <array>

#include "norms.hpp"
#include "square_sums.hpp"
#include "simd/level.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {
namespace {

template <class T>
void block_sums(const void* data, std::size_t size, std::size_t first, std::size_t last, double* sums) {
  const T* x = static_cast<const T*>(data);
  for (std::size_t b = first; b < last; ++b) {
    const std::size_t begin = b * kBlock, end = std::min(begin + kBlock, size);
    sums[b] = block_square_sums<Wide<T>, Scalar<T>, 1>(
        begin, end, [x](std::size_t i) { return std::array{Wide<T>::load(x + i)}; },
        [x](std::size_t i) { return std::array{Scalar<T>::load(x + i)}; })[0];
  }
}

template <class T>
void scale(void* data, std::size_t begin, std::size_t end, double factor) {
  T* x = static_cast<T*>(data);
  const T f = static_cast<T>(factor);
  std::size_t i = begin;
  if constexpr (Wide<T>::width > 1)
    for (const auto wide = Wide<T>::broadcast(f); i + Wide<T>::width <= end; i += Wide<T>::width)
      (Wide<T>::load(x + i) * wide).store(x + i);
  for (const auto one = Scalar<T>::broadcast(f); i < end; ++i) (Scalar<T>::load(x + i) * one).store(x + i);
}

}  // namespace

extern const NormKernels norms;
const NormKernels norms = {{&block_sums<float>, &block_sums<double>}, {&scale<float>, &scale<double>}};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
