#pragma once
// Uniform n-bit grids (RTN, and the per-group quantizer GPTQ/AGQ use). Every grid is stored as w ≈ scale·(code − zero)
// with code in [0, 2^bits−1]: the symmetric grid (methods.md §3.2) is the asymmetric form with zero = 2^(bits−1), so
// one packed kernel (engine/cpu/nbit_linear.h) serves both. Scales are rounded to f16 before codes are computed and
// zeros are integers, so dequantize() equals what a reader of the f16 checkpoint tensors computes.
#include <cstdint>
#include <memory>
#include <vector>

namespace moebius {
class NbitLinear;
struct BinaryWeights;
} // namespace moebius

namespace moebius::quant {

struct UniformConfig {
    int  bits     = 4;
    int  group    = 128; // input columns per (scale, zero); -1: one group per output channel
    bool sym      = false;
    bool mse_clip = false; // search shrink factors of the range (GPTQ --w_clip: grid 100, maxshrink 0.8, norm 2.4)
};

struct UniformQuantized {
    int                  out = 0, in = 0, bits = 0;
    int                  group = 0; // effective group size: `in` for per-channel grids
    bool                 sym   = false;
    std::vector<uint8_t> codes;  // (out, in) values 0..2^bits−1
    std::vector<float>   scales; // (out, n_groups), exactly representable in f16
    std::vector<float>   zeros;  // (out, n_groups), integers in [0, 2^bits−1]; w ≈ scale·(code − zero)
    int                  n_groups() const { return group > 0 ? in / group : 0; }
    std::vector<float>   dequantize() const; // (out, in)
};

// One group's grid parameters.
struct GridParams {
    float scale = 0; // f16-exact; 0 for an all-zero group (every code is `zero`, every value 0)
    float zero  = 0; // integer
};

// Validates bits (2..8) and that the group divides `in`; returns the effective group size. Throws InputError.
int check_uniform_config(const UniformConfig& c, int in);

// Fits the grid on n values w[0], w[stride], ... (min/max, or the MSE shrink search when c.mse_clip).
GridParams fit_grid(const float* w, int n, int64_t stride, const UniformConfig& c);
GridParams fit_grid(const double* w, int n, int64_t stride, const UniformConfig& c);

// Code of one value on a grid: clamp(round_half_even(w/scale) + zero, 0, 2^bits−1) (torch.round rounds half to even).
int          quantize_code(double w, const GridParams& p, int bits);
inline float dequantize_code(int code, const GridParams& p) {
    return p.scale * (float)(code - (int)p.zero);
}

// Round-to-nearest quantization of W (out, in).
UniformQuantized rtn_quantize(const float* W, int out, int in, const UniformConfig& c);

// 1-bit round to nearest (the plain binarization baseline): per (row, group of `group` columns; -1: the row) a mean μ
// and a scale α = mean|w − μ|, w ≈ μ + α·sign(w − μ); no salient columns, no split. Stored in the binary format.
BinaryWeights rtn_binarize(const float* W, int out, int in, int group);

// The packed CPU layer for a quantized matrix (codes packed LSB-first, f16 scales, u8 zeros).
std::unique_ptr<NbitLinear> make_nbit_linear(const UniformQuantized& q);

} // namespace moebius::quant
