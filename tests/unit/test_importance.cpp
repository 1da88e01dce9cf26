// Importance maps and the loss-gradient statistics behind GLAS.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/core/error.h"
#include "engine/cpu/model.h"
#include "engine/cpu/parallel.h"
#include "quantizer/calibration/importance.h"
#include "test_util.h"

using namespace moebius;
using namespace moebius::quant;

namespace {
// Inputs along the coordinate axes with different energies give a diagonal H = diag(a) · n.
InputStats diagonal_stats(const std::vector<double>& a, int n_each) {
    const int  d = (int)a.size();
    InputStats s(d, false);
    for (int j = 0; j < d; ++j) {
        std::vector<float> x(d, 0.f);
        x[j] = (float)std::sqrt(a[j] * d); // Σ over the d·n_each rows of x_j² / (d·n_each) = a_j
        for (int r = 0; r < n_each; ++r) s.add(x.data(), 1, nullptr);
    }
    return s;
}
} // namespace

TEST(Importance, HandCheckableDiagonalHessian) {
    std::vector<double> a{1.0, 4.0, 0.25};
    InputStats          st = diagonal_stats(a, 5);
    std::vector<float>  W{1, -2, 3, 0.5f, 0, -1}; // (2, 3)
    const double        lambda = 0.01 * (1.0 + 4.0 + 0.25) / 3;
    auto obs = compute_importance(W, 2, 3, st, ImportanceMetric::Obs);
    auto hd  = compute_importance(W, 2, 3, st, ImportanceMetric::HessianDiag);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) {
            double w = W[i * 3 + j];
            // [H⁻¹]_jj = 1/(a_j + λ)  ⇒  w² / [H⁻¹]_jj² = w² (a_j + λ)²
            EXPECT_NEAR(obs.values[i * 3 + j], w * w * (a[j] + lambda) * (a[j] + lambda), 1e-4);
            EXPECT_NEAR(hd.values[i * 3 + j], w * w * a[j], 1e-4);
        }
    std::vector<double> g{2.0, 0.5};
    auto glas = compute_importance(W, 2, 3, st, ImportanceMetric::Glas, &g);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) EXPECT_NEAR(glas.values[i * 3 + j], g[i] * obs.values[i * 3 + j], 1e-4);
    auto rs = obs.row_sum();
    EXPECT_NEAR(rs[0], (double)obs.values[0] + obs.values[1] + obs.values[2], 1e-9);
    EXPECT_THROW(compute_importance(W, 2, 3, st, ImportanceMetric::Glas), InputError);
    EXPECT_THROW(compute_importance(W, 2, 3, InputStats(3, false), ImportanceMetric::Obs), InputError);
}

TEST(Importance, DownsampleIsMeanPooling) {
    ImportanceMap m;
    m.rows   = 4;
    m.cols   = 6;
    for (int i = 0; i < 24; ++i) m.values.push_back((float)i);
    auto d = m.downsample(2, 3);
    ASSERT_EQ(d.rows, 2);
    ASSERT_EQ(d.cols, 3);
    EXPECT_FLOAT_EQ(d.values[0], (0 + 1 + 6 + 7) / 4.f);
    EXPECT_FLOAT_EQ(d.values[5], (16 + 17 + 22 + 23) / 4.f);
    auto same = m.downsample(100, 100);
    EXPECT_EQ(same.values, m.values);
}

TEST(Importance, GradientStatsCoverEveryLinear) {
    auto           m = Model::load(test::bundled_model());
    CalibrationSet set;
    set.seqlen  = 24;
    set.samples = {{71, 276, 281, 277, 32, 56, 10, 296, 388, 1398, 1496, 646, 111, 390, 44, 267, 586, 1822, 864, 44,
                    267, 361, 258, 1665}};
    GradientStats gs = collect_gradient_stats(*m, set);
    const auto&   s  = m->spec();
    for (int il = 0; il < s.n_layer; ++il) {
        for (LinearKind k : {LinearKind::Q, LinearKind::O, LinearKind::Router, LinearKind::SharedDown}) {
            const auto* e = gs.find(il, k);
            ASSERT_NE(e, nullptr) << il << " " << linear_kind_name(k);
            EXPECT_EQ(e->tokens, 24);
            double tot = 0;
            for (double v : e->mean_sq()) tot += v;
            EXPECT_GT(tot, 0);
        }
        int64_t routed = 0;
        for (int e = 0; e < s.n_expert; ++e)
            if (const auto* en = gs.find(il, LinearKind::ExpertDown, e)) routed += en->tokens;
        EXPECT_EQ(routed, 24 * s.n_expert_used);
    }
}

// Samples run concurrently; the sums must not depend on the thread count, and the experts-only pass must give the
// full pass's expert entries.
TEST(Importance, GradientStatsIndependentOfThreadsAndExpertsOnlyMatch) {
    auto           m = Model::load(test::bundled_model());
    CalibrationSet set;
    set.seqlen = 16;
    for (int s = 0; s < 5; ++s) {
        std::vector<int32_t> ids(16);
        for (int t = 0; t < 16; ++t) ids[t] = (37 * s + 101 * t + 5) % m->spec().n_vocab;
        set.samples.push_back(ids);
    }
    const int threads = num_threads();
    set_num_threads(1);
    const GradientStats one = collect_gradient_stats(*m, set);
    set_num_threads(3);
    const GradientStats three = collect_gradient_stats(*m, set, {}, true);
    set_num_threads(threads);
    int experts = 0;
    for (const auto& [key, e] : one.entries) {
        const auto it = three.entries.find(key);
        if (!is_expert_kind((LinearKind)std::get<1>(key))) {
            EXPECT_TRUE(it == three.entries.end());
            continue;
        }
        ASSERT_TRUE(it != three.entries.end());
        EXPECT_EQ(it->second.tokens, e.tokens);
        EXPECT_TRUE(it->second.sum_sq == e.sum_sq);
        ++experts;
    }
    EXPECT_GT(experts, 0);
    EXPECT_EQ((size_t)experts, three.entries.size());
}

// A lazily loaded model too large for the resident budget (0 here) goes layer by layer with one decoder layer
// resident: the statistics and what the forward hooks observe must equal the all-resident path's bit for bit, at
// any thread count, with the routed experts only and with every linear; afterwards no layer is left loaded. On two
// families: Qwen2-MoE (bundled, trained) and DeepSeek-MoE (a dense first layer below the lowest MoE layer).
TEST(Importance, LayerByLayerGradientStatsEqualAllResident) {
    for (const std::filesystem::path& dir : {test::bundled_model(), test::random_model("deepseekmoe")}) {
        auto              eager = Model::load(dir);
        LoadOptions       lo;
        lo.lazy_layers = true;
        auto              lazy = Model::load(dir, {}, lo);
        const ModelSpec&  s    = eager->spec();
        CalibrationSet    set;
        set.seqlen = 20;
        for (int k = 0; k < 5; ++k) {
            std::vector<int32_t> ids(20);
            for (int t = 0; t < 20; ++t) ids[t] = (53 * k + 97 * t + 3) % s.n_vocab;
            set.samples.push_back(ids);
        }
        // What a forward observer sees: every linear input, per sample, in order (the FP stream records from it).
        auto observe = [](std::vector<std::vector<float>>& seen) {
            return [&seen](int sample) {
                Hooks h;
                h.on_linear = [&v = seen[sample]](const LinearEvent& e) { v.insert(v.end(), e.x, e.x + (size_t)e.n * e.in); };
                return h;
            };
        };
        const int threads = num_threads();
        for (bool experts_only : {true, false})
            for (int t : {1, 3}) {
                set_num_threads(t);
                std::vector<std::vector<float>> seen_a(5), seen_b(5);
                const GradientStats a = collect_gradient_stats(*eager, set, {}, experts_only, observe(seen_a));
                std::vector<std::string> stages;
                const GradientStats b = collect_gradient_stats(*lazy, set, [&](const Progress& p) {
                    stages.push_back(p.stage);
                    return true;
                }, experts_only, observe(seen_b), /*max_resident_bytes=*/0);
                set_num_threads(threads);
                SCOPED_TRACE(dir.filename().string() + (experts_only ? " experts only" : " every linear") +
                             ", threads " + std::to_string(t));
                ASSERT_FALSE(stages.empty());
                EXPECT_NE(stages.front().find("layer by layer"), std::string::npos) << stages.front();
                ASSERT_EQ(a.entries.size(), b.entries.size());
                ASSERT_FALSE(a.entries.empty());
                for (const auto& [key, e] : a.entries) {
                    const auto it = b.entries.find(key);
                    ASSERT_TRUE(it != b.entries.end());
                    EXPECT_EQ(it->second.tokens, e.tokens);
                    EXPECT_TRUE(it->second.sum_sq == e.sum_sq) << std::get<0>(key) << " " << std::get<1>(key);
                }
                EXPECT_TRUE(seen_a == seen_b);
                for (int il = 0; il < s.n_layer; ++il) EXPECT_FALSE(lazy->layer_loaded(il)) << il;
            }
    }
}

// Cancelling between layers stops the layer-by-layer pass with Cancelled.
TEST(Importance, LayerByLayerGradientStatsCancel) {
    LoadOptions lo;
    lo.lazy_layers = true;
    auto           m = Model::load(test::bundled_model(), {}, lo);
    CalibrationSet set;
    set.seqlen  = 8;
    set.samples = {{5, 6, 7, 8, 9, 10, 11, 12}};
    int calls   = 0;
    EXPECT_THROW(collect_gradient_stats(*m, set, [&](const Progress&) { return ++calls < 3; }, true, {}, 0), Cancelled);
    EXPECT_EQ(calls, 3);
}
