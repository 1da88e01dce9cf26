#include "quantizer/calibration/input_stats.h"

#include "engine/core/error.h"
#include "engine/cpu/gemm.h"

#include <cmath>
#include <vector>

namespace moebius::quant {

InputStats::InputStats(int d, bool aff) : dim(d), affinity(aff) {
    H.assign((size_t)d * d, 0.0);
    if (aff) H_aff.assign((size_t)d * d, 0.0);
}

void InputStats::add(const float* x, int m, const float* c) {
    if (m <= 0) return;
    MOEBIUS_ASSERT(dim > 0);
    std::vector<float> G((size_t)dim * dim); // (dim, dim) Xᵀ X of this batch in f32, summed into the f64 H
    cpu::gemm(dim, dim, m, x, dim, true, x, dim, false, G.data(), dim, false);
    for (int64_t i = 0; i < (int64_t)dim * dim; ++i) H[i] += G[i];
    if (affinity) {
        std::vector<float> Xc(x, x + (size_t)m * dim); // (m, dim) rows scaled by √c
        for (int r = 0; r < m; ++r) {
            const float s = std::sqrt(c ? std::max(c[r], 0.f) : 1.f);
            for (int j = 0; j < dim; ++j) Xc[(size_t)r * dim + j] *= s;
        }
        cpu::gemm(dim, dim, m, Xc.data(), dim, true, Xc.data(), dim, false, G.data(), dim, false);
        for (int64_t i = 0; i < (int64_t)dim * dim; ++i) H_aff[i] += G[i];
    }
    n_tokens += m;
    for (int r = 0; r < m; ++r) {
        sum_weight += c ? c[r] : 1.0;
        double s = 0;
        for (int j = 0; j < dim; ++j) s += (double)x[(int64_t)r * dim + j] * x[(int64_t)r * dim + j];
        sum_sq_norm += s;
    }
}

void InputStats::merge(const InputStats& o) {
    MOEBIUS_ASSERT(o.dim == dim && o.affinity == affinity);
    for (size_t i = 0; i < H.size(); ++i) H[i] += o.H[i];
    for (size_t i = 0; i < H_aff.size(); ++i) H_aff[i] += o.H_aff[i];
    n_tokens += o.n_tokens;
    sum_weight += o.sum_weight;
    sum_sq_norm += o.sum_sq_norm;
}

std::vector<double> InputStats::diag() const {
    std::vector<double> d(dim);
    for (int i = 0; i < dim; ++i) d[i] = H[(size_t)i * dim + i];
    return d;
}

} // namespace moebius::quant
