#include "engine/cpu/backward_ops.h"

#include "engine/cpu/gemm.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/packet_map.h"

#include <algorithm>
#include <cmath>
#include <omp.h>
#include <vector>

namespace moebius::cpu {

namespace {

// Column (or row) slab width of the GEMM chunks; fixed so the summation order never depends on the thread count.
constexpr int k_slab = 64;


inline void axpy(float alpha, const float* x, float* y, int n) {
    for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

} // namespace

void matmul_nn(const float* a, int n, int k, const float* b, int m, float* c, bool accumulate) {
    if (n <= 0 || m <= 0) return;
    if (k <= 0) {
        if (!accumulate) std::fill(c, c + (int64_t)n * m, 0.f);
        return;
    }
    const int chunks = (m + k_slab - 1) / k_slab;
#pragma omp parallel for schedule(dynamic) if (chunks > 1 && !omp_in_parallel())
    for (int ch = 0; ch < chunks; ++ch) {
        const int c0 = ch * k_slab, w = std::min(m, c0 + k_slab) - c0;
        gemm(n, w, k, a, k, false, b + c0, m, false, c + c0, m, accumulate); // c[:, c0:c0+w] (+)= a · b[:, c0:c0+w]
    }
}

void matmul_tn_acc(const float* a, int n, int k, const float* b, int m, float* c) {
    if (n <= 0 || k <= 0 || m <= 0) return;
    const int chunks = (k + k_slab - 1) / k_slab;
#pragma omp parallel for schedule(dynamic) if (chunks > 1 && !omp_in_parallel())
    for (int ch = 0; ch < chunks; ++ch) {
        const int r0 = ch * k_slab, h = std::min(k, r0 + k_slab) - r0;
        gemm(h, m, n, a + r0, k, true, b, m, false, c + (int64_t)r0 * m, m, true); // c[r0:r0+h] += a[:, r0:r0+h]ᵀ b
    }
}

void colsum_acc(const float* x, int n, int d, float* acc) {
    for (int i = 0; i < d; ++i) {
        double s = 0;
        for (int t = 0; t < n; ++t) s += x[(int64_t)t * d + i];
        acc[i] += (float)s;
    }
}

void rmsnorm_backward(const float* x, int n, int d, const float* w, float eps, const float* dy, float* dx,
                      bool accumulate, float* dw) {
    std::vector<float> inv(n); // (n) 1/rms of each row, as the forward rounded it
#pragma omp parallel for schedule(static) if ((int64_t)n * d > 16384 && !omp_in_parallel())
    for (int t = 0; t < n; ++t) {
        const float* xr = x + (int64_t)t * d;
        const float* gr = dy + (int64_t)t * d;
        float*       dr = dx + (int64_t)t * d;
        double       ss = 0, wgx = 0;
        for (int i = 0; i < d; ++i) {
            ss += (double)xr[i] * xr[i];
            wgx += (double)w[i] * gr[i] * xr[i];
        }
        const float  r = 1.0f / std::sqrt((float)(ss / d) + eps);
        // y_i = w_i x_i r with ∂r/∂x_j = -r³ x_j / d.
        const double c = (double)r * r * r * wgx / d;
        for (int i = 0; i < d; ++i) {
            const float g = (float)((double)r * w[i] * gr[i] - c * xr[i]);
            dr[i]         = accumulate ? dr[i] + g : g;
        }
        inv[t] = r;
    }
    if (!dw) return;
#pragma omp parallel for schedule(static) if ((int64_t)n * d > 16384 && !omp_in_parallel())
    for (int i = 0; i < d; ++i) {
        double s = 0;
        for (int t = 0; t < n; ++t) s += (double)dy[(int64_t)t * d + i] * x[(int64_t)t * d + i] * inv[t];
        dw[i] += (float)s;
    }
}

void rope_backward(float* dx, int n, int n_heads, int head_dim, int stride, const int32_t* pos, const float* inv_freq) {
    const int half = head_dim / 2;
    for (int t = 0; t < n; ++t) {
        for (int i = 0; i < half; ++i) {
            // Same angle rounding as cpu::rope.
            const float a = (float)pos[t] * inv_freq[i];
            const float c = (float)std::cos(a), s = (float)std::sin(a);
            for (int h = 0; h < n_heads; ++h) {
                float*      v  = dx + (int64_t)t * stride + (int64_t)h * head_dim;
                const float y1 = v[i], y2 = v[i + half];
                v[i]           = y1 * c + y2 * s;
                v[i + half]    = y2 * c - y1 * s;
            }
        }
    }
}

using namespace simd;

void silu_mul_backward(const float* g, const float* u, const float* dh, int64_t count, float* dg, float* du) {
    const Packet one = ei::pset1<Packet>(1.0f);
    packet_map<3, 2>({g, u, dh}, {dg, du}, count, 0.f, [&](const Packet* x, Packet* y) {
        const Packet sg   = ei::pdiv(one, ei::padd(one, ei::pexp(ei::pnegate(x[0])))); // σ(g)
        const Packet dsil = ei::pmul(sg, ei::padd(one, ei::pmul(x[0], ei::psub(one, sg)))); // silu'(g)
        y[0]              = ei::pmul(ei::pmul(x[2], x[1]), dsil);
        y[1]              = ei::pmul(x[2], ei::pmul(x[0], sg));
    });
}

double cross_entropy_backward(float* logits, int V, int target, float scale) {
    const float lt = logits[target];
    float       mx = logits[0];
    for (int v = 1; v < V; ++v) mx = std::max(mx, logits[v]);
    // e_v = exp(l_v − max) in place, summed in f64 a packet at a time (exp(−inf) pads the tail with zeros).
    const Packet pm = ei::pset1<Packet>(mx);
    float*       l  = logits;
    packet_map<1, 1>({l}, {l}, V, -INFINITY, [&](const Packet* x, Packet* y) { y[0] = ei::pexp(ei::psub(x[0], pm)); });
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += l[v];
    const double loss = (double)mx + std::log(sum) - lt; // log-sum-exp − l_target
    const float  k    = (float)(scale / sum);
    for (int v = 0; v < V; ++v) l[v] *= k;
    l[target] -= scale;
    return loss;
}

void attention_backward_reference(const float* q, const float* k, const float* v, const float* o, const float* d_o,
                                  int n, int n_head, int n_head_kv, int head_dim, float* dq, float* dk, float* dv) {
    const int   hd = head_dim, qd = n_head * hd, kvd = n_head_kv * hd, group = n_head / n_head_kv;
    const float scale = 1.0f / std::sqrt((float)hd);
    const bool  par   = !omp_in_parallel();
    // Per (query row, head): log-sum-exp of the scores and D = Σ_j p_j dp_j = d_o · o.
    std::vector<float> lse((size_t)n * n_head), dsum((size_t)n * n_head); // (n, n_head)

    // Pass 1, one query row and head per iteration: dq_i = scale Σ_j p_ij (dp_ij - D_i) k_j, dp_ij = d_o_i · v_j.
#pragma omp parallel if (par)
    {
        std::vector<float> s(n); // (n) scores of one row
#pragma omp for collapse(2) schedule(dynamic, 4)
        for (int i = 0; i < n; ++i) {
            for (int h = 0; h < n_head; ++h) {
                const float* qi  = q + (int64_t)i * qd + (int64_t)h * hd;
                const float* gi  = d_o + (int64_t)i * qd + (int64_t)h * hd;
                const float* oi  = o + (int64_t)i * qd + (int64_t)h * hd;
                const int    kvh = h / group;
                float        m   = -INFINITY;
                for (int j = 0; j <= i; ++j) {
                    s[j] = dot(qi, k + (int64_t)j * kvd + (int64_t)kvh * hd, hd) * scale;
                    m    = std::max(m, s[j]);
                }
                double sum = 0, dd = 0;
                for (int j = 0; j <= i; ++j) sum += std::exp((double)(s[j] - m));
                for (int d = 0; d < hd; ++d) dd += (double)gi[d] * oi[d];
                const float l = m + (float)std::log(sum), D = (float)dd;
                lse[(size_t)i * n_head + h]  = l;
                dsum[(size_t)i * n_head + h] = D;
                float* dqi = dq + (int64_t)i * qd + (int64_t)h * hd;
                std::fill(dqi, dqi + hd, 0.f);
                for (int j = 0; j <= i; ++j) {
                    const float p  = std::exp(s[j] - l);
                    const float dp = dot(gi, v + (int64_t)j * kvd + (int64_t)kvh * hd, hd);
                    axpy(p * (dp - D), k + (int64_t)j * kvd + (int64_t)kvh * hd, dqi, hd);
                }
                for (int d = 0; d < hd; ++d) dqi[d] *= scale;
            }
        }
    }

    // Pass 2, one key row and kv-head per iteration, summing over its query heads and the rows i ≥ j that see it:
    // dk_j = scale Σ p_ij (dp_ij - D_i) q_i, dv_j = Σ p_ij d_o_i.
#pragma omp parallel for collapse(2) schedule(dynamic, 4) if (par)
    for (int j = 0; j < n; ++j) {
        for (int kvh = 0; kvh < n_head_kv; ++kvh) {
            const float* kj  = k + (int64_t)j * kvd + (int64_t)kvh * hd;
            const float* vj  = v + (int64_t)j * kvd + (int64_t)kvh * hd;
            float*       dkj = dk + (int64_t)j * kvd + (int64_t)kvh * hd;
            float*       dvj = dv + (int64_t)j * kvd + (int64_t)kvh * hd;
            std::fill(dkj, dkj + hd, 0.f);
            std::fill(dvj, dvj + hd, 0.f);
            for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
                for (int i = j; i < n; ++i) {
                    const float* qi = q + (int64_t)i * qd + (int64_t)h * hd;
                    const float* gi = d_o + (int64_t)i * qd + (int64_t)h * hd;
                    const float  s  = dot(qi, kj, hd) * scale; // bit-identical to pass 1's score
                    const float  p  = std::exp(s - lse[(size_t)i * n_head + h]);
                    const float  dp = dot(gi, vj, hd);
                    axpy(p * (dp - dsum[(size_t)i * n_head + h]), qi, dkj, hd);
                    axpy(p, gi, dvj, hd);
                }
            }
            for (int d = 0; d < hd; ++d) dkj[d] *= scale;
        }
    }
}

void attention_backward(const float* q, const float* k, const float* v, const float* o, const float* d_o, int n,
                        int n_head, int n_head_kv, int head_dim, float* dq, float* dk, float* dv) {
    const int   hd = head_dim, qd = n_head * hd, kvd = n_head_kv * hd, group = n_head / n_head_kv;
    const float scale = 1.0f / std::sqrt((float)hd);
    // Per (head, block of up to kQB queries), as the forward computes them: S = Q_b K_gᵀ, P = softmax(scale · S) over
    // the causal prefix; dP = dO_b V_gᵀ, dS = P ⊙ (dP − D) with D_i = dO_i · O_i; dQ_b = scale · dS K_g,
    // dK_g += dSᵀ Q_b (scaled once at the end), dV_g += Pᵀ dO_b. A kv-head's blocks run in a fixed order on one thread,
    // so the sums do not depend on the thread count.
    constexpr int kQB  = 32;
    const int     n_qb = (n + kQB - 1) / kQB;
    const int64_t work = (int64_t)n * n_head * n * hd;
#pragma omp parallel for schedule(static) if (n_head_kv > 1 && work >= (1 << 20) && !omp_in_parallel())
    for (int g = 0; g < n_head_kv; ++g) {
        std::vector<float> P((size_t)std::min(n, kQB) * n), dS((size_t)std::min(n, kQB) * n); // (m, nctx) each
        for (int j = 0; j < n; ++j) {
            std::fill(dk + (int64_t)j * kvd + (int64_t)g * hd, dk + (int64_t)j * kvd + (int64_t)(g + 1) * hd, 0.f);
            std::fill(dv + (int64_t)j * kvd + (int64_t)g * hd, dv + (int64_t)j * kvd + (int64_t)(g + 1) * hd, 0.f);
        }
        const float* Kg = k + (int64_t)g * hd;
        const float* Vg = v + (int64_t)g * hd;
        for (int h = g * group; h < (g + 1) * group; ++h) {
            for (int b = 0; b < n_qb; ++b) {
                const int    i0 = b * kQB, m = std::min(n, i0 + kQB) - i0, nctx = i0 + m;
                const float* Qb = q + (int64_t)i0 * qd + (int64_t)h * hd;
                const float* Gb = d_o + (int64_t)i0 * qd + (int64_t)h * hd;
                gemm(m, nctx, hd, Qb, qd, false, Kg, kvd, true, P.data(), nctx, false);
                gemm(m, nctx, hd, Gb, qd, false, Vg, kvd, true, dS.data(), nctx, false); // dP
                for (int r = 0; r < m; ++r) {
                    float*       pr  = P.data() + (int64_t)r * nctx;
                    float*       dsr = dS.data() + (int64_t)r * nctx;
                    const int    lim = i0 + r + 1;
                    const float* gi  = Gb + (int64_t)r * qd;
                    const float* oi  = o + (int64_t)(i0 + r) * qd + (int64_t)h * hd;
                    softmax_scaled(pr, lim, scale);
                    std::fill(pr + lim, pr + nctx, 0.f);
                    double dd = 0;
                    for (int d = 0; d < hd; ++d) dd += (double)gi[d] * oi[d];
                    const float D = (float)dd;
                    for (int j = 0; j < lim; ++j) dsr[j] = pr[j] * (dsr[j] - D);
                    std::fill(dsr + lim, dsr + nctx, 0.f);
                }
                float* dQb = dq + (int64_t)i0 * qd + (int64_t)h * hd;
                gemm(m, hd, nctx, dS.data(), nctx, false, Kg, kvd, false, dQb, qd, false);
                for (int r = 0; r < m; ++r)
                    for (int d = 0; d < hd; ++d) dQb[(int64_t)r * qd + d] *= scale;
                gemm(nctx, hd, m, dS.data(), nctx, true, Qb, qd, false, dk + (int64_t)g * hd, kvd, true);
                gemm(nctx, hd, m, P.data(), nctx, true, Gb, qd, false, dv + (int64_t)g * hd, kvd, true);
            }
        }
        for (int j = 0; j < n; ++j)
            for (int d = 0; d < hd; ++d) dk[(int64_t)j * kvd + (int64_t)g * hd + d] *= scale;
    }
}

} // namespace moebius::cpu
