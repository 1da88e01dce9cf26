// Calibration data, statistic capture, EBSS and routing statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "engine/core/error.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "engine/eval/routing.h"
#include "quantizer/calibration/calibration_data.h"
#include "quantizer/calibration/capture.h"
#include "quantizer/calibration/ebss.h"
#include "quantizer/calibration/input_stats.h"
#include "test_util.h"

using namespace moebius;
using namespace moebius::quant;

namespace {
Model& bundled() {
    static auto m = Model::load(test::bundled_model());
    return *m;
}
const std::vector<int32_t>& test_ids() {
    static auto ids = Tokenizer::from_file(test::bundled_model() / "tokenizer.json")
                          .encode(test::read_text(test::resources_dir() / "corpus" / "test.txt"));
    return ids;
}
} // namespace

TEST(InputStats, EqualsDirectComputation) {
    std::mt19937       rng(3);
    std::normal_distribution<float> nd;
    const int          d = 7;
    std::vector<float> a(5 * d), b(3 * d);
    for (auto& v : a) v = nd(rng);
    for (auto& v : b) v = nd(rng);
    InputStats s(d, false);
    s.add(a.data(), 5, nullptr);
    s.add(b.data(), 3, nullptr);
    EXPECT_EQ(s.n_tokens, 8);
    for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) {
            double direct = 0;
            for (int r = 0; r < 5; ++r) direct += (double)a[r * d + i] * a[r * d + j];
            for (int r = 0; r < 3; ++r) direct += (double)b[r * d + i] * b[r * d + j];
            EXPECT_NEAR(s.H[i * d + j], direct, 1e-5 * (1 + std::fabs(direct)));
        }
}

TEST(InputStats, AffinityWeighting) {
    // Σ c x xᵀ with c = router weights; a token with weight 0 contributes nothing, weight 4 counts 4 times.
    const int          d = 3;
    std::vector<float> x{1, 2, 3, -1, 0, 2};
    std::vector<float> c{4.f, 0.f};
    InputStats         s(d, true);
    s.add(x.data(), 2, c.data());
    for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) {
            EXPECT_NEAR(s.H_aff[i * d + j], 4.0 * x[i] * x[j], 1e-5);
            EXPECT_NEAR(s.H[i * d + j], (double)x[i] * x[j] + (double)x[3 + i] * x[3 + j], 1e-5);
        }
    EXPECT_DOUBLE_EQ(s.sum_weight, 4.0);
    EXPECT_DOUBLE_EQ(s.mean_weight(), 2.0);
}

TEST(Calibration, RandomWindowsAndBadInput) {
    std::vector<int32_t> ids(1000);
    for (int i = 0; i < 1000; ++i) ids[i] = i;
    auto s = random_windows(ids, 10, 64, 5, "t");
    ASSERT_EQ(s.samples.size(), 10u);
    for (auto& w : s.samples) {
        ASSERT_EQ(w.size(), 64u);
        for (int i = 1; i < 64; ++i) EXPECT_EQ(w[i], w[0] + i); // contiguous windows
    }
    EXPECT_EQ(random_windows(ids, 10, 64, 5, "t").samples, s.samples); // deterministic for a seed
    EXPECT_THROW(random_windows(ids, 20, 64, 5, "t"), InputError);      // 1280 tokens > 1000
    EXPECT_THROW(random_windows(std::vector<int32_t>(10, 1), 1, 64, 5, "t"), InputError);

    auto dir = test::scratch_dir("calib");
    std::ofstream(dir / "empty.txt") << "  \n\n";
    EXPECT_THROW(read_calibration_text(dir / "empty.txt"), InputError);
    std::ofstream(dir / "bad.jsonl") << "{\"text\": \"a\"}\nnot json\n";
    try {
        read_calibration_text(dir / "bad.jsonl");
        ADD_FAILURE();
    } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("bad.jsonl: line 2"), std::string::npos) << e.what();
    }
    std::ofstream(dir / "ok.jsonl") << "{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
    EXPECT_EQ(read_calibration_text(dir / "ok.jsonl"), "a\n\nb");
    EXPECT_THROW(read_calibration_text(dir / "missing.txt"), NotFoundError);

    save_calibration_set(s, dir / "set.jsonl");
    auto back = load_calibration_set(dir / "set.jsonl");
    EXPECT_EQ(back.samples, s.samples);
    EXPECT_EQ(back.seqlen, 64);
}

TEST(Capture, StatsMatchHooksAndAdvanceMatchesForward) {
    Model&         m    = bundled();
    const auto&    spec = m.spec();
    CalibrationSet set  = random_windows(test_ids(), 3, 32, 1, "test");
    LayerwiseRunner run(m, set);
    CaptureOptions  opt;
    opt.affinity  = true;
    LayerStats st = run.capture(opt);
    // Every token reaches q/k/v and the router; each token is routed to k experts.
    EXPECT_EQ(st.attn_in.n_tokens, 96);
    EXPECT_EQ(st.ffn_in.n_tokens, 96);
    int64_t routed = 0;
    for (int e = 0; e < spec.n_expert; ++e) {
        routed += st.expert_tokens[e];
        EXPECT_EQ(st.expert_in[e].n_tokens, st.expert_tokens[e]);
        EXPECT_EQ(st.expert_mid[e].n_tokens, st.expert_tokens[e]);
        EXPECT_NEAR(st.expert_in[e].sum_weight, st.expert_weight_sum[e], 1e-9);
    }
    EXPECT_EQ(routed, 96 * spec.n_expert_used);
    // Qwen2-MoE's shared expert: affinity = sigmoid gate, in (0, 1).
    ASSERT_EQ(st.shared_in.n_tokens, 96);
    EXPECT_GT(st.shared_in.mean_weight(), 0.0);
    EXPECT_LT(st.shared_in.mean_weight(), 1.0);
    EXPECT_EQ(st.for_linear(LinearKind::ExpertUp, 3), &st.expert_in[3]);
    EXPECT_EQ(st.for_linear(LinearKind::K), &st.attn_in);

    // Advancing through every layer reproduces the model's own forward (layer-sequential = end-to-end).
    while (!run.done()) run.advance();
    std::vector<float> a((size_t)32 * spec.n_vocab), b((size_t)32 * spec.n_vocab);
    m.output(run.hidden(1).data(), 32, a.data());
    KVCache c = m.new_cache(32);
    m.forward(set.samples[1].data(), 32, c, b.data(), true);
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4);
}

// The memory rule of the capture driver: a lazily loaded model holds only the current layer's weights, and the
// statistics and propagated hidden states equal those of the eagerly loaded model.
TEST(Capture, LazyModelHoldsOneLayerAndMatchesEager) {
    Model&         eager = bundled();
    LoadOptions    lo;
    lo.lazy_layers = true;
    auto           lazy  = Model::load(test::bundled_model(), {}, lo);
    const int      L     = lazy->spec().n_layer;
    for (int il = 0; il < L; ++il) EXPECT_FALSE(lazy->layer_loaded(il));
    EXPECT_LT(lazy->storage_bytes(), eager.storage_bytes() / 2);
    std::vector<float> x((size_t)4 * lazy->spec().n_embd);
    std::vector<int32_t> ids{1, 2, 3, 4};
    lazy->embed(ids.data(), 4, x.data());
    EXPECT_THROW(lazy->forward_layer(0, x.data(), 4, nullptr), Error); // not loaded: a clear error, no crash

    CalibrationSet  set = random_windows(test_ids(), 2, 32, 3, "test");
    LayerwiseRunner a(eager, set), b(*lazy, set, /*release_passed=*/true);
    while (!a.done()) {
        const int il = a.current_layer();
        int       resident = 0;
        for (int j = 0; j < L; ++j) resident += lazy->layer_loaded(j);
        EXPECT_EQ(resident, 1) << "layer " << il;
        EXPECT_TRUE(lazy->layer_loaded(il));
        LayerStats sa = a.capture({}), sb = b.capture({});
        EXPECT_EQ(sa.ffn_in.H, sb.ffn_in.H);
        EXPECT_EQ(sa.expert_in[5].H, sb.expert_in[5].H);
        a.advance();
        b.advance();
        EXPECT_FALSE(lazy->layer_loaded(il));
        for (int s = 0; s < 2 && !a.done(); ++s) EXPECT_EQ(a.hidden(s), b.hidden(s));
    }
}

// finish_attention: the FFN passes and the propagation start from the residual after the attention instead of
// recomputing it; statistics, event counts and propagated states stay the same bit for bit, and attention statistics
// can no longer be asked for.
TEST(Capture, FinishedAttentionGivesTheSameFfnStatisticsAndStates) {
    Model&          m   = bundled();
    CalibrationSet  set = random_windows(test_ids(), 3, 32, 5, "test");
    LayerwiseRunner a(m, set), b(m, set);
    CaptureOptions  ffn;
    ffn.attention = false;
    while (!a.done()) {
        b.finish_attention();
        b.finish_attention(); // idempotent
        int   layers_a = 0, layers_b = 0;
        Hooks ha, hb;
        ha.on_layer = [&](const LayerEvent&) { ++layers_a; };
        hb.on_layer = [&](const LayerEvent& e) {
            ++layers_b;
            EXPECT_EQ(e.output, nullptr); // a statistics pass stops early
        };
        const LayerStats sa = a.capture(ffn, {}, &ha), sb = b.capture(ffn, {}, &hb);
        EXPECT_EQ(layers_a, 3);
        EXPECT_EQ(layers_b, 3);
        EXPECT_EQ(sa.ffn_in.H, sb.ffn_in.H);
        EXPECT_EQ(sa.shared_mid.H, sb.shared_mid.H);
        for (int e = 0; e < m.spec().n_expert; ++e) {
            EXPECT_EQ(sa.expert_in[e].H, sb.expert_in[e].H);
            EXPECT_EQ(sa.expert_mid[e].H, sb.expert_mid[e].H);
        }
        EXPECT_THROW(b.capture(CaptureOptions{}), Error);
        a.advance();
        b.advance();
        for (int s = 0; s < 3; ++s) ASSERT_EQ(a.hidden(s), b.hidden(s)) << "layer " << a.current_layer() - 1;
    }
}

TEST(Routing, SelfComparisonIsZeroPerturbedIsNot) {
    Model&      m = bundled();
    const auto& ids = test_ids();
    std::span<const int32_t> few(ids.data(), 4 * 64);
    RoutingDiff self = compare_routing(m, m, few, 64);
    ASSERT_EQ(self.layers.size(), 4u);
    for (const auto& L : self.layers) {
        EXPECT_EQ(L.shift_rate, 0.0);
        EXPECT_EQ(L.top1_flip_rate, 0.0);
        EXPECT_EQ(L.router_kl, 0.0);
        for (double dl : L.load_delta) EXPECT_EQ(dl, 0.0);
        int64_t diag = 0;
        for (int e = 0; e < self.n_expert; ++e) diag += L.transition[e * self.n_expert + e];
        EXPECT_EQ(diag, L.tokens);
    }
    // Perturb layer 1's router: routing from layer 1 on must change.
    auto  other = Model::load(test::bundled_model());
    auto* r     = dynamic_cast<DenseLinear*>(other->layer(1).router.get());
    ASSERT_NE(r, nullptr);
    std::mt19937                    rng(9);
    std::normal_distribution<float> nd(0.f, 0.05f);
    for (int i = 0; i < r->in_features() * r->out_features(); ++i) r->mutable_data()[i] += nd(rng);
    RoutingDiff d = compare_routing(m, *other, few, 64);
    EXPECT_EQ(d.layers[0].shift_rate, 0.0);
    EXPECT_GT(d.layers[1].shift_rate, 0.0);
    EXPECT_GT(d.layers[1].router_kl, 0.0);
    EXPECT_GT(d.shift_rate(), 0.0);
}

TEST(Routing, UsageAgreesWithReferenceCounts) {
    // Per-layer expert token counts over the test text (seqlen 256) from the independent implementation.
    auto ref = nlohmann::json::parse(test::read_text(test::reference("tiny-qwen2moe.test.json")));
    ExpertUsage u = measure_usage(bundled(), test_ids(), 256);
    ASSERT_EQ(u.layers.size(), ref["expert_counts"].size());
    for (size_t l = 0; l < u.layers.size(); ++l)
        for (int e = 0; e < u.n_expert; ++e)
            EXPECT_EQ(u.counts[l][e], ref["expert_counts"][l][e].get<int64_t>()) << "layer " << l << " expert " << e;
}

TEST(Routing, RejectsModelsOfAnotherArchitecture) {
    auto other = Model::load(test::random_model("olmoe"));
    std::vector<int32_t> ids(64, 1);
    EXPECT_THROW(compare_routing(bundled(), *other, ids, 32), InputError);
}

TEST(Ebss, MoreBalancedThanRandomWindows) {
    Model&      m = bundled();
    EbssOptions opt;
    // 16 x 64 tokens: smaller sets are dominated by sampling noise in σ for both sources.
    opt.samples        = 16;
    opt.seqlen         = 64;
    opt.seed           = 1;
    opt.excluded_first = {2045, 2046, 2047};
    opt.banned         = {2045, 2046, 2047};
    CalibrationSet e   = ebss_generate(m, opt);
    ASSERT_EQ(e.samples.size(), 16u);
    for (auto& s : e.samples) ASSERT_EQ(s.size(), 64u);
    CalibrationSet r = random_windows(test_ids(), 16, 64, 1, "test");
    auto sigma = [&](const CalibrationSet& set) {
        ExpertUsage u(m.spec());
        for (auto& s : set.samples) {
            ExpertUsage one = measure_usage(m, s, (int)s.size());
            u.merge(one);
        }
        return u.mean_imbalance();
    };
    double se = sigma(e), sr = sigma(r);
    RecordProperty("ebss_sigma", std::to_string(se));
    RecordProperty("random_sigma", std::to_string(sr));
    EXPECT_LT(se, sr) << "EBSS sigma " << se << " vs random windows " << sr;
}

// The small sibling of the test above (it also runs under the sanitizers): shape, bans and determinism for a seed.
TEST(Ebss, SmallSetIsDeterministicAndRespectsBans) {
    Model&      m = bundled();
    EbssOptions opt;
    opt.samples        = 2;
    opt.seqlen         = 16;
    opt.seed           = 3;
    opt.excluded_first = {2045, 2046, 2047};
    opt.banned         = {2045, 2046, 2047};
    CalibrationSet a = ebss_generate(m, opt), b = ebss_generate(m, opt);
    EXPECT_EQ(a.samples, b.samples);
    ASSERT_EQ(a.samples.size(), 2u);
    for (const auto& s : a.samples) {
        ASSERT_EQ(s.size(), 16u);
        for (int32_t id : s) {
            EXPECT_GE(id, 0);
            EXPECT_LT(id, 2045);
        }
    }
    ExpertUsage u = measure_usage(m, a.samples[0], 16);
    EXPECT_GE(u.mean_imbalance(), 0.0);
}
