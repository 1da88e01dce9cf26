#include "engine/cpu/ops.h"

#include "engine/cpu/gemm.h"
#include "engine/cpu/packet_map.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <omp.h>

namespace moebius::cpu {



void matmul_wt(const float* x, int n, int in, const float* w, int out, float* y) {
    const bool nested  = omp_in_parallel();
    const int  threads = nested ? 1 : omp_get_max_threads();
    // Below ~2^18 multiply-adds a product takes tens of microseconds on one core; forking costs a few microseconds on
    // an idle machine but a scheduler time slice (milliseconds) when other processes keep the cores busy.
    const bool big = (int64_t)n * out * in >= (1 << 18);
    if (n <= 4) {
        // GEMV regime: stream W once, all n tokens per row.
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && big)
        for (int o = 0; o < out; ++o) {
            const float* wr = w + (int64_t)o * in;
            for (int t = 0; t < n; ++t) y[(int64_t)t * out + o] = dot(x + (int64_t)t * in, wr, in);
        }
        return;
    }
    // GEMM regime: split W's rows into one contiguous chunk per thread; Eigen does the blocking inside a chunk.
    // Chunks start at multiples of k_gemm_row_align, where Eigen's micro-kernel tiles start in the unsplit product
    // too, so every output is summed as in one single-threaded call: the result does not depend on the thread count.
    const int units  = (out + k_gemm_row_align - 1) / k_gemm_row_align;
    const int chunks = big ? std::max(1, std::min(threads, std::min(units, out / 16))) : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (chunks > 1)
    for (int c = 0; c < chunks; ++c) {
        const int o0 = std::min(out, (int)((int64_t)units * c / chunks) * k_gemm_row_align);
        const int o1 = std::min(out, (int)((int64_t)units * (c + 1) / chunks) * k_gemm_row_align);
        if (o1 <= o0) continue;
        gemm(n, o1 - o0, in, x, in, false, w + (int64_t)o0 * in, in, true, y + o0, out, false);
    }
}

void add_bias(float* y, int n, int out, const float* bias) {
    for (int t = 0; t < n; ++t)
        for (int o = 0; o < out; ++o) y[(int64_t)t * out + o] += bias[o];
}

void rmsnorm(const float* x, int n, int d, const float* w, float eps, float* y) {
    for (int t = 0; t < n; ++t) {
        const float* xr = x + (int64_t)t * d;
        float*       yr = y + (int64_t)t * d;
        double       ss = 0;
        for (int i = 0; i < d; ++i) ss += (double)xr[i] * xr[i];
        float inv = 1.0f / std::sqrt((float)(ss / d) + eps);
        for (int i = 0; i < d; ++i) yr[i] = w[i] * (xr[i] * inv);
    }
}

void rope(float* x, int n, int n_heads, int head_dim, int stride, const int32_t* pos, const float* inv_freq) {
    const int half = head_dim / 2;
    for (int t = 0; t < n; ++t) {
        for (int i = 0; i < half; ++i) {
            // The angle is formed in f32 as transformers does (the model was trained with that rounding).
            float a = (float)pos[t] * inv_freq[i];
            float  c = (float)std::cos(a), s = (float)std::sin(a);
            for (int h = 0; h < n_heads; ++h) {
                float* v  = x + (int64_t)t * stride + (int64_t)h * head_dim;
                float  x1 = v[i], x2 = v[i + half];
                v[i]        = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

void softmax(float* x, int d) {
    float m = x[0];
    for (int i = 1; i < d; ++i) m = std::max(m, x[i]);
    double s = 0;
    for (int i = 0; i < d; ++i) {
        x[i] = std::exp(x[i] - m);
        s += x[i];
    }
    float inv = (float)(1.0 / s);
    for (int i = 0; i < d; ++i) x[i] *= inv;
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

using namespace simd;

void silu_mul(const float* g, const float* u, int n, int d, float* h) {
    const Packet one = ei::pset1<Packet>(1.0f);
    packet_map<2, 1>({g, u}, {h}, (int64_t)n * d, 0.f, [&](const Packet* x, Packet* y) {
        y[0] = ei::pmul(ei::pdiv(x[0], ei::padd(one, ei::pexp(ei::pnegate(x[0])))), x[1]); // silu(g) · u
    });
}

void softmax_scaled(float* x, int d, float scale) {
    float mx = -INFINITY;
    for (int j = 0; j < d; ++j) {
        x[j] *= scale;
        mx = std::max(mx, x[j]);
    }
    const Packet pm  = ei::pset1<Packet>(mx);
    Packet       acc = ei::pset1<Packet>(0.f);
    int          j   = 0;
    for (; j + kP <= d; j += kP) {
        Packet e = ei::pexp(ei::psub(ei::ploadu<Packet>(x + j), pm));
        ei::pstoreu(x + j, e);
        acc = ei::padd(acc, e);
    }
    if (j < d) {
        float b[kP];
        std::fill(b, b + kP, -INFINITY); // exp(-inf) = 0: padding adds nothing to the sum
        std::copy(x + j, x + d, b);
        Packet e = ei::pexp(ei::psub(ei::ploadu<Packet>(b), pm));
        ei::pstoreu(b, e);
        acc = ei::padd(acc, e);
        std::copy(b, b + (d - j), x + j);
    }
    const float inv = 1.0f / ei::predux(acc);
    for (j = 0; j < d; ++j) x[j] *= inv;
}

} // namespace moebius::cpu
