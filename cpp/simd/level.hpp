// The vector type of the ISA level a translation unit is compiled for: CMake compiles each
// per-level source once per level, defining FUSEDOPTIM_AVX512 or FUSEDOPTIM_AVX2 (the scalar
// level defines neither) and FUSEDOPTIM_ISA_NS, the level's namespace.
#pragma once
#include "scalar.hpp"
#if defined(FUSEDOPTIM_AVX512)
#include "avx512.hpp"
#elif defined(FUSEDOPTIM_AVX2)
#include "avx2.hpp"
#endif

namespace fusedoptim::FUSEDOPTIM_ISA_NS {

#if defined(FUSEDOPTIM_AVX512) || defined(FUSEDOPTIM_AVX2)
template <class T>
using Wide = Vec<T>;
#else
template <class T>
using Wide = Scalar<T>;
#endif

}  // namespace fusedoptim::FUSEDOPTIM_ISA_NS
