#include "dispatch.hpp"

#include <atomic>
#include <stdexcept>

namespace fusedoptim {
namespace scalar { extern const IsaTable table; extern const RoofFn roof; }
#if defined(FUSEDOPTIM_HAVE_X86)
namespace avx2 { extern const IsaTable table; extern const RoofFn roof; }
namespace avx512 { extern const IsaTable table; extern const RoofFn roof; }
#endif

const std::vector<const IsaTable*>& compiled_isas() {
#if defined(FUSEDOPTIM_HAVE_X86)
  static const std::vector<const IsaTable*> isas{&scalar::table, &avx2::table, &avx512::table};
#else
  static const std::vector<const IsaTable*> isas{&scalar::table};
#endif
  return isas;
}

bool cpu_supports(const IsaTable& isa) {
#if defined(FUSEDOPTIM_HAVE_X86)
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV). The
  // level is first chosen by a static initializer, which may run before libgcc's own.
  __builtin_cpu_init();
  if (&isa == &avx2::table) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if (&isa == &avx512::table)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#endif
  return &isa == &scalar::table;
}

namespace {

const IsaTable* find_supported(const std::string& name) {
  for (const IsaTable* isa : compiled_isas())
    if (name == isa->name) {
      if (!cpu_supports(*isa)) throw std::invalid_argument("this CPU does not support ISA level '" + name + "'");
      return isa;
    }
  std::string known;
  for (const IsaTable* isa : compiled_isas()) known += std::string(known.empty() ? "" : ", ") + isa->name;
  throw std::invalid_argument("unknown ISA level '" + name + "'; compiled: " + known);
}

const IsaTable* best_supported() {
  const IsaTable* best = nullptr;
  for (const IsaTable* isa : compiled_isas())
    if (cpu_supports(*isa)) best = isa;
  return best;
}

// Chosen at load, so no step ever races a first-use initialization; atomic, so a step on
// another thread reads either the old level or the new one, never a torn pointer.
std::atomic<const IsaTable*> active{best_supported()};

}  // namespace

const IsaTable& active_isa() { return *active.load(std::memory_order_relaxed); }

RoofFn active_roof() {
  const IsaTable* isa = &active_isa();
#if defined(FUSEDOPTIM_HAVE_X86)
  if (isa == &avx2::table) return avx2::roof;
  if (isa == &avx512::table) return avx512::roof;
#endif
  return scalar::roof;
}

int layout_of(const Tensor& t, unsigned used_states, bool native_only) {
  Dtype state = t.param_dtype;  // a step that uses no state matches its param's native layout
  bool uniform = true, any = false;
  for (int k = 0; k < kMaxStates; ++k)
    if (used_states >> k & 1) {
      if (any && t.state_dtype[k] != state) uniform = false;
      state = t.state_dtype[k], any = true;
    }
  if (uniform)
    for (std::size_t k = 0; k < kNativeLayouts.size(); ++k)
      if (kNativeLayouts[k] == Storage{t.param_dtype, t.grad_dtype, state}) return static_cast<int>(k);
  if (native_only) return -1;
  return t.param_dtype == Dtype::float64 ? kAnyDouble : kAnyFloat;
}

std::size_t itemsize(Dtype dtype) {
  switch (dtype) {
    case Dtype::float64: return 8;
    case Dtype::float32: return 4;
    default: return 2;
  }
}

void set_isa(const std::string& name) { active.store(find_supported(name), std::memory_order_relaxed); }

}  // namespace fusedoptim
