#pragma once
// The whole model on a Vulkan device: weights uploaded once (f32, or the nbit format read directly by the
// kernels; other formats dequantized to f32 at upload, with the reason in notes()), a KV cache in device buffers,
// and one command buffer per forward call, submitted once. The math follows the CPU forward (engine/cpu/model.cpp)
// step by step; tests/unit/test_vulkan_runner.cpp compares logits, greedy tokens and perplexity with it.
#include "engine/core/progress.h"
#include "engine/cpu/generate.h"
#include "engine/cpu/model.h"
#include "engine/eval/perplexity.h"
#include "engine/vulkan/model_ops.h"

#include <functional>
#include <span>
#include <string>
#include <vector>

namespace moebius::vk {

class Runner {
  public:
    // Uploads every layer of `model` (which must have all layers loaded) with room for n_ctx positions.
    // Throws UnsupportedError for what the device or the kernels cannot hold (the caller may fall back to the CPU).
    Runner(Device& dev, const Model& model, int n_ctx);

    const ModelSpec& spec() const { return spec_; }
    Device&          device() { return dev_; }
    int              n_ctx() const { return n_ctx_; }
    int              n_past() const { return n_past_; }
    // Forget the cache (or rewind it to `n_past` positions: later tokens overwrite the rest).
    void             clear() { n_past_ = 0; }
    void             rewind(int n_past);
    // Grows the KV cache to n_ctx positions (its content is dropped).
    void             reserve(int n_ctx);

    // Runs n tokens at positions n_past().. and appends them to the cache, as Model::forward.
    // logits: (n, n_vocab) if logits_all, else (n_vocab) for the last token; may be nullptr.
    void forward(const int32_t* tokens, int n, float* logits, bool logits_all);

    // One line per weight set that was dequantized at upload (format and reason), for the user.
    const std::vector<std::string>& notes() const { return notes_; }
    // Dispatches recorded by the last forward call, and of those, per decoder layer (the same for every MoE layer).
    size_t last_dispatches() const { return last_dispatches_; }
    size_t last_layer_dispatches() const { return last_layer_dispatches_; }

  private:
    struct Layer {
        Buffer   attn_norm, ffn_norm, bqkv, bo, q_norm, k_norm; // bias and norm buffers exist only when used
        QWeights qkv, o;                                        // (q_dim + 2·kv_dim, H), (H, q_dim)
        bool     is_moe = false;
        QWeights router;           // (n_expert [+ 1 shared-expert gate row], H)
        QWeights experts_gu;       // (2·n_expert, F, H): gate, up of each expert
        QWeights experts_down;     // (n_expert, H, F)
        QWeights ffn_gu, ffn_down; // shared expert or dense FFN: (2, F', H), (1, H, F'); n_mats 0 when absent
        bool     shared_gated = false;
        Buffer   k_cache, v_cache; // (n_ctx, kv_dim)
    };
    // Tokens per recorded command buffer; longer calls are split (see forward).
    static constexpr int k_max_chunk = 64;
    void forward_chunk(const int32_t* tokens, int n, float* logits, bool logits_all);
    // Activation buffers for up to n tokens per chunk.
    void ensure_scratch(int n);
    QWeights upload(const std::vector<const Linear*>& lins, int out, const std::string& what);

    Device&            dev_;
    ModelSpec          spec_;
    AttnShape          shape_;
    QkNormMode         qk_mode_ = QkNormMode::None;
    int                n_ctx_ = 0, n_past_ = 0, cap_ = 0;
    Buffer             embed_, final_norm_, rope_;
    QWeights           lm_head_;
    std::vector<Layer> layers_;
    std::vector<float> inv_freq_;
    // Activations: x, hn (cap, H); qkv (cap, q_dim + 2·kv_dim); q, attn (cap, q_dim); scores (cap·n_head, n_ctx);
    // rlogits (cap, n_expert + 1); ids, topw (cap, k); h (cap·k, F); hs (cap, F'); delta (cap, H);
    // last (1, H); logits (cap, n_vocab); tokens (cap).
    Buffer x_, hn_, qkv_, q_, attn_, scores_, rlogits_, ids_, topw_, h_, hs_, delta_, last_, logits_, tokens_;
    std::vector<std::string> notes_;
    size_t                   last_dispatches_ = 0, last_layer_dispatches_ = 0;
};

// generate() (engine/cpu/generate.h) on the runner: the same prefill / decode loop and the same Sampler.
GenerateResult generate(Runner& runner, std::span<const int32_t> prompt, const GenerateOptions& opt,
                        const std::function<bool(int32_t)>& on_token = {});

// perplexity() (engine/eval/perplexity.h) on the runner: same windows, same window_nll.
PerplexityResult perplexity(Runner& runner, std::span<const int32_t> ids, int seqlen, const ProgressFn& progress = {});

} // namespace moebius::vk
