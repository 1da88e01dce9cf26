// Packed n-bit linear layer: bit layout, parity with DenseLinear on the dequantized weight, storage accounting.
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/nbit_linear.h"
#include "quantizer/methods/uniform_quant.h"

#include <gtest/gtest.h>
#include <omp.h>
#include <random>

using namespace moebius;

namespace {

struct Random {
    std::vector<uint8_t> codes;  // (out, in)
    std::vector<float>   scales; // (out, ng)
    std::vector<float>   zeros;  // (out, ng)
};

Random random_params(int out, int in, int bits, int group, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_int_distribution<int>    code(0, (1 << bits) - 1);
    std::uniform_real_distribution<float> sd(0.001f, 0.05f);
    Random                                r;
    const int                             ng = out * (in / group);
    for (int i = 0; i < out * in; ++i)
        r.codes.push_back((uint8_t)code(rng));
    for (int i = 0; i < ng; ++i) {
        r.scales.push_back(f16_to_f32(f32_to_f16(sd(rng))));
        r.zeros.push_back((float)code(rng));
    }
    return r;
}

std::vector<float> random_x(int n, int in, uint32_t seed) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> nd(0, 1);
    std::vector<float>              x((size_t)n * in);
    for (auto& v : x)
        v = nd(rng);
    return x;
}

void check_parity(int in, int out, int bits, int group, int max_tokens) {
    auto p   = random_params(out, in, bits, group, 100 + bits);
    auto lin = NbitLinear::from_codes(in, out, bits, group, p.codes.data(), p.scales.data(), p.zeros.data());
    auto w   = lin->dequantize();
    for (int o = 0; o < out; ++o)
        for (int j = 0; j < in; ++j) {
            int g = o * (in / group) + j / group;
            ASSERT_EQ(w[o * in + j], p.scales[g] * (float)(p.codes[o * in + j] - (int)p.zeros[g]))
                << bits << " bits, (" << o << ", " << j << ")";
        }
    DenseLinear dense(in, out, w);
    for (int n = 1; n <= max_tokens; ++n) {
        auto               x = random_x(n, in, 7 * n + bits);
        std::vector<float> y1((size_t)n * out), y2((size_t)n * out);
        dense.forward(x.data(), n, y1.data());
        lin->forward(x.data(), n, y2.data());
        for (size_t i = 0; i < y1.size(); ++i) {
            if (n <= 4)
                ASSERT_EQ(y2[i], y1[i]) << bits << " bits, n " << n; // same row buffer, same dot
            else
                ASSERT_NEAR(y2[i], y1[i], 1e-5f * (1 + std::abs(y1[i]))) << bits << " bits, n " << n;
        }
    }
}

} // namespace

TEST(NbitLinear, PackLayoutLsbFirst) {
    // 3-bit codes 1..7,0: bits [3j, 3j+3) of the row stream; code 2 straddles bytes 0 and 1, code 5 bytes 1 and 2.
    std::vector<uint8_t> codes = {1, 2, 3, 4, 5, 6, 7, 0};
    EXPECT_EQ(NbitLinear::pack(codes.data(), 1, 8, 3), (std::vector<uint8_t>{209, 88, 31}));
    // 4 bits: low nibble first; 2 bits: four per byte.
    EXPECT_EQ(NbitLinear::pack(codes.data(), 1, 4, 4), (std::vector<uint8_t>{0x21, 0x43}));
    std::vector<uint8_t> c2 = {1, 2, 3, 0, 3};
    EXPECT_EQ(NbitLinear::pack(c2.data(), 1, 5, 2), (std::vector<uint8_t>{0x39, 0x03}));
    // Rows are padded to whole bytes: 5 codes × 3 bits = 15 bits → 2 bytes per row.
    std::vector<uint8_t> two_rows = {7, 7, 7, 7, 7, 1, 0, 0, 0, 0};
    EXPECT_EQ(NbitLinear::pack(two_rows.data(), 2, 5, 3), (std::vector<uint8_t>{0xFF, 0x7F, 0x01, 0x00}));
}

TEST(NbitLinear, ParityWithDenseOddSizes) {
    for (int bits : {2, 3, 4, 5, 8})
        check_parity(96, 37, bits, 32, 9);
    check_parity(13, 5, 3, 13, 6); // in not a multiple of 8: the tail decoder, one group per row
}

TEST(NbitLinear, ParityMultiThreaded) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(2);
    check_parity(512, 300, 4, 128, 6); // 2·300·512 ≥ 2^18: the threaded GEMV path; n = 5, 6: threaded GEMM tiles
    check_parity(256, 100, 3, 64, 6);
    omp_set_num_threads(saved);
}

TEST(NbitLinear, StorageAndAccessors) {
    const int in = 96, out = 37, group = 32;
    for (int bits : {2, 3, 4, 8}) {
        auto p   = random_params(out, in, bits, group, bits);
        auto lin = NbitLinear::from_codes(in, out, bits, group, p.codes.data(), p.scales.data(), p.zeros.data());
        const size_t row_bytes = (size_t)(in * bits + 7) / 8, ng = (size_t)out * (in / group);
        EXPECT_EQ(lin->storage_bytes(), out * row_bytes + 2 * ng + ng);
        EXPECT_EQ(lin->packed_codes().size(), out * row_bytes);
        EXPECT_EQ(lin->scales_f16().size(), ng);
        EXPECT_EQ(lin->zeros().size(), ng);
        EXPECT_EQ(lin->format(), "nbit");
        // The side tensors rebuild the same layer.
        NbitLinear copy(in, out, bits, group, {lin->packed_codes().begin(), lin->packed_codes().end()},
                        {lin->scales_f16().begin(), lin->scales_f16().end()},
                        {lin->zeros().begin(), lin->zeros().end()});
        EXPECT_EQ(copy.dequantize(), lin->dequantize());
    }
}

TEST(NbitLinear, FromUniformQuantizedMatchesDequantize) {
    auto w = random_x(37, 96, 5);
    for (int bits : {2, 3, 4, 8})
        for (bool sym : {false, true}) {
            auto q   = quant::rtn_quantize(w.data(), 37, 96, quant::UniformConfig{bits, 32, sym, false});
            auto lin = quant::make_nbit_linear(q);
            EXPECT_EQ(lin->dequantize(), q.dequantize());
            auto pc = quant::rtn_quantize(w.data(), 37, 96, quant::UniformConfig{bits, -1, sym, false});
            EXPECT_EQ(quant::make_nbit_linear(pc)->dequantize(), pc.dequantize());
        }
}

TEST(NbitLinear, BadInput) {
    std::vector<uint8_t>  packed(8 * 2, 0), zeros(2, 0);
    std::vector<uint16_t> scales(2, f32_to_f16(1.0f));
    EXPECT_NO_THROW(NbitLinear(16, 2, 4, 16, packed, scales, zeros));
    EXPECT_THROW(NbitLinear(16, 2, 4, 16, std::vector<uint8_t>(15), scales, zeros), FormatError);
    EXPECT_THROW(NbitLinear(16, 2, 4, 5, packed, scales, zeros), FormatError);
    EXPECT_THROW(NbitLinear(16, 2, 9, 16, packed, scales, zeros), FormatError);
    EXPECT_THROW(NbitLinear(16, 2, 4, 16, packed, scales, std::vector<uint8_t>{16, 0}), FormatError);
    std::vector<uint8_t> codes(32, 1);
    float                s[2] = {0.1f, 1.0f}, z[2] = {0, 0};
    EXPECT_THROW(NbitLinear::from_codes(16, 2, 4, 16, codes.data(), s, z), InputError); // 0.1 is not f16-exact
    s[0]     = 0.5f;
    codes[3] = 16;
    EXPECT_THROW(NbitLinear::from_codes(16, 2, 4, 16, codes.data(), s, z), InputError); // code beyond 4 bits
}
