#pragma once
// The CPU reference model: f32 math over any supported MoE family (one forward, per-family switches from
// FamilyTraits), KV cache, batched prefill, hooks on every linear/router/layer.
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "engine/core/model_config.h"
#include "engine/core/progress.h"
#include "engine/cpu/hooks.h"
#include "engine/cpu/linear.h"

namespace moebius {

class WeightStore;

struct LayerWeights {
    std::vector<float>      attn_norm, ffn_norm; // (n_embd)
    std::unique_ptr<Linear> q, k, v, o;
    std::vector<float>      bq, bk, bv, bo;      // empty when the family has no bias
    std::vector<float>      q_norm, k_norm;      // (head_dim) per-head or (n_head*head_dim) full; empty if none
    bool                    is_moe = false;
    std::unique_ptr<Linear> router;                                  // (n_expert, n_embd)
    std::vector<std::array<std::unique_ptr<Linear>, 3>> experts;     // [n_expert] gate, up, down
    std::unique_ptr<Linear> shared_gate, shared_up, shared_down;     // shared expert(s), may be null
    std::unique_ptr<Linear> shared_expert_gate;                      // (1, n_embd), Qwen2-MoE only
    std::unique_ptr<Linear> dense_gate, dense_up, dense_down;        // dense FFN layers

    // The slot holding a linear of this kind (nullptr reference if the layer has none).
    std::unique_ptr<Linear>&       slot(LinearKind kind, int expert = -1);
    const std::unique_ptr<Linear>& slot(LinearKind kind, int expert = -1) const {
        return const_cast<LayerWeights*>(this)->slot(kind, expert);
    }
    // f(kind, expert, slot) for every linear the layer has, in LinearKind order (expert = -1 for non-expert kinds).
    template <class F> void for_each_linear(F&& f) {
        for (int k = 0; k < (int)LinearKind::Count; ++k) {
            const auto kind       = (LinearKind)k;
            const bool per_expert = is_expert_kind(kind);
            for (int e = 0; e < (per_expert ? (int)experts.size() : 1); ++e) {
                auto& s = slot(kind, per_expert ? e : -1);
                if (s) f(kind, per_expert ? e : -1, s);
            }
        }
    }
    template <class F> void for_each_linear(F&& f) const {
        const_cast<LayerWeights*>(this)->for_each_linear(
            [&](LinearKind k, int e, std::unique_ptr<Linear>& s) { f(k, e, (const std::unique_ptr<Linear>&)s); });
    }
};

// Keys and values of every layer for one sequence.
struct KVCache {
    int                             n_ctx  = 0;
    int                             kv_dim = 0;
    int                             n_past = 0;
    std::vector<std::vector<float>> k, v; // [n_layer] (n_ctx, kv_dim)
    void                            clear() { n_past = 0; }
};

struct LoadOptions {
    // Read decoder layers only when asked (load_layer) and let layer-sequential drivers release them, so one layer's
    // weights are resident at a time (the checkpoint stays mmapped). forward() needs every layer loaded.
    bool lazy_layers = false;
};

class Model {
public:
    // Loads a checkpoint directory; validates every tensor's shape against config.json. progress may cancel.
    static std::unique_ptr<Model> load(const std::filesystem::path& dir, const ProgressFn& progress = {},
                                       const LoadOptions& opt = {});
    // Builds from an open store (the quantizer uses this with replaced linears).
    static std::unique_ptr<Model> load(const ModelSpec& spec, const WeightStore& store, const ProgressFn& progress = {});

    const ModelSpec& spec() const { return spec_; }
    KVCache          new_cache(int n_ctx) const;

    // Runs n tokens at positions cache.n_past.. and appends them to the cache.
    // logits: (n, n_vocab) if logits_all, else (n_vocab) for the last token only; may be nullptr.
    void forward(const int32_t* tokens, int n, KVCache& cache, float* logits, bool logits_all,
                 const Hooks* hooks = nullptr) const;

    // Building blocks, for layer-sequential drivers (calibration, quantization).
    void embed(const int32_t* tokens, int n, float* x) const; // x (n, n_embd)
    // x (n, n_embd) in/out. With cache: attends to the cache plus these tokens and appends them; positions are
    // cache->n_past + i. Without cache: causal attention over the n tokens, positions 0..n-1.
    void forward_layer(int il, float* x, int n, KVCache* cache, const Hooks* hooks = nullptr) const;
    // The two halves of forward_layer (no cache, positions 0..n-1), for drivers whose attention no longer changes so
    // that passes over the FFN need not recompute it: x (n, n_embd) ← x + Attn(RMSNorm(x)), then h ← h + FFN(RMSNorm(h)).
    // Together the same values and events as forward_layer; hooks->stop applies. on_layer is reported by the FFN block
    // alone, its `input` being h, the residual after the attention.
    void forward_attention_block(int il, float* x, int n, const Hooks* hooks = nullptr) const;
    void forward_ffn_block(int il, float* h, int n, const Hooks* hooks = nullptr) const;
    void output(const float* x, int n, float* logits) const; // final norm + lm_head, logits (n, n_vocab)

    // Lazily loaded models: whether a layer's weights are resident, read one, free one (a released layer is read
    // again from the checkpoint on the next load_layer). Eagerly loaded models have every layer and ignore release.
    bool layer_loaded(int il) const;
    void load_layer(int il);
    void release_layer(int il);

    LayerWeights&       layer(int il) { return layers_[il]; }
    const LayerWeights& layer(int il) const { return layers_[il]; }
    // Read access for the backward pass (engine/cpu/backward.cpp).
    const std::vector<float>& final_norm() const { return final_norm_; }   // (n_embd)
    const std::vector<float>& embeddings() const { return embed_; }        // (n_vocab, n_embd), for GPU upload
    const Linear&             lm_head() const { return *lm_head_; }        // (n_vocab, n_embd)
    const std::vector<float>& rope_inv_freq() const { return inv_freq_; }  // (head_dim/2)
    int64_t             storage_bytes() const;

private:
    static std::unique_ptr<Model> load_globals(const ModelSpec& spec, const WeightStore& store, const ProgressFn& progress);
    static LayerWeights           load_layer_weights(const ModelSpec& spec, const WeightStore& store, int il);
    void attention(int il, const float* hn, int n, KVCache* cache, int n_past, const Hooks* hooks, float* out) const;
    // forward_layer (attention on) and forward_ffn_block (off): the blocks, then hooks->on_layer.
    void layer_pass(int il, float* x, int n, KVCache* cache, bool attention, const Hooks* hooks) const;
    // x (n, H) += Attn(RMSNorm(x)) (x unchanged when hooks stop after the attention; positions from cache->n_past).
    void attention_block(int il, float* x, int n, KVCache* cache, const Hooks* hooks) const;
    // h (n, H) += FFN(RMSNorm(h)) (h left unspecified when hooks stop the layer early).
    void ffn_block(int il, float* h, int n, const int* positions, const Hooks* hooks) const;
    void moe_ffn(int il, const float* hn, int n, const int* positions, const Hooks* hooks, float* out) const;
    // out (n, H) += the shared expert(s) of a MoE layer, gated (Qwen2-MoE) or not; nothing if the layer has none.
    void shared_ffn(int il, const float* hn, int n, const int* positions, const Hooks* hooks, float* out) const;
    void dense_ffn(int il, const Linear& g, const Linear& u, const Linear& d, LinearKind kind0, const float* hn, int n,
                   const int* positions, const Hooks* hooks, float* out) const;

    ModelSpec                 spec_;
    std::vector<float>        embed_;      // (n_vocab, n_embd)
    std::vector<float>        final_norm_; // (n_embd)
    std::unique_ptr<Linear>   lm_head_;    // (n_vocab, n_embd)
    std::vector<LayerWeights> layers_;
    std::vector<float>        inv_freq_;   // (head_dim/2)
    std::vector<char>         loaded_;     // [n_layer]
    std::shared_ptr<const WeightStore> store_; // lazily loaded models only
};

} // namespace moebius
