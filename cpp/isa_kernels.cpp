// The rules' kernels at one ISA level. CMake compiles this file once per level, each time with
// that level's -m flags and FUSEDOPTIM_ISA_NS, so everything here and in the headers it includes
// lives in that level's namespace, and the level's table is the only way in.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/rules.hpp"
#include "square_sums.hpp"
#include "simd/level.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {
namespace {

// Native layout k of the tables (dispatch.hpp).
template <Dtype d>
using StorageOf = std::conditional_t<
    d == Dtype::float32, float,
    std::conditional_t<d == Dtype::float64, double, std::conditional_t<d == Dtype::bfloat16, bf16, f16>>>;

template <int k>
auto layout_at() {
  constexpr Storage s = kNativeLayouts[k];
  using T = std::conditional_t<s.param == Dtype::float64, double, float>;
  using P = std::conditional_t<s.master, Master<StorageOf<s.param>>, StorageOf<s.param>>;
  return Layout<T, P, StorageOf<s.grad>, StorageOf<s.state>>{};
}
template <int k>
using LayoutAt = decltype(layout_at<k>());

// The native layout whose every operand is stored as the compute type T, which the catch-all runs.
static_assert(kNativeLayouts[0] == Storage{Dtype::float32, Dtype::float32, Dtype::float32} &&
              kNativeLayouts[1] == Storage{Dtype::float64, Dtype::float64, Dtype::float64});
template <class T>
using ComputeLayout = LayoutAt<std::is_same_v<T, double> ? 1 : 0>;

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
//
// The vector loop prefetches kPrefetchAhead elements ahead along the thread's sequence of pieces,
// as it would along one array: this range's own elements while it has that many left, then the
// first ones of `next`. So a small tensor starts with its head in cache, and no prefetch is spent
// past its end.
template <class Rule, class L, unsigned flags>
void run_range(const Tensor& t, std::size_t begin, std::size_t end, const double* s, const Piece<Tensor>* next) {
  using T = typename L::Compute;
  const Operands<L> x(t);
  const Scalars<Scalar<T>, Rule::S::count> one(s);
  std::size_t i = begin;
  if constexpr (Wide<T>::width > 1) {
    constexpr std::size_t width = Wide<T>::width;
    // As the param is stored, or its master: the widest stream is the one a split vector costs most.
    constexpr std::size_t item = sizeof(*widest(x.param)), bytes = width * item;
    const std::size_t head = -reinterpret_cast<std::uintptr_t>(widest(x.param) + begin) % bytes / item;
    for (; i < std::min(end, begin + head); ++i) Rule::template update<flags>(one, x, i);
    const Scalars<Wide<T>, Rule::S::count> wide(s);
    for (; i + width <= end && i + kPrefetchAhead < end; i += width) {
      x.prefetch(i + kPrefetchAhead);
      Rule::template update<flags>(wide, x, i);
    }
    if (next) {
      const Operands<L> after(*next->item);
      for (; i + width <= end; i += width) {
        after.prefetch(std::min(next->begin + (i + kPrefetchAhead - end), next->end - 1));
        Rule::template update<flags>(wide, x, i);
      }
    }
    for (; i + width <= end; i += width) Rule::template update<flags>(wide, x, i);
  }
  for (; i < end; ++i) Rule::template update<flags>(one, x, i);
}

// Pass 1 of a two-pass rule, block by block, each block's sums in the order of reduction.hpp.
template <class Rule, class L, unsigned flags>
void first_pass_range(const Tensor& t, std::size_t first, std::size_t last, const double* s, double* block_sums,
                      std::size_t stride) {
  using T = typename L::Compute;
  const Operands<L> x(t);
  const Scalars<Wide<T>, Rule::S::count> wide(s);
  const Scalars<Scalar<T>, Rule::S::count> one(s);
  for (std::size_t b = first; b < last; ++b) {
    const std::size_t begin = b * kBlock, end = std::min(begin + kBlock, t.size);
    const auto sums = block_square_sums<Wide<T>, Scalar<T>, Rule::num_sums>(
        begin, end, [&](std::size_t i) { return Rule::template first_pass<flags>(wide, x, i); },
        [&](std::size_t i) { return Rule::template first_pass<flags>(one, x, i); });
    for (int k = 0; k < Rule::num_sums; ++k) block_sums[k * stride + b] = sums[k];
  }
}

// Flags are template arguments, so each combination compiles to a branch-free loop; these pick
// the instantiation for a step's flags.
template <class Rule, class L, unsigned... flags>
void range_by_flags(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned f,
                    const Piece<Tensor>* next, std::integer_sequence<unsigned, flags...>) {
  using Fn = void (*)(const Tensor&, std::size_t, std::size_t, const double*, const Piece<Tensor>*);
  static constexpr Fn table[] = {&run_range<Rule, L, flags>...};
  table[f](t, begin, end, s, next);
}

template <class Rule, class L>
void range(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned flags,
           const Piece<Tensor>* next) {
  range_by_flags<Rule, L>(t, begin, end, s, flags, next, std::make_integer_sequence<unsigned, 1u << Rule::F::count>{});
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

// --- The catch-all layouts: any storage the validator accepts, and every param mode ---
//
// (Master weights alone, over a native master layout's storage, run natively: common.hpp's Mastered.)
//
// A block of every operand not stored as the compute type T is widened into a buffer, the compute
// type's own native kernel steps the block (those buffers, and the other operands in place), and
// the widened param and states are rounded back to their storage. These are the bits that
// converting at every load and store gives: a rule reads an operand before it stores it and stores
// it once per pass (LAMB's second pass reads what its first one stored, and the first pass's store
// has been rounded back by then). So the catch-all instantiates no rule again; it costs a pass over
// the widened operands' buffers, which stay in L1/L2.
//
// The modes of a Tensor (dispatch.hpp) are how this staging loads and stores, and nothing else:
// the rules never see them (_storage.py is their specification):
//  - grad_scale: the grad is widened, then divided by grad_scale;
//  - master weights: the rule steps the float32 master in place; the param is then the master
//    rounded to nearest even;
//  - Rounding::kahan: the rule steps param + compensation (added in T); x, its result, is stored
//    as param = round(x) and compensation = round(x - param), both to nearest even;
//  - Rounding::stochastic (bf16 params): the param is stored rounded stochastically.

template <class T, class S>
void widen_block(const void* from, std::size_t n, T* to) {
  const S* p = static_cast<const S*>(from);
  std::size_t k = 0;
  for (; k + Wide<T>::width <= n; k += Wide<T>::width) Wide<T>::load(p + k).store(to + k);
  for (; k < n; ++k) Scalar<T>::load(p + k).store(to + k);
}

template <class T, class S>
void narrow_block(const T* from, std::size_t n, void* to) {
  S* p = static_cast<S*>(to);
  std::size_t k = 0;
  for (; k + Wide<T>::width <= n; k += Wide<T>::width) Wide<T>::load(from + k).store(p + k);
  for (; k < n; ++k) Scalar<T>::load(from + k).store(p + k);
}

// x[k] += y[k]
template <class T>
void add_block(T* x, const T* y, std::size_t n) {
  std::size_t k = 0;
  for (; k + Wide<T>::width <= n; k += Wide<T>::width) (Wide<T>::load(x + k) + Wide<T>::load(y + k)).store(x + k);
  for (; k < n; ++k) (Scalar<T>::load(x + k) + Scalar<T>::load(y + k)).store(x + k);
}

// x[k] = op(x[k], d), op an operator of the vector types (the same IEEE op at every width).
template <class T, class Op>
void map_block(T* x, std::size_t n, T d, Op op) {
  const auto wide = Wide<T>::broadcast(d);
  const auto one = Scalar<T>::broadcast(d);
  std::size_t k = 0;
  for (; k + Wide<T>::width <= n; k += Wide<T>::width) op(Wide<T>::load(x + k), wide).store(x + k);
  for (; k < n; ++k) op(Scalar<T>::load(x + k), one).store(x + k);
}

// Kahan: param = round(x), then compensation = round(x - param), both as S.
template <class T, class S>
void narrow_kahan_block(const T* from, std::size_t n, void* param, void* compensation) {
  S* p = static_cast<S*>(param);
  S* c = static_cast<S*>(compensation);
  std::size_t k = 0;
  for (; k + Wide<T>::width <= n; k += Wide<T>::width) {
    const auto x = Wide<T>::load(from + k);
    x.store(p + k);
    (x - Wide<T>::load(p + k)).store(c + k);
  }
  for (; k < n; ++k) {
    const auto x = Scalar<T>::load(from + k);
    x.store(p + k);
    (x - Scalar<T>::load(p + k)).store(c + k);
  }
}

// Elements [index, index + n) of a bf16 param, rounded stochastically. A vector whose indices'
// low halves would wrap (only at a multiple of 2^32) goes element by element, with the same bits.
inline void narrow_stochastic_block(const float* from, std::size_t n, void* to, std::uint32_t key,
                                    std::uint64_t index) {
  bf16* p = static_cast<bf16*>(to);
  std::size_t k = 0;
  for (; k + Wide<float>::width <= n; k += Wide<float>::width) {
    const std::uint64_t i = index + k;
    if ((i >> 32) == ((i + Wide<float>::width - 1) >> 32)) Wide<float>::load(from + k).store_stochastic(p + k, element_key(key, i), i);
    else
      for (std::size_t j = k; j < k + Wide<float>::width; ++j)
        Scalar<float>::load(from + j).store_stochastic(p + j, element_key(key, index + j), index + j);
  }
  for (; k < n; ++k) Scalar<float>::load(from + k).store_stochastic(p + k, element_key(key, index + k), index + k);
}

// Calls fn with a null pointer of the storage type a catch-all of compute type T reads `dtype` as:
// float32, bfloat16 or float16 for float32 compute; float64 or float32 for float64 (the validator's).
template <class T, class Fn>
void with_storage(Dtype dtype, const Fn& fn) {
  if constexpr (std::is_same_v<T, double>) {
    if (dtype == Dtype::float32) return fn(static_cast<float*>(nullptr));
    return fn(static_cast<double*>(nullptr));
  } else {
    if (dtype == Dtype::bfloat16) return fn(static_cast<bf16*>(nullptr));
    if (dtype == Dtype::float16) return fn(static_cast<f16*>(nullptr));
    return fn(static_cast<float*>(nullptr));
  }
}

template <class T>
struct Staged {
  static constexpr Dtype kCompute = std::is_same_v<T, double> ? Dtype::float64 : Dtype::float32;
  static constexpr int kCompensation = 2 + kMaxStates;
  alignas(64) T buffer[3 + kMaxStates][kBlock];  // param, grad, each state, the compensation
  Tensor tensor{};

  // Elements [begin, begin + n) of t's operands (n <= kBlock) as `tensor`, all stored as T: an
  // operand stored as T is stepped where it is, any other is widened into its buffer.
  void load(const Tensor& t, std::size_t begin, std::size_t n) {
    tensor = Tensor{nullptr, nullptr, {}, n, kCompute, kCompute, {kCompute, kCompute, kCompute, kCompute}};
    if (t.master) {
      tensor.param = const_cast<void*>(element(t.master, kCompute, begin));
    } else {
      tensor.param = const_cast<void*>(in(t.param, t.param_dtype, begin, n, buffer[0], t.rounding == Rounding::kahan));
      if (t.rounding == Rounding::kahan) {
        in(t.compensation, t.param_dtype, begin, n, buffer[kCompensation], true);
        add_block(buffer[0], buffer[kCompensation], n);
      }
    }
    tensor.grad = in(t.grad, t.grad_dtype, begin, n, buffer[1], t.grad_scale != 1.0);
    if (t.grad_scale != 1.0) map_block(buffer[1], n, static_cast<T>(t.grad_scale), [](auto g, auto s) { return g / s; });
    for (int k = 0; k < kMaxStates; ++k)
      if (t.state[k]) tensor.state[k] = const_cast<void*>(in(t.state[k], t.state_dtype[k], begin, n, buffer[2 + k], false));
  }

  // The widened states, and the param when the pass wrote it, rounded back into t's operands.
  void store(const Tensor& t, std::size_t begin, std::size_t n, bool param) const {
    if (param) store_param(t, begin, n);
    for (int k = 0; k < kMaxStates; ++k)
      if (t.state[k]) out(buffer[2 + k], t.state[k], t.state_dtype[k], begin, n);
  }

  void store_param(const Tensor& t, std::size_t begin, std::size_t n) const {
    void* to = const_cast<void*>(element(t.param, t.param_dtype, begin));
    const T* x = static_cast<const T*>(tensor.param);  // the master's block, or the param's buffer
    if (t.master)
      with_storage<T>(t.param_dtype, [&](auto* type) { narrow_block<T, std::remove_pointer_t<decltype(type)>>(x, n, to); });
    else if (t.rounding == Rounding::kahan)
      with_storage<T>(t.param_dtype, [&](auto* type) {
        narrow_kahan_block<T, std::remove_pointer_t<decltype(type)>>(
            x, n, to, const_cast<void*>(element(t.compensation, t.param_dtype, begin)));
      });
    else if (t.rounding == Rounding::stochastic) {
      if constexpr (std::is_same_v<T, float>) narrow_stochastic_block(x, n, to, t.key, begin);  // bf16 params only
    } else
      out(x, t.param, t.param_dtype, begin, n);
  }

  static const void* element(const void* p, Dtype dtype, std::size_t i) {
    return static_cast<const char*>(p) + i * itemsize(dtype);
  }
  // Where the kernel finds a block of an operand as T: in place, or widened into `buffer` (always
  // when `copy`: the block is about to be changed before the rule reads it).
  static const void* in(const void* from, Dtype dtype, std::size_t begin, std::size_t n, T* buffer, bool copy) {
    if (dtype == kCompute && !copy) return element(from, dtype, begin);
    with_storage<T>(dtype, [&](auto* type) {
      widen_block<T, std::remove_pointer_t<decltype(type)>>(element(from, dtype, begin), n, buffer);
    });
    return buffer;
  }
  static void out(const T* buffer, void* to, Dtype dtype, std::size_t begin, std::size_t n) {
    if (dtype == kCompute) return;  // stepped in place
    with_storage<T>(dtype, [&](auto* type) {
      narrow_block<T, std::remove_pointer_t<decltype(type)>>(buffer, n, const_cast<void*>(element(to, dtype, begin)));
    });
  }
};

// (The staged blocks are in L1 already: nothing to prefetch.)
template <class Rule, class T>
void staged_range(const Tensor& t, std::size_t begin, std::size_t end, const double* s, unsigned flags,
                  const Piece<Tensor>*) {
  Staged<T> stage;
  for (std::size_t i = begin; i < end; i += kBlock) {
    const std::size_t n = std::min(kBlock, end - i);
    stage.load(t, i, n);
    range<Rule, ComputeLayout<T>>(stage.tensor, 0, n, s, flags, nullptr);
    stage.store(t, i, n, true);
  }
}

// Block by block, so that each block's sums come from the same elements and lanes as natively.
template <class Rule, class T>
void staged_first_pass(const Tensor& t, std::size_t first, std::size_t last, const double* s, unsigned flags,
                       double* sums, std::size_t stride) {
  Staged<T> stage;
  for (std::size_t b = first; b < last; ++b) {
    const std::size_t begin = b * kBlock, n = std::min(kBlock, t.size - begin);
    stage.load(t, begin, n);
    first_pass<Rule, ComputeLayout<T>>(stage.tensor, 0, 1, s, flags, sums + b, stride);
    stage.store(t, begin, n, false);
  }
}

// Layout k's kernels: a native layout's own, or a catch-all's over its compute type's.
template <class Rule, int k>
constexpr RangeFn range_at() {
  if constexpr (k == kAnyFloat) return &staged_range<Rule, float>;
  else if constexpr (k == kAnyDouble) return &staged_range<Rule, double>;
  else return &range<Rule, LayoutAt<k>>;
}

template <class Rule, int k>
constexpr FirstPassFn first_pass_at() {
  if constexpr (k == kAnyFloat) return &staged_first_pass<Rule, float>;
  else if constexpr (k == kAnyDouble) return &staged_first_pass<Rule, double>;
  else return &first_pass<Rule, LayoutAt<k>>;
}

template <class Rule, int... k>
constexpr RuleKernels kernels_of(std::integer_sequence<int, k...>) {
  static_assert(Rule::S::count <= kMaxScalars && Rule::num_states <= kMaxStates);
  if constexpr (TwoPass<Rule>)
    return {Rule::name, Rule::S::count, planned_scalars<Rule>(), Rule::F::count, Rule::num_states, Rule::num_sums,
            {range_at<Rule, k>()...}, {first_pass_at<Rule, k>()...}, &Rule::between_passes};
  else
    return {Rule::name, Rule::S::count, planned_scalars<Rule>(), Rule::F::count, Rule::num_states, 0,
            {range_at<Rule, k>()...}, {}, nullptr};
}

// --- unscale_and_check_ (_storage.unscale is its specification) ---

// Whether any of x[0, n) is Inf or NaN: x - x is 0 for every finite x and NaN otherwise.
template <class T>
bool any_non_finite(const T* x, std::size_t n) {
  auto wide = Wide<T>::broadcast(0);
  auto one = Scalar<T>::broadcast(0);
  std::size_t k = 0;
  for (; k + Wide<T>::width <= n; k += Wide<T>::width) {
    const auto v = Wide<T>::load(x + k);
    wide = wide + (v - v);
  }
  for (; k < n; ++k) one = one + (Scalar<T>::load(x + k) - Scalar<T>::load(x + k));
  T lanes[Wide<T>::width];
  wide.store(lanes);
  bool found = one.v != one.v;
  for (const T lane : lanes) found |= lane != lane;
  return found;
}

// Block by block: widened, multiplied, stored back, and the stored values (widened again) checked.
template <class T>
bool unscale_range(const Grad& g, std::size_t begin, std::size_t end, double inv_scale) {
  alignas(64) T buffer[kBlock];
  bool found = false;
  with_storage<T>(g.dtype, [&](auto* type) {
    using S = std::remove_pointer_t<decltype(type)>;
    S* data = static_cast<S*>(g.data);
    for (std::size_t i = begin; i < end; i += kBlock) {
      const std::size_t n = std::min(kBlock, end - i);
      widen_block<T, S>(data + i, n, buffer);
      map_block(buffer, n, static_cast<T>(inv_scale), [](auto x, auto s) { return x * s; });
      narrow_block<T, S>(buffer, n, data + i);
      if constexpr (!std::is_same_v<S, T>) widen_block<T, S>(data + i, n, buffer);
      found |= any_non_finite(buffer, n);
    }
  });
  return found;
}

bool unscale(const Grad& g, std::size_t begin, std::size_t end, double inv_scale) {
  return g.dtype == Dtype::float64 ? unscale_range<double>(g, begin, end, inv_scale)
                                   : unscale_range<float>(g, begin, end, inv_scale);
}

template <class... R>
constexpr IsaTable table_of(const char* name, std::tuple<R...>*) {
  return {name, {kernels_of<R>(std::make_integer_sequence<int, kNumLayouts>{})...}, &unscale};
}

}  // namespace

extern const IsaTable table;
const IsaTable table = table_of(FUSEDOPTIM_ISA_NAME, static_cast<Rules*>(nullptr));

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
