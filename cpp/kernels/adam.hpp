#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// Adam with L2 or decoupled (AdamW) weight decay and AMSGrad (torch.optim.Adam, AdamW);
// bias correction lives in the host scalars step_size = lr / (1 - beta1^t) and
// 1 / sqrt(1 - beta2^t).
struct Adam {
  static constexpr const char* name = "adam";
  struct S {
    enum { beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, inv_bias_correction2_sqrt, eps, weight_decay,
           one_minus_lr_weight_decay, count };
  };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, amsgrad = 4, decoupled_weight_decay = 8 };
    static constexpr int count = 4;
  };
  enum State { exp_avg, exp_avg_sq, max_exp_avg_sq, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<Adam, flags>(s, x, i, p);
    if constexpr (flags & F::decoupled_weight_decay) p = p * s[S::one_minus_lr_weight_decay];
    auto [m, v] = adam_moments<Adam>(s, x, i, g);
    if constexpr (flags & F::amsgrad) {
      v = maximum(load<V>(x.state[max_exp_avg_sq], i), v);
      store(x.state[max_exp_avg_sq], i, v);
    }
    V denom = sqrt(v) * s[S::inv_bias_correction2_sqrt] + s[S::eps];
    p = p - s[S::step_size] * (m / denom);
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
