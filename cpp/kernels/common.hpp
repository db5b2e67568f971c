// What every rule's update sees: the operands of one tensor and the per-step scalars, broadcast
// once per call into the vector type the update is instantiated with, and the pieces several
// rules share. Compiled once per ISA level, inside that level's namespace (see dispatch.hpp).
#pragma once
#include <array>
#include <cstddef>

#include "dispatch.hpp"
#include "simd/scalar.hpp"  // FUSEDOPTIM_INLINE

#ifndef FUSEDOPTIM_ISA_NS
#error "kernels are compiled per ISA level: include them from isa_kernels.cpp only"
#endif

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// How a rule's operands are stored: the compute type T (float, or double for float64 params) and
// the storage type of the param P, the grad G and the states S (float, double, bf16 or f16).
template <class T, class P, class G, class S>
struct Layout {
  using Compute = T;
  using Param = P;
  using Grad = G;
  using State = S;
};

// What an operand of storage type S is to the rule. A plain pointer, unless the operand is more
// than an array: then a type of its own, with its own load and store overloads below, and the rules
// do not change.
template <class S>
struct Operand {
  using type = S*;
  static type make(const void* p, const void* /*master*/) { return static_cast<type>(const_cast<void*>(p)); }
};

// A param stored as S (bf16 or f16) beside its float32 master copy (master weights, _storage.py):
// the rule loads the master, and its store writes the master and the master rounded to nearest
// even into the param, in the same pass.
template <class S>
struct Master {};

template <class S>
struct Mastered {
  float* master;
  S* param;
};

template <class S>
struct Operand<Master<S>> {
  using type = Mastered<S>;
  static type make(const void* p, const void* master) {
    return {static_cast<float*>(const_cast<void*>(master)), static_cast<S*>(const_cast<void*>(p))};
  }
};

// The array whose alignment a loop follows: the operand's widest stream.
template <class S>
FUSEDOPTIM_INLINE S* widest(S* p) {
  return p;
}
template <class S>
FUSEDOPTIM_INLINE float* widest(const Mastered<S>& p) {
  return p.master;
}

template <class S>
FUSEDOPTIM_INLINE void prefetch_element(const S* p, std::size_t i) {
  __builtin_prefetch(p + i);
}
template <class S>
FUSEDOPTIM_INLINE void prefetch_element(const Mastered<S>& p, std::size_t i) {
  __builtin_prefetch(p.master + i);
  __builtin_prefetch(p.param + i);
}

// One tensor's operands, as layout L stores them. A rule reads and writes them only through load
// and store, so what an operand is stored as is this type's business, not the rule's.
template <class L>
struct Operands {
  typename Operand<typename L::Param>::type param;
  typename Operand<const typename L::Grad>::type grad;
  typename Operand<typename L::State>::type state[kMaxStates];

  explicit Operands(const Tensor& t)
      : param(Operand<typename L::Param>::make(t.param, t.master)),
        grad(Operand<const typename L::Grad>::make(t.grad, nullptr)),
        state{} {
    for (int k = 0; k < kMaxStates; ++k) state[k] = Operand<typename L::State>::make(t.state[k], nullptr);
  }

  // Asks for element i of every operand the step uses (an unused state is null).
  FUSEDOPTIM_INLINE void prefetch(std::size_t i) const {
    prefetch_element(param, i);
    prefetch_element(grad, i);
    for (const auto& s : state)
      if (s) prefetch_element(s, i);
  }
};

// Loads widen exactly to the compute type V; stores round to nearest even (the vector types'
// conversions, simd/).
template <class V, class S>
FUSEDOPTIM_INLINE V load(const S* p, std::size_t i) {
  return V::load(p + i);
}

template <class V, class S>
FUSEDOPTIM_INLINE void store(S* p, std::size_t i, V v) {
  v.store(p + i);
}

template <class V, class S>
FUSEDOPTIM_INLINE V load(const Mastered<S>& p, std::size_t i) {
  return V::load(p.master + i);
}

template <class V, class S>
FUSEDOPTIM_INLINE void store(const Mastered<S>& p, std::size_t i, V v) {
  v.store(p.master + i);
  v.store(p.param + i);
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
FUSEDOPTIM_INLINE V l2_gradient(const Scalars<V, Rule::S::count>& s, const X& x, std::size_t i, V param) {
  V g = load<V>(x.grad, i);
  if constexpr (flags & Rule::F::maximize) g = -g;
  if constexpr (flags & Rule::F::weight_decay) g = g + s[Rule::S::weight_decay] * param;
  return g;
}

// Adam's two moment updates (Adam, RAdam, NAdam, LAMB), stored and returned as {exp_avg, exp_avg_sq}.
template <class Rule, class V, class X>
FUSEDOPTIM_INLINE std::array<V, 2> adam_moments(const Scalars<V, Rule::S::count>& s, const X& x, std::size_t i, V g) {
  V m = s[Rule::S::beta1] * load<V>(x.state[Rule::exp_avg], i) + s[Rule::S::one_minus_beta1] * g;
  V v = s[Rule::S::beta2] * load<V>(x.state[Rule::exp_avg_sq], i) + s[Rule::S::one_minus_beta2] * (g * g);
  store(x.state[Rule::exp_avg], i, m);
  store(x.state[Rule::exp_avg_sq], i, v);
  return {m, v};
}

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
