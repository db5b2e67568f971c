#pragma once
#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// Adadelta (torch.optim.Adadelta): the step is scaled by the RMS of past steps over the RMS
// of past gradients, then by lr (1 in the paper).
struct Adadelta {
  static constexpr const char* name = "adadelta";
  struct S { enum { lr, rho, one_minus_rho, eps, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { square_avg, acc_delta, num_states };

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = l2_gradient<Adadelta, flags>(s, x, i, p);
    V sq = s[S::rho] * load<V>(x.state[square_avg], i) + s[S::one_minus_rho] * (g * g);
    store(x.state[square_avg], i, sq);
    V acc = load<V>(x.state[acc_delta], i);
    V delta = sqrt(acc + s[S::eps]) / sqrt(sq + s[S::eps]) * g;
    acc = s[S::rho] * acc + s[S::one_minus_rho] * (delta * delta);
    store(x.state[acc_delta], i, acc);
    p = p - s[S::lr] * delta;
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
