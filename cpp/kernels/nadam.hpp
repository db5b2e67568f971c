#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// NAdam, Adam with Nesterov momentum (torch.optim.NAdam). The momentum schedule mu_t, the
// running product of the mu's and lr live in the host scalars grad_step and exp_avg_step.
struct NAdam {
  static constexpr const char* name = "nadam";
  struct S {
    enum { beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2, grad_step, exp_avg_step, eps,
           weight_decay, one_minus_lr_weight_decay, count };
  };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, decoupled_weight_decay = 4 };
    static constexpr int count = 3;
  };
  enum State { exp_avg, exp_avg_sq, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<NAdam, flags>(s, x, i, p);
    if constexpr (flags & F::decoupled_weight_decay) p = p * s[S::one_minus_lr_weight_decay];
    auto [m, v] = adam_moments<NAdam>(s, x, i, g);
    V denom = sqrt(v / s[S::bias_correction2]) + s[S::eps];
    // Two steps, each rounded, as torch takes them.
    p = p - s[S::grad_step] * (g / denom);
    p = p - s[S::exp_avg_step] * (m / denom);
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
