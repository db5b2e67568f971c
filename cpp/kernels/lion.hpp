#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// Lion (Chen et al., 2023) with decoupled weight decay in the published reference's op order:
// param is scaled by decay_factor = 1 - lr * weight_decay before the signed step.
struct Lion {
  static constexpr const char* name = "lion";
  struct S { enum { lr, beta1, one_minus_beta1, beta2, one_minus_beta2, decay_factor, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { exp_avg, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = load<V>(x.grad, i);
    if constexpr (flags & F::maximize) g = -g;
    V m = load<V>(x.state[exp_avg], i);
    V c = s[S::beta1] * m + s[S::one_minus_beta1] * g;
    if constexpr (flags & F::weight_decay) p = p * s[S::decay_factor];
    p = p - s[S::lr] * sign(c);
    store(x.param, i, p);
    m = s[S::beta2] * m + s[S::one_minus_beta2] * g;
    store(x.state[exp_avg], i, m);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
