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

// The memory-bandwidth roof: a rule's traffic with one add per read and no other work, so
// "% of roof" measures how much of a rule's time is more than moving its bytes.
template <int reads, int writes, class V>
void roof_at(const Streams& s, std::size_t i) {
  V x = V::load(s.read[0] + i);
  for (int k = 1; k < reads; ++k) x = x + V::load(s.read[k] + i);
  for (int k = 0; k < writes; ++k) x.store(s.write[k] + i);
}

template <int reads, int writes>
void roof_range(const Streams& streams, std::size_t begin, std::size_t end) {
  const Streams s = streams;  // a local copy: the stores cannot alias its pointers, which stay in registers
  std::size_t i = begin;
  for (; i + Wide<float>::width <= end; i += Wide<float>::width) roof_at<reads, writes, Wide<float>>(s, i);
  for (; i < end; ++i) roof_at<reads, writes, Scalar<float>>(s, i);
}

template <int... k>
constexpr std::array<RoofFn, sizeof...(k)> roof_table(std::integer_sequence<int, k...>) {
  return {&roof_range<k / kMaxStreams + 1, k % kMaxStreams + 1>...};
}

void roof(const Streams& s, std::size_t begin, std::size_t end) {
  static constexpr auto table = roof_table(std::make_integer_sequence<int, kMaxStreams * kMaxStreams>{});
  table[(s.reads - 1) * kMaxStreams + s.writes - 1](s, begin, end);
}

}  // namespace

extern const IsaTable table;
const IsaTable table{FUSEDOPTIM_ISA_NAME, kernels_for(static_cast<Rules*>(nullptr)), &roof};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
