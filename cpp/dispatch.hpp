// What the per-ISA kernels and the rest of the extension share: plain layouts and the table of
// compiled ISA levels. No function is defined here: everything compiled with an ISA level's flags
// lives in that level's namespace and is reached only through its table.
#pragma once
#include <array>
#include <cstddef>
#include <string>
#include <vector>

namespace fusedoptim {

inline constexpr int kMaxStates = 4;
inline constexpr int kMaxScalars = 16;
inline constexpr int kNumRules = 12;
// Storage dtypes a step's operands may have, by index: float32, float64.
inline constexpr int kNumDtypes = 2;

// Type-erased operands of one tensor, as the bindings hand them to the kernels.
struct Tensor {
  void* param;
  const void* grad;
  void* state[kMaxStates];  // in the rule's State order; unused slots are null
  std::size_t size;
};

// Steps elements [begin, end) of one tensor.
using RangeFn = void (*)(const Tensor&, std::size_t begin, std::size_t end, const double* scalars, unsigned flags);
// Pass 1 of a two-pass rule (reduction.hpp) over blocks [first, last) of one tensor: block b's
// k-th sum goes to block_sums[k * stride + b]. Pass 2 is the RangeFn.
using FirstPassFn = void (*)(const Tensor&, std::size_t first, std::size_t last, const double* scalars, unsigned flags,
                             double* block_sums, std::size_t stride);
// A two-pass rule's per-tensor scalars, from the tensor's sums, after the planned ones.
using BetweenPassesFn = void (*)(const double* sums, double* scalars);

// One rule's kernels at one ISA level, with the layout the host must follow: how many scalars it
// takes (num_planned from the plan, the rest per tensor), flags and state slots.
struct RuleKernels {
  const char* name;
  int num_scalars, num_planned, num_flags, num_states, num_sums;  // num_sums is 0 for one-pass rules
  std::array<RangeFn, kNumDtypes> range;
  std::array<FirstPassFn, kNumDtypes> first_pass;  // null for one-pass rules
  BetweenPassesFn between_passes;                  // null for one-pass rules
};

struct IsaTable {
  const char* name;
  std::array<RuleKernels, kNumRules> rules;
};

// The bandwidth roof's operands (bench only): fp32 arrays of `size` elements, read and written once each.
inline constexpr int kMaxStreams = kMaxStates + 2;
struct Streams {
  const float* read[kMaxStreams];
  float* write[kMaxStreams];
  int reads, writes;  // 1..kMaxStreams each
  std::size_t size;
};
using RoofFn = void (*)(const Streams&, std::size_t begin, std::size_t end);

// ISA levels compiled into this build, lowest first.
const std::vector<const IsaTable*>& compiled_isas();
// Whether the running CPU (and OS) can execute a level.
bool cpu_supports(const IsaTable& isa);
// The level in use: the best the CPU supports, unless set_isa chose another (fusedoptim does at
// import when $FUSEDOPTIM_ISA is set).
const IsaTable& active_isa();
// The roof kernel built for the level in use.
RoofFn active_roof();
// Selects a level by name; throws std::invalid_argument for unknown or unsupported ones.
void set_isa(const std::string& name);

}  // namespace fusedoptim
