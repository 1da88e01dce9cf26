// CPU model behaviour beyond the golden logits: KV cache equivalence, batched prefill = token-by-token decode,
// hooks, shape validation on load.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/generate.h"
#include "engine/cpu/model.h"
#include "test_util.h"

using namespace moebius;

namespace {
const Model& bundled() {
    static auto m = Model::load(test::bundled_model());
    return *m;
}
// The five families: the bundled (trained) Qwen2-MoE and the random fixtures of the others.
const char* const k_families[] = {"deepseekmoe", "qwen3moe", "mixtral", "olmoe", "qwen2moe"};
std::unique_ptr<Model> family_model(const std::string& family) {
    return family == "qwen2moe" ? Model::load(test::bundled_model()) : Model::load(test::random_model(family));
}
// (n, n_embd) embeddings of the ids (a·t + b) mod n_vocab.
std::vector<float> embedded_ids(const Model& m, int n, int a, int b) {
    std::vector<int32_t> ids(n);
    for (int t = 0; t < n; ++t) ids[t] = (a * t + b) % m.spec().n_vocab;
    std::vector<float> x((size_t)n * m.spec().n_embd);
    m.embed(ids.data(), n, x.data());
    return x;
}
float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    float d = 0;
    for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
    return d;
}
} // namespace

TEST(CpuModel, BatchedPrefillEqualsTokenByTokenDecode) {
    const Model&         m = bundled();
    const int            V = m.spec().n_vocab;
    std::vector<int32_t> ids{1852, 1907, 1850, 777, 756, 1948, 762, 385, 1829, 1242, 10, 44, 267, 586};
    const int            n = (int)ids.size();
    KVCache              c1 = m.new_cache(n), c2 = m.new_cache(n);
    std::vector<float>   batched((size_t)n * V), stepwise((size_t)n * V);
    m.forward(ids.data(), n, c1, batched.data(), true);
    for (int i = 0; i < n; ++i) m.forward(&ids[i], 1, c2, stepwise.data() + (size_t)i * V, false);
    float mx = 0;
    for (float v : batched) mx = std::max(mx, std::fabs(v));
    EXPECT_LE(max_abs_diff(batched, stepwise), 1e-4f * mx);
    EXPECT_EQ(c1.n_past, n);
    EXPECT_EQ(c2.n_past, n);
    // Chunked prefill (5 + 9 tokens) too.
    KVCache            c3 = m.new_cache(n);
    std::vector<float> chunked((size_t)n * V);
    m.forward(ids.data(), 5, c3, chunked.data(), true);
    m.forward(ids.data() + 5, n - 5, c3, chunked.data() + (size_t)5 * V, true);
    EXPECT_LE(max_abs_diff(batched, chunked), 1e-4f * mx);
}

TEST(CpuModel, GreedyGenerationSameWithAndWithoutCache) {
    const Model&         m = bundled();
    std::vector<int32_t> prompt{71, 276, 281, 277, 32, 56, 10, 296};
    GenerateOptions      opt;
    opt.max_tokens = 24;
    auto with      = generate(m, prompt, opt);
    opt.use_cache  = false;
    auto without   = generate(m, prompt, opt);
    ASSERT_EQ(with.tokens.size(), 24u);
    EXPECT_EQ(with.tokens, without.tokens);
}

TEST(CpuModel, ForwardLayerWithoutCacheMatchesForward) {
    // The layer-sequential path used by calibration gives the same logits as the cached forward.
    const Model&         m = bundled();
    const auto&          s = m.spec();
    std::vector<int32_t> ids{71, 276, 281, 277, 32, 56, 10};
    const int            n = (int)ids.size();
    std::vector<float>   x((size_t)n * s.n_embd), a((size_t)n * s.n_vocab), b((size_t)n * s.n_vocab);
    m.embed(ids.data(), n, x.data());
    for (int il = 0; il < s.n_layer; ++il) m.forward_layer(il, x.data(), n, nullptr);
    m.output(x.data(), n, a.data());
    KVCache c = m.new_cache(n);
    m.forward(ids.data(), n, c, b.data(), true);
    EXPECT_LE(max_abs_diff(a, b), 1e-5f);
}

TEST(CpuModel, HooksSeeEveryRoutedToken) {
    const Model&         m = bundled();
    const auto&          s = m.spec();
    std::vector<int32_t> ids{71, 276, 281, 277, 32, 56, 10, 296, 388};
    const int            n = (int)ids.size();
    std::vector<int>     expert_rows(s.n_layer, 0), router_calls(s.n_layer, 0);
    std::vector<double>  weight_sum(s.n_layer, 0);
    Hooks                h;
    h.on_linear = [&](const LinearEvent& e) {
        if (e.kind == LinearKind::ExpertUp) {
            expert_rows[e.layer] += e.n;
            for (int r = 0; r < e.n; ++r) {
                EXPECT_GE(e.token_index[r], 0);
                EXPECT_LT(e.token_index[r], n);
                weight_sum[e.layer] += e.router_weight[r];
            }
        }
    };
    h.on_router = [&](const RouterEvent& e) {
        ++router_calls[e.layer];
        for (int t = 0; t < e.n; ++t) {
            double ps = 0;
            for (int x = 0; x < e.n_expert; ++x) ps += e.probs[t * e.n_expert + x];
            EXPECT_NEAR(ps, 1.0, 1e-5);
        }
    };
    KVCache c = m.new_cache(n);
    m.forward(ids.data(), n, c, nullptr, false, &h);
    for (int il = 0; il < s.n_layer; ++il) {
        EXPECT_EQ(router_calls[il], 1);
        EXPECT_EQ(expert_rows[il], n * s.n_expert_used);
        // No renormalisation for Qwen1.5-MoE: top-k weights sum to less than one per token.
        EXPECT_LT(weight_sum[il], n);
        EXPECT_GT(weight_sum[il], 0);
    }
}

// A statistics pass that stops a layer early (Hooks::stop) reports the same inputs, and the outputs it computed,
// as the whole layer does; the events it leaves out or leaves without output are the documented ones.
TEST(CpuModel, LayerStopReportsTheFullPassInputs) {
    for (const char* family : k_families) {
        auto               model = family_model(family);
        const auto&        spec  = model->spec();
        const int          n     = 19;
        std::vector<float> x0    = embedded_ids(*model, n, 31, 7);
        struct Ev {
            LinearKind         kind;
            int                expert;
            std::vector<float> x, y; // y empty: not computed
        };
        for (int il = 0; il < spec.n_layer; ++il) {
            auto pass = [&](LayerStop stop, std::vector<Ev>& evs, int& layer_events) {
                Hooks h;
                h.stop      = stop;
                h.on_linear = [&](const LinearEvent& e) {
                    evs.push_back({e.kind, e.expert, std::vector<float>(e.x, e.x + (size_t)e.n * e.in),
                                   e.y ? std::vector<float>(e.y, e.y + (size_t)e.n * e.out) : std::vector<float>{}});
                };
                h.on_layer = [&](const LayerEvent& e) {
                    ++layer_events;
                    EXPECT_EQ(e.output == nullptr, stop != LayerStop::None);
                };
                std::vector<float> x = x0;
                model->forward_layer(il, x.data(), n, nullptr, &h);
            };
            std::vector<Ev> full;
            int             layers = 0;
            pass(LayerStop::None, full, layers);
            for (LayerStop stop : {LayerStop::AttentionInputs, LayerStop::Attention, LayerStop::FfnInputs,
                                   LayerStop::FfnIntermediates}) {
                std::vector<Ev> part;
                int             seen = 0;
                pass(stop, part, seen);
                EXPECT_EQ(seen, 1);
                std::vector<const Ev*> want; // the full pass's events this stop keeps, in order
                for (const Ev& e : full) {
                    const bool ffn  = e.kind > LinearKind::O;
                    const bool down = e.kind == LinearKind::ExpertDown || e.kind == LinearKind::SharedDown ||
                                      e.kind == LinearKind::DenseDown;
                    if (stop == LayerStop::AttentionInputs && (ffn || e.kind == LinearKind::O)) continue;
                    if (stop == LayerStop::Attention && ffn) continue;
                    if (stop == LayerStop::FfnInputs && down) continue;
                    want.push_back(&e);
                }
                ASSERT_EQ(part.size(), want.size()) << family << " layer " << il << " stop " << (int)stop;
                for (size_t i = 0; i < part.size(); ++i) {
                    const Ev& a = part[i];
                    const Ev& b = *want[i];
                    ASSERT_EQ(a.kind, b.kind);
                    EXPECT_EQ(a.expert, b.expert);
                    EXPECT_TRUE(a.x == b.x) << family << " " << linear_kind_name(a.kind);
                    const bool gate_up = a.kind == LinearKind::ExpertGate || a.kind == LinearKind::ExpertUp ||
                                         a.kind == LinearKind::SharedGate || a.kind == LinearKind::SharedUp ||
                                         a.kind == LinearKind::DenseGate || a.kind == LinearKind::DenseUp;
                    const bool down = a.kind == LinearKind::ExpertDown || a.kind == LinearKind::SharedDown ||
                                      a.kind == LinearKind::DenseDown;
                    const bool no_y = (stop == LayerStop::FfnInputs && gate_up) || (stop == LayerStop::FfnIntermediates && down);
                    if (no_y) EXPECT_TRUE(a.y.empty()) << linear_kind_name(a.kind);
                    else EXPECT_TRUE(a.y == b.y) << family << " " << linear_kind_name(a.kind);
                }
            }
            model->forward_layer(il, x0.data(), n, nullptr); // the next layer's input
        }
    }
}

// forward_attention_block then forward_ffn_block (the calibration runner's FFN-only passes) is forward_layer, bit
// for bit: the same events with the same inputs and outputs, the same output, and the same under every FFN stop.
TEST(CpuModel, LayerHalvesEqualTheWholeLayer) {
    for (const char* family : k_families) {
        auto               model = family_model(family);
        const auto&        spec  = model->spec();
        const int          n     = 17;
        std::vector<float> x     = embedded_ids(*model, n, 29, 3);
        using Ev = std::tuple<LinearKind, int, std::vector<float>, std::vector<float>>; // kind, expert, x, y
        auto recorder = [](std::vector<Ev>& evs, LayerStop stop) {
            Hooks h;
            h.stop      = stop;
            h.on_linear = [&evs](const LinearEvent& e) {
                evs.emplace_back(e.kind, e.expert, std::vector<float>(e.x, e.x + (size_t)e.n * e.in),
                                 e.y ? std::vector<float>(e.y, e.y + (size_t)e.n * e.out) : std::vector<float>{});
            };
            return h;
        };
        for (int il = 0; il < spec.n_layer; ++il) {
            std::vector<Ev> whole, attn;
            std::vector<float> y = x, h = x;
            const Hooks        hw = recorder(whole, LayerStop::None), ha = recorder(attn, LayerStop::None);
            model->forward_layer(il, y.data(), n, nullptr, &hw);
            model->forward_attention_block(il, h.data(), n, &ha);
            for (LayerStop stop : {LayerStop::FfnInputs, LayerStop::FfnIntermediates, LayerStop::None}) {
                std::vector<Ev>    ffn, ffn_whole;
                std::vector<float> o = h, p = x;
                const Hooks        hf = recorder(ffn, stop), hs = recorder(ffn_whole, stop);
                model->forward_ffn_block(il, o.data(), n, &hf);
                model->forward_layer(il, p.data(), n, nullptr, &hs);
                const size_t na = attn.size();
                ASSERT_GT(na, 0u);
                ASSERT_EQ(na + ffn.size(), ffn_whole.size()) << family << " layer " << il << " stop " << (int)stop;
                for (size_t i = 0; i < na; ++i) EXPECT_TRUE(attn[i] == ffn_whole[i]) << family << " " << i;
                for (size_t i = 0; i < ffn.size(); ++i)
                    EXPECT_TRUE(ffn[i] == ffn_whole[na + i])
                        << family << " layer " << il << " " << linear_kind_name(std::get<0>(ffn[i]));
                if (stop == LayerStop::None) {
                    EXPECT_TRUE(o == y) << family << " layer " << il;
                }
            }
            x = y; // the next layer's input
        }
    }
}

TEST(CpuModel, ContextOverflowIsAnError) {
    const Model&         m = bundled();
    KVCache              c = m.new_cache(4);
    std::vector<int32_t> ids{1, 2, 3, 4, 5};
    EXPECT_THROW(m.forward(ids.data(), 5, c, nullptr, false), InputError);
    std::vector<int32_t> bad{1, 99999};
    KVCache              c2 = m.new_cache(4);
    EXPECT_THROW(m.forward(bad.data(), 2, c2, nullptr, false), InputError);
}

TEST(CpuModel, ShapeDisagreeingWithConfigIsRejected) {
    // Copy a random model but claim a different expert width in config.json.
    auto dir = test::scratch_dir("shape-mismatch");
    auto src = test::random_model("olmoe");
    std::filesystem::copy_file(src / "model.safetensors", dir / "model.safetensors");
    auto cfg = nlohmann::json::parse(test::read_text(src / "config.json"));
    cfg["intermediate_size"] = 48;
    std::ofstream(dir / "config.json") << cfg.dump();
    try {
        Model::load(dir);
        ADD_FAILURE() << "no exception";
    } catch (const FormatError& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
        EXPECT_NE(msg.find("config.json implies"), std::string::npos) << msg;
    }
}

TEST(CpuModel, MissingTensorIsRejected) {
    auto dir   = test::scratch_dir("missing-tensor");
    auto src   = test::random_model("mixtral");
    auto store = WeightStore::open(src);
    std::vector<TensorToWrite> keep;
    for (const auto& name : store.names()) {
        if (name == "model.layers.1.block_sparse_moe.experts.2.w3.weight") continue;
        const auto& ti = store.info(name);
        keep.push_back({name, ti.dtype, ti.shape, {ti.data, ti.nbytes}});
    }
    write_safetensors(dir / "model.safetensors", keep);
    std::filesystem::copy_file(src / "config.json", dir / "config.json");
    try {
        Model::load(dir);
        ADD_FAILURE() << "no exception";
    } catch (const NotFoundError& e) {
        EXPECT_NE(std::string(e.what()).find("experts.2.w3.weight"), std::string::npos) << e.what();
    }
}
