#pragma once
// y (n, out) = x (n, in) · Wᵀ for packed weights that can only be read a row at a time: the caller's decode_row(o, dst)
// writes row o of W (in floats) into dst. The whole matrix is never held in f32; rows are decoded into per-thread
// buffers and used while they are hot. Shared by the quantized formats (NbitLinear, BinaryLinear, VqLinear).
#include "engine/cpu/gemm.h"
#include "engine/cpu/ops.h"

#include <algorithm>
#include <cstdint>
#include <omp.h>
#include <vector>

namespace moebius::cpu {

// decode_row must be callable concurrently from several threads for different rows.
template <class DecodeRow>
void row_decoded_forward(const float* x, int n, int in, int out, float* y, const DecodeRow& decode_row) {
    const bool nested  = omp_in_parallel();
    const int  threads = nested ? 1 : omp_get_max_threads();
    // Same fork threshold as cpu::matmul_wt: below ~2^18 multiply-adds forking costs more than it saves.
    const bool big = (int64_t)n * out * in >= (1 << 18);
    if (n <= 4) {
        // GEMV regime: decode one row into an L1-sized buffer, use it for all n tokens, move on. cpu::dot is
        // matmul_wt's GEMV dot, so outputs equal DenseLinear(dequantize()) bit for bit.
#pragma omp parallel num_threads(threads) if (threads > 1 && big)
        {
            std::vector<float> row(in); // (in)
#pragma omp for schedule(static)
            for (int o = 0; o < out; ++o) {
                decode_row(o, row.data());
                for (int t = 0; t < n; ++t) y[(int64_t)t * out + o] = dot(x + (int64_t)t * in, row.data(), in);
            }
        }
        return;
    }
    // GEMM regime: each thread owns a contiguous range of whole tiles (~128 KiB of f32 each), decodes it tile by
    // tile and lets Eigen multiply the tile. The tiles sit where a single thread puts them, so the result does not
    // depend on the thread count.
    const int tile   = std::max(8, std::min(out, (32 * 1024) / std::max(1, in)));
    const int tiles  = (out + tile - 1) / tile;
    const int chunks = big ? std::max(1, std::min(threads, std::min(tiles, out / 16))) : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1)
    for (int c = 0; c < chunks; ++c) {
        const int o0 = std::min(out, (int)((int64_t)tiles * c / chunks) * tile);
        const int o1 = std::min(out, (int)((int64_t)tiles * (c + 1) / chunks) * tile);
        std::vector<float> buf((size_t)tile * in); // (tile, in)
        for (int t0 = o0; t0 < o1; t0 += tile) {
            const int rows = std::min(tile, o1 - t0);
            for (int r = 0; r < rows; ++r) decode_row(t0 + r, buf.data() + (int64_t)r * in);
            gemm(n, rows, in, x, in, false, buf.data(), in, true, y + t0, out, false);
        }
    }
}

} // namespace moebius::cpu
