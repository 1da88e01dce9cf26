// The Vulkan runner's ops (engine/vulkan/model_ops.h), each against the CPU forward's code for the same step
// (engine/cpu/ops.h kernels, NbitLinear::forward, the routing and combine loops of Model::moe_ffn, which these tests
// restate). Odd sizes and tails, every expert id, duplicate and empty experts, batches of 1..8 tokens.
// Tolerances as test_vulkan_ops.cpp: dot products |Δ| ≤ 2e-5·Σ|x·w|; element-wise ops relative 1e-5.
#include <gtest/gtest.h>

#if MOEBIUS_HAS_VULKAN

#include "engine/cpu/binary_linear.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/vq_linear.h"
#include "engine/core/dtype.h"
#include "engine/vulkan/model_ops.h"
#include "engine/vulkan/ops.h"
#include "random_binary.h"
#include "test_vulkan_util.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

using namespace moebius;
using moebius::test::randn;
using moebius::test::read_floats;

namespace {

// An NbitLinear with random codes, scales and zeros.
std::unique_ptr<NbitLinear> random_nbit(int in, int out, int bits, int group, uint32_t seed) {
    std::mt19937         rng(seed);
    std::vector<uint8_t> codes((size_t)in * out);
    for (auto& c : codes) c = (uint8_t)(rng() % (1u << bits));
    const int          ng = in / group;
    std::vector<float> scales((size_t)out * ng), zeros((size_t)out * ng);
    for (auto& s : scales) s = std::ldexp((float)(rng() % 1024 + 1), -12); // exact in f16
    for (auto& z : zeros) z = (float)(rng() % (1u << bits));
    return NbitLinear::from_codes(in, out, bits, group, codes.data(), scales.data(), zeros.data());
}

// A VqLinear with random f16-exact codebooks and scales and random indices.
// codebook_bits 8: the codebooks rounded to their 8-bit grids.
std::unique_ptr<VqLinear> random_vq(int in, int out, int dim, int bits, int G, int R, bool scaled, uint32_t seed,
                                    int codebook_bits = 16) {
    std::mt19937 rng(seed);
    VqWeights    w;
    w.out = out, w.in = in, w.dim = dim, w.bits = bits, w.group_cols = G, w.rows_per_codebook = R;
    w.codebooks.resize((size_t)w.n_codebooks() * w.k() * dim);
    for (auto& c : w.codebooks) c = std::ldexp((float)((int)(rng() % 2048) - 1024), -10); // exact in f16
    w.codebook_bits = codebook_bits;
    if (codebook_bits == 8)
        for (int c = 0; c < w.n_codebooks(); ++c)
            w.codebook_scales.push_back(
                f16_to_f32(vq_round_codebook_int8(w.codebooks.data() + (size_t)c * w.k() * dim, (size_t)w.k() * dim)));
    w.codes.resize((size_t)out * (in / dim));
    for (auto& c : w.codes) c = (uint16_t)(rng() % w.k());
    if (scaled) {
        w.scales.resize(out);
        for (auto& s : w.scales) s = std::ldexp((float)(rng() % 1024 + 1), -9);
    }
    return std::make_unique<VqLinear>(w);
}

// |got − ref| ≤ tol·scale per element.
void expect_close(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<float>& scale,
                  double tol, const std::string& what) {
    ASSERT_EQ(got.size(), ref.size()) << what;
    for (size_t i = 0; i < got.size(); ++i)
        ASSERT_LE(std::fabs(got[i] - ref[i]), tol * scale[i] + 1e-30) << what << " at " << i;
}

// Σ|x·w| per output, the scale of a dot product's rounding error.
std::vector<float> abs_scale(const Linear& l, const std::vector<float>& x, int n) {
    auto                w = l.dequantize();
    const int           in = l.in_features(), out = l.out_features();
    std::vector<float>  s((size_t)n * out);
    for (int t = 0; t < n; ++t)
        for (int o = 0; o < out; ++o) {
            double a = 0;
            for (int j = 0; j < in; ++j) a += std::fabs((double)x[(size_t)t * in + j] * w[(size_t)o * in + j]);
            s[(size_t)t * out + o] = (float)a;
        }
    return s;
}

} // namespace

TEST(VulkanModelOps, NbitAndF32LinearEveryMatrixWithEpilogues) {
    VK_DEVICE_OR_SKIP(dev);
    const int in = 96, out = 37;
    for (int bits : {2, 3, 4, 8}) {
        SCOPED_TRACE("bits " + std::to_string(bits));
        std::vector<std::unique_ptr<NbitLinear>> mats;
        for (int m = 0; m < 3; ++m) mats.push_back(random_nbit(in, out, bits, bits == 3 ? 32 : 48, 10 * bits + m));
        std::vector<const Linear*> ptrs{mats[0].get(), mats[1].get(), mats[2].get()};
        vk::QWeights q = vk::QWeights::upload(*dev, ptrs, out);
        EXPECT_EQ(q.format, vk::WeightFormat::Nbit);
        EXPECT_TRUE(q.note.empty());
        // The same weights dequantized: the f32 path.
        std::vector<std::unique_ptr<DenseLinear>> dense;
        for (auto& m : mats) dense.push_back(std::make_unique<DenseLinear>(in, out, m->dequantize()));
        vk::QWeights qf = vk::QWeights::upload(*dev, {dense[0].get(), dense[1].get(), dense[2].get()}, out);
        EXPECT_NE(qf.format, vk::WeightFormat::Nbit); // dense: f32, or f16 / bf16 where exact
        for (int n : {1, 3, 8, 17}) {
            auto       x  = randn((size_t)n * in, 100 + n);
            auto       xb = dev->upload_vector(x);
            vk::Buffer y  = dev->create_buffer((size_t)n * out * 4);
            for (int m = 0; m < 3; ++m) {
                std::vector<float> ref((size_t)n * out);
                mats[m]->forward(x.data(), n, ref.data());
                const auto sc = abs_scale(*mats[m], x, n);
                for (const vk::QWeights* w : {&q, &qf}) {
                    vk::CommandList cl(*dev);
                    vk::linear(*dev, cl, *w, m, xb, n, y);
                    cl.submit_and_wait();
                    expect_close(read_floats(*dev, y, ref.size()), ref, sc, 2e-5,
                                 "n " + std::to_string(n) + " mat " + std::to_string(m));
                }
            }
            // Epilogue: y = y0 + (add + sigmoid(gate) · (dot + bias)), the CPU order of the shared-expert combine.
            auto bias = randn(out, 7), add = randn((size_t)n * out, 8), gate = randn((size_t)n * 3, 9),
                 y0 = randn((size_t)n * out, 10);
            std::vector<float> ref((size_t)n * out);
            mats[1]->forward(x.data(), n, ref.data());
            for (int t = 0; t < n; ++t)
                for (int o = 0; o < out; ++o) {
                    float& r = ref[(size_t)t * out + o];
                    r        = y0[(size_t)t * out + o] +
                        (add[(size_t)t * out + o] + cpu::sigmoid(gate[(size_t)t * 3 + 2]) * (r + bias[o]));
                }
            auto bb = dev->upload_vector(bias), ab = dev->upload_vector(add), gb = dev->upload_vector(gate);
            dev->upload(y, y0.data(), y0.size() * 4);
            vk::CommandList cl(*dev);
            vk::linear(*dev, cl, q, 1, xb, n, y,
                       {.bias = &bb, .gate = &gb, .gate_stride = 3, .gate_off = 2, .add = &ab, .residual = true});
            cl.submit_and_wait();
            auto sc = abs_scale(*mats[1], x, n);
            for (auto& s : sc) s += 1.f;
            expect_close(read_floats(*dev, y, ref.size()), ref, sc, 2e-5, "epilogue n " + std::to_string(n));

            // The fused RMSNorm: y = RMSNorm(x; g) · Wᵀ from the un-normalised x, against cpu::rmsnorm then the linear.
            auto g = randn(in, 11);
            for (auto& v : g) v = 1.f + 0.25f * v;
            std::vector<float> xn(x.size());
            cpu::rmsnorm(x.data(), n, in, g.data(), 1e-6f, xn.data());
            std::vector<float> refn((size_t)n * out);
            mats[2]->forward(xn.data(), n, refn.data());
            auto            gbuf = dev->upload_vector(g);
            vk::CommandList cn(*dev);
            vk::linear(*dev, cn, q, 2, xb, n, y, {.norm = &gbuf, .eps = 1e-6f});
            cn.submit_and_wait();
            expect_close(read_floats(*dev, y, refn.size()), refn, abs_scale(*mats[2], xn, n), 2e-5,
                         "norm n " + std::to_string(n));
        }
    }
}

TEST(VulkanModelOps, VqLinearEveryMatrixAndExpertDispatch) {
    VK_DEVICE_OR_SKIP(dev);
    struct Case {
        int  dim, bits, G, R;
        bool scaled;
        int  codebook_bits = 16;
    };
    // D = 1, 2, 4; 3 index bits straddle words; R = 5 leaves a shorter last codebook block (out = 13); 8-bit
    // codebooks reach the device as the same decoded f16 values.
    for (Case c : {Case{1, 3, 16, 4, true}, Case{2, 2, 32, 5, false}, Case{4, 2, 48, 13, true}, Case{2, 4, 96, 1, true},
                   Case{2, 3, 32, 5, true, 8}}) {
        SCOPED_TRACE("D " + std::to_string(c.dim) + " bits " + std::to_string(c.bits) + " codebook bits " +
                     std::to_string(c.codebook_bits));
        const int in = 96, out = 13;
        std::vector<std::unique_ptr<VqLinear>> mats;
        std::vector<const Linear*>             ptrs;
        for (int m = 0; m < 3; ++m) {
            mats.push_back(random_vq(in, out, c.dim, c.bits, c.G, c.R, c.scaled, 7 * m + c.dim, c.codebook_bits));
            if (c.codebook_bits == 8) ASSERT_EQ(mats.back()->codebook_bits(), 8);
            ptrs.push_back(mats.back().get());
        }
        auto q = vk::QWeights::upload(*dev, ptrs, out);
        ASSERT_EQ(q.format, vk::WeightFormat::Vq);
        EXPECT_TRUE(q.note.empty());
        for (int n : {1, 9}) {
            auto x  = randn((size_t)n * in, 60 + n);
            auto xb = dev->upload_vector(x);
            auto y  = dev->create_buffer((size_t)n * out * 4);
            for (int m = 0; m < 3; ++m) {
                std::vector<float> ref((size_t)n * out);
                mats[m]->forward(x.data(), n, ref.data());
                vk::CommandList cl(*dev);
                vk::linear(*dev, cl, q, m, xb, n, y);
                cl.submit_and_wait();
                expect_close(read_floats(*dev, y, ref.size()), ref, abs_scale(*mats[m], x, n), 2e-5,
                             "n " + std::to_string(n) + " mat " + std::to_string(m));
            }
        }
    }
    // Expert-indexed gate/up and down read VQ experts too: gate/up (2·E matrices of F rows), down (E of H rows).
    const int H = 32, F = 16, E = 3, K = 2, n = 3;
    std::vector<std::unique_ptr<VqLinear>> gu, dn;
    std::vector<const Linear*>             pgu, pdn;
    for (int e = 0; e < E; ++e) {
        gu.push_back(random_vq(H, F, 2, 2, 16, 4, true, 100 + 2 * e));
        gu.push_back(random_vq(H, F, 2, 2, 16, 4, true, 101 + 2 * e));
        dn.push_back(random_vq(F, H, 2, 2, 16, 4, true, 200 + e));
        pgu.push_back(gu[2 * e].get());
        pgu.push_back(gu[2 * e + 1].get());
        pdn.push_back(dn[e].get());
    }
    auto qgu = vk::QWeights::upload(*dev, pgu, F), qdn = vk::QWeights::upload(*dev, pdn, H);
    ASSERT_EQ(qgu.format, vk::WeightFormat::Vq);
    ASSERT_EQ(qdn.format, vk::WeightFormat::Vq);
    std::vector<int32_t> ids{0, 2, 1, 2, 0, 1}; // (n, K) sorted per token
    auto x = randn((size_t)n * H, 5, 0.3f), w = randn((size_t)n * K, 6, 0.5f);
    std::vector<float> ref((size_t)n * H, 0.f);
    for (int t = 0; t < n; ++t)
        for (int j = 0; j < K; ++j) {
            const int          e = ids[(size_t)t * K + j];
            std::vector<float> g(F), u(F), h(F), yy(H);
            gu[2 * e]->forward(x.data() + (size_t)t * H, 1, g.data());
            gu[2 * e + 1]->forward(x.data() + (size_t)t * H, 1, u.data());
            cpu::silu_mul(g.data(), u.data(), 1, F, h.data());
            dn[e]->forward(h.data(), 1, yy.data());
            for (int o = 0; o < H; ++o) ref[(size_t)t * H + o] += w[(size_t)t * K + j] * yy[o];
        }
    auto xb = dev->upload_vector(x), ib = dev->upload_vector(ids), wb = dev->upload_vector(w);
    auto hb = dev->create_buffer((size_t)n * K * F * 4), yb = dev->create_buffer((size_t)n * H * 4);
    vk::CommandList cl(*dev);
    vk::moe_gate_up(*dev, cl, xb, n, &ib, K, qgu, hb);
    vk::moe_down(*dev, cl, hb, ib, wb, n, K, qdn, yb, false);
    cl.submit_and_wait();
    auto gy = read_floats(*dev, yb, ref.size());
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(gy[i], ref[i], 1e-4 * (1 + std::fabs(ref[i]))) << i;
}

TEST(VulkanModelOps, BinarySetsSplitByRowsMatchUnsplit) {
    // A binary set over one binding is split by rows (model_ops.h QWeights): each part holds its rows' bit planes and
    // scales, each row's offset into the part's qz, and the salient-column regions of the linears its rows belong to.
    // q | k | v stacked into one matrix (BiLLM, different salient columns each, in = 80: the weight-by-weight decode)
    // at 2 KiB per binding: parts of 73 rows cross the linears' boundaries. Three ARB-RC experts (column scales,
    // in = 96: the sum trick) at 8 KiB: three parts, each with all three regions. Every matrix of the split set gives
    // the unsplit set's output bit for bit and the CPU's within 2e-5·Σ|x·w|.
    VK_DEVICE_OR_SKIP(dev);
    struct Restore {
        vk::Device* d;
        ~Restore() { d->set_max_binding_bytes(0); }
    } restore{dev};
    struct Case {
        int              in, sg, n_mats, parts;
        bool             mean, cols;
        std::vector<int> outs; // stacked linears; n_mats · out rows in all
        uint64_t         limit;
    };
    std::mt19937 rng(17);
    for (const Case& c : {Case{80, 1, 1, 5, true, false, {150, 70, 90}, 2 << 10},
                          Case{96, 2, 3, 3, false, true, {200, 200, 200}, 8 << 10}}) {
        SCOPED_TRACE("in " + std::to_string(c.in));
        std::vector<std::unique_ptr<BinaryLinear>> lins;
        std::vector<const Linear*>                 ptrs;
        int                                        rows = 0;
        for (int o : c.outs) {
            lins.push_back(std::make_unique<BinaryLinear>(
                test::random_binary_weights(o, c.in, c.sg, c.mean, c.cols, rng, 5)));
            ptrs.push_back(lins.back().get());
            rows += o;
        }
        const int out = rows / c.n_mats;
        dev->set_max_binding_bytes(0);
        auto whole = vk::QWeights::upload(*dev, ptrs, out);
        dev->set_max_binding_bytes(c.limit);
        auto split = vk::QWeights::upload(*dev, ptrs, out);
        ASSERT_EQ(split.format, vk::WeightFormat::Binary);
        EXPECT_EQ(whole.n_parts(), 1);
        EXPECT_EQ(split.n_parts(), c.parts);
        dev->set_max_binding_bytes(0);
        const int n  = 3;
        auto      x  = randn((size_t)n * c.in, 5);
        auto      xb = dev->upload_vector(x);
        auto      y  = dev->create_buffer((size_t)n * out * 4);
        for (int m = 0; m < c.n_mats; ++m) {
            std::vector<float> got[2];
            for (int s = 0; s < 2; ++s) {
                vk::CommandList cl(*dev);
                vk::linear(*dev, cl, s ? split : whole, m, xb, n, y);
                cl.submit_and_wait();
                got[s] = read_floats(*dev, y, (size_t)n * out);
            }
            EXPECT_EQ(got[0], got[1]) << "mat " << m;
            // CPU: the matrix's rows, from the linears stacked in it.
            std::vector<float> ref((size_t)n * out), scale((size_t)n * out);
            int                r0 = 0;
            for (const auto& l : lins) {
                const int o = l->out_features(), lo = std::max(r0, m * out), hi = std::min(r0 + o, (m + 1) * out);
                if (lo < hi) {
                    std::vector<float> yl((size_t)n * o);
                    l->forward(x.data(), n, yl.data());
                    auto sl = abs_scale(*l, x, n);
                    for (int t = 0; t < n; ++t)
                        for (int r = lo; r < hi; ++r) {
                            ref[(size_t)t * out + r - m * out]   = yl[(size_t)t * o + r - r0];
                            scale[(size_t)t * out + r - m * out] = sl[(size_t)t * o + r - r0];
                        }
                }
                r0 += o;
            }
            expect_close(got[1], ref, scale, 2e-5, "mat " + std::to_string(m));
        }
    }
}

TEST(VulkanModelOps, DenseWeightsGoUpAsBf16OrF16OnlyWhenExact) {
    // Arbitrary f32 values stay f32; values rounded to bf16 (a bf16 checkpoint's) go up as bf16, values rounded to
    // f16 but not bf16-exact as f16; in each case the linear computes what the CPU's DenseLinear computes.
    VK_DEVICE_OR_SKIP(dev);
    const int in = 70, out = 9, n = 3;
    auto      x  = randn((size_t)n * in, 21);
    auto      xb = dev->upload_vector(x);
    for (auto [fmt, round] : {std::pair{vk::WeightFormat::F32, 0}, {vk::WeightFormat::Bf16, 1}, {vk::WeightFormat::F16, 2}}) {
        auto w = randn((size_t)out * in, 22);
        for (auto& v : w) {
            if (round == 1) v = bf16_to_f32(f32_to_bf16(v));
            if (round == 2) v = f16_to_f32(f32_to_f16(v));
        }
        DenseLinear d(in, out, w);
        auto        q = vk::QWeights::upload(*dev, {&d}, out);
        EXPECT_EQ(q.format, fmt) << round;
        EXPECT_TRUE(q.note.empty());
        EXPECT_EQ(q.w.size(), (size_t)out * in * (fmt == vk::WeightFormat::F32 ? 4 : 2));
        std::vector<float> ref((size_t)n * out);
        d.forward(x.data(), n, ref.data());
        auto            y = dev->create_buffer(ref.size() * 4);
        vk::CommandList cl(*dev);
        vk::linear(*dev, cl, q, 0, xb, n, y);
        cl.submit_and_wait();
        expect_close(read_floats(*dev, y, ref.size()), ref, abs_scale(d, x, n), 2e-5, "format " + std::to_string(round));
    }
}

TEST(VulkanModelOps, MixedFormatsAreDequantizedWithANote) {
    VK_DEVICE_OR_SKIP(dev);
    auto a = random_nbit(64, 5, 4, 32, 1), b = random_nbit(64, 5, 3, 32, 2);
    auto q = vk::QWeights::upload(*dev, {a.get(), b.get()}, 5);
    EXPECT_NE(q.format, vk::WeightFormat::Nbit);
    EXPECT_NE(q.note.find("nbit"), std::string::npos) << q.note;
    auto x = randn(64, 3);
    std::vector<float> ref(5);
    b->forward(x.data(), 1, ref.data());
    auto xb = dev->upload_vector(x);
    auto y  = dev->create_buffer(20);
    vk::CommandList cl(*dev);
    vk::linear(*dev, cl, q, 1, xb, 1, y);
    cl.submit_and_wait();
    expect_close(read_floats(*dev, y, 5), ref, abs_scale(*b, x, 1), 2e-5, "mixed");
}

TEST(VulkanModelOps, EmbeddingLookup) {
    VK_DEVICE_OR_SKIP(dev);
    const int V = 11, d = 67, n = 6;
    auto table = randn((size_t)V * d, 4);
    std::vector<int32_t> tok{10, 0, 3, 3, 7, 10};
    auto tb = dev->upload_vector(table), kb = dev->upload_vector(tok);
    auto x  = dev->create_buffer((size_t)n * d * 4);
    vk::CommandList cl(*dev);
    vk::embed(*dev, cl, kb, n, tb, d, x);
    cl.submit_and_wait();
    auto got = read_floats(*dev, x, (size_t)n * d);
    for (int t = 0; t < n; ++t)
        for (int j = 0; j < d; ++j) ASSERT_EQ(got[(size_t)t * d + j], table[(size_t)tok[t] * d + j]);
}

namespace {

// Model::attention after the projections, restated with the CPU kernels: q/k norm, clamp, RoPE, cache append,
// causal softmax(q·kᵀ·scale)·v per head. qkv (n, qd + 2 kvd) → out (n, qd); kc / vc (n_ctx, kvd) updated.
void cpu_attention(const vk::AttnShape& s, vk::QkNormMode mode, const std::vector<float>& qn,
                   const std::vector<float>& kn, float eps, std::optional<float> clip, const std::vector<float>& invf,
                   const std::vector<float>& qkv, int n, int n_past, std::vector<float>& kc, std::vector<float>& vc,
                   std::vector<float>& out) {
    const int qd = s.q_dim(), kvd = s.kv_dim(), hd = s.head_dim, w = qd + 2 * kvd;
    std::vector<float> q((size_t)n * qd), k((size_t)n * kvd), v((size_t)n * kvd);
    for (int t = 0; t < n; ++t) {
        std::copy_n(qkv.data() + (size_t)t * w, qd, q.data() + (size_t)t * qd);
        std::copy_n(qkv.data() + (size_t)t * w + qd, kvd, k.data() + (size_t)t * kvd);
        std::copy_n(qkv.data() + (size_t)t * w + qd + kvd, kvd, v.data() + (size_t)t * kvd);
    }
    if (mode == vk::QkNormMode::PerHead) {
        cpu::rmsnorm(q.data(), n * s.n_head, hd, qn.data(), eps, q.data());
        cpu::rmsnorm(k.data(), n * s.n_head_kv, hd, kn.data(), eps, k.data());
    } else if (mode == vk::QkNormMode::Full) {
        cpu::rmsnorm(q.data(), n, qd, qn.data(), eps, q.data());
        cpu::rmsnorm(k.data(), n, kvd, kn.data(), eps, k.data());
    }
    if (clip)
        for (auto* b : {&q, &k, &v})
            for (float& f : *b) f = std::clamp(f, -*clip, *clip);
    std::vector<int32_t> pos(n);
    std::iota(pos.begin(), pos.end(), n_past);
    cpu::rope(q.data(), n, s.n_head, hd, qd, pos.data(), invf.data());
    cpu::rope(k.data(), n, s.n_head_kv, hd, kvd, pos.data(), invf.data());
    std::copy(k.begin(), k.end(), kc.begin() + (size_t)n_past * kvd);
    std::copy(v.begin(), v.end(), vc.begin() + (size_t)n_past * kvd);
    const float scale = 1.0f / std::sqrt((float)hd);
    out.assign((size_t)n * qd, 0.f);
    for (int t = 0; t < n; ++t)
        for (int h = 0; h < s.n_head; ++h) {
            const int          kvh = h / (s.n_head / s.n_head_kv), len = n_past + t + 1;
            std::vector<float> sc(len);
            for (int p = 0; p < len; ++p) {
                float d = 0;
                for (int i = 0; i < hd; ++i) d += q[(size_t)t * qd + h * hd + i] * kc[(size_t)p * kvd + kvh * hd + i];
                sc[p] = d;
            }
            cpu::softmax_scaled(sc.data(), len, scale);
            for (int i = 0; i < hd; ++i) {
                float a = 0;
                for (int p = 0; p < len; ++p) a += sc[p] * vc[(size_t)p * kvd + kvh * hd + i];
                out[(size_t)t * qd + h * hd + i] = a;
            }
        }
}

} // namespace

TEST(VulkanModelOps, QkNormRopeAttentionPrefillAndDecode) {
    VK_DEVICE_OR_SKIP(dev);
    const vk::AttnShape s{6, 2, 10}; // GQA 3:1, head_dim 10 (odd half)
    const int           n_ctx = 23, qd = s.q_dim(), kvd = s.kv_dim(), w = qd + 2 * kvd;
    std::vector<float>  invf(s.head_dim / 2);
    for (int i = 0; i < s.head_dim / 2; ++i) invf[i] = (float)(1.0 / std::pow(10000.0, 2.0 * i / s.head_dim));
    auto ropeb = dev->upload_vector(vk::rope_table(invf, n_ctx));
    struct Case {
        vk::QkNormMode       mode;
        std::optional<float> clip;
    };
    for (Case c : {Case{vk::QkNormMode::None, {}}, Case{vk::QkNormMode::PerHead, {}},
                   Case{vk::QkNormMode::Full, 0.7f}}) {
        SCOPED_TRACE("mode " + std::to_string((int)c.mode));
        const int nq = c.mode == vk::QkNormMode::Full ? qd : s.head_dim;
        const int nk = c.mode == vk::QkNormMode::Full ? kvd : s.head_dim;
        auto      qn = randn(nq, 1), kn = randn(nk, 2);
        auto      qnb = dev->upload_vector(qn), knb = dev->upload_vector(kn);
        std::vector<float> kc((size_t)n_ctx * kvd), vc((size_t)n_ctx * kvd), ref;
        auto kcb = dev->create_buffer(kc.size() * 4), vcb = dev->create_buffer(vc.size() * 4);
        auto scores = dev->create_buffer((size_t)8 * s.n_head * n_ctx * 4);
        int  n_past = 0;
        // Prefill 9 tokens, then decode batches of 1..3, then one of 7. Single tokens go through attention_rope (the
        // runner's decode: qk_rope's step inside attention), the rest through qk_rope then attention.
        for (int n : {9, 1, 2, 1, 3, 7}) {
            auto qkv  = randn((size_t)n * w, 50 + n_past);
            auto qkvb = dev->upload_vector(qkv);
            auto qb = dev->create_buffer((size_t)n * qd * 4), ob = dev->create_buffer((size_t)n * qd * 4);
            auto sb = n <= 8 ? &scores : nullptr;
            vk::Buffer big;
            if (!sb) {
                big = dev->create_buffer((size_t)n * s.n_head * n_ctx * 4);
                sb  = &big;
            }
            cpu_attention(s, c.mode, qn, kn, 1e-6f, c.clip, invf, qkv, n, n_past, kc, vc, ref);
            vk::CommandList cl(*dev);
            if (n == 1) {
                vk::attention_rope(*dev, cl, qkvb, n_past, s, c.mode, &qnb, &knb, 1e-6f, c.clip, ropeb, kcb, vcb,
                                   n_ctx, *sb, ob);
            } else {
                vk::qk_rope(*dev, cl, qkvb, n, n_past, s, c.mode, &qnb, &knb, 1e-6f, c.clip, ropeb, qb, kcb, vcb);
                vk::attention(*dev, cl, qb, kcb, vcb, n, n_past, s, n_ctx, *sb, ob);
            }
            cl.submit_and_wait();
            n_past += n;
            const size_t used = (size_t)n_past * kvd;
            auto gk = read_floats(*dev, kcb, used), gv = read_floats(*dev, vcb, used);
            std::vector<float> one(used, 1.f);
            expect_close(gk, std::vector<float>(kc.begin(), kc.begin() + used), one, 1e-5, "k cache");
            expect_close(gv, std::vector<float>(vc.begin(), vc.begin() + used), one, 0, "v cache");
            // |o| ≤ max |v|: an absolute 1e-5 against values of order 1.
            expect_close(read_floats(*dev, ob, ref.size()), ref, std::vector<float>(ref.size(), 3.f), 1e-5,
                         "attention n " + std::to_string(n));
        }
    }
}

namespace {

// The routing of Model::moe_ffn for one token: softmax, top-k (ties to the lower id), optional renormalisation.
void cpu_route(const float* logits, int E, int K, bool renorm, std::vector<int>& ids, std::vector<float>& w) {
    std::vector<float> p(logits, logits + E);
    cpu::softmax(p.data(), E);
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float sum = 0;
    for (int j = 0; j < K; ++j) sum += p[order[j]];
    std::vector<int> sel(order.begin(), order.begin() + K);
    std::sort(sel.begin(), sel.end()); // the GPU writes slots by expert id
    ids = sel;
    w.clear();
    for (int e : sel) w.push_back(renorm ? p[e] / sum : p[e]);
}

// The device's routing (ids, w: (n, k)) against cpu_route on the reference logits (n, stride): the same experts in
// the same slots, weights within rel·w + abs.
void expect_routing(vk::Device& dev, const vk::Buffer& ib, const vk::Buffer& wb, const std::vector<float>& logits,
                    int n, int stride, int E, int K, bool renorm, double rel, double abs) {
    std::vector<int32_t> gi((size_t)n * K);
    dev.download(ib, gi.data(), gi.size() * 4);
    auto gw = read_floats(dev, wb, (size_t)n * K);
    for (int t = 0; t < n; ++t) {
        std::vector<int>   ri;
        std::vector<float> rw;
        cpu_route(logits.data() + (size_t)t * stride, E, K, renorm, ri, rw);
        for (int j = 0; j < K; ++j) {
            ASSERT_EQ(gi[(size_t)t * K + j], ri[j]) << "K " << K << " token " << t << " slot " << j;
            ASSERT_NEAR(gw[(size_t)t * K + j], rw[j], rel * rw[j] + abs) << "K " << K << " token " << t;
        }
    }
}

} // namespace

TEST(VulkanModelOps, RouterSoftmaxTopkRenorm) {
    VK_DEVICE_OR_SKIP(dev);
    const int E = 13, n = 7, stride = 14;
    auto      logits = randn((size_t)n * stride, 5);
    // Ties: token 2 has three equal top logits, token 4 all equal.
    for (int e : {1, 5, 9}) logits[2 * stride + e] = 3.f;
    for (int e = 0; e < E; ++e) logits[4 * stride + e] = 0.25f;
    auto lb = dev->upload_vector(logits);
    for (int K : {1, 2, 4, 13})
        for (bool renorm : {false, true}) {
            auto ib = dev->create_buffer((size_t)n * K * 4), wb = dev->create_buffer((size_t)n * K * 4);
            vk::CommandList cl(*dev);
            vk::router_topk(*dev, cl, lb, n, E, K, stride, renorm, ib, wb);
            cl.submit_and_wait();
            expect_routing(*dev, ib, wb, logits, n, stride, E, K, renorm, 1e-5, 1e-9);
        }
}

TEST(VulkanModelOps, FusedRoutingMatchesNormRouterAndTopk) {
    // route(): RMSNorm + router logits (with an extra gate row) + top-k in one dispatch, against cpu::rmsnorm, the
    // router's own forward and the CPU selection; with the f32 and an nbit router.
    VK_DEVICE_OR_SKIP(dev);
    const int H = 70, E = 13, stride = 14, n = 5;
    auto      x = randn((size_t)n * H, 31), g = randn(H, 32);
    for (auto& v : g) v = 1.f + 0.25f * v;
    std::vector<float> xn(x.size());
    cpu::rmsnorm(x.data(), n, H, g.data(), 1e-6f, xn.data());
    auto xb = dev->upload_vector(x), gb = dev->upload_vector(g);
    for (bool quantized : {false, true}) {
        std::unique_ptr<Linear> router;
        if (quantized) router = random_nbit(H, stride, 4, 35, 33);
        else router = std::make_unique<DenseLinear>(H, stride, randn((size_t)H * stride, 33, 0.3f));
        auto               q = vk::QWeights::upload(*dev, {router.get()}, stride);
        std::vector<float> ref((size_t)n * stride);
        router->forward(xn.data(), n, ref.data());
        for (int K : {1, 4})
            for (bool renorm : {false, true}) {
                auto lb = dev->create_buffer(ref.size() * 4), ib = dev->create_buffer((size_t)n * K * 4),
                     wb = dev->create_buffer((size_t)n * K * 4);
                vk::CommandList cl(*dev);
                vk::route(*dev, cl, xb, n, q, {&gb, 1e-6f}, E, K, renorm, lb, ib, wb);
                cl.submit_and_wait();
                expect_close(read_floats(*dev, lb, ref.size()), ref, abs_scale(*router, xn, n), 2e-5, "logits");
                expect_routing(*dev, ib, wb, ref, n, stride, E, K, renorm, 1e-4, 1e-7);
            }
    }
}

TEST(VulkanModelOps, ExpertDispatchEveryIdDuplicatesAndEmptyExperts) {
    VK_DEVICE_OR_SKIP(dev);
    const int H = 45, F = 19, E = 5;
    for (bool quantized : {false, true}) {
        SCOPED_TRACE(quantized ? "nbit" : "f32");
        std::vector<std::unique_ptr<Linear>> g, u, d;
        for (int e = 0; e < E; ++e) {
            if (quantized) {
                g.push_back(random_nbit(H, F, 4, 15, 3 * e));
                u.push_back(random_nbit(H, F, 4, 15, 3 * e + 1));
                d.push_back(random_nbit(F, H, 3, 19, 3 * e + 2));
            } else {
                g.push_back(std::make_unique<DenseLinear>(H, F, randn((size_t)H * F, 3 * e, 0.2f)));
                u.push_back(std::make_unique<DenseLinear>(H, F, randn((size_t)H * F, 3 * e + 1, 0.2f)));
                d.push_back(std::make_unique<DenseLinear>(F, H, randn((size_t)H * F, 3 * e + 2, 0.2f)));
            }
        }
        std::vector<const Linear*> gu, dn;
        for (int e = 0; e < E; ++e) {
            gu.push_back(g[e].get());
            gu.push_back(u[e].get());
            dn.push_back(d[e].get());
        }
        auto qgu = vk::QWeights::upload(*dev, gu, F), qd = vk::QWeights::upload(*dev, dn, H);
        ASSERT_EQ(qgu.format == vk::WeightFormat::Nbit, quantized);
        const int K = 3;
        for (int n = 1; n <= 8; ++n) {
            // Slots sorted by id per token; ids cycle through every expert, token 1 repeats one (duplicate), and
            // expert 4 is left out of small batches (empty).
            std::vector<int32_t> ids((size_t)n * K);
            for (int t = 0; t < n; ++t) {
                int a = (t * 2) % (n < 4 ? 4 : E), b = (a + 1) % E, c = (a + 2) % E;
                if (t == 1) c = b;
                int s[3] = {a, b, c};
                std::sort(s, s + 3);
                for (int j = 0; j < K; ++j) ids[(size_t)t * K + j] = s[j];
            }
            auto x = randn((size_t)n * H, 200 + n), w = randn((size_t)n * K, 300 + n, 0.5f),
                 y0 = randn((size_t)n * H, 400 + n);
            // CPU: per slot gate/up/silu·mul/down with the Linear forwards, combined in slot order.
            std::vector<float> hs((size_t)n * K * F), ref = y0;
            for (int t = 0; t < n; ++t) {
                float acc[64] = {};
                for (int j = 0; j < K; ++j) {
                    const int          e = ids[(size_t)t * K + j];
                    std::vector<float> gg(F), uu(F), hh(F), yy(H);
                    g[e]->forward(x.data() + (size_t)t * H, 1, gg.data());
                    u[e]->forward(x.data() + (size_t)t * H, 1, uu.data());
                    cpu::silu_mul(gg.data(), uu.data(), 1, F, hh.data());
                    std::copy(hh.begin(), hh.end(), hs.begin() + ((size_t)t * K + j) * F);
                    d[e]->forward(hh.data(), 1, yy.data());
                    for (int o = 0; o < H; ++o) acc[o] += w[(size_t)t * K + j] * yy[o];
                }
                for (int o = 0; o < H; ++o) ref[(size_t)t * H + o] += acc[o];
            }
            auto xb = dev->upload_vector(x), ib = dev->upload_vector(ids), wb = dev->upload_vector(w),
                 yb = dev->upload_vector(y0);
            auto hb = dev->create_buffer(hs.size() * 4);
            vk::CommandList cl(*dev);
            vk::moe_gate_up(*dev, cl, xb, n, &ib, K, qgu, hb);
            vk::moe_down(*dev, cl, hb, ib, wb, n, K, qd, yb, true);
            cl.submit_and_wait();
            // h: relative 1e-4 of the row's magnitude (two dot products then exp); y: against Σ|w·h·Wd| + |y0|.
            auto gh = read_floats(*dev, hb, hs.size());
            for (size_t i = 0; i < hs.size(); ++i) ASSERT_NEAR(gh[i], hs[i], 1e-4 * (1 + std::fabs(hs[i]))) << i;
            auto gy = read_floats(*dev, yb, ref.size());
            for (size_t i = 0; i < ref.size(); ++i)
                ASSERT_NEAR(gy[i], ref[i], 1e-4 * (1 + std::fabs(y0[i]))) << "n " << n << " at " << i;

            // The fused RMSNorm on the raw x equals gate/up of the CPU-normalised x (checked above against the CPU).
            auto gn = randn(H, 12);
            for (auto& v : gn) v = 1.f + 0.25f * v;
            std::vector<float> xn(x.size());
            cpu::rmsnorm(x.data(), n, H, gn.data(), 1e-6f, xn.data());
            auto            xnb = dev->upload_vector(xn), gnb = dev->upload_vector(gn);
            auto            hn  = dev->create_buffer(hs.size() * 4);
            vk::CommandList cn(*dev);
            vk::moe_gate_up(*dev, cn, xnb, n, &ib, K, qgu, hn);
            vk::moe_gate_up(*dev, cn, xb, n, &ib, K, qgu, hb, {}, {&gnb, 1e-6f});
            cn.submit_and_wait();
            auto a = read_floats(*dev, hn, hs.size()), b = read_floats(*dev, hb, hs.size());
            for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(b[i], a[i], 1e-4 * (1 + std::fabs(a[i]))) << "norm " << i;
        }
    }
}

#else
TEST(VulkanModelOps, NotBuilt) { GTEST_SKIP() << "built without MOEBIUS_VULKAN"; }
#endif

#if MOEBIUS_HAS_VULKAN
// Per-op wall time on the current device (lavapipe here: relative costs only). Disabled: run with
// --gtest_also_run_disabled_tests --gtest_filter='*OpTimes*'.
TEST(VulkanModelOps, DISABLED_OpTimes) {
    VK_DEVICE_OR_SKIP(dev);
    auto time_it = [&](const char* what, auto&& record) {
        vk::CommandList cl(*dev);
        record(cl);
        cl.submit_and_wait();
        auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < 10; ++i) {
            record(cl);
            cl.submit_and_wait();
        }
        std::printf("%-28s %8.3f ms\n", what,
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / 10);
    };
    const int H = 256, V = 2048, F = 128;
    auto W  = DenseLinear(H, V, randn((size_t)H * V, 1));
    auto qw = vk::QWeights::upload(*dev, {&W}, V);
    auto x  = dev->upload_vector(randn((size_t)8 * H, 2));
    auto y  = dev->create_buffer((size_t)8 * V * 4);
    auto wf = dev->upload_vector(randn((size_t)H * V, 1));
    time_it("linear 2048x256 n=1", [&](vk::CommandList& cl) { vk::linear(*dev, cl, qw, 0, x, 1, y); });
    time_it("linear 2048x256 n=8", [&](vk::CommandList& cl) { vk::linear(*dev, cl, qw, 0, x, 8, y); });
    time_it("gemv_f32 2048x256 n=1", [&](vk::CommandList& cl) { vk::matmul_wt(*dev, cl, x, 1, H, wf, V, y); });
    std::vector<std::unique_ptr<DenseLinear>> ex;
    std::vector<const Linear*>                p;
    for (int e = 0; e < 32; ++e) {
        ex.push_back(std::make_unique<DenseLinear>(H, F, randn((size_t)H * F, e)));
        p.push_back(ex.back().get());
    }
    auto gu  = vk::QWeights::upload(*dev, p, F);
    auto ids = dev->upload_vector(std::vector<int32_t>{1, 5, 9, 12});
    auto h   = dev->create_buffer((size_t)8 * 4 * F * 4);
    time_it("moe_gate_up k=4 n=1", [&](vk::CommandList& cl) { vk::moe_gate_up(*dev, cl, x, 1, &ids, 4, gu, h); });
    auto g = dev->upload_vector(randn(H, 3));
    time_it("rmsnorm 256 n=1", [&](vk::CommandList& cl) { vk::rmsnorm(*dev, cl, x, 1, H, g, 1e-6f, y); });
    time_it("empty submit", [&](vk::CommandList&) {});
}
#endif
