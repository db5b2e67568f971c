#pragma once
#include "rule.hpp"

namespace fusedoptim {

// Adadelta (torch.optim.Adadelta): the step is scaled by the RMS of past steps over the RMS
// of past gradients, then by lr (1 in the paper).
struct Adadelta {
  static constexpr const char* name = "adadelta";
  struct S { enum { lr, rho, one_minus_rho, eps, weight_decay, count }; };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { square_avg, acc_delta };

  template <unsigned flags, class V>
  static void update(const Scalars<V, S::count>& s, const Operands<typename V::value_type>& x, std::size_t i) {
    V p = V::load(x.param + i);
    V g = l2_gradient<Adadelta, flags>(s, x, i, p);
    V sq = s[S::rho] * V::load(x.state[square_avg] + i) + s[S::one_minus_rho] * (g * g);
    sq.store(x.state[square_avg] + i);
    V acc = V::load(x.state[acc_delta] + i);
    V delta = sqrt(acc + s[S::eps]) / sqrt(sq + s[S::eps]) * g;
    acc = s[S::rho] * acc + s[S::one_minus_rho] * (delta * delta);
    acc.store(x.state[acc_delta] + i);
    p = p - s[S::lr] * delta;
    p.store(x.param + i);
  }
};

}  // namespace fusedoptim
