// The table of compiled ISA variants and the choice among them.
#pragma once
#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "kernels/rules.hpp"

namespace fusedoptim {

// Steps elements [begin, end) of one tensor.
using KernelFn = void (*)(const Tensor&, std::size_t begin, std::size_t end, const double* scalars, unsigned flags);

// Pass 1 of a two-pass rule (kernels/reduction.hpp) over blocks [first, last) of one tensor:
// block b's k-th sum goes to block_sums[k * num_blocks(size) + b]. Pass 2 is the KernelFn.
using ReduceFn = void (*)(const Tensor&, std::size_t first, std::size_t last, const double* scalars, unsigned flags,
                          double* block_sums);

// The bandwidth roof's operands: fp32 arrays of `size` elements, read and written once each.
inline constexpr int kMaxStreams = kMaxStates + 2;
struct Streams {
  const float* read[kMaxStreams];
  float* write[kMaxStreams];
  int reads, writes;  // 1..kMaxStreams each
  std::size_t size;
};
using RoofFn = void (*)(const Streams&, std::size_t begin, std::size_t end);

struct IsaTable {
  const char* name;
  std::array<std::array<KernelFn, 2>, kNumRules> kernels;  // [rule][dtype]
  std::array<std::array<ReduceFn, 2>, kNumRules> reducers;  // [rule][dtype], null for one-pass rules
  RoofFn roof;
};

// ISA levels compiled into this build, lowest first.
const std::vector<const IsaTable*>& compiled_isas();
// Whether the running CPU (and OS) can execute a level.
bool cpu_supports(const IsaTable& isa);
// The level in use: the best the CPU supports, unless set_isa chose another (fusedoptim does at
// import when $FUSEDOPTIM_ISA is set).
const IsaTable& active_isa();
// Selects a level by name; throws std::invalid_argument for unknown or unsupported ones.
void set_isa(const std::string& name);

}  // namespace fusedoptim
