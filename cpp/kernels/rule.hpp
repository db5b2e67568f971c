// What every rule's update sees: the operands of one tensor and the per-step scalars,
// broadcast once per call into the vector type the update is instantiated with.
#pragma once
#include <array>
#include <cstddef>

namespace fusedoptim {

inline constexpr int kMaxStates = 4;

// Type-erased operands of one tensor, as the bindings hand them to the kernels.
struct Tensor {
  void* param;
  const void* grad;
  void* state[kMaxStates];  // in the rule's State order; unused slots are null
  std::size_t size;
};

template <class T>
struct Operands {
  T* param;
  const T* grad;
  T* state[kMaxStates];

  // Always inlined: Operands<T> is the same symbol in every ISA's translation unit, so an
  // out-of-line copy built with one level's -m flags could be linked into another level's path.
  [[gnu::always_inline]] explicit Operands(const Tensor& t)
      : param(static_cast<T*>(t.param)), grad(static_cast<const T*>(t.grad)), state{} {
    for (int k = 0; k < kMaxStates; ++k) state[k] = static_cast<T*>(t.state[k]);
  }
};

// Scalars arrive as doubles already rounded to T on the host, so the cast is exact.
template <class V, int N>
struct Scalars {
  V v[N];
  explicit Scalars(const double* s) {
    for (int k = 0; k < N; ++k) v[k] = V::broadcast(static_cast<typename V::value_type>(s[k]));
  }
  const V& operator[](int k) const { return v[k]; }
};

}  // namespace fusedoptim

namespace fusedoptim {

// The gradient a rule with L2 weight decay steps on: negated for `maximize`, then plus
// weight_decay * param. Every rule's F puts maximize and weight_decay at bits 1 and 2.
template <class Rule, unsigned flags, class V>
V l2_gradient(const Scalars<V, Rule::S::count>& s, const Operands<typename V::value_type>& x, std::size_t i, V param) {
  V g = V::load(x.grad + i);
  if constexpr (flags & Rule::F::maximize) g = -g;
  if constexpr (flags & Rule::F::weight_decay) g = g + s[Rule::S::weight_decay] * param;
  return g;
}

// Adam's two moment updates (Adam, RAdam, NAdam, LAMB), stored and returned as {exp_avg, exp_avg_sq}.
template <class Rule, class V>
std::array<V, 2> adam_moments(const Scalars<V, Rule::S::count>& s, const Operands<typename V::value_type>& x,
                              std::size_t i, V g) {
  V m = s[Rule::S::beta1] * V::load(x.state[Rule::exp_avg] + i) + s[Rule::S::one_minus_beta1] * g;
  V v = s[Rule::S::beta2] * V::load(x.state[Rule::exp_avg_sq] + i) + s[Rule::S::one_minus_beta2] * (g * g);
  m.store(x.state[Rule::exp_avg] + i);
  v.store(x.state[Rule::exp_avg_sq] + i);
  return {m, v};
}

}  // namespace fusedoptim
