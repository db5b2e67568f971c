#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// RAdam, rectified Adam (torch.optim.RAdam). The host decides per step whether the variance
// is tractable (rho_t > 5: `rectified`) and folds lr, the rectification term and both bias
// corrections into step_size.
struct RAdam {
  static constexpr const char* name = "radam";
  struct S {
    enum { beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, eps, weight_decay, one_minus_lr_weight_decay,
           count };
  };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2, decoupled_weight_decay = 4, rectified = 8 };
    static constexpr int count = 4;
  };
  enum State { exp_avg, exp_avg_sq, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<RAdam, flags>(s, x, i, p);
    if constexpr (flags & F::decoupled_weight_decay) p = p * s[S::one_minus_lr_weight_decay];
    auto [m, v] = adam_moments<RAdam>(s, x, i, g);
    if constexpr (flags & F::rectified) p = p - s[S::step_size] * (m / (sqrt(v) + s[S::eps]));
    else p = p - s[S::step_size] * m;
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
