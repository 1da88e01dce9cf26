// Packed structured-binary linear layer (docs/FORMAT.md "binary"): the weight formula on hand-computed values, the bit
// layout, pack/unpack, forward parity with DenseLinear on the dequantized weight, input validation, the checkpoint
// loader's checks and a write_checkpoint → Model::load round trip.
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/model.h"
#include "quantizer/format/checkpoint_writer.h"
#include "checkpoint_test_util.h"
#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <numeric>
#include <omp.h>
#include <random>

using namespace moebius;
namespace fs = std::filesystem;
using moebius::test::edit_config;
using moebius::test::expect_load_error;

namespace {

float f16r(float v) { return f16_to_f32(f32_to_f16(v)); }

// The 2×16, block-8 case whose weights are worked out by hand below. Salient columns 3 and 12 (one per block);
// split(o, j) = ((j + o) mod 3 == 0); sign1(o, j) = +1 iff j + o is even; sign2 = +1 on row 0, −1 on row 1;
// row_scale[o, b, k] = 1 + k + 10·b + 100·o; row_mean[o, b, g] = 0.25·(g + 1) − b − 2·o;
// col_scale[j, k] = 0.5·(j mod 4 + 1) + 0.25·k.
BinaryWeights hand_case(int salient_groups, bool mean, bool col) {
    BinaryWeights w;
    w.out = 2, w.in = 16, w.block = 8, w.salient_groups = salient_groups, w.has_mean = mean, w.has_col_scale = col;
    w.salient.assign(16, 0);
    w.salient[3] = w.salient[12] = 1;
    for (int o = 0; o < 2; ++o)
        for (int j = 0; j < 16; ++j) {
            w.split.push_back((j + o) % 3 == 0);
            w.sign1.push_back((j + o) % 2 == 0 ? 1 : -1);
            w.sign2.push_back(o == 0 ? 1 : -1);
        }
    const int ns = w.n_slots(), ng = w.n_groups();
    for (int o = 0; o < 2; ++o)
        for (int b = 0; b < 2; ++b) {
            for (int k = 0; k < ns; ++k) w.row_scale.push_back((float)(1 + k + 10 * b + 100 * o));
            for (int g = 0; g < ng && mean; ++g) w.row_mean.push_back(0.25f * (g + 1) - b - 2 * o);
        }
    for (int j = 0; j < 16 && col; ++j)
        for (int k = 0; k < ns; ++k) w.col_scale.push_back(0.5f * (j % 4 + 1) + 0.25f * k);
    return w;
}

// Random structured-binary weights: salient_frac of the columns salient, f16 scales/means of either sign.
BinaryWeights random_weights(int out, int in, int block, int salient_groups, bool mean, bool col, double salient_frac,
                             uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    BinaryWeights                         w;
    w.out = out, w.in = in, w.block = block, w.salient_groups = salient_groups, w.has_mean = mean,
    w.has_col_scale = col;
    for (int j = 0; j < in; ++j) w.salient.push_back(u(rng) < salient_frac);
    for (int i = 0; i < out * in; ++i) {
        w.split.push_back(u(rng) < 0.3f);
        w.sign1.push_back(u(rng) < 0.5f ? 1 : -1);
        w.sign2.push_back(u(rng) < 0.5f ? 1 : -1);
    }
    for (int i = 0; i < out * w.n_blocks() * w.n_slots(); ++i) w.row_scale.push_back(f16r(0.001f + 0.05f * u(rng)));
    for (int i = 0; i < out * w.n_blocks() * w.n_groups() && mean; ++i) w.row_mean.push_back(f16r(0.02f * (u(rng) - 0.5f)));
    for (int i = 0; i < in * w.n_slots() && col; ++i) w.col_scale.push_back(f16r(0.5f + u(rng)));
    return w;
}

std::vector<float> random_x(int n, int in, uint32_t seed) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> nd(0, 1);
    std::vector<float>              x((size_t)n * in);
    for (auto& v : x) v = nd(rng);
    return x;
}

// What unpack() gives back: the entries the format ignores normalised.
BinaryWeights canonical(BinaryWeights w) {
    for (int o = 0; o < w.out; ++o)
        for (int j = 0; j < w.in; ++j) {
            const size_t i = (size_t)o * w.in + j;
            if (w.salient[j] && w.salient_groups == 1) w.split[i] = 0;
            if (!w.salient[j]) w.sign2[i] = 1;
        }
    return w;
}

void expect_same(const BinaryWeights& a, const BinaryWeights& b) {
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.in, b.in);
    EXPECT_EQ(a.block, b.block);
    EXPECT_EQ(a.salient_groups, b.salient_groups);
    EXPECT_EQ(a.has_mean, b.has_mean);
    EXPECT_EQ(a.has_col_scale, b.has_col_scale);
    EXPECT_EQ(a.salient, b.salient);
    EXPECT_EQ(a.split, b.split);
    EXPECT_EQ(a.sign1, b.sign1);
    EXPECT_EQ(a.sign2, b.sign2);
    EXPECT_EQ(a.row_scale, b.row_scale);
    EXPECT_EQ(a.row_mean, b.row_mean);
    EXPECT_EQ(a.col_scale, b.col_scale);
}

BinaryPacked copy_packed(const BinaryLinear& l) { return l.packed(); }

// Forward of the packed layer against DenseLinear on the dequantized weight for n = 1..tokens in `ns`.
void check_parity(const BinaryWeights& w, std::initializer_list<int> ns, const std::string& what) {
    BinaryLinear lin(w);
    auto         deq = lin.dequantize();
    ASSERT_EQ(deq, w.dequantize()) << what;
    DenseLinear dense(w.in, w.out, deq);
    for (int n : ns) {
        auto               x = random_x(n, w.in, 31 * n + w.out);
        std::vector<float> y1((size_t)n * w.out), y2((size_t)n * w.out);
        dense.forward(x.data(), n, y1.data());
        lin.forward(x.data(), n, y2.data());
        for (size_t i = 0; i < y1.size(); ++i) {
            if (n <= 4)
                ASSERT_EQ(y2[i], y1[i]) << what << ", n " << n; // same decoded row, same dot
            else
                ASSERT_NEAR(y2[i], y1[i], 1e-5f * (1 + std::abs(y1[i]))) << what << ", n " << n;
        }
    }
}

std::vector<float> logits_of(const Model& m, const std::vector<int32_t>& ids) {
    KVCache            c = m.new_cache((int)ids.size());
    std::vector<float> out(ids.size() * m.spec().n_vocab);
    m.forward(ids.data(), (int)ids.size(), c, out.data(), true);
    return out;
}

// A plain sign binarization of a dense weight (out, in), enough to give the checkpoint test realistic values: the
// salient_frac columns of largest norm get a second sign plane; split = |w − mean| above the block-row average;
// per (row, block, group) the mean and mean absolute deviation (f16-rounded) as mean and scale.
BinaryWeights sign_binarize(const std::vector<float>& dense, int out, int in, int block, int salient_groups, bool mean,
                            bool col, double salient_frac) {
    BinaryWeights w;
    w.out = out, w.in = in, w.block = block, w.salient_groups = salient_groups, w.has_mean = mean,
    w.has_col_scale = col;
    std::vector<double> norm(in, 0.0);
    for (int o = 0; o < out; ++o)
        for (int j = 0; j < in; ++j) norm[j] += (double)dense[(size_t)o * in + j] * dense[(size_t)o * in + j];
    std::vector<int> order(in);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return norm[a] > norm[b]; });
    w.salient.assign(in, 0);
    for (int k = 0; k < (int)(salient_frac * in); ++k) w.salient[order[k]] = 1;
    const int nb = w.n_blocks(), ng = w.n_groups(), ns = w.n_slots();
    w.split.assign((size_t)out * in, 0);
    w.sign1.assign((size_t)out * in, 1);
    w.sign2.assign((size_t)out * in, 1);
    w.row_scale.assign((size_t)out * nb * ns, 0.0f);
    if (mean) w.row_mean.assign((size_t)out * nb * ng, 0.0f);
    if (col)
        for (int j = 0; j < in; ++j)
            for (int k = 0; k < ns; ++k) w.col_scale.push_back(1.0f + 0.125f * ((j + k) % 3));
    for (int o = 0; o < out; ++o)
        for (int b = 0; b < nb; ++b) {
            const float* row = dense.data() + (size_t)o * in;
            double       avg = 0;
            for (int j = b * block; j < (b + 1) * block; ++j) avg += std::abs(row[j]) / block;
            for (int j = b * block; j < (b + 1) * block; ++j) w.split[(size_t)o * in + j] = std::abs(row[j]) > avg;
            auto group_of = [&](int j) {
                const int sp = w.split[(size_t)o * in + j];
                return w.salient[j] ? 2 + (salient_groups == 2 ? sp : 0) : sp;
            };
            for (int g = 0; g < ng; ++g) {
                std::vector<int> cols;
                for (int j = b * block; j < (b + 1) * block; ++j)
                    if (group_of(j) == g) cols.push_back(j);
                if (cols.empty()) continue;
                double m = 0;
                for (int j : cols) m += mean ? row[j] / cols.size() : 0.0;
                const float mf = f16r((float)m);
                double      a0 = 0;
                for (int j : cols) a0 += std::abs(row[j] - mf) / cols.size();
                const int k0 = g < 2 ? g : 2 + 2 * (g - 2);
                double    a1 = 0;
                for (int j : cols) {
                    const size_t i = (size_t)o * in + j;
                    w.sign1[i]     = row[j] >= mf ? 1 : -1;
                    const double r = row[j] - mf - a0 * w.sign1[i];
                    w.sign2[i]     = r >= 0 ? 1 : -1;
                    a1 += std::abs(r) / cols.size();
                }
                if (mean) w.row_mean[((size_t)o * nb + b) * ng + g] = mf;
                w.row_scale[((size_t)o * nb + b) * ns + k0] = f16r((float)a0);
                if (g >= 2) w.row_scale[((size_t)o * nb + b) * ns + k0 + 1] = f16r((float)a1);
            }
        }
    return w;
}

const std::vector<int32_t> k_ids{71, 276, 281, 277, 32, 56, 10, 296, 388, 1398, 1496, 646, 111, 390, 44, 267};

// The bundled model with a few linears replaced by BinaryLinear in every configuration, one of them without salient
// columns (a zero-width .signs2); written to dir/"bin".
std::unique_ptr<Model> binary_model_written_to(const fs::path& dir) {
    auto m = Model::load(test::bundled_model());
    struct Repl {
        int        layer;
        LinearKind kind;
        int        expert, block, salient_groups;
        bool       mean, col;
        double     salient_frac;
    };
    const Repl repl[] = {{0, LinearKind::Q, -1, 128, 1, true, false, 0.05},
                         {1, LinearKind::ExpertDown, 3, 64, 2, true, false, 0.1},
                         {2, LinearKind::SharedUp, -1, 128, 2, false, true, 0.05},
                         {3, LinearKind::K, -1, 64, 1, true, true, 0.0}};
    for (const auto& r : repl) {
        auto&     slot = m->layer(r.layer).slot(r.kind, r.expert);
        const int out = slot->out_features(), in = slot->in_features();
        slot = std::make_unique<BinaryLinear>(
            sign_binarize(slot->dequantize(), out, in, r.block, r.salient_groups, r.mean, r.col, r.salient_frac));
    }
    quant::WriteOptions wo;
    wo.quantization = {{"method", "sign-test"}};
    quant::write_checkpoint(*m, test::bundled_model(), dir / "bin", wo);
    return m;
}

} // namespace

TEST(BinaryLinear, DequantizeFormulaByHand) {
    // (o, j) → (group, signs) in hand_case: (0,0) g1 +; (0,1) g0 −; (0,3) salient, split 1, s1 − s2 +;
    // (1,12) salient, split 0, s1 − s2 −; (1,9) g0 +; (1,14) g1 −.
    struct Case {
        int   salient_groups;
        bool  mean, col;
        float w00, w01, w03, w112, w19, w114;
    };
    const Case cases[] = {
        // mean 0.5 + 2; 0.25 − 1; g3: 1 − 5 + 6; g2: −2.25 − 113 − 114; −2.75 + 111; −2.5 − 112
        {2, true, false, 2.5f, -0.75f, 2.0f, -229.25f, 108.25f, -114.5f},
        // one salient group: (0,3) is g2 whatever its split bit: 0.75 − 3 + 4
        {1, true, false, 2.5f, -0.75f, 1.75f, -229.25f, 108.25f, -114.5f},
        // no mean, column scales: 2·0.75; −1·1; −5·3 + 6·3.25; −113·1 − 114·1.25; 111·1; −112·1.75
        {2, false, true, 1.5f, -1.0f, 4.5f, -255.5f, 111.0f, -196.0f},
        // both: 0.5 + 1.5; 0.25 − 1; 0.75 − 3·2.5 + 4·2.75; −2.25 − 113 − 142.5; −2.75 + 111; −2.5 − 196
        {1, true, true, 2.0f, -0.75f, 4.25f, -257.75f, 108.25f, -198.5f},
    };
    for (const auto& c : cases) {
        auto w = hand_case(c.salient_groups, c.mean, c.col);
        ASSERT_NO_THROW(w.validate());
        auto d = w.dequantize();
        ASSERT_EQ(d.size(), 32u);
        const std::string what = "salient_groups " + std::to_string(c.salient_groups) + " mean " +
                                 std::to_string(c.mean) + " col " + std::to_string(c.col);
        EXPECT_EQ(d[0], c.w00) << what;
        EXPECT_EQ(d[1], c.w01) << what;
        EXPECT_EQ(d[3], c.w03) << what;
        EXPECT_EQ(d[16 + 12], c.w112) << what;
        EXPECT_EQ(d[16 + 9], c.w19) << what;
        EXPECT_EQ(d[16 + 14], c.w114) << what;
        BinaryLinear lin(w);
        EXPECT_EQ(lin.dequantize(), d) << what;
        std::vector<float> x(16, 0.0f), y(2);
        x[3] = 1.0f; // picks column 3
        lin.forward(x.data(), 1, y.data());
        EXPECT_EQ(y[0], c.w03) << what;
    }
}

TEST(BinaryLinear, OrderOfOperationsIsThatOfTheFormula) {
    // (m + a0·s1) + a1·s2 and m + (a0·s1 + a1·s2) differ in f32 for m = 1, a0 = a1 = 2^-24 (half an ulp of 1): each
    // sum of the first is a tie that rounds to even, giving 1; the second gives 1 + 2^-23. f16 has no 2^-24 scale, but
    // the column scale gets there: a_k = 2^-13 · 2^-11.
    BinaryWeights w;
    w.out = 1, w.in = 8, w.block = 8, w.salient_groups = 1, w.has_mean = true, w.has_col_scale = true;
    w.salient = {1, 0, 0, 0, 0, 0, 0, 0};
    w.split.assign(8, 0);
    w.sign1.assign(8, 1);
    w.sign2.assign(8, 1);
    w.row_scale = {0.0f, 0.0f, std::ldexp(1.0f, -13), std::ldexp(1.0f, -13)};
    w.row_mean  = {0.0f, 0.0f, 1.0f};
    w.col_scale.assign(8 * 4, 1.0f);
    w.col_scale[2] = w.col_scale[3] = std::ldexp(1.0f, -11); // column 0, slots 2 and 3
    ASSERT_NO_THROW(w.validate());
    EXPECT_EQ(w.dequantize()[0], 1.0f);
    EXPECT_EQ(BinaryLinear(w).dequantize()[0], 1.0f);
}

TEST(BinaryLinear, PackLayoutLsbFirst) {
    for (int sg : {1, 2}) {
        auto         w = hand_case(sg, true, false);
        BinaryLinear lin(w);
        const auto&  p = lin.packed();
        EXPECT_EQ(lin.n_salient(), 2);
        EXPECT_EQ(p.salient, (std::vector<uint8_t>{0x08, 0x10})); // columns 3 and 12
        // Row 0 signs: +1 on even columns → bits 0, 2, 4, 6 of each byte; row 1 the odd ones.
        EXPECT_EQ(p.signs, (std::vector<uint8_t>{0x55, 0x55, 0xAA, 0xAA}));
        // Row 0 split: columns 0, 3, 6, 9, 12, 15; row 1: 2, 5, 8, 11, 14. With one salient group the split bits of
        // the salient columns 3 and 12 are stored as 0.
        if (sg == 2)
            EXPECT_EQ(p.split, (std::vector<uint8_t>{0x49, 0x92, 0x24, 0x49}));
        else
            EXPECT_EQ(p.split, (std::vector<uint8_t>{0x41, 0x82, 0x24, 0x49}));
        EXPECT_EQ(p.signs2, (std::vector<uint8_t>{0x03, 0x00})); // one byte per row: (col 3, col 12)
        ASSERT_EQ(p.row_scales.size(), 2u * 2 * (2 + 2 * sg));
        EXPECT_EQ(f16_to_f32(p.row_scales[1]), 2.0f); // row_scale[0, 0, 1]
        EXPECT_EQ(p.row_means.size(), 2u * 2 * (2 + sg));
        EXPECT_TRUE(p.col_scales.empty());

        auto t = lin.packed_tensors();
        ASSERT_EQ(t.size(), 6u);
        const char*                       suffix[] = {".salient", ".split", ".signs", ".signs2", ".row_scales",
                                                      ".row_means"};
        const std::vector<int64_t>        shape[]  = {{2}, {2, 2}, {2, 2}, {2, 1}, {2, 2, 2 + 2 * sg}, {2, 2, 2 + sg}};
        size_t                            total    = 0;
        for (size_t i = 0; i < t.size(); ++i) {
            EXPECT_EQ(t[i].suffix, suffix[i]);
            EXPECT_EQ(t[i].shape, shape[i]) << suffix[i];
            EXPECT_EQ(t[i].dtype, i >= 4 ? DType::F16 : DType::U8);
            int64_t numel = 1;
            for (auto d : t[i].shape) numel *= d;
            EXPECT_EQ((int64_t)t[i].bytes.size(), numel * (int64_t)dtype_size(t[i].dtype)) << suffix[i];
            total += t[i].bytes.size();
        }
        EXPECT_EQ(lin.storage_bytes(), total);
        EXPECT_EQ(lin.packed_config().dump(), "{\"format\":\"binary\",\"block_size\":8,\"salient_groups\":" +
                                                  std::to_string(sg) + ",\"mean\":true,\"col_scale\":false}");
        EXPECT_EQ(lin.format(), "binary");
    }
    // Column scales and no means: .col_scales [in, n_slots] replaces .row_means.
    BinaryLinear rc(hand_case(2, false, true));
    auto         t = rc.packed_tensors();
    ASSERT_EQ(t.size(), 6u);
    EXPECT_EQ(t[5].suffix, ".col_scales");
    EXPECT_EQ(t[5].shape, (std::vector<int64_t>{16, 6}));
    EXPECT_EQ(f16_to_f32(rc.packed().col_scales[3 * 6 + 4]), 3.0f); // col_scale[3, 4] = 0.5·4 + 0.25·4
}

TEST(BinaryLinear, StorageMatchesTheWorkedExampleOfFormatMd) {
    // docs/FORMAT.md: 256 × 256, block 128, 16 salient columns (c = 1/16).
    auto billm = random_weights(256, 256, 128, 1, true, false, 0.0, 3);
    auto rc    = random_weights(256, 256, 128, 2, false, true, 0.0, 4);
    for (int j = 0; j < 256; j += 16) billm.salient[j] = rc.salient[j] = 1;
    BinaryLinear a(billm), b(rc);
    EXPECT_EQ(a.storage_bytes(), 23584u + 256 * 2);
    EXPECT_EQ(8.0 * a.storage_bytes() / (256 * 256), 2.94140625);
    EXPECT_EQ(b.storage_bytes(), 25632u + 256 * 2);
    EXPECT_EQ(8.0 * b.storage_bytes() / (256 * 256), 3.19140625);
}

TEST(BinaryLinear, PackUnpackRoundTrip) {
    uint32_t seed = 1;
    for (int sg : {1, 2})
        for (bool mean : {true, false})
            for (bool col : {false, true})
                for (double frac : {0.0, 0.1, 1.0}) {
                    auto         w = random_weights(7, 48, 16, sg, mean, col, frac, seed++);
                    BinaryLinear lin(w);
                    expect_same(lin.unpack(), canonical(w));
                    EXPECT_EQ(lin.dequantize(), w.dequantize());
                    // The packed arrays alone rebuild the same layer (the checkpoint path).
                    BinaryLinear again(48, 7, copy_packed(lin));
                    EXPECT_EQ(again.dequantize(), lin.dequantize());
                    BinaryLinear repacked(lin.unpack());
                    EXPECT_EQ(repacked.packed().split, lin.packed().split);
                    EXPECT_EQ(repacked.packed().signs2, lin.packed().signs2);
                    EXPECT_EQ(lin.n_salient(), (int)std::count(w.salient.begin(), w.salient.end(), 1));
                    if (frac == 0.0) {
                        EXPECT_TRUE(lin.packed().signs2.empty());
                    }
                }
}

TEST(BinaryLinear, ForwardMatchesDequantize) {
    struct Shape {
        int out, in, block;
    };
    const Shape shapes[] = {{256, 128, 64}, {128, 256, 64}, {37, 64, 32}, {37, 64, 64},
                            {5, 36, 12},    {3, 13, 13}}; // blocks and rows not multiples of 8: the scalar edges
    uint32_t seed = 100;
    for (const auto& s : shapes)
        for (int sg : {1, 2})
            for (bool mean : {true, false})
                for (bool col : {false, true}) {
                    auto w = random_weights(s.out, s.in, s.block, sg, mean, col, 0.15, seed++);
                    // (string + ... rather than "(" + string: GCC 12 warns falsely about the latter, -Wrestrict)
                    check_parity(w, {1, 3, 17},
                                 std::to_string(s.out) + "x" + std::to_string(s.in) + " block " +
                                     std::to_string(s.block) + " sg " + std::to_string(sg) + " mean " +
                                     std::to_string(mean) + " col " + std::to_string(col));
                }
}

TEST(BinaryLinear, ForwardMultiThreaded) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(2);
    // 2·300·512 ≥ 2^18: the threaded GEMV path; n = 17: threaded GEMM tiles.
    check_parity(random_weights(300, 512, 128, 1, true, false, 0.05, 7), {2, 17}, "threaded, BiLLM-like");
    check_parity(random_weights(300, 512, 128, 2, false, true, 0.05, 8), {2, 17}, "threaded, ARB-RC-like");
    omp_set_num_threads(saved);
}

TEST(BinaryLinear, ValidateRejects) {
    auto good = hand_case(2, true, true);
    ASSERT_NO_THROW(good.validate());
    auto expect_bad = [&](const std::string& what, const std::function<void(BinaryWeights&)>& edit) {
        auto w = good;
        edit(w);
        EXPECT_THROW(w.validate(), InputError) << what;
        EXPECT_THROW(BinaryLinear{w}, InputError) << what;
    };
    expect_bad("salient_groups 3", [](auto& w) { w.salient_groups = 3; });
    expect_bad("salient_groups 0", [](auto& w) { w.salient_groups = 0; });
    expect_bad("block does not divide in", [](auto& w) { w.block = 6; });
    expect_bad("block 0", [](auto& w) { w.block = 0; });
    expect_bad("empty shape", [](auto& w) { w.out = 0; });
    expect_bad("salient size", [](auto& w) { w.salient.pop_back(); });
    expect_bad("salient flag 2", [](auto& w) { w.salient[0] = 2; });
    expect_bad("split size", [](auto& w) { w.split.push_back(0); });
    expect_bad("split bit 2", [](auto& w) { w.split[5] = 2; });
    expect_bad("sign1 0", [](auto& w) { w.sign1[7] = 0; });
    expect_bad("sign1 size", [](auto& w) { w.sign1.pop_back(); });
    expect_bad("sign2 0 on a salient column", [](auto& w) { w.sign2[16 + 12] = 0; });
    expect_bad("sign2 size", [](auto& w) { w.sign2.clear(); });
    expect_bad("row_scale size", [](auto& w) { w.row_scale.pop_back(); });
    expect_bad("row_scale not f16", [](auto& w) { w.row_scale[2] = 0.1f; });
    expect_bad("row_scale infinite", [](auto& w) { w.row_scale[2] = INFINITY; });
    expect_bad("row_mean NaN", [](auto& w) { w.row_mean[0] = NAN; });
    expect_bad("row_mean without has_mean", [](auto& w) { w.has_mean = false; });
    expect_bad("col_scale size", [](auto& w) { w.col_scale.resize(16 * 4); });
    expect_bad("col_scale not f16", [](auto& w) { w.col_scale[0] = 1.0f + 1.0f / 4096; });
    expect_bad("col_scale without has_col_scale", [](auto& w) { w.has_col_scale = false; });
    // sign2 off the salient columns and split bits of salient columns (one group) are ignored, not rejected.
    auto w       = good;
    w.sign2[0]   = 0;
    w.salient_groups = 1;
    w.row_scale.resize(2 * 2 * 4);
    w.row_mean.resize(2 * 2 * 3);
    w.col_scale.resize(16 * 4);
    EXPECT_NO_THROW(w.validate());
}

TEST(BinaryLinear, PackedConstructorRejects) {
    BinaryLinear lin(hand_case(2, true, false));
    auto expect_bad = [&](const std::string& what, int in, int out, const std::function<void(BinaryPacked&)>& edit) {
        auto p = copy_packed(lin);
        edit(p);
        EXPECT_THROW(BinaryLinear(in, out, p), FormatError) << what;
    };
    EXPECT_NO_THROW(BinaryLinear(16, 2, copy_packed(lin)));
    expect_bad("out mismatch", 16, 3, [](auto&) {});
    expect_bad("in mismatch", 24, 2, [](auto&) {});
    expect_bad("salient_groups", 16, 2, [](auto& p) { p.salient_groups = 1; }); // row_scales too long for 1 group
    expect_bad("salient_groups 5", 16, 2, [](auto& p) { p.salient_groups = 5; });
    expect_bad("block", 16, 2, [](auto& p) { p.block = 5; });
    expect_bad("salient bitmap", 16, 2, [](auto& p) { p.salient.push_back(0); });
    expect_bad("more salient columns than signs2 holds", 16, 2, [](auto& p) { p.salient[0] = 0xFF; });
    expect_bad("split", 16, 2, [](auto& p) { p.split.pop_back(); });
    expect_bad("signs", 16, 2, [](auto& p) { p.signs.push_back(0); });
    expect_bad("signs2", 16, 2, [](auto& p) { p.signs2.clear(); });
    expect_bad("row_scales", 16, 2, [](auto& p) { p.row_scales.pop_back(); });
    expect_bad("row_means", 16, 2, [](auto& p) { p.has_mean = false; });
    expect_bad("col_scales", 16, 2, [](auto& p) { p.has_col_scale = true; });
    try {
        BinaryLinear(16, 2, [&] {
            auto p = copy_packed(lin);
            p.signs2.clear();
            return p;
        }());
        ADD_FAILURE() << "expected FormatError";
    } catch (const FormatError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("signs2 0"), std::string::npos) << msg;
        EXPECT_NE(msg.find("2 salient columns"), std::string::npos) << msg;
    }
}

TEST(BinaryLinear, CheckpointRoundTripKeepsLogits) {
    auto dir = test::scratch_dir("binary-ckpt");
    auto m   = binary_model_written_to(dir);
    auto q   = Model::load(dir / "bin");
    ASSERT_FALSE(q->spec().quantization.is_null());
    const auto& mods = q->spec().quantization["modules"];
    EXPECT_EQ(mods.size(), 4u);
    const std::pair<int, LinearKind> where[] = {{0, LinearKind::Q}, {2, LinearKind::SharedUp}, {3, LinearKind::K}};
    for (auto [il, kind] : where) {
        auto* a = dynamic_cast<const BinaryLinear*>(m->layer(il).slot(kind).get());
        auto* b = dynamic_cast<const BinaryLinear*>(q->layer(il).slot(kind).get());
        ASSERT_NE(b, nullptr) << q->spec().linear_name(il, kind);
        EXPECT_EQ(b->dequantize(), a->dequantize());
        EXPECT_EQ(b->storage_bytes(), a->storage_bytes());
        EXPECT_EQ(mods[q->spec().linear_name(il, kind)], nlohmann::json::parse(a->packed_config().dump()));
    }
    auto* down = dynamic_cast<const BinaryLinear*>(q->layer(1).experts[3][2].get());
    ASSERT_NE(down, nullptr);
    EXPECT_EQ(down->salient_groups(), 2);
    auto* k = dynamic_cast<const BinaryLinear*>(q->layer(3).k.get());
    EXPECT_EQ(k->n_salient(), 0); // its .signs2 is [out, 0]
    EXPECT_NE(dynamic_cast<const DenseLinear*>(q->layer(0).k.get()), nullptr);

    auto lq = logits_of(*q, k_ids), lm = logits_of(*m, k_ids);
    EXPECT_EQ(lq, lm); // same packed bytes, same kernels: bit-identical
    for (float v : lq) ASSERT_TRUE(std::isfinite(v));
    auto fp = logits_of(*Model::load(test::bundled_model()), k_ids);
    EXPECT_NE(lq, fp); // the binarized linears changed the model (the test can fail)

    // The tensors of the zero-salient module as the file holds them.
    auto              st   = SafetensorsFile::open(dir / "bin" / "model.safetensors");
    const std::string name = q->spec().linear_name(3, LinearKind::K);
    ASSERT_NE(st->find(name + ".signs2"), nullptr);
    EXPECT_EQ(st->find(name + ".signs2")->shape, (std::vector<int64_t>{k->out_features(), 0}));
    EXPECT_EQ(st->find(name + ".weight"), nullptr);
    ASSERT_NE(st->find(name + ".col_scales"), nullptr);
}

TEST(BinaryLinear, LoaderRejectsInconsistentCheckpoints) {
    auto              dir = test::scratch_dir("binary-loader");
    auto              m   = binary_model_written_to(dir);
    const auto        src = dir / "bin";
    const std::string q0  = m->spec().linear_name(0, LinearKind::Q);
    auto fresh = [&](const std::string& name) {
        fs::copy(src, dir / name, fs::copy_options::recursive);
        return dir / name;
    };
    const std::string cfg_name = "config.json";
    // Config fields: missing, wrong type, out of range.
    auto config_case = [&](const std::string& name, const std::function<void(nlohmann::ordered_json&)>& edit,
                           const std::string& what) {
        auto d = fresh(name);
        edit_config(d, [&](auto& cfg) { edit(cfg["quantization_config"]["modules"][q0]); });
        expect_load_error(d, {(d / cfg_name).string(), q0, what});
    };
    config_case("bs-missing", [](auto& q) { q.erase("block_size"); }, "block_size");
    config_case("bs-bad", [](auto& q) { q["block_size"] = 96; }, "block_size must divide");
    config_case("bs-zero", [](auto& q) { q["block_size"] = 0; }, "block_size must divide");
    config_case("bs-string", [](auto& q) { q["block_size"] = "128"; }, "block_size");
    config_case("sg-missing", [](auto& q) { q.erase("salient_groups"); }, "salient_groups");
    config_case("sg-bad", [](auto& q) { q["salient_groups"] = 3; }, "salient_groups must be 0, 1 or 2");
    {
        // 0 (no salient columns) implies fewer coefficient slots than this checkpoint's tensors hold.
        auto d = fresh("sg-zero");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][q0]["salient_groups"] = 0; });
        expect_load_error(d, {q0 + ".row_scales", "[256, 2, 2]"});
    }
    config_case("mean-missing", [](auto& q) { q.erase("mean"); }, "\"mean\"");
    config_case("col-int", [](auto& q) { q["col_scale"] = 1; }, "\"col_scale\"");

    // A side tensor of the wrong shape (same bytes, flattened): the message names the file and the tensor.
    {
        auto d  = fresh("shape");
        auto st = SafetensorsFile::open(d / "model.safetensors");
        std::vector<TensorToWrite> tensors;
        for (const auto& [name, ti] : st->tensors()) {
            auto shape = ti.shape;
            if (name == q0 + ".row_scales") shape = {ti.shape[0], ti.shape[1] * ti.shape[2]};
            tensors.push_back({name, ti.dtype, shape, {ti.data, ti.nbytes}});
        }
        write_safetensors(d / "model.safetensors.new", tensors, st->metadata());
        st.reset();
        fs::rename(d / "model.safetensors.new", d / "model.safetensors");
        expect_load_error(d, {(d / "model.safetensors").string(), q0 + ".row_scales", "F16 [256, 8]", "F16 [256, 2, 4]"});
    }
    // A side tensor of the wrong dtype.
    {
        auto d  = fresh("dtype");
        auto st = SafetensorsFile::open(d / "model.safetensors");
        std::vector<TensorToWrite> tensors;
        for (const auto& [name, ti] : st->tensors()) {
            auto dt = name == q0 + ".signs" ? DType::I8 : ti.dtype;
            tensors.push_back({name, dt, ti.shape, {ti.data, ti.nbytes}});
        }
        write_safetensors(d / "model.safetensors.new", tensors, st->metadata());
        st.reset();
        fs::rename(d / "model.safetensors.new", d / "model.safetensors");
        expect_load_error(d, {(d / "model.safetensors").string(), q0 + ".signs", "I8"});
    }
    // mean: false while the file holds .row_means: the layer reads no means, .row_scales still fits; but flipping
    // col_scale on asks for a tensor that is not there.
    {
        auto d = fresh("col-missing");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][q0]["col_scale"] = true; });
        EXPECT_THROW(Model::load(d), NotFoundError);
    }
    // Changing salient_groups changes the implied .row_scales shape.
    {
        auto d = fresh("sg-shape");
        edit_config(d, [&](auto& cfg) { cfg["quantization_config"]["modules"][q0]["salient_groups"] = 2; });
        expect_load_error(d, {(d / "model.safetensors").string(), q0 + ".row_scales"});
    }
    // The untouched copy still loads.
    EXPECT_NO_THROW(Model::load(fresh("ok")));
}
