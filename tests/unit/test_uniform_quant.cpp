// Uniform n-bit grids (RTN): hand-checked rows, f16-exact parameters, groups, bad input.
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "quantizer/methods/uniform_quant.h"

#include <cmath>
#include <gtest/gtest.h>
#include <random>

using namespace moebius;
using namespace moebius::quant;

namespace {
UniformQuantized rtn(const std::vector<float>& w, int out, int bits, int group, bool sym, bool mse = false) {
    return rtn_quantize(w.data(), out, (int)w.size() / out, UniformConfig{bits, group, sym, mse});
}
float f16(float v) {
    return f16_to_f32(f32_to_f16(v));
}
} // namespace

TEST(UniformQuant, AsymmetricHandChecked) {
    // s = (2 − (−1))/3 = 1, z = round(1) = 1; 0.5 rounds half to even (0), as torch.round does.
    auto q = rtn({-1, 0, 0.5f, 2}, 1, 2, -1, false);
    EXPECT_EQ(q.group, 4);
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{0, 1, 1, 3}));
    EXPECT_EQ(q.scales, (std::vector<float>{1}));
    EXPECT_EQ(q.zeros, (std::vector<float>{1}));
    EXPECT_EQ(q.dequantize(), (std::vector<float>{-1, 0, 0, 2}));
    // 4 bits, min forced to 0: s = 7.5/15 = 0.5, z = 0.
    q = rtn({0, 1.5f, 3, 7.5f}, 1, 4, -1, false);
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{0, 3, 6, 15}));
    EXPECT_EQ(q.zeros[0], 0);
    EXPECT_EQ(q.dequantize(), (std::vector<float>{0, 1.5f, 3, 7.5f}));
    // Positive row: min forced to 0, s = 4/3 rounded to f16 (1.3330078) before the codes are computed.
    q = rtn({1, 2, 3, 4}, 1, 2, -1, false);
    EXPECT_EQ(q.scales[0], 1.3330078125f);
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{1, 2, 2, 3}));
    // Negative row: max forced to 0, z = 3.
    q = rtn({-3, -2, -1, -0.4f}, 1, 2, -1, false);
    EXPECT_EQ(q.scales[0], 1.0f);
    EXPECT_EQ(q.zeros[0], 3);
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{0, 1, 2, 3}));
}

TEST(UniformQuant, SymmetricHandChecked) {
    // 4 bits: s = max|w|/7 = 1, zero = 8, q = clamp(round(w/s), −8, 7) + 8; 3.5 → 4 (half to even).
    auto q = rtn({-7, 3.5f, 0, 7}, 1, 4, -1, true);
    EXPECT_EQ(q.scales[0], 1.0f);
    EXPECT_EQ(q.zeros[0], 8);
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{1, 12, 8, 15}));
    // 3 bits: s = 4/3 → f16 1.3330078, zero = 4.
    q = rtn({-4, -2, 1, 3}, 1, 3, -1, true);
    EXPECT_EQ(q.scales[0], 1.3330078125f);
    EXPECT_EQ(q.zeros[0], 4);
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{1, 2, 5, 6}));
    // 2 bits: levels −2..1 times s = max|w|/1.
    q = rtn({-1, -0.4f, 0.6f, 1}, 1, 2, -1, true);
    EXPECT_EQ(q.codes, (std::vector<uint8_t>{1, 2, 3, 3}));
    EXPECT_EQ(q.dequantize(), (std::vector<float>{-1, 0, 1, 1}));
}

TEST(UniformQuant, GroupsAndAllZeroGroup) {
    // 2 rows × 8 columns, group 4: one grid per (row, group); the all-zero group gets scale 0 and codes = zero.
    std::vector<float> w = {-1, 0, 0.5f, 2, 0, 0,    0, 0, //
                            0,  0, 0,    0, 0, 1.5f, 3, 7.5f};
    for (bool sym : {false, true}) {
        auto q = rtn(w, 2, 4, 4, sym);
        ASSERT_EQ(q.scales.size(), 4u);
        EXPECT_EQ(q.scales[1], 0.0f);
        EXPECT_EQ(q.scales[2], 0.0f);
        for (int j = 4; j < 8; ++j)
            EXPECT_EQ(q.codes[j], (int)q.zeros[1]);
        auto d = q.dequantize();
        for (int j = 4; j < 12; ++j)
            EXPECT_EQ(d[j], 0.0f);
    }
    auto q = rtn(w, 2, 2, 4, false);
    EXPECT_EQ(q.scales[0], 1.0f);
    EXPECT_EQ(q.scales[3], 2.5f);
    EXPECT_EQ(std::vector<uint8_t>(q.codes.begin() + 12, q.codes.end()), (std::vector<uint8_t>{0, 1, 1, 3}));
}

TEST(UniformQuant, AllBitWidthsF16ExactAndBounded) {
    std::mt19937                    rng(1);
    std::normal_distribution<float> nd(0, 0.02f);
    const int                       out = 5, in = 64;
    std::vector<float>              w(out * in);
    for (auto& v : w)
        v = nd(rng);
    for (int bits = 2; bits <= 8; ++bits)
        for (bool sym : {false, true})
            for (int group : {-1, 16}) {
                auto q = rtn(w, out, bits, group, sym);
                ASSERT_EQ(q.group, group < 0 ? in : group);
                auto d = q.dequantize();
                for (size_t k = 0; k < q.scales.size(); ++k) {
                    EXPECT_EQ(q.scales[k], f16(q.scales[k]));
                    EXPECT_EQ(q.zeros[k], std::floor(q.zeros[k]));
                    EXPECT_LT(q.zeros[k], 1 << bits);
                }
                for (int o = 0; o < out; ++o)
                    for (int j = 0; j < in; ++j) {
                        ASSERT_LT(q.codes[o * in + j], 1 << bits);
                        float s = q.scales[o * (in / q.group) + j / q.group];
                        // Half a step, plus the f16 rounding of the scale across the whole range.
                        EXPECT_LE(std::abs(d[o * in + j] - w[o * in + j]), 0.5f * s + (1 << bits) * s * 1e-3f)
                            << bits << " bits, sym " << sym << ", group " << group;
                    }
            }
}

TEST(UniformQuant, MseClipShrinksOutlierRange) {
    std::mt19937                    rng(2);
    std::normal_distribution<float> nd(0, 1);
    std::vector<float>              w(128);
    for (auto& v : w)
        v = nd(rng);
    w[7]    = 12; // outlier: the min/max grid wastes most levels on it
    auto lp = [&](const UniformQuantized& q) {
        auto   d = q.dequantize();
        double e = 0;
        for (size_t j = 0; j < w.size(); ++j)
            e += std::pow(std::abs(d[j] - w[j]), 2.4);
        return e;
    };
    for (bool sym : {false, true}) {
        auto plain = rtn(w, 1, 3, -1, sym), clip = rtn(w, 1, 3, -1, sym, true);
        EXPECT_LT(clip.scales[0], plain.scales[0]);
        EXPECT_LT(lp(clip), lp(plain));
        EXPECT_EQ(clip.scales[0], f16(clip.scales[0]));
    }
}

TEST(UniformQuant, BadInput) {
    std::vector<float> w(12, 1.0f);
    EXPECT_THROW(rtn(w, 1, 1, -1, false), InputError);
    EXPECT_THROW(rtn(w, 1, 9, -1, false), InputError);
    EXPECT_THROW(rtn(w, 1, 4, 5, false), InputError);
    EXPECT_THROW(rtn(w, 1, 4, 0, false), InputError);
    try {
        rtn(w, 1, 4, 8, false);
        FAIL();
    } catch (const InputError& e) {
        EXPECT_NE(std::string(e.what()).find("divisor"), std::string::npos) << e.what();
    }
    w[3] = NAN;
    EXPECT_THROW(rtn(w, 1, 4, -1, false), InputError);
    w[3] = 1e9f; // scale beyond f16
    EXPECT_THROW(rtn(w, 1, 4, -1, false), InputError);
}
