// Compiled once per ISA level, each time with its own -m flags and FUSEDOPTIM_ISA_NS,
// so every instantiation below is a distinct symbol that only that level's code calls.
#include <algorithm>
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

// Pass 1 of a two-pass rule, block by block in the order of kernels/reduction.hpp. A full block
// runs in whole vectors, kLanes elements per round, so each vector feeds fixed lanes; only the
// last block of a tensor can leave a tail, which feeds its lanes one element at a time.
template <class Rule, class T, unsigned flags>
void reduce_range(const Tensor& t, std::size_t first, std::size_t last, const double* s, double* block_sums) {
  constexpr int N = Rule::num_sums;
  constexpr std::size_t groups = kLanes / Wide<T>::width;
  const Operands<T> x(t);
  const Scalars<Wide<T>, Rule::S::count> wide(s);
  const Scalars<Scalar<T>, Rule::S::count> one(s);
  const std::size_t blocks = num_blocks(t.size);
  for (std::size_t b = first; b < last; ++b) {
    const std::size_t begin = b * kBlock, end = std::min(begin + kBlock, t.size);
    typename Wide<T>::SquareSum acc[N][groups];
    for (auto& sums : acc)
      for (auto& a : sums) a = Wide<T>::SquareSum::zero();
    std::size_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (std::size_t g = 0; g < groups; ++g) {
        const auto values = Rule::template first_pass<flags>(wide, x, i + g * Wide<T>::width);
        for (int k = 0; k < N; ++k) acc[k][g].add(values[k]);
      }
    double lanes[N][kLanes];
    for (int k = 0; k < N; ++k)
      for (std::size_t g = 0; g < groups; ++g) acc[k][g].store(lanes[k] + g * Wide<T>::width);
    for (; i < end; ++i) {
      const auto values = Rule::template first_pass<flags>(one, x, i);
      for (int k = 0; k < N; ++k) {
        typename Scalar<T>::SquareSum lane{lanes[k][i % kLanes]};
        lane.add(values[k]);
        lane.store(&lanes[k][i % kLanes]);
      }
    }
    for (int k = 0; k < N; ++k) block_sums[k * blocks + b] = fold_lanes(lanes[k]);
  }
}

using ReduceRangeFn = void (*)(const Tensor&, std::size_t, std::size_t, const double*, double*);

template <class Rule, class T, unsigned... flags>
constexpr std::array<ReduceRangeFn, sizeof...(flags)> reducers_by_flags(std::integer_sequence<unsigned, flags...>) {
  return {&reduce_range<Rule, T, flags>...};
}

template <class Rule, class T>
void reduce(const Tensor& t, std::size_t first, std::size_t last, const double* s, unsigned flags, double* sums) {
  static constexpr auto table =
      reducers_by_flags<Rule, T>(std::make_integer_sequence<unsigned, 1u << Rule::F::count>{});
  table[flags](t, first, last, s, sums);
}

template <class Rule>
constexpr std::array<ReduceFn, 2> reducer_for() {
  if constexpr (TwoPass<Rule>) return {&reduce<Rule, float>, &reduce<Rule, double>};
  else return {nullptr, nullptr};
}

template <class... R>
constexpr std::array<std::array<ReduceFn, 2>, sizeof...(R)> reducers_for(std::tuple<R...>*) {
  return {reducer_for<R>()...};
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
const IsaTable table{FUSEDOPTIM_ISA_NAME, kernels_for(static_cast<Rules*>(nullptr)),
                     reducers_for(static_cast<Rules*>(nullptr)), &roof};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
