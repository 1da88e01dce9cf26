#include "engine/cpu/model.h"

#include "engine/core/error.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/cejd_linear.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/linear_loader.h"
#include "engine/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <malloc.h>
#include <mutex>
#include <numeric>
#include <omp.h>

namespace moebius {

std::unique_ptr<Linear>& LayerWeights::slot(LinearKind kind, int expert) {
    switch (kind) {
    case LinearKind::Q: return q;
    case LinearKind::K: return k;
    case LinearKind::V: return v;
    case LinearKind::O: return o;
    case LinearKind::Router: return router;
    case LinearKind::ExpertGate:
    case LinearKind::ExpertUp:
    case LinearKind::ExpertDown:
        MOEBIUS_ASSERT(expert >= 0 && expert < (int)experts.size());
        return experts[expert][(int)kind - (int)LinearKind::ExpertGate];
    case LinearKind::SharedGate: return shared_gate;
    case LinearKind::SharedUp: return shared_up;
    case LinearKind::SharedDown: return shared_down;
    case LinearKind::SharedExpertGate: return shared_expert_gate;
    case LinearKind::DenseGate: return dense_gate;
    case LinearKind::DenseUp: return dense_up;
    case LinearKind::DenseDown: return dense_down;
    case LinearKind::Count: break;
    }
    MOEBIUS_ASSERT(false);
    return q;
}

namespace {

// The forward allocates its activation buffers per call. glibc gives blocks above its mmap threshold (128 KiB,
// adapting up to 32 MiB) back to the OS on free and trims the heap top beyond twice that, so every call page-faulted
// and the kernel re-zeroed the same few MB: ~40% of the bundled model's prefill (sys time, and __memset/__brk in
// stack samples). Keep blocks up to 32 MiB in the heap and up to 128 MiB free at its top. Process-wide, set once.
void keep_freed_activations() {
#ifdef __GLIBC__
    static std::once_flag once;
    std::call_once(once, [] {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 128 << 20);
    });
#endif
}

} // namespace

std::unique_ptr<Model> Model::load(const ModelSpec& spec, const WeightStore& store, const ProgressFn& progress) {
    auto m = load_globals(spec, store, progress);
    for (int il = 0; il < spec.n_layer; ++il) {
        report_progress(progress, (double)il / spec.n_layer,
                        "loading layer " + std::to_string(il + 1) + "/" + std::to_string(spec.n_layer));
        m->layers_[il] = load_layer_weights(spec, store, il);
        m->loaded_[il] = 1;
    }
    report_progress(progress, 1.0, "loaded");
    return m;
}

std::unique_ptr<Model> Model::load_globals(const ModelSpec& spec, const WeightStore& store, const ProgressFn& progress) {
    keep_freed_activations();
    auto m   = std::unique_ptr<Model>(new Model());
    m->spec_ = spec;
    const int64_t H = spec.n_embd;
    report_progress(progress, 0.0, "embeddings");
    m->embed_      = load_f32_checked(store, spec.embed_name(), {spec.n_vocab, H});
    m->final_norm_ = load_f32_checked(store, spec.final_norm_name(), {H});
    m->lm_head_    = std::make_unique<DenseLinear>(
        (int)H, spec.n_vocab,
        spec.tie_word_embeddings ? m->embed_ : load_f32_checked(store, spec.lm_head_name(), {spec.n_vocab, H}));
    m->layers_.resize(spec.n_layer);
    m->loaded_.assign(spec.n_layer, 0);
    // inv_freq_i = 1 / θ^(2i/d), as transformers computes it (f32), with linear position scaling folded in.
    m->inv_freq_.resize(spec.head_dim / 2);
    for (int i = 0; i < spec.head_dim / 2; ++i)
        m->inv_freq_[i] =
            (float)(1.0 / std::pow((double)spec.rope_theta, (2.0 * i) / spec.head_dim)) / spec.rope_linear_factor;
    return m;
}

LayerWeights Model::load_layer_weights(const ModelSpec& spec, const WeightStore& store, int il) {
    const FamilyTraits& t = spec.traits();
    const int64_t       H = spec.n_embd;
    SharedParts shared; // a group's basis (CEJD, KBVQ) read once for the layer, held by every member
    auto linear = [&](int il, LinearKind kind, int expert = -1) {
        auto [out, in] = spec.linear_shape(kind);
        return load_linear(store, spec, spec.linear_name(il, kind, expert), out, in, &shared);
    };
    LayerWeights L;
    const std::string p = spec.layer_prefix(il);
    L.attn_norm         = load_f32_checked(store, p + "input_layernorm.weight", {H});
    L.ffn_norm          = load_f32_checked(store, p + "post_attention_layernorm.weight", {H});
    L.q = linear(il, LinearKind::Q);
    L.k = linear(il, LinearKind::K);
    L.v = linear(il, LinearKind::V);
    L.o = linear(il, LinearKind::O);
    const int64_t qd = (int64_t)spec.n_head * spec.head_dim, kvd = (int64_t)spec.n_head_kv * spec.head_dim;
    if (spec.attn_qkv_bias) {
        L.bq = load_f32_checked(store, p + "self_attn.q_proj.bias", {qd});
        L.bk = load_f32_checked(store, p + "self_attn.k_proj.bias", {kvd});
        L.bv = load_f32_checked(store, p + "self_attn.v_proj.bias", {kvd});
    }
    if (spec.attn_o_bias) L.bo = load_f32_checked(store, p + "self_attn.o_proj.bias", {H});
    if (t.qk_norm == QkNorm::PerHead) {
        L.q_norm = load_f32_checked(store, p + "self_attn.q_norm.weight", {spec.head_dim});
        L.k_norm = load_f32_checked(store, p + "self_attn.k_norm.weight", {spec.head_dim});
    } else if (t.qk_norm == QkNorm::Full) {
        L.q_norm = load_f32_checked(store, p + "self_attn.q_norm.weight", {qd});
        L.k_norm = load_f32_checked(store, p + "self_attn.k_norm.weight", {kvd});
    }
    L.is_moe = spec.layer_is_moe[il];
    if (L.is_moe) {
        L.router = linear(il, LinearKind::Router);
        L.experts.resize(spec.n_expert);
#pragma omp parallel for schedule(dynamic)
        for (int e = 0; e < spec.n_expert; ++e) {
            // Exceptions must not cross the OpenMP region: collect and rethrow below.
            try {
                L.experts[e][0] = linear(il, LinearKind::ExpertGate, e);
                L.experts[e][1] = linear(il, LinearKind::ExpertUp, e);
                L.experts[e][2] = linear(il, LinearKind::ExpertDown, e);
            } catch (...) {
            }
        }
        for (int e = 0; e < spec.n_expert; ++e)
            if (!L.experts[e][0] || !L.experts[e][1] || !L.experts[e][2]) {
                // Re-run serially to raise the precise error for the first failing expert.
                linear(il, LinearKind::ExpertGate, e);
                linear(il, LinearKind::ExpertUp, e);
                linear(il, LinearKind::ExpertDown, e);
            }
        if (spec.n_ff_shared > 0) {
            L.shared_gate = linear(il, LinearKind::SharedGate);
            L.shared_up   = linear(il, LinearKind::SharedUp);
            L.shared_down = linear(il, LinearKind::SharedDown);
            if (t.shared_gated) L.shared_expert_gate = linear(il, LinearKind::SharedExpertGate);
        }
    } else {
        L.dense_gate = linear(il, LinearKind::DenseGate);
        L.dense_up   = linear(il, LinearKind::DenseUp);
        L.dense_down = linear(il, LinearKind::DenseDown);
    }
        return L;
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir, const ProgressFn& progress, const LoadOptions& opt) {
    ModelSpec spec  = ModelSpec::load(dir);
    auto      store = std::make_unique<WeightStore>(WeightStore::open(dir));
    if (!opt.lazy_layers) return load(spec, *store, progress);
    auto m    = load_globals(spec, *store, progress);
    for (const auto& f : store->files()) f->release_resident_pages();
    m->store_ = std::move(store);
    report_progress(progress, 1.0, "loaded (layers on demand)");
    return m;
}

bool Model::layer_loaded(int il) const { return il >= 0 && il < spec_.n_layer && loaded_[il]; }

void Model::load_layer(int il) {
    MOEBIUS_ASSERT(il >= 0 && il < spec_.n_layer);
    if (loaded_[il]) return;
    if (!store_) throw Error("layer " + std::to_string(il) + " was released and the model has no checkpoint to reload it from");
    layers_[il] = load_layer_weights(spec_, *store_, il);
    loaded_[il] = 1;
    for (const auto& f : store_->files()) f->release_resident_pages();
}

void Model::release_layer(int il) {
    MOEBIUS_ASSERT(il >= 0 && il < spec_.n_layer);
    if (!store_) return; // eagerly loaded models keep their (possibly replaced) weights
    layers_[il] = LayerWeights{};
    loaded_[il] = 0;
}

KVCache Model::new_cache(int n_ctx) const {
    KVCache c;
    c.n_ctx  = n_ctx;
    c.kv_dim = spec_.n_head_kv * spec_.head_dim;
    c.k.assign(spec_.n_layer, std::vector<float>((size_t)n_ctx * c.kv_dim));
    c.v.assign(spec_.n_layer, std::vector<float>((size_t)n_ctx * c.kv_dim));
    return c;
}

int64_t Model::storage_bytes() const {
    int64_t b = (int64_t)(embed_.size() + final_norm_.size()) * 4 + lm_head_->storage_bytes();
    for (auto& L : layers_) {
        for (auto* l : {&L.q, &L.k, &L.v, &L.o, &L.router, &L.shared_gate, &L.shared_up, &L.shared_down,
                        &L.shared_expert_gate, &L.dense_gate, &L.dense_up, &L.dense_down})
            if (*l) b += (*l)->storage_bytes();
        for (auto& e : L.experts)
            for (auto& l : e) b += l->storage_bytes();
        b += (int64_t)(L.attn_norm.size() + L.ffn_norm.size() + L.bq.size() + L.bk.size() + L.bv.size() +
                       L.bo.size() + L.q_norm.size() + L.k_norm.size()) * 4;
    }
    return b;
}

void Model::embed(const int32_t* tokens, int n, float* x) const {
    const int H = spec_.n_embd;
    for (int i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= spec_.n_vocab)
            throw InputError("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." +
                             std::to_string(spec_.n_vocab - 1) + ")");
        std::copy_n(embed_.data() + (int64_t)tokens[i] * H, H, x + (int64_t)i * H);
    }
}

void Model::output(const float* x, int n, float* logits) const {
    std::vector<float> xn((size_t)n * spec_.n_embd);
    cpu::rmsnorm(x, n, spec_.n_embd, final_norm_.data(), spec_.rms_eps, xn.data());
    lm_head_->forward(xn.data(), n, logits);
}

void Model::forward(const int32_t* tokens, int n, KVCache& cache, float* logits, bool logits_all,
                    const Hooks* hooks) const {
    if (n <= 0) return;
    if (cache.n_past + n > cache.n_ctx)
        throw InputError("context is full: " + std::to_string(cache.n_past + n) + " tokens exceed the context of " +
                         std::to_string(cache.n_ctx));
    const int          H = spec_.n_embd;
    std::vector<float> x((size_t)n * H);
    embed(tokens, n, x.data());
    for (int il = 0; il < spec_.n_layer; ++il) forward_layer(il, x.data(), n, &cache, hooks);
    cache.n_past += n;
    if (!logits) return;
    if (logits_all) output(x.data(), n, logits);
    else output(x.data() + (int64_t)(n - 1) * H, 1, logits);
}

void Model::forward_layer(int il, float* x, int n, KVCache* cache, const Hooks* hooks) const {
    layer_pass(il, x, n, cache, true, hooks);
}

void Model::forward_ffn_block(int il, float* h, int n, const Hooks* hooks) const {
    layer_pass(il, h, n, nullptr, false, hooks);
}

void Model::forward_attention_block(int il, float* x, int n, const Hooks* hooks) const {
    if (!loaded_[il]) throw Error("layer " + std::to_string(il) + " is not loaded (lazily loaded model: load_layer first)");
    attention_block(il, x, n, nullptr, hooks);
}

void Model::layer_pass(int il, float* x, int n, KVCache* cache, bool attention, const Hooks* hooks) const {
    if (!loaded_[il]) throw Error("layer " + std::to_string(il) + " is not loaded (lazily loaded model: load_layer first)");
    const int           H  = spec_.n_embd;
    const int           n_past = cache ? cache->n_past : 0;
    std::vector<int>    positions(n);
    std::iota(positions.begin(), positions.end(), n_past);
    std::vector<float> input;
    if (hooks && hooks->on_layer) input.assign(x, x + (size_t)n * H);

    const LayerStop stop = hooks ? hooks->stop : LayerStop::None;
    auto            done = [&](const float* out) {
        if (hooks && hooks->on_layer) hooks->on_layer(LayerEvent{il, n, H, input.data(), out, positions.data()});
    };
    if (attention) {
        attention_block(il, x, n, cache, hooks);
        if (stops_in_attention(stop)) return done(nullptr);
    }
    ffn_block(il, x, n, positions.data(), hooks);
    done(stop == LayerStop::None ? x : nullptr);
}

void Model::attention_block(int il, float* x, int n, KVCache* cache, const Hooks* hooks) const {
    const int          H = spec_.n_embd;
    std::vector<float> hn((size_t)n * H), delta((size_t)n * H);
    // h = x + Attn(RMSNorm(x))
    cpu::rmsnorm(x, n, H, layers_[il].attn_norm.data(), spec_.rms_eps, hn.data());
    attention(il, hn.data(), n, cache, cache ? cache->n_past : 0, hooks, delta.data());
    if (hooks && stops_in_attention(hooks->stop)) return;
    for (size_t i = 0; i < delta.size(); ++i) x[i] += delta[i];
}

void Model::ffn_block(int il, float* h, int n, const int* positions, const Hooks* hooks) const {
    const LayerWeights& L = layers_[il];
    const int           H = spec_.n_embd;
    std::vector<float>  hn((size_t)n * H), delta((size_t)n * H);
    // out = h + FFN(RMSNorm(h))
    cpu::rmsnorm(h, n, H, L.ffn_norm.data(), spec_.rms_eps, hn.data());
    if (L.is_moe) moe_ffn(il, hn.data(), n, positions, hooks, delta.data());
    else dense_ffn(il, *L.dense_gate, *L.dense_up, *L.dense_down, LinearKind::DenseGate, hn.data(), n, positions, hooks,
                   delta.data());
    if (hooks && hooks->stop != LayerStop::None) return;
    for (size_t i = 0; i < delta.size(); ++i) h[i] += delta[i];
}

void Model::attention(int il, const float* hn, int n, KVCache* cache, int n_past, const Hooks* hooks,
                      float* out) const {
    const LayerWeights& L   = layers_[il];
    const int           H   = spec_.n_embd, hd = spec_.head_dim;
    const int           nh  = spec_.n_head, nkv = spec_.n_head_kv;
    const int           qd  = nh * hd, kvd = nkv * hd;
    std::vector<float>  q((size_t)n * qd), k((size_t)n * kvd), v((size_t)n * kvd);
    std::vector<int>    positions(n);
    std::iota(positions.begin(), positions.end(), n_past);

    auto run = [&](const Linear& lin, LinearKind kind, float* y, const std::vector<float>& bias) {
        lin.forward(hn, n, y);
        if (hooks && hooks->on_linear)
            hooks->on_linear(LinearEvent{il, kind, -1, n, H, lin.out_features(), hn, y, nullptr, positions.data(),
                                         nullptr});
        if (!bias.empty()) cpu::add_bias(y, n, lin.out_features(), bias.data());
    };
    run(*L.q, LinearKind::Q, q.data(), L.bq);
    run(*L.k, LinearKind::K, k.data(), L.bk);
    run(*L.v, LinearKind::V, v.data(), L.bv);
    if (hooks && hooks->stop == LayerStop::AttentionInputs) return;

    switch (spec_.traits().qk_norm) {
    case QkNorm::PerHead:
        cpu::rmsnorm(q.data(), n * nh, hd, L.q_norm.data(), spec_.rms_eps, q.data());
        cpu::rmsnorm(k.data(), n * nkv, hd, L.k_norm.data(), spec_.rms_eps, k.data());
        break;
    case QkNorm::Full:
        cpu::rmsnorm(q.data(), n, qd, L.q_norm.data(), spec_.rms_eps, q.data());
        cpu::rmsnorm(k.data(), n, kvd, L.k_norm.data(), spec_.rms_eps, k.data());
        break;
    case QkNorm::None: break;
    }
    if (spec_.clip_qkv) {
        // OLMoE clamps q, k and v after the norms.
        const float c = *spec_.clip_qkv;
        for (auto* buf : {&q, &k, &v})
            for (float& f : *buf) f = std::clamp(f, -c, c);
    }
    cpu::rope(q.data(), n, nh, hd, qd, positions.data(), inv_freq_.data());
    cpu::rope(k.data(), n, nkv, hd, kvd, positions.data(), inv_freq_.data());

    // Keys/values visible to this chunk: the cache (then extended by this chunk), or just this chunk.
    const float* K = k.data();
    const float* V = v.data();
    if (cache) {
        std::copy(k.begin(), k.end(), cache->k[il].begin() + (int64_t)n_past * kvd);
        std::copy(v.begin(), v.end(), cache->v[il].begin() + (int64_t)n_past * kvd);
        K = cache->k[il].data();
        V = cache->v[il].data();
    }
    const int          base  = cache ? n_past : 0;
    const int          group = nh / nkv;
    const float        scale = 1.0f / std::sqrt((float)hd);
    std::vector<float> attn((size_t)n * qd);
    // Per (head, block of up to kQB queries): S = Q_b K_hᵀ and O_b = softmax(S) V_h as two small GEMMs over the keys
    // the block's last query can see; rows whose causal limit ends earlier get zero weight for the later keys.
    // (The dot products were scalar loops before: a serial FMA chain per score, ~4 cycles per multiply-add.)
    constexpr int kQB  = 32;
    const int     n_qb = (n + kQB - 1) / kQB;
    // Fork only when there is enough work to amortise waking the other threads (decode of a small model is not).
    const int64_t work = (int64_t)n * nh * (base + n) * hd;
#pragma omp parallel if (work >= (1 << 20))
    {
        std::vector<float> scores((size_t)std::min(n, kQB) * (base + n));
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int h = 0; h < nh; ++h) {
            for (int b = 0; b < n_qb; ++b) {
                const int    i0 = b * kQB, m = std::min(n, i0 + kQB) - i0;
                const int    kvh  = h / group; // repeat_kv: q-head h reads kv-head h / (n_head / n_head_kv)
                const int    nctx = base + i0 + m; // keys visible to the block's last query
                // S (m, nctx) = Q_b (m, hd; rows qd apart) · K_hᵀ (K_h: nctx rows kvd apart)
                cpu::gemm(m, nctx, hd, q.data() + (int64_t)i0 * qd + (int64_t)h * hd, qd, false, K + (int64_t)kvh * hd,
                     kvd, true, scores.data(), nctx, false);
                for (int r = 0; r < m; ++r) {
                    float*    sr  = scores.data() + (int64_t)r * nctx;
                    const int lim = base + i0 + r + 1; // causal: keys 0..lim-1
                    cpu::softmax_scaled(sr, lim, scale);
                    std::fill(sr + lim, sr + nctx, 0.f);
                }
                // O_b (m, hd; rows qd apart) = S · V_h (nctx, hd; rows kvd apart)
                cpu::gemm(m, hd, nctx, scores.data(), nctx, false, V + (int64_t)kvh * hd, kvd, false,
                     attn.data() + (int64_t)i0 * qd + (int64_t)h * hd, qd, false);
            }
        }
    }
    L.o->forward(attn.data(), n, out);
    if (hooks && hooks->on_linear)
        hooks->on_linear(LinearEvent{il, LinearKind::O, -1, n, qd, H, attn.data(), out, nullptr, positions.data(),
                                     nullptr});
    if (!L.bo.empty()) cpu::add_bias(out, n, H, L.bo.data());
}

void Model::dense_ffn(int il, const Linear& g, const Linear& u, const Linear& d, LinearKind kind0, const float* hn,
                      int n, const int* positions, const Hooks* hooks, float* out) const {
    const int          H = spec_.n_embd, F = g.out_features();
    const LayerStop    stop = hooks ? hooks->stop : LayerStop::None;
    const auto         k1 = (LinearKind)((int)kind0 + 1), k2 = (LinearKind)((int)kind0 + 2);
    auto               event = [&](LinearKind k, int in, int o, const float* x, const float* y) {
        if (hooks && hooks->on_linear) hooks->on_linear(LinearEvent{il, k, -1, n, in, o, x, y, nullptr, positions, nullptr});
    };
    if (stop == LayerStop::FfnInputs) {
        event(kind0, H, F, hn, nullptr);
        event(k1, H, F, hn, nullptr);
        return;
    }
    std::vector<float> gb((size_t)n * F), ub((size_t)n * F), hb((size_t)n * F);
    g.forward(hn, n, gb.data());
    u.forward(hn, n, ub.data());
    cpu::silu_mul(gb.data(), ub.data(), n, F, hb.data());
    const bool run_down = stop == LayerStop::None;
    if (run_down) d.forward(hb.data(), n, out);
    event(kind0, H, F, hn, gb.data());
    event(k1, H, F, hn, ub.data());
    event(k2, F, H, hb.data(), run_down ? out : nullptr);
}

void Model::moe_ffn(int il, const float* hn, int n, const int* positions, const Hooks* hooks, float* out) const {
    const LayerWeights& L = layers_[il];
    const int           H = spec_.n_embd, E = spec_.n_expert, K = spec_.n_expert_used, F = spec_.n_ff_expert;

    // Router in f32: softmax over all experts, top-k, optional renormalisation.
    std::vector<float> logits((size_t)n * E), probs((size_t)n * E), topw((size_t)n * K);
    std::vector<int>   topi((size_t)n * K);
    L.router->forward(hn, n, logits.data());
    if (hooks && hooks->on_linear)
        hooks->on_linear(LinearEvent{il, LinearKind::Router, -1, n, H, E, hn, logits.data(), nullptr, positions,
                                     nullptr});
    std::vector<int> order(E);
    for (int t = 0; t < n; ++t) {
        float* p = probs.data() + (int64_t)t * E;
        std::copy_n(logits.data() + (int64_t)t * E, E, p);
        cpu::softmax(p, E);
        std::iota(order.begin(), order.end(), 0);
        // Highest probability first; ties go to the lower expert id (torch.topk's order on CPU).
        std::partial_sort(order.begin(), order.begin() + K, order.end(),
                          [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
        float sum = 0;
        for (int j = 0; j < K; ++j) sum += p[order[j]];
        for (int j = 0; j < K; ++j) {
            topi[(size_t)t * K + j] = order[j];
            topw[(size_t)t * K + j] = spec_.norm_topk_prob ? p[order[j]] / sum : p[order[j]];
        }
    }
    if (hooks && hooks->on_router)
        hooks->on_router(RouterEvent{il, n, E, K, logits.data(), probs.data(), topi.data(), topw.data(), positions});

    // Group tokens by expert.
    struct Bucket {
        std::vector<int>   tok, pos;
        std::vector<float> w;
        std::vector<float> x, g, u, h, y; // (m, H), (m, F) x3, (m, H)
    };
    std::vector<Bucket> buckets(E);
    for (int t = 0; t < n; ++t)
        for (int j = 0; j < K; ++j) {
            Bucket& b = buckets[topi[(size_t)t * K + j]];
            b.tok.push_back(t);
            b.pos.push_back(positions[t]);
            b.w.push_back(topw[(size_t)t * K + j]);
        }
    std::vector<int> active;
    int64_t          routed = 0; // token-expert pairs
    for (int e = 0; e < E; ++e)
        if (!buckets[e].tok.empty()) {
            active.push_back(e);
            routed += (int64_t)buckets[e].tok.size();
        }

    // A bucket's rows of the FFN input, (m, H).
    auto gather = [&](Bucket& b) {
        b.x.resize(b.tok.size() * (size_t)H);
        for (size_t r = 0; r < b.tok.size(); ++r) std::copy_n(hn + (int64_t)b.tok[r] * H, H, b.x.data() + r * H);
    };
    const LayerStop stop = hooks ? hooks->stop : LayerStop::None;
    if (stop == LayerStop::FfnInputs) {
        // The experts' inputs only: gather each bucket's rows, run nothing.
        for (int e : active) {
            Bucket& b = buckets[e];
            gather(b);
            if (hooks && hooks->on_linear)
                for (LinearKind k : {LinearKind::ExpertGate, LinearKind::ExpertUp})
                    hooks->on_linear(LinearEvent{il, k, e, (int)b.tok.size(), H, F, b.x.data(), nullptr, b.tok.data(),
                                                 b.pos.data(), b.w.data()});
        }
        shared_ffn(il, hn, n, positions, hooks, out);
        return;
    }

    // MoBiE's shared bases (cejd_linear.h), applied once per token instead of once per expert: gate/up's z = B x for
    // all tokens before the experts, down's B (Σ_e g_e C_e h_e) after the weighted sum. With statistics hooks the
    // per-expert down outputs must be complete, so down then takes the per-expert path (same values, other rounding).
    const CejdLinear* cin[2] = {shared_basis_group(L.experts, 0, true), shared_basis_group(L.experts, 1, true)};
    const CejdLinear* cdown  = hooks && (hooks->on_linear || stop != LayerStop::None)
                                    ? nullptr
                                    : shared_basis_group(L.experts, 2, false);
    std::vector<float> zin[2]; // (n, r) per kind
    for (int k = 0; k < 2; ++k)
        if (cin[k]) {
            zin[k].resize((size_t)n * cin[k]->rank());
            cin[k]->basis()->forward(hn, n, zin[k].data());
        }
    std::vector<std::vector<float>> cz(E); // [expert] (m, r): down's C h when cdown
    const bool run_down = stop == LayerStop::None;

    // Experts run concurrently (their matmuls single-threaded inside); small layers stay on one thread.
#pragma omp parallel for schedule(dynamic) if (active.size() > 1 && routed * 3 * H * F >= (1 << 20))
    for (size_t ai = 0; ai < active.size(); ++ai) {
        Bucket&   b = buckets[active[ai]];
        const int m = (int)b.tok.size();
        const auto& ex = L.experts[active[ai]];
        gather(b);
        b.g.resize((size_t)m * F);
        b.u.resize((size_t)m * F);
        b.h.resize((size_t)m * F);
        b.y.resize((size_t)m * H);
        for (int k = 0; k < 2; ++k) {
            float* dst = k == 0 ? b.g.data() : b.u.data();
            if (!cin[k]) {
                ex[k]->forward(b.x.data(), m, dst);
                continue;
            }
            const auto&        c  = static_cast<const CejdLinear&>(*ex[k]);
            const int          rk = c.rank();
            std::vector<float> z((size_t)m * rk), t((size_t)m * F); // (m, r), (m, F)
            for (int r = 0; r < m; ++r) std::copy_n(zin[k].data() + (int64_t)b.tok[r] * rk, rk, z.data() + (int64_t)r * rk);
            c.residual().forward(b.x.data(), m, dst);
            c.coef().forward(z.data(), m, t.data());
            for (size_t i = 0; i < t.size(); ++i) dst[i] += t[i];
        }
        cpu::silu_mul(b.g.data(), b.u.data(), m, F, b.h.data());
        if (!run_down) continue;
        if (cdown) {
            const auto& c = static_cast<const CejdLinear&>(*ex[2]);
            c.residual().forward(b.h.data(), m, b.y.data());
            cz[active[ai]].resize((size_t)m * c.rank());
            c.coef().forward(b.h.data(), m, cz[active[ai]].data());
        } else {
            ex[2]->forward(b.h.data(), m, b.y.data());
        }
    }

    // Combine in ascending expert order (deterministic, and the order transformers accumulates in).
    std::fill(out, out + (int64_t)n * H, 0.f);
    for (int e : active) {
        const Bucket& b = buckets[e];
        const int     m = (int)b.tok.size();
        if (hooks && hooks->on_linear) {
            hooks->on_linear(LinearEvent{il, LinearKind::ExpertGate, e, m, H, F, b.x.data(), b.g.data(),
                                         b.tok.data(), b.pos.data(), b.w.data()});
            hooks->on_linear(LinearEvent{il, LinearKind::ExpertUp, e, m, H, F, b.x.data(), b.u.data(), b.tok.data(),
                                         b.pos.data(), b.w.data()});
            hooks->on_linear(LinearEvent{il, LinearKind::ExpertDown, e, m, F, H, b.h.data(),
                                         run_down ? b.y.data() : nullptr, b.tok.data(), b.pos.data(), b.w.data()});
        }
        if (!run_down) continue;
        for (int r = 0; r < m; ++r) {
            float*       o = out + (int64_t)b.tok[r] * H;
            const float* y = b.y.data() + (int64_t)r * H;
            for (int d = 0; d < H; ++d) o[d] += b.w[r] * y[d];
        }
    }
    if (cdown) {
        const int          rk = cdown->rank();
        std::vector<float> acc((size_t)n * rk, 0.f), t((size_t)n * H); // (n, r) Σ_e g_e C_e h_e, (n, H)
        for (int e : active) {
            const Bucket& b = buckets[e];
            for (size_t r = 0; r < b.tok.size(); ++r) {
                float*       a = acc.data() + (int64_t)b.tok[r] * rk;
                const float* z = cz[e].data() + (int64_t)r * rk;
                for (int k = 0; k < rk; ++k) a[k] += b.w[r] * z[k];
            }
        }
        cdown->basis()->forward(acc.data(), n, t.data());
        for (size_t i = 0; i < t.size(); ++i) out[i] += t[i];
    }

    shared_ffn(il, hn, n, positions, hooks, out);
}

void Model::shared_ffn(int il, const float* hn, int n, const int* positions, const Hooks* hooks, float* out) const {
    const LayerWeights& L = layers_[il];
    if (!L.shared_gate) return;
    const int          H = spec_.n_embd;
    std::vector<float> s((size_t)n * H);
    dense_ffn(il, *L.shared_gate, *L.shared_up, *L.shared_down, LinearKind::SharedGate, hn, n, positions, hooks,
              s.data());
    std::vector<float> gate(n, 1.f);
    if (L.shared_expert_gate) {
        L.shared_expert_gate->forward(hn, n, gate.data());
        if (hooks && hooks->on_linear)
            hooks->on_linear(LinearEvent{il, LinearKind::SharedExpertGate, -1, n, H, 1, hn, gate.data(), nullptr,
                                         positions, nullptr});
        for (float& g : gate) g = cpu::sigmoid(g);
    }
    if (hooks && hooks->stop != LayerStop::None) return;
    for (int t = 0; t < n; ++t)
        for (int d = 0; d < H; ++d) out[(int64_t)t * H + d] += gate[t] * s[(int64_t)t * H + d];
}

} // namespace moebius
