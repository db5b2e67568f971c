// The floating-point environment of the contract (DESIGN.md, point 7) for one thread's work.
#pragma once

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#else
#include <cfenv>
#endif

namespace fusedoptim {

// For its lifetime, this thread rounds to nearest with no flush-to-zero and no
// denormals-are-zero, whatever the caller had set (torch.set_flush_denormal(True) sets both);
// the caller's environment, flags included, comes back on destruction. Every thread of a step
// holds one, so a step's bits never depend on which thread ran which chunk, nor on the caller.
class ContractFpEnv {
 public:
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
  // SSE does all of the kernels' arithmetic; x87 is never used. 0x1f80: every exception
  // masked, round to nearest, FTZ (bit 15) and DAZ (bit 6) clear, no flags raised.
  ContractFpEnv() : saved_(_mm_getcsr()) { _mm_setcsr(kContract); }
  ~ContractFpEnv() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kContract = 0x1f80;
  unsigned saved_;
#else
  ContractFpEnv() {
    std::fegetenv(&saved_);
    std::fesetenv(FE_DFL_ENV);
  }
  ~ContractFpEnv() { std::fesetenv(&saved_); }

 private:
  std::fenv_t saved_;
#endif

 public:
  ContractFpEnv(const ContractFpEnv&) = delete;
  ContractFpEnv& operator=(const ContractFpEnv&) = delete;
};

}  // namespace fusedoptim
