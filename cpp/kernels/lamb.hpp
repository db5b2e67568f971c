#pragma once
#include <array>
#include <cmath>

#include "common.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

// LAMB (You et al., 2019): Adam's direction u, with decoupled weight decay inside it, scaled per
// tensor by the trust ratio ||param|| / ||u||. Two passes (see ../reduction.hpp): the first updates
// the moments and sums the squares of param and u; the second recomputes u from the stored
// moments (the same u, unless they are stored in a narrower dtype than they are computed in) and
// the still unchanged param, and steps param.
struct Lamb {
  static constexpr const char* name = "lamb";
  struct S {
    enum {
      beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps,
      weight_decay, lr, trust, count
    };
    static constexpr int planned = trust;
  };
  struct F {
    enum : unsigned { maximize = 1, weight_decay = 2 };
    static constexpr int count = 2;
  };
  enum State { exp_avg, exp_avg_sq, num_states };
  enum Sum { param_sq, update_sq, num_sums };

  // In double, as reference._trust_ratio: a zero norm (a fresh or zero tensor, a zero update)
  // leaves the step unscaled; NaN and Inf propagate.
  static void between_passes(const double* sums, double* s) {
    const double param_norm = std::sqrt(sums[param_sq]), update_norm = std::sqrt(sums[update_sq]);
    s[S::trust] = param_norm != 0 && update_norm != 0 ? param_norm / update_norm : 1.0;
  }

  // Adam's denominator as in adam.hpp; the first bias correction scales the ratio.
  template <unsigned flags, class V>
  static V direction(const Scalars<V, S::count>& s, V p, V m, V v) {
    V u = s[S::inv_bias_correction1] * (m / (sqrt(v) * s[S::inv_bias_correction2_sqrt] + s[S::eps]));
    if constexpr (flags & F::weight_decay) u = u + s[S::weight_decay] * p;
    return u;
  }

  template <unsigned flags, class V, class X>
  static std::array<V, num_sums> first_pass(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V g = load<V>(x.grad, i);
    if constexpr (flags & F::maximize) g = -g;
    auto [m, v] = adam_moments<Lamb>(s, x, i, g);
    return {p, direction<flags>(s, p, m, v)};
  }

  template <unsigned flags, class V, class X>
  static void update(const Scalars<V, S::count>& s, const X& x, std::size_t i) {
    V p = load<V>(x.param, i);
    V u = direction<flags>(s, p, load<V>(x.state[exp_avg], i), load<V>(x.state[exp_avg_sq], i));
    p = p - (s[S::lr] * s[S::trust]) * u;
    store(x.param, i, p);
  }
};

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
