// The rules' kernels at one ISA level. CMake compiles this file once per level, each time with
// that level's -m flags and FUSEDOPTIM_ISA_NS, so everything here and in the headers it includes
// lives in that level's namespace, and the level's table is the only way in.
#include <algorithm>
#include <type_traits>
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

// Layout k of the tables (dispatch.hpp): a native storage, or a catch-all.
template <Dtype d>
using StorageOf = std::conditional_t<
    d == Dtype::float32, float,
    std::conditional_t<d == Dtype::float64, double, std::conditional_t<d == Dtype::bfloat16, bf16, f16>>>;

template <int k>
auto layout_at() {
  if constexpr (k == kAnyFloat) return Layout<float, Any, Any, Any>{};
  else if constexpr (k == kAnyDouble) return Layout<double, Any, Any, Any>{};
  else {
    constexpr Storage s = kNativeLayouts[k];
    using T = std::conditional_t<s.param == Dtype::float64, double, float>;
    return Layout<T, StorageOf<s.param>, StorageOf<s.grad>, StorageOf<s.state>>{};
  }
}
template <int k>
using LayoutAt = decltype(layout_at<k>());

template <class Rule>
concept TwoPass = requires { Rule::num_sums; };

// How many scalars the host plan supplies: all of them, but a two-pass rule's per-tensor ones.
template <class Rule>
constexpr int planned_scalars() {
  if constexpr (TwoPass<Rule>) return Rule::S::planned;
  else return Rule::S::count;
}

// Full vectors, then the tail one element at a time through the same update: every op is
// IEEE-rounded either way, so where the split falls never changes a result.
template <class Rule, class L, unsigned flags>
void run_range(const Tensor& t, std::size_t begin, std::size_t end, const double* s) {
  using T = typename L::Compute;
  const Operands<L> x(t);
  std::size_t i = begin;
  if constexpr (Wide<T>::width > 1) {
    const Scalars<Wide<T>, Rule::S::count> wide(s);
    for (; i + Wide<T>::width <= end; i += Wide<T>::width) Rule::template update<flags>(wide, x, i);
  }
  const Scalars<Scalar<T>, Rule::S::count> one(s);
  for (; i < end; ++i) Rule::template update<flags>(one, x, i);
}

// Pass 1 of a two-pass rule, block by block in the order of reduction.hpp. A full block runs in
// whole vectors, kLanes elements per round, so each vector feeds fixed lanes; only the last block
// of a tensor can leave a tail, which feeds its lanes one element at a time.
template <class Rule, class L, unsigned flags>
void first_pass_range(const Tensor& t, std::size_t first, std::size_t last, const double* s, double* block_sums,
                      std::size_t stride) {
  using T = typename L::Compute;
  constexpr int N = Rule::num_sums;
  constexpr std::size_t groups = kLanes / Wide<T>::width;
  const Operands<L> x(t);
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
template <class Rule, class L, unsigned... flags>
void range_by_flags(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned f,
                    std::integer_sequence<unsigned, flags...>) {
  using Fn = void (*)(const Tensor&, std::size_t, std::size_t, const double*);
  static constexpr Fn table[] = {&run_range<Rule, L, flags>...};
  table[f](t, begin, end, s);
}

template <class Rule, class L>
void range(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned flags) {
  range_by_flags<Rule, L>(t, begin, end, s, flags, std::make_integer_sequence<unsigned, 1u << Rule::F::count>{});
}

template <class Rule, class L, unsigned... flags>
void first_pass_by_flags(const Tensor& t, std::size_t first, std::size_t last, const double* s, unsigned f,
                         double* sums, std::size_t stride, std::integer_sequence<unsigned, flags...>) {
  using Fn = void (*)(const Tensor&, std::size_t, std::size_t, const double*, double*, std::size_t);
  static constexpr Fn table[] = {&first_pass_range<Rule, L, flags>...};
  table[f](t, first, last, s, sums, stride);
}

template <class Rule, class L>
void first_pass(const Tensor& t, std::size_t first, std::size_t last, const double* s, unsigned flags, double* sums,
                std::size_t stride) {
  first_pass_by_flags<Rule, L>(t, first, last, s, flags, sums, stride,
                               std::make_integer_sequence<unsigned, 1u << Rule::F::count>{});
}

template <class Rule, int... k>
constexpr RuleKernels kernels_of(std::integer_sequence<int, k...>) {
  static_assert(Rule::S::count <= kMaxScalars && Rule::num_states <= kMaxStates);
  if constexpr (TwoPass<Rule>)
    return {Rule::name, Rule::S::count, planned_scalars<Rule>(), Rule::F::count, Rule::num_states, Rule::num_sums,
            {&range<Rule, LayoutAt<k>>...}, {&first_pass<Rule, LayoutAt<k>>...}, &Rule::between_passes};
  else
    return {Rule::name, Rule::S::count, planned_scalars<Rule>(), Rule::F::count, Rule::num_states, 0,
            {&range<Rule, LayoutAt<k>>...}, {}, nullptr};
}

template <class... R>
constexpr IsaTable table_of(const char* name, std::tuple<R...>*) {
  return {name, {kernels_of<R>(std::make_integer_sequence<int, kNumLayouts>{})...}};
}

}  // namespace

extern const IsaTable table;
const IsaTable table = table_of(FUSEDOPTIM_ISA_NAME, static_cast<Rules*>(nullptr));

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
