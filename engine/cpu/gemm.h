#pragma once
// The f32 GEMM under the CPU forward, backward and calibration statistics: row-major operands with leading
// dimensions, Eigen's blocked kernels instantiated once (gemm_kernel.cpp), not in every file that multiplies.
// The sanitizer build compiles gemm_kernel.cpp without instrumentation (Eigen's kernels run 10–60× slower under
// ASan + UBSan, most of the sanitized test time); gemm() itself is inline, so it runs instrumented in the caller and
// touches the first and last element of every operand: AddressSanitizer still catches a wrong extent or stride.
#include <cstdint>

namespace moebius::cpu {

// Splitting C's columns (W's rows when op(B) = Wᵀ) at multiples of this keeps every output's summation order as in
// the unsplit product (Eigen's register tiles are 3 SIMD vectors of floats: 12, 24 or 48 wide for SSE/NEON, AVX2,
// AVX-512), so products cut into per-thread ranges give the same bits at any thread count.
constexpr int k_gemm_row_align = 48;

// C (m, n) = op(A) · op(B), or C += op(A) · op(B) with accumulate. op(A) (m, k) is A (m rows, lda apart) or, with
// trans_a, the transpose of A (k rows, lda apart); op(B) (k, n) is B (k rows, ldb apart) or, with trans_b, the
// transpose of B (n rows, ldb apart). C has m rows, ldc apart. Nothing is read or written when m, n or k is 0.
void gemm_kernel(int m, int n, int k, const float* A, int lda, bool trans_a, const float* B, int ldb, bool trans_b,
                 float* C, int ldc, bool accumulate);

inline void gemm(int m, int n, int k, const float* A, int lda, bool trans_a, const float* B, int ldb, bool trans_b,
                 float* C, int ldc, bool accumulate) {
    if (m <= 0 || n <= 0 || k <= 0) return;
#if defined(__SANITIZE_ADDRESS__)
    auto last = [](int rows, int cols, int ld) { return (int64_t)(rows - 1) * ld + cols - 1; };
    volatile float probe = A[0] + A[trans_a ? last(k, m, lda) : last(m, k, lda)] + B[0] +
                           B[trans_b ? last(n, k, ldb) : last(k, n, ldb)];
    C[0] = C[0];
    C[last(m, n, ldc)] = C[last(m, n, ldc)];
    (void)probe;
#endif
    gemm_kernel(m, n, k, A, lda, trans_a, B, ldb, trans_b, C, ldc, accumulate);
}

} // namespace moebius::cpu
