#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// Adamax, Adam with the infinity norm (torch.optim.Adamax); the bias correction of the
// first moment lives in the host scalar clr = lr / (1 - beta1^t).
struct Adamax {
  static constexpr const char* name = "adamax";
  struct S { enum { beta1, one_minus_beta1, beta2, eps, clr, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { exp_avg, exp_inf, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<Adamax, flags>(s, x, i, p);
    V m = s[S::beta1] * load<V>(x.state[exp_avg], i) + s[S::one_minus_beta1] * g;
    V u = maximum(s[S::beta2] * load<V>(x.state[exp_inf], i), abs(g) + s[S::eps]);
    store(x.state[exp_avg], i, m);
    store(x.state[exp_inf], i, u);
    p = p - s[S::clr] * (m / u);
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
