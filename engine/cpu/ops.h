#pragma once
// CPU reference kernels, f32. Buffers are row-major; shapes in comments as (rows, cols).
#include <cstdint>

namespace moebius::cpu {

// Dot product with eight independent accumulators (vectorised, pipelined FMAs); the summation order depends only on
// n, so results are reproducible whatever the addresses.
inline float dot(const float* a, const float* b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int   i      = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// y (n, out) = x (n, in) · Wᵀ, W (out, in). Parallel over output rows; single-threaded inside an enclosing
// OpenMP parallel region (nested parallelism off), which is how experts run concurrently.
void matmul_wt(const float* x, int n, int in, const float* w, int out, float* y);
// y (n, out) += bias (out) per row.
void add_bias(float* y, int n, int out, const float* bias);
// RMSNorm of each of n rows of width d: y = w ⊙ x / sqrt(mean(x²) + eps). In place allowed.
void rmsnorm(const float* x, int n, int d, const float* w, float eps, float* y);
// Rotate-half (NeoX/HF) RoPE applied to n rows of n_heads heads of head_dim, row stride `stride` floats,
// positions pos[i]. inv_freq (head_dim/2).
void rope(float* x, int n, int n_heads, int head_dim, int stride, const int32_t* pos, const float* inv_freq);
// In-place softmax of a row of length d, numerically stable.
void softmax(float* x, int d);
// In-place x <- softmax(scale·x) for attention rows: vectorised exp, f32 sum; bitwise reproducible for a given d.
void softmax_scaled(float* x, int d, float scale);
// h (n, d) = silu(g) ⊙ u, g and u (n, d).
void silu_mul(const float* g, const float* u, int n, int d, float* h);
float sigmoid(float x);

} // namespace moebius::cpu
