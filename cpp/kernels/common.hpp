// What every rule's update sees: the operands of one tensor and the per-step scalars, broadcast
// once per call into the vector type the update is instantiated with, and the pieces several
// rules share. Compiled once per ISA level, inside that level's namespace (see dispatch.hpp).
#pragma once
#include <array>
#include <cstddef>

#include "dispatch.hpp"

#ifndef FUSEDOPTIM_ISA_NS
#error "kernels are compiled per ISA level: include them from isa_kernels.cpp only"
#endif

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// One tensor's operands, typed. A rule reads and writes them only through load and store, so
// what an operand is stored as is this type's business, not the rule's.
template <class T>
struct Operands {
  T* param;
  const T* grad;
  T* state[kMaxStates];

  explicit Operands(const Tensor& t) : param(static_cast<T*>(t.param)), grad(static_cast<const T*>(t.grad)), state{} {
    for (int k = 0; k < kMaxStates; ++k) state[k] = static_cast<T*>(t.state[k]);
  }
};

template <class V, class T>
V load(const T* p, std::size_t i) {
  return V::load(p + i);
}

template <class V, class T>
void store(T* p, std::size_t i, V v) {
  v.store(p + i);
}

// Scalars arrive as doubles already rounded to the compute type on the host, so the cast is exact.
template <class V, int N>
struct Scalars {
  V v[N];
  explicit Scalars(const double* s) {
    for (int k = 0; k < N; ++k) v[k] = V::broadcast(static_cast<typename V::value_type>(s[k]));
  }
  const V& operator[](int k) const { return v[k]; }
};

// The gradient a rule with L2 weight decay steps on: negated for `maximize`, then plus
// weight_decay * param. Every rule's F puts maximize and weight_decay at bits 1 and 2.
template <class Rule, unsigned flags, class V, class X>
V l2_gradient(const Scalars<V, Rule::S::count>& s, const X& x, std::size_t i, V param) {
  V g = load<V>(x.grad, i);
  if constexpr (flags & Rule::F::maximize) g = -g;
  if constexpr (flags & Rule::F::weight_decay) g = g + s[Rule::S::weight_decay] * param;
  return g;
}

// Adam's two moment updates (Adam, RAdam, NAdam, LAMB), stored and returned as {exp_avg, exp_avg_sq}.
template <class Rule, class V, class X>
std::array<V, 2> adam_moments(const Scalars<V, Rule::S::count>& s, const X& x, std::size_t i, V g) {
  V m = s[Rule::S::beta1] * load<V>(x.state[Rule::exp_avg], i) + s[Rule::S::one_minus_beta1] * g;
  V v = s[Rule::S::beta2] * load<V>(x.state[Rule::exp_avg_sq], i) + s[Rule::S::one_minus_beta2] * (g * g);
  store(x.state[Rule::exp_avg], i, m);
  store(x.state[Rule::exp_avg_sq], i, v);
  return {m, v};
}

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
