#include "dispatch.hpp"

#include <atomic>
#include <stdexcept>

namespace fusedoptim {
namespace scalar { extern const IsaTable table; extern const RoofFn roof; }
#if defined(FUSEDOPTIM_HAVE_X86)
namespace avx2 { extern const IsaTable table; extern const RoofFn roof; }
namespace avx512 { extern const IsaTable table; extern const RoofFn roof; }
#if defined(FUSEDOPTIM_HAVE_AVX512BF16)
namespace avx512bf16 { extern const IsaTable table; extern const RoofFn roof; }
#endif
#endif

namespace {

// A compiled level: its kernels, its roof, and whether the running CPU (and OS) can execute it.
struct Level {
  const IsaTable* table;
  const RoofFn* roof;
  bool (*supported)();
};

// Every level compiled into this build, lowest first. __builtin_cpu_supports also checks that the
// OS saves the wide registers (XGETBV). The level is first chosen by a static initializer, which
// may run before libgcc's own: hence __builtin_cpu_init.
const std::vector<Level>& levels() {
  static const std::vector<Level> compiled{
      {&scalar::table, &scalar::roof, [] { return true; }},
#if defined(FUSEDOPTIM_HAVE_X86)
      {&avx2::table, &avx2::roof,
       [] {
         __builtin_cpu_init();
         return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
       }},
      {&avx512::table, &avx512::roof,
       [] {
         __builtin_cpu_init();
         return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
       }},
#if defined(FUSEDOPTIM_HAVE_AVX512BF16)
      {&avx512bf16::table, &avx512bf16::roof,
       [] {
         __builtin_cpu_init();
         return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                __builtin_cpu_supports("avx512bf16");
       }},
#endif
#endif
  };
  return compiled;
}

const Level& level_of(const IsaTable& isa) {
  for (const Level& level : levels())
    if (level.table == &isa) return level;
  throw std::logic_error("an ISA table that no level owns");
}

}  // namespace

const std::vector<const IsaTable*>& compiled_isas() {
  static const std::vector<const IsaTable*> isas = [] {
    std::vector<const IsaTable*> tables;
    for (const Level& level : levels()) tables.push_back(level.table);
    return tables;
  }();
  return isas;
}

bool cpu_supports(const IsaTable& isa) { return level_of(isa).supported(); }

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

RoofFn active_roof() { return *level_of(active_isa()).roof; }

int layout_of(const Tensor& t, unsigned used_states, bool native_only) {
  Dtype state = t.param_dtype;  // a step that uses no state matches its param's native layout
  bool uniform = true, any = false;
  for (int k = 0; k < kMaxStates; ++k)
    if (used_states >> k & 1) {
      if (any && t.state_dtype[k] != state) uniform = false;
      state = t.state_dtype[k], any = true;
    }
  if (uniform && !t.modes_but_master())
    for (std::size_t k = 0; k < kNativeLayouts.size(); ++k)
      if (kNativeLayouts[k] == Storage{t.param_dtype, t.grad_dtype, state, t.master != nullptr})
        return static_cast<int>(k);
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
