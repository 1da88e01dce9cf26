// The Vulkan model runner against the CPU forward (engine/cpu/model.cpp): logits of prefill and decode for every
// family (random tiny models: Qwen3 per-head q/k norm, OLMoE full q/k norm, DeepSeek dense first layer and shared
// experts, Mixtral renormalised routing) and the bundled Qwen2-MoE (biases, gated shared expert); greedy generation
// token for token; perplexity within 0.5 % (in fact 1e-4) for the f32 model and each quantization method's output
// (nbit, binary, vq kernels, MoBiE's and KBVQ's shared bases); the multiple-choice scorer on the runner; batch
// invariance and repeat-run determinism; weight sets split over bindings (a lowered binding limit). Missing-device
// policy as test_vulkan_ops.cpp.
#include <gtest/gtest.h>

#if MOEBIUS_HAS_VULKAN

#include "engine/core/tokenizer.h"
#include "engine/cpu/generate.h"
#include "engine/cpu/model.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/cejd_linear.h"
#include "engine/cpu/kbvq_linear.h"
#include "engine/core/dtype.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/eval/perplexity.h"
#include "engine/eval/tasks.h"
#include "engine/vulkan/runner.h"
#include "engine/cpu/vq_linear.h"
#include "quantizer/calibration/calibration_data.h"
#include "quantizer/format/checkpoint_writer.h"
#include "quantizer/pipeline.h"
#include "random_binary.h"
#include "test_util.h"
#include "test_vulkan_util.h"

#include <chrono>
#include <cmath>

using namespace moebius;

namespace {

const std::vector<int32_t> k_prompt{71, 276, 281, 277, 32, 56, 10, 296, 388, 1398, 1496};

// max |a − b| relative to max |b|: the logits differ only by f32 summation order.
double max_rel(const float* a, const float* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
        num = std::max(num, (double)std::fabs(a[i] - b[i]));
        den = std::max(den, (double)std::fabs(b[i]));
    }
    return num / den;
}

// Prefill `prompt` with all logits, then decode `steps` tokens (fed the CPU's greedy choice), both backends.
void expect_same_logits(vk::Device& dev, const Model& m, std::vector<int32_t> prompt, int steps, double tol) {
    const int  V = m.spec().n_vocab;
    for (auto& t : prompt) t %= V;
    const int  n = (int)prompt.size();
    KVCache    cache = m.new_cache(n + steps);
    vk::Runner r(dev, m, n + steps);
    std::vector<float> lc((size_t)n * V), lg((size_t)n * V);
    m.forward(prompt.data(), n, cache, lc.data(), true);
    r.forward(prompt.data(), n, lg.data(), true);
    EXPECT_LT(max_rel(lg.data(), lc.data(), lc.size()), tol) << "prefill";
    std::vector<float> c1(V), g1(V);
    int32_t            tok = prompt.back();
    for (int s = 0; s < steps; ++s) {
        tok = (tok * 7 + 3) % V;
        m.forward(&tok, 1, cache, c1.data(), false);
        r.forward(&tok, 1, g1.data(), false);
        EXPECT_LT(max_rel(g1.data(), c1.data(), V), tol) << "decode step " << s;
    }
    EXPECT_EQ(r.n_past(), n + steps);
}

std::vector<int32_t> test_text_ids(size_t n) {
    auto tok = Tokenizer::from_file(test::bundled_model() / "tokenizer.json");
    auto ids = tok.encode(test::read_text(test::resources_dir() / "corpus" / "test.txt").substr(0, 20000), true);
    ids.resize(std::min(ids.size(), n));
    return ids;
}

// The bundled model with VQ (D = 2, 2 bits, row scales) in every linear but the router: random codebooks and
// indices of the weights' scale; q | k | v stack into one matrix, their 32-row codebook blocks lining up.
std::unique_ptr<Model> random_vq_model() {
    auto         m = Model::load(test::bundled_model());
    std::mt19937 rng(3);
    auto         vq = [&](const Linear& l) {
        VqWeights w;
        w.out = l.out_features(), w.in = l.in_features(), w.dim = 2, w.bits = 2, w.group_cols = 64;
        w.rows_per_codebook = 32;
        w.codebooks.resize((size_t)w.n_codebooks() * w.k() * w.dim);
        for (auto& c : w.codebooks) c = std::ldexp((float)((int)(rng() % 256) - 128), -11); // f16-exact, ~0.03
        w.codes.resize((size_t)w.out * (w.in / w.dim));
        for (auto& c : w.codes) c = (uint16_t)(rng() % w.k());
        w.scales.assign(w.out, 1.0f);
        return std::make_unique<VqLinear>(w);
    };
    for (int il = 0; il < m->spec().n_layer; ++il) {
        LayerWeights& L = m->layer(il);
        for (auto& e : L.experts)
            for (auto& l : e) l = vq(*l);
        for (auto* l : {&L.shared_gate, &L.shared_up, &L.shared_down, &L.o, &L.q, &L.k, &L.v}) *l = vq(**l);
    }
    return m;
}

// The bundled model with KBVQ (kbvq_linear.h) routed experts: random VQ residuals, 8-bit coefficients and f16-exact
// shared basis, γ, β of the weights' scale. Layer 0: gate rank 3 with β, up rank 2 without (padded to one rank on the
// device), down rank 4 with β; layer 1: rank 0 (γ, β only); layers 2, 3: rank 2, each expert holding its own copy of
// the owner's arrays, as a loaded checkpoint does.
std::unique_ptr<Model> random_kbvq_model() {
    auto         m = Model::load(test::bundled_model());
    std::mt19937 rng(11);
    auto         f16v = [&](int lo, int hi, int e) {
        return std::ldexp((float)(lo + (int)(rng() % (hi - lo))), e);
    };
    auto         residual = [&](const Linear& l) {
        VqWeights w;
        w.out = l.out_features(), w.in = l.in_features(), w.dim = 2, w.bits = 2, w.group_cols = 64;
        w.rows_per_codebook = 32;
        w.codebooks.resize((size_t)w.n_codebooks() * w.k() * w.dim);
        for (auto& c : w.codebooks) c = f16v(-128, 128, -11);
        w.codes.resize((size_t)w.out * (w.in / w.dim));
        for (auto& c : w.codes) c = (uint16_t)(rng() % w.k());
        return w;
    };
    auto shared = [&](int out, int rank, bool bias) {
        auto sh  = std::make_shared<KbvqShared>();
        sh->rank = rank;
        for (int i = 0; i < out * rank; ++i) sh->basis.push_back(f16v(-64, 64, -6));
        for (int i = 0; i < out; ++i) sh->gamma.push_back(f16v(768, 1280, -10)); // 0.75..1.25
        if (bias)
            for (int i = 0; i < out; ++i) sh->beta.push_back(f16v(-64, 64, -10));
        return sh;
    };
    for (int il = 0; il < m->spec().n_layer; ++il) {
        LayerWeights& L  = m->layer(il);
        const int     rk[3]   = {il == 0 ? 3 : il == 1 ? 0 : 2, il == 0 ? 2 : il == 1 ? 0 : 2,
                                 il == 0 ? 4 : il == 1 ? 0 : 2}; // gate, up, down
        const bool    bias[3] = {true, il != 0, true};
        for (int kind = 0; kind < 3; ++kind) {
            const int out = L.experts[0][kind]->out_features(), in = L.experts[0][kind]->in_features();
            std::shared_ptr<KbvqShared> sh  = shared(out, rk[kind], bias[kind]);
            for (size_t e = 0; e < L.experts.size(); ++e) {
                KbvqPacked p;
                p.rank = rk[kind], p.owner = "g" + std::to_string(kind), p.is_owner = e == 0;
                for (int i = 0; i < rk[kind] * in; ++i) p.coef.push_back((int8_t)((int)(rng() % 255) - 127));
                for (int i = 0; i < rk[kind]; ++i) p.coef_scales.push_back(f32_to_f16(f16v(1, 64, -12)));
                // Layers ≥ 2: a copy per expert (equal values), as Model::load gives them.
                auto own = il >= 2 ? std::make_shared<KbvqShared>(*sh) : sh;
                L.experts[e][kind] = std::make_unique<KbvqLinear>(residual(*L.experts[e][kind]), std::move(p), own);
            }
        }
    }
    return m;
}

// The bundled model binarized in every variant the binarizers write (qweight.glsl FORMAT 3): ARB-RC (two salient
// groups, column scales, no means) in the experts of layers 0, 1, BiLLM (one salient group, means) in the shared
// expert, MoBiE's residual (no salient columns) in o_proj, q | k | v stacked with different salient columns each (one
// region per linear), and MoBiE's layout in layers 2, 3. Random signs, split bits and f16-exact scales of the weights'
// magnitude.
std::unique_ptr<Model> random_binary_model() {
    auto         m = Model::load(test::bundled_model());
    std::mt19937 rng(5);
    auto         bin = [&](const Linear& l, int sg, bool mean, bool cols) {
        return std::make_unique<BinaryLinear>(
            test::random_binary_weights(l.out_features(), l.in_features(), sg, mean, cols, rng));
    };
    // MoBiE's layout in layers 2, 3: binary residuals plus a rank-4 basis per kind shared by the experts (input
    // side for gate / up, output side for down), the runner's shared-basis path.
    auto dense = [&](int out, int in) {
        std::vector<float> w((size_t)out * in);
        for (auto& v : w) v = (float)((int)(rng() % 200) - 100) / 2000.f;
        return std::make_unique<DenseLinear>(in, out, std::move(w));
    };
    const int H = m->spec().n_embd, F = m->spec().n_ff_expert, rk = 4;
    for (int il = 0; il < m->spec().n_layer; ++il) {
        LayerWeights& L = m->layer(il);
        if (il >= 2) {
            std::shared_ptr<const Linear> bg = dense(rk, H), bu = dense(rk, H), bd = dense(H, rk);
            for (size_t e = 0; e < L.experts.size(); ++e) {
                auto& ex = L.experts[e];
                ex[0] = std::make_unique<CejdLinear>(bin(*ex[0], 0, false, true), dense(F, rk), bg, true, "g", e == 0);
                ex[1] = std::make_unique<CejdLinear>(bin(*ex[1], 0, false, true), dense(F, rk), bu, true, "u", e == 0);
                ex[2] = std::make_unique<CejdLinear>(bin(*ex[2], 0, false, true), dense(rk, F), bd, false, "d", e == 0);
            }
        }
        for (auto& e : L.experts)
            if (il < 2)
                for (auto& l : e) l = bin(*l, 2, false, true);
        for (auto* l : {&L.shared_gate, &L.shared_up, &L.shared_down}) *l = bin(**l, 1, true, false);
        L.o = bin(*L.o, 0, true, false);
        for (auto* l : {&L.q, &L.k, &L.v}) *l = bin(**l, 1, true, false);
    }
    return m;
}

} // namespace

TEST(VulkanRunner, LogitsMatchCpuEveryFamily) {
    VK_DEVICE_OR_SKIP(dev);
    for (const char* fam : {"qwen3moe", "olmoe", "deepseekmoe", "mixtral"}) {
        SCOPED_TRACE(fam);
        auto m = Model::load(test::random_model(fam));
        expect_same_logits(*dev, *m, k_prompt, 3, 2e-5);
    }
    auto m = Model::load(test::bundled_model());
    expect_same_logits(*dev, *m, k_prompt, 3, 2e-5);
    // 70 tokens: the runner splits calls into chunks of 64.
    std::vector<int32_t> longer;
    for (int i = 0; i < 70; ++i) longer.push_back(k_prompt[i % k_prompt.size()] + i);
    expect_same_logits(*dev, *m, longer, 1, 2e-5);
}

TEST(VulkanRunner, WeightSetsSplitOverBindingsMatchCpu) {
    // A device whose bindings hold 64 KiB, 128 KiB for vq (Device::set_max_binding_bytes): every weight set above
    // that — experts, shared expert, q/k/v, lm_head, the embedding table — is split by rows into parts applied one
    // dispatch each. The logits must match the CPU's and the unsplit runner's: every row's dot product is the same,
    // so they agree bit for bit except where a split shared expert leaves the routed experts' dispatches (SharedExpert)
    // for its own, whose f32 rounding (FMA contraction) may differ in the last bit. f32 weights (random DeepSeek-MoE: dense first layer, shared experts), the bundled model's bf16, nbit
    // (rtn 4-bit), vq (parts of whole 32-row codebook blocks), KBVQ (vq residuals, 8-bit coefficients) and binary
    // (random_binary_model: each part carries its rows' region offsets and its linears' salient-column regions; 160 KiB,
    // as every part of the ARB-RC experts' gate/up carries the 32 matrices' regions, 132 KiB). 7 tokens: the
    // (7, n_vocab) logits fit one binding.
    VK_DEVICE_OR_SKIP(dev);
    struct Restore {
        vk::Device* d;
        ~Restore() { d->set_max_binding_bytes(0); }
    } restore{dev};
    const std::vector<int32_t> prompt(k_prompt.begin(), k_prompt.begin() + 7);
    const char* names[] = {"f32", "bf16", "rtn", "vq", "kbvq", "binary"};
    for (int pass = 0; pass < 6; ++pass) {
        SCOPED_TRACE(names[pass]);
        auto m = pass == 0   ? Model::load(test::random_model("deepseekmoe"))
                 : pass == 3 ? random_vq_model()
                 : pass == 4 ? random_kbvq_model()
                 : pass == 5 ? random_binary_model()
                             : Model::load(test::bundled_model());
        if (pass == 2) {
            quant::QuantizeOptions opt;
            opt.method = "rtn";
            quant::quantize_model(*m, quant::CalibrationSet{}, opt);
        }
        const int          V = m->spec().n_vocab, n = (int)prompt.size();
        std::vector<float> whole((size_t)n * V), split((size_t)n * V);
        dev->set_max_binding_bytes(0);
        {
            vk::Runner r(*dev, *m, 16);
            EXPECT_EQ(r.split_sets(), 0u);
            r.forward(prompt.data(), n, whole.data(), true);
        }
        // vq parts are whole 32-row codebook blocks: 32 rows of the 32 expert gate/up matrices are 64 KiB of indices.
        dev->set_max_binding_bytes(pass == 5 ? 160 << 10 : pass >= 3 ? 128 << 10 : 64 << 10);
        vk::Runner r(*dev, *m, 16);
        EXPECT_GE(r.split_sets(), 3u);
        EXPECT_TRUE(r.notes().empty()) << r.notes().front();
        r.forward(prompt.data(), n, split.data(), true);
        EXPECT_LT(max_rel(split.data(), whole.data(), split.size()), 1e-6);
        EXPECT_GT(r.last_layer_dispatches(), pass == 0 ? 7u : 10u); // one dispatch per part
        expect_same_logits(*dev, *m, prompt, 2, 2e-5);
    }
}

TEST(VulkanRunner, BatchInvariantAndDeterministic) {
    VK_DEVICE_OR_SKIP(dev);
    auto       m = Model::load(test::bundled_model());
    const int  V = m->spec().n_vocab, n = 8;
    vk::Runner r(*dev, *m, 32);
    // All 8 tokens in one call, then the same tokens in batches of 1, 2, 3, 5 (a short last batch) and 7: every
    // token's logits are bit-identical, whatever else is in its batch (each token's sums run in a fixed order).
    std::vector<float> all((size_t)n * V), part((size_t)n * V);
    r.forward(k_prompt.data(), n, all.data(), true);
    for (int b : {1, 2, 3, 5, 7}) {
        r.clear();
        for (int i = 0; i < n; i += b) {
            const int c = std::min(b, n - i);
            r.forward(k_prompt.data() + i, c, part.data() + (size_t)i * V, true);
        }
        EXPECT_EQ(part, all) << "batches of " << b;
    }
    r.clear();
    std::vector<float> again((size_t)n * V);
    r.forward(k_prompt.data(), n, again.data(), true);
    EXPECT_EQ(again, all) << "repeat run";
    // A decode step records the same dispatches in every MoE layer: 6 with Qwen2-MoE's gated shared expert (the
    // RMSNorms run inside the kernels that read them, q/k norm + RoPE inside attention, routing is one dispatch, the
    // shared expert rides in the routed experts' gate/up and down dispatches).
    std::vector<float> l(V);
    r.forward(k_prompt.data(), 1, l.data(), false);
    EXPECT_EQ(r.last_layer_dispatches(), 6u);
    EXPECT_THROW(r.forward(std::vector<int32_t>{V}.data(), 1, l.data(), false), InputError);
}

TEST(VulkanRunner, GreedyTokensMatchCpu) {
    VK_DEVICE_OR_SKIP(dev);
    auto            m = Model::load(test::bundled_model());
    GenerateOptions opt;
    opt.max_tokens = 64;
    auto cpu = generate(*m, k_prompt, opt);
    vk::Runner r(*dev, *m, 1);
    auto t0  = std::chrono::steady_clock::now();
    auto gpu = generate(r, k_prompt, opt);
    auto s   = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(gpu.tokens, cpu.tokens);
    EXPECT_EQ(gpu.tokens.size(), 64u);
    std::printf("[ lavapipe ] 64 greedy tokens in %.2f s (%.1f tok/s decode, %zu dispatches per decode step)\n", s,
                gpu.decode_tokens_per_s(), r.last_dispatches());
}

TEST(VulkanRunner, PerplexityMatchesCpuF32AndRtn) {
    VK_DEVICE_OR_SKIP(dev);
    const auto ids = test_text_ids(64); // two windows of 32: the window reset is exercised, lavapipe time stays low
    auto       m   = Model::load(test::bundled_model());
    for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1) {
            quant::QuantizeOptions opt;
            opt.method = "rtn";
            opt.bits   = 4;
            quant::quantize_model(*m, quant::CalibrationSet{}, opt);
            ASSERT_NE(dynamic_cast<NbitLinear*>(m->layer(1).experts[3][1].get()), nullptr);
        }
        vk::Runner r(*dev, *m, 32);
        EXPECT_TRUE(r.notes().empty()) << r.notes().front(); // f32 and nbit are read directly, nothing dequantized
        const auto cpu = perplexity(*m, ids, 32);
        const auto gpu = perplexity(r, ids, 32);
        EXPECT_EQ(gpu.windows, 2);
        EXPECT_NEAR(gpu.ppl, cpu.ppl, 0.005 * cpu.ppl) << (pass ? "rtn" : "f32");
        EXPECT_NEAR(gpu.ppl, cpu.ppl, 1e-4 * cpu.ppl) << (pass ? "rtn" : "f32") << " (summation order only)";
    }
}

TEST(VulkanRunner, MultipleChoiceMatchesCpu) {
    // evaluate_mc drives the runner through the Session interface: context once, cache rewinds per choice, and a
    // cache that grows between items. Log-likelihoods agree to f32 summation order, so the choices do too.
    VK_DEVICE_OR_SKIP(dev);
    auto       m     = Model::load(test::bundled_model());
    Tokenizer  tok   = Tokenizer::from_file(test::bundled_model() / "tokenizer.json");
    auto       items = load_mc_tasks(test::resources_dir() / "tasks" / "kjv-cloze-test.jsonl");
    items.resize(2);
    vk::Runner r(*dev, *m, 4); // smaller than any item: evaluate_mc resets it to what each item needs
    const auto cpu = evaluate_mc(*m, tok, items);
    const auto gpu = evaluate_mc(r, tok, items);
    ASSERT_EQ(gpu.loglik.size(), cpu.loglik.size());
    for (size_t i = 0; i < cpu.loglik.size(); ++i) {
        ASSERT_EQ(gpu.loglik[i].size(), cpu.loglik[i].size());
        for (size_t c = 0; c < cpu.loglik[i].size(); ++c)
            EXPECT_NEAR(gpu.loglik[i][c], cpu.loglik[i][c], 1e-3 + 1e-4 * std::fabs(cpu.loglik[i][c]))
                << "item " << i << " choice " << c;
    }
    EXPECT_EQ(gpu.predicted, cpu.predicted);
    EXPECT_EQ(gpu.predicted_norm, cpu.predicted_norm);
}

TEST(VulkanRunner, VqBinaryAndSharedBasisKernelsMatchCpu) {
    VK_DEVICE_OR_SKIP(dev);
    // VQ in every linear but the router (random_vq_model): what matters is that the runner's vq kernels compute what
    // VqLinear computes.
    {
        auto       m = random_vq_model();
        vk::Runner r(*dev, *m, 16);
        EXPECT_TRUE(r.notes().empty()) << r.notes().front();
        expect_same_logits(*dev, *m, k_prompt, 2, 2e-5);
    }
    // The binary format read by the kernels in every variant the binarizers write, and MoBiE's shared-basis path
    // (random_binary_model).
    {
        auto m = random_binary_model();
        vk::Runner r(*dev, *m, 16);
        EXPECT_TRUE(r.notes().empty()) << r.notes().front();
        expect_same_logits(*dev, *m, k_prompt, 2, 2e-5);
    }
    // KBVQ in the routed experts (random_kbvq_model): the kernels must give the CPU's logits, nothing dequantized.
    {
        auto m = random_kbvq_model();
        vk::Runner r(*dev, *m, 16);
        EXPECT_TRUE(r.notes().empty()) << r.notes().front();
        expect_same_logits(*dev, *m, k_prompt, 2, 2e-5);
    }
}

TEST(VulkanRunner, QuantizedCheckpointsPerplexityMatchesCpu) {
    // Every method's real output (tiny calibration) on the runner: GPTQ (nbit kernels), BiLLM and ARB-RC (binary
    // kernels), GPTVQ (vq kernels), MoBiE (binary residuals, its shared bases applied once per token), KBVQ (vq
    // residuals, its output-side bases and channel affine inside the expert kernels). Nothing is dequantized at upload.
    VK_DEVICE_OR_SKIP(dev);
    const auto ids   = test_text_ids(64);
    auto       tok   = Tokenizer::from_file(test::bundled_model() / "tokenizer.json");
    auto       train = tok.encode(test::read_text(test::resources_dir() / "corpus" / "train.txt").substr(0, 100000));
    const auto calib = quant::random_windows(train, 2, 64, 7, "train.txt");
    for (const std::string method : {"gptq", "billm", "arb-rc", "gptvq", "mobie", "kbvq"}) {
        auto                   m = Model::load(test::bundled_model());
        quant::QuantizeOptions opt;
        opt.method     = method;
        opt.bits       = method == "gptq" ? 4 : 2;
        opt.mobie_rank = 4;
        opt.kbvq_rank  = 4;
        quant::quantize_model(*m, calib, opt);
        if (method == "kbvq") { // as loaded from its checkpoint: every expert with its own copy of the shared arrays
            const auto          dir = test::scratch_dir("vk-kbvq");
            quant::WriteOptions wo;
            wo.quantization = {{"method", method}};
            quant::write_checkpoint(*m, test::bundled_model(), dir / "q", wo);
            m = Model::load(dir / "q");
        }
        vk::Runner r(*dev, *m, 32);
        EXPECT_TRUE(r.notes().empty()) << method << ": " << (r.notes().empty() ? "" : r.notes().front());
        const auto cpu = perplexity(*m, ids, 32);
        const auto gpu = perplexity(r, ids, 32);
        EXPECT_NEAR(gpu.ppl, cpu.ppl, 0.005 * cpu.ppl) << method;
        EXPECT_NEAR(gpu.ppl, cpu.ppl, 1e-4 * cpu.ppl) << method << " (summation order only)";
    }
}

#else
TEST(VulkanRunner, NotBuilt) { GTEST_SKIP() << "built without MOEBIUS_VULKAN"; }
#endif
