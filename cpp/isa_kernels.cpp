// Compiled once per ISA level, each time with its own -m flags and FUSEDOPTIM_ISA_NS,
// so every instantiation below is a distinct symbol that only that level's code calls.
#include <utility>

#include "dispatch.hpp"
#include "simd/scalar.hpp"
#if defined(FUSEDOPTIM_AVX512)
#include "simd/avx512.hpp"
#elif defined(FUSEDOPTIM_AVX2)
#include "simd/avx2.hpp"
#endif

namespace fusedoptim::FUSEDOPTIM_ISA_NS {
namespace {

#if defined(FUSEDOPTIM_AVX512) || defined(FUSEDOPTIM_AVX2)
template <class T>
using Wide = Vec<T>;
#else
template <class T>
using Wide = Scalar<T>;
#endif

// Full vectors, then the tail one element at a time through the same update: every op is
// IEEE-rounded either way, so where the split falls never changes a result.
template <class Rule, class T, unsigned flags>
void run_range(const Tensor& t, std::size_t begin, std::size_t end, const double* s) {
  const Operands<T> x(t);
  std::size_t i = begin;
  if constexpr (Wide<T>::width > 1) {
    const Scalars<Wide<T>, Rule::S::count> wide(s);
    for (; i + Wide<T>::width <= end; i += Wide<T>::width) Rule::template update<flags>(wide, x, i);
  }
  const Scalars<Scalar<T>, Rule::S::count> one(s);
  for (; i < end; ++i) Rule::template update<flags>(one, x, i);
}

using RangeFn = void (*)(const Tensor&, std::size_t, std::size_t, const double*);

template <class Rule, class T, unsigned... flags>
constexpr std::array<RangeFn, sizeof...(flags)> by_flags(std::integer_sequence<unsigned, flags...>) {
  return {&run_range<Rule, T, flags>...};
}

// Flags are template arguments so each combination compiles to a branch-free loop.
template <class Rule, class T>
void run(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned flags) {
  static constexpr auto table = by_flags<Rule, T>(std::make_integer_sequence<unsigned, 1u << Rule::F::count>{});
  table[flags](t, begin, end, s);
}

template <class... R>
constexpr std::array<std::array<KernelFn, 2>, sizeof...(R)> kernels_for(std::tuple<R...>*) {
  return {{{&run<R, float>, &run<R, double>}...}};
}

}  // namespace

extern const IsaTable table;
const IsaTable table{FUSEDOPTIM_ISA_NAME, kernels_for(static_cast<Rules*>(nullptr))};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
