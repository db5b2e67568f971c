// The one list of rules. Its order is the order of every dispatch table.
#pragma once
#include <tuple>

#include "adadelta.hpp"
#include "adagrad.hpp"
#include "adam.hpp"
#include "adamax.hpp"
#include "asgd.hpp"
#include "lamb.hpp"
#include "lion.hpp"
#include "nadam.hpp"
#include "radam.hpp"
#include "rmsprop.hpp"
#include "rprop.hpp"
#include "sgd.hpp"

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

using Rules = std::tuple<Sgd, Adagrad, RMSprop, Adam, Adamax, Adadelta, RAdam, NAdam, Lion, Lamb, Asgd, Rprop>;
static_assert(std::tuple_size_v<Rules> == kNumRules);

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
