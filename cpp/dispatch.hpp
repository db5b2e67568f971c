// What the per-ISA kernels and the rest of the extension share: plain layouts and the table of
// compiled ISA levels. No function is defined here: everything compiled with an ISA level's flags
// lives in that level's namespace and is reached only through its table.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fusedoptim {

inline constexpr int kMaxStates = 4;
inline constexpr int kMaxScalars = 16;
inline constexpr int kNumRules = 12;
// How an operand is stored. Compute is float64 for float64 params, else float32: loads widen
// exactly, stores round to nearest even (cpp/kernels/common.hpp).
enum class Dtype : std::uint8_t { float32, float64, bfloat16, float16 };

// The 16-bit storage types: bits only; every level converts them in its own simd/ header.
struct bf16 {
  std::uint16_t bits;
};
struct f16 {
  std::uint16_t bits;
};

// A step's storage: the param's dtype, the grad's, every used state's, and whether the param has a
// float32 master copy (master weights).
struct Storage {
  Dtype param, grad, state;
  bool master = false;
  friend constexpr bool operator==(const Storage&, const Storage&) = default;
};

// The storages the kernels are compiled for natively (the hot ones: each dtype on its own, bf16
// params and grads with float32 states, and bf16 params with float32 masters beside float32 or
// bf16 states, the ZeRO-Offload case), then one catch-all layout per compute dtype that takes any
// mix the validator accepts (float32, bfloat16 and float16 operands for float32 compute; float64
// and float32 ones for float64) and every other param mode, by staging blocks through buffers of
// the compute dtype (isa_kernels.cpp). A layout is an index into every rule's kernels; each native
// one compiles every rule at every flag combination again, at every ISA level.
inline constexpr std::array<Storage, 7> kNativeLayouts{{
    {Dtype::float32, Dtype::float32, Dtype::float32},
    {Dtype::float64, Dtype::float64, Dtype::float64},
    {Dtype::bfloat16, Dtype::bfloat16, Dtype::bfloat16},
    {Dtype::float16, Dtype::float16, Dtype::float16},
    {Dtype::bfloat16, Dtype::bfloat16, Dtype::float32},
    {Dtype::bfloat16, Dtype::bfloat16, Dtype::float32, true},
    {Dtype::bfloat16, Dtype::bfloat16, Dtype::bfloat16, true},
}};
inline constexpr int kAnyFloat = kNativeLayouts.size(), kAnyDouble = kAnyFloat + 1;
inline constexpr int kNumLayouts = kAnyDouble + 1;

// How a param's stores round beyond nearest even (_storage.py states the semantics).
enum class Rounding : std::uint8_t { nearest, stochastic, kahan };

// Type-erased operands of one tensor, as the bindings hand them to the kernels.
struct Tensor {
  void* param;
  const void* grad;
  void* state[kMaxStates];  // in the rule's State order; unused slots are null
  std::size_t size;
  // What each operand is stored as (read by the catch-all layouts; unused slots' are ignored).
  Dtype param_dtype, grad_dtype, state_dtype[kMaxStates];
  // What a param is beyond its storage: read by the catch-all layouts, which step every tensor that
  // sets any of these (modes(), dispatch.cpp's layout_of) but a master alone over a native master layout's.
  void* master = nullptr;        // master weights: the float32 copy the rule steps; the param gets it rounded
  void* compensation = nullptr;  // Rounding::kahan: what the param cannot hold, stored as the param is
  Rounding rounding = Rounding::nearest;
  std::uint32_t key = 0;    // Rounding::stochastic: the hash key of (seed, step, param index)
  double grad_scale = 1.0;  // grads are divided by it as they are loaded (rounded to the compute dtype)

  bool modes() const { return master || rounding != Rounding::nearest || grad_scale != 1.0; }
  bool modes_but_master() const { return rounding != Rounding::nearest || grad_scale != 1.0; }
};

// Elements [begin, end) of one item (a Tensor, a Grad, ...): what a thread steps in one call
// (chunks.hpp cuts a step into pieces).
template <class Item>
struct Piece {
  const Item* item;
  std::size_t begin, end;
};

// Steps elements [begin, end) of one tensor. `next` is the piece the calling thread steps after
// this one, or null: the kernel prefetches its first elements while it finishes this range, so
// that a list of small tensors streams in as one array does.
using RangeFn = void (*)(const Tensor&, std::size_t begin, std::size_t end, const double* scalars, unsigned flags,
                         const Piece<Tensor>* next);
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
  std::array<RangeFn, kNumLayouts> range;           // by layout (kNativeLayouts, kAnyFloat, kAnyDouble)
  std::array<FirstPassFn, kNumLayouts> first_pass;  // null for one-pass rules
  BetweenPassesFn between_passes;                  // null for one-pass rules
};

// unscale_and_check_ over elements [begin, end) of a grad stored as `dtype`: each multiplied by
// inv_scale (rounded to the compute dtype) and stored back; returns whether any stored result is
// Inf or NaN.
struct Grad {
  void* data;
  std::size_t size;
  Dtype dtype;
};
using UnscaleFn = bool (*)(const Grad&, std::size_t begin, std::size_t end, double inv_scale);

struct IsaTable {
  const char* name;
  std::array<RuleKernels, kNumRules> rules;
  UnscaleFn unscale;
};

// How far ahead of a vector loop its operands are prefetched, in elements: the rules' loops and the
// roof's, so that the roof stays what no step can beat. The hardware prefetchers alone left
// all-bfloat16 Adam at 16M elements (Sapphire Rapids, one thread) at the sum of its compute and
// memory times, 13.4 ms against a 7.0 ms roof: a loop held up by its divides did not keep enough
// lines in flight. 512 ahead took it to 8.7 ms; 256 and 1024 to 9.4 and 9.0.
inline constexpr std::size_t kPrefetchAhead = 512;

// The bandwidth roof's operands (bench only): fp32 arrays of `size` elements, read and written once each.
// Up to two per operand: bench.py streams a float32 operand beside bfloat16 ones as two streams.
inline constexpr int kMaxStreams = 2 * (kMaxStates + 2);
struct Streams {
  const float* read[kMaxStreams];
  float* write[kMaxStreams];
  int reads, writes;  // 1..kMaxStreams each
  std::size_t size;
};
using RoofFn = void (*)(const Streams&, std::size_t begin, std::size_t end);

// The layout that steps a tensor stored as `t` says, in the state slots of `used_states` (bit k:
// slot k): its native layout if it has one and sets no modes() but a master (else -1 when
// `native_only`), else its compute dtype's catch-all. The dtypes must be a combination the validator accepts (_validate.operands).
int layout_of(const Tensor& t, unsigned used_states, bool native_only);
// The size in bytes of an element stored as `dtype`.
std::size_t itemsize(Dtype dtype);

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
