// The rules' kernels at one ISA level. CMake compiles this file once per level, each time with
// that level's -m flags and FUSEDOPTIM_ISA_NS, so everything here and in the headers it includes
// lives in that level's namespace, and the level's table is the only way in.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "kernels/rules.hpp"
#include "reduction.hpp"
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

template <class Rule>
concept TwoPass = requires { Rule::num_sums; };

// How many scalars the host plan supplies: all of them, but a two-pass rule's per-tensor ones.
template <class Rule>
constexpr int planned_scalars() {
  if constexpr (TwoPass<Rule>) return Rule::S::planned;
  else return Rule::S::count;
}

// One element at a time until the param is vector-aligned, full vectors, then the tail one
// element at a time through the same update: every op is IEEE-rounded either way, so where the
// splits fall never changes a result. The head matters for NumPy's big arrays, which start 16 B
// past a page: unpeeled, every other 32 B vector straddles two cache lines. Equal-size arrays
// share that offset, so aligning the param aligns them all.
template <class Rule, class T, unsigned flags>
void run_range(const Tensor& t, std::size_t begin, std::size_t end, const double* s) {
  const Operands<T> x(t);
  const Scalars<Scalar<T>, Rule::S::count> one(s);
  std::size_t i = begin;
  if constexpr (Wide<T>::width > 1) {
    constexpr std::size_t item = sizeof(*x.param), bytes = Wide<T>::width * item;  // as the param is stored
    const std::size_t head = -reinterpret_cast<std::uintptr_t>(x.param + begin) % bytes / item;
    for (; i < std::min(end, begin + head); ++i) Rule::template update<flags>(one, x, i);
    const Scalars<Wide<T>, Rule::S::count> wide(s);
    for (; i + Wide<T>::width <= end; i += Wide<T>::width) Rule::template update<flags>(wide, x, i);
  }
  for (; i < end; ++i) Rule::template update<flags>(one, x, i);
}

// Pass 1 of a two-pass rule, block by block in the order of reduction.hpp. A full block runs in
// whole vectors, kLanes elements per round, so each vector feeds fixed lanes; only the last block
// of a tensor can leave a tail, which feeds its lanes one element at a time.
template <class Rule, class T, unsigned flags>
void first_pass_range(const Tensor& t, std::size_t first, std::size_t last, const double* s, double* block_sums,
                      std::size_t stride) {
  constexpr int N = Rule::num_sums;
  constexpr std::size_t groups = kLanes / Wide<T>::width;
  const Operands<T> x(t);
  const Scalars<Wide<T>, Rule::S::count> wide(s);
  const Scalars<Scalar<T>, Rule::S::count> one(s);
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
    for (int k = 0; k < N; ++k) {
      for (std::size_t half = kLanes / 2; half > 0; half /= 2)
        for (std::size_t j = 0; j < half; ++j) lanes[k][j] = lanes[k][j] + lanes[k][j + half];
      block_sums[k * stride + b] = lanes[k][0];
    }
  }
}

// Flags are template arguments, so each combination compiles to a branch-free loop; these pick
// the instantiation for a step's flags.
template <class Rule, class T, unsigned... flags>
void range_by_flags(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned f,
                    std::integer_sequence<unsigned, flags...>) {
  using Fn = void (*)(const Tensor&, std::size_t, std::size_t, const double*);
  static constexpr Fn table[] = {&run_range<Rule, T, flags>...};
  table[f](t, begin, end, s);
}

template <class Rule, class T>
void range(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned flags) {
  range_by_flags<Rule, T>(t, begin, end, s, flags, std::make_integer_sequence<unsigned, 1u << Rule::F::count>{});
}

template <class Rule, class T, unsigned... flags>
void first_pass_by_flags(const Tensor& t, std::size_t first, std::size_t last, const double* s, unsigned f,
                         double* sums, std::size_t stride, std::integer_sequence<unsigned, flags...>) {
  using Fn = void (*)(const Tensor&, std::size_t, std::size_t, const double*, double*, std::size_t);
  static constexpr Fn table[] = {&first_pass_range<Rule, T, flags>...};
  table[f](t, first, last, s, sums, stride);
}

template <class Rule, class T>
void first_pass(const Tensor& t, std::size_t first, std::size_t last, const double* s, unsigned flags, double* sums,
                std::size_t stride) {
  first_pass_by_flags<Rule, T>(t, first, last, s, flags, sums, stride,
                               std::make_integer_sequence<unsigned, 1u << Rule::F::count>{});
}

template <class Rule>
constexpr RuleKernels kernels_of() {
  static_assert(Rule::S::count <= kMaxScalars && Rule::num_states <= kMaxStates);
  if constexpr (TwoPass<Rule>)
    return {Rule::name, Rule::S::count, planned_scalars<Rule>(), Rule::F::count, Rule::num_states, Rule::num_sums,
            {&range<Rule, float>, &range<Rule, double>}, {&first_pass<Rule, float>, &first_pass<Rule, double>},
            &Rule::between_passes};
  else
    return {Rule::name, Rule::S::count, planned_scalars<Rule>(), Rule::F::count, Rule::num_states, 0,
            {&range<Rule, float>, &range<Rule, double>}, {nullptr, nullptr}, nullptr};
}

template <class... R>
constexpr IsaTable table_of(const char* name, std::tuple<R...>*) {
  return {name, {kernels_of<R>()...}};
}

}  // namespace

extern const IsaTable table;
const IsaTable table = table_of(FUSEDOPTIM_ISA_NAME, static_cast<Rules*>(nullptr));

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
