#include "quantizer/methods/uniform_quant.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/nbit_linear.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <string>

namespace moebius::quant {

namespace {

float round_to_f16(double v) {
    return f16_to_f32(f32_to_f16((float)v));
}

// Grid covering [lo, hi] (lo ≤ 0 ≤ hi). The scale is rounded to f16 first so the zero and the codes are computed
// against the scale a checkpoint reader sees.
GridParams grid_from_range(double lo, double hi, const UniformConfig& c) {
    const int  maxq = (1 << c.bits) - 1;
    GridParams p;
    double     s;
    if (c.sym) {
        p.zero = (float)(1 << (c.bits - 1));
        s      = std::max(-lo, hi) / (double)((1 << (c.bits - 1)) - 1);
    } else {
        s = (hi - lo) / (double)maxq;
    }
    p.scale = round_to_f16(s);
    if (std::isinf(p.scale))
        throw InputError("uniform quantization: a group's range (" + std::to_string(hi - lo) +
                         ") gives a scale beyond the f16 range");
    if (p.scale == 0)
        return p; // all-zero group (or below f16's smallest subnormal): every value dequantizes to 0
    if (!c.sym)
        p.zero = (float)std::clamp(std::nearbyint(-lo / (double)p.scale), 0.0, (double)maxq);
    return p;
}

template <typename T> GridParams fit_impl(const T* w, int n, int64_t stride, const UniformConfig& c) {
    double lo = 0, hi = 0; // min ≤ 0 ≤ max forced, so 0 is always on the grid
    for (int i = 0; i < n; ++i) {
        double v = (double)w[(int64_t)i * stride];
        if (!std::isfinite(v))
            throw InputError("uniform quantization: the weight contains a non-finite value");
        lo = std::min(lo, v);
        hi = std::max(hi, v);
    }
    if (!c.mse_clip)
        return grid_from_range(lo, hi, c);
    // Shrink search as GPTQ's --w_clip: p = 1, 0.99, ..., 0.21; error Σ|ŵ − w|^2.4; the first best is kept.
    constexpr int    grid      = 100;
    constexpr double maxshrink = 0.8, norm = 2.4;
    GridParams       best_p;
    double           best = std::numeric_limits<double>::infinity();
    for (int i = 0; i < (int)(maxshrink * grid); ++i) {
        double     f   = 1.0 - (double)i / grid;
        GridParams p   = grid_from_range(f * lo, f * hi, c);
        double     err = 0;
        for (int j = 0; j < n; ++j) {
            double v = (double)w[(int64_t)j * stride];
            double d = std::abs((double)dequantize_code(quantize_code(v, p, c.bits), p) - v);
            if (d > 0)
                err += std::pow(d, norm);
        }
        if (err < best) {
            best   = err;
            best_p = p;
        }
    }
    return best_p;
}

} // namespace

int check_uniform_config(const UniformConfig& c, int in) {
    if (c.bits < 2 || c.bits > 8)
        throw InputError("uniform quantization: bits must be in 2..8, got " + std::to_string(c.bits));
    if (in <= 0)
        throw InputError("uniform quantization: the weight has no input columns");
    if (c.group == -1)
        return in;
    if (c.group <= 0 || in % c.group != 0)
        throw InputError("uniform quantization: group size " + std::to_string(c.group) +
                         " must be -1 (per output channel) or a positive divisor of the input dimension " +
                         std::to_string(in));
    return c.group;
}

GridParams fit_grid(const float* w, int n, int64_t stride, const UniformConfig& c) {
    return fit_impl(w, n, stride, c);
}
GridParams fit_grid(const double* w, int n, int64_t stride, const UniformConfig& c) {
    return fit_impl(w, n, stride, c);
}

int quantize_code(double w, const GridParams& p, int bits) {
    if (p.scale == 0)
        return (int)p.zero;
    double q = std::nearbyint(w / (double)p.scale) + (double)p.zero; // default rounding mode: half to even
    return (int)std::clamp(q, 0.0, (double)((1 << bits) - 1));
}

std::vector<float> UniformQuantized::dequantize() const {
    std::vector<float> w((size_t)out * in); // (out, in)
    const int          ng = n_groups();
    for (int o = 0; o < out; ++o)
        for (int j = 0; j < in; ++j) {
            size_t     gi = (size_t)o * ng + j / group;
            GridParams p{scales[gi], zeros[gi]};
            w[(size_t)o * in + j] = dequantize_code(codes[(size_t)o * in + j], p);
        }
    return w;
}

UniformQuantized rtn_quantize(const float* W, int out, int in, const UniformConfig& c) {
    UniformQuantized q;
    q.group = check_uniform_config(c, in);
    q.out = out, q.in = in, q.bits = c.bits, q.sym = c.sym;
    const int ng = in / q.group;
    q.codes.resize((size_t)out * in);
    q.scales.resize((size_t)out * ng);
    q.zeros.resize((size_t)out * ng);
    std::exception_ptr failure; // exceptions must not leave an OpenMP region
#pragma omp parallel for schedule(static) if ((int64_t)out * in >= (1 << 20) || c.mse_clip)
    for (int o = 0; o < out; ++o) {
        try {
            for (int g = 0; g < ng; ++g) {
                const float* w               = W + (int64_t)o * in + (int64_t)g * q.group;
                GridParams   p               = fit_grid(w, q.group, 1, c);
                q.scales[(size_t)o * ng + g] = p.scale;
                q.zeros[(size_t)o * ng + g]  = p.zero;
                for (int j = 0; j < q.group; ++j)
                    q.codes[(size_t)o * in + (size_t)g * q.group + j] = (uint8_t)quantize_code(w[j], p, c.bits);
            }
        } catch (...) {
#pragma omp critical(moebius_rtn_failure)
            if (!failure)
                failure = std::current_exception();
        }
    }
    if (failure)
        std::rethrow_exception(failure);
    return q;
}

std::unique_ptr<NbitLinear> make_nbit_linear(const UniformQuantized& q) {
    return NbitLinear::from_codes(q.in, q.out, q.bits, q.group, q.codes.data(), q.scales.data(), q.zeros.data());
}

BinaryWeights rtn_binarize(const float* W, int out, int in, int group) {
    const int gs = group == -1 ? in : group;
    if (in <= 0 || out <= 0) throw InputError("1-bit quantization: empty weight");
    if (gs <= 0 || in % gs)
        throw InputError("1-bit quantization: group size " + std::to_string(group) + " does not divide " + std::to_string(in));
    BinaryWeights b;
    b.out = out, b.in = in, b.block = gs, b.salient_groups = 1, b.has_mean = true, b.has_col_scale = false;
    const int nb = in / gs, ns = b.n_slots(), ng = b.n_groups();
    b.salient.assign(in, 0);
    b.split.assign((size_t)out * in, 0);
    b.sign1.assign((size_t)out * in, 1);
    b.sign2.assign((size_t)out * in, 1);
    b.row_scale.assign((size_t)out * nb * ns, 0.f); // (out, n_blocks, n_slots): only slot 0 is used
    b.row_mean.assign((size_t)out * nb * ng, 0.f);  // (out, n_blocks, n_groups): only group 0 is used
    for (int o = 0; o < out; ++o)
        for (int g = 0; g < nb; ++g) {
            const float* w  = W + (int64_t)o * in + (int64_t)g * gs;
            double       mu = 0;
            for (int j = 0; j < gs; ++j) mu += w[j];
            const float m16 = round_to_f16(mu / gs); // the stored mean, before α is fitted around it
            double      a   = 0;
            for (int j = 0; j < gs; ++j) a += std::fabs((double)w[j] - m16);
            b.row_mean[((size_t)o * nb + g) * ng]  = m16;
            b.row_scale[((size_t)o * nb + g) * ns] = round_to_f16(a / gs);
            for (int j = 0; j < gs; ++j) b.sign1[(size_t)o * in + (size_t)g * gs + j] = w[j] >= m16 ? 1 : -1;
        }
    return b;
}

} // namespace moebius::quant
