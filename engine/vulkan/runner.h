#pragma once
// The whole model on a Vulkan device: weights uploaded once (f32, or the nbit format read directly by the
// kernels; other formats dequantized to f32 at upload, with the reason in notes()), a KV cache in device buffers,
// and one command buffer per forward call, submitted once. The math follows the CPU forward (engine/cpu/model.cpp)
// step by step; tests/unit/test_vulkan_runner.cpp compares logits, greedy tokens and perplexity with it. As a
// Session it runs engine/cpu/generate.h's generate(), engine/eval's perplexity() and evaluate_mc().
#include "engine/cpu/model.h"
#include "engine/cpu/session.h"
#include "engine/vulkan/model_ops.h"

#include <string>
#include <vector>

namespace moebius::vk {

class Runner final : public Session {
  public:
    // Uploads every layer of `model` (which must have all layers loaded) with room for n_ctx positions.
    // Throws UnsupportedError for what the device or the kernels cannot hold (the caller may fall back to the CPU).
    Runner(Device& dev, const Model& model, int n_ctx);

    const ModelSpec& spec() const override { return spec_; }
    Device&          device() { return dev_; }
    int              n_ctx() const override { return n_ctx_; }
    int              n_past() const override { return n_past_; }
    void             rewind(int n_past) override;
    // Grows the KV cache to n_ctx positions if it is smaller (never shrinks it) and empties it.
    void             reset(int n_ctx) override;

    // Runs n tokens at positions n_past().. and appends them to the cache, as Model::forward.
    // logits: (n, n_vocab) if logits_all, else (n_vocab) for the last token; may be nullptr.
    void forward(const int32_t* tokens, int n, float* logits, bool logits_all) override;

    // One line per weight set that was dequantized at upload (format and reason), for the user.
    const std::vector<std::string>& notes() const { return notes_; }
    // Dispatches recorded by the last forward call, and of those, per decoder layer (the same for every MoE layer).
    size_t last_dispatches() const { return last_dispatches_; }
    // Weight sets split over several bindings because one exceeds Device::max_binding_bytes() (QWeights::more).
    size_t split_sets() const { return split_sets_; }
    size_t last_layer_dispatches() const { return last_layer_dispatches_; }

    // Device time per kernel over the forward calls made while profiling is on (timestamps after every command):
    // name (the shader, or the projection for the dense linears), calls, seconds and the bytes the calls must move
    // (CommandList::annotate). set_profiling returns false when the device's queue has no timestamps.
    struct KernelStats {
        std::string name;
        size_t      calls   = 0;
        double      seconds = 0;
        uint64_t    bytes   = 0;
    };
    bool                            set_profiling(bool on);
    const std::vector<KernelStats>& profile() const { return profile_; }
    void                            clear_profile() { profile_.clear(); }

  private:
    struct Layer {
        Buffer   attn_norm, ffn_norm, bqkv, bo, q_norm, k_norm; // bias and norm buffers exist only when used
        QWeights qkv, o;                                        // (q_dim + 2·kv_dim, H), (H, q_dim)
        bool     is_moe = false;
        QWeights router;           // (n_expert [+ 1 shared-expert gate row], H)
        QWeights experts_gu;       // (2·n_expert, F, H): gate, up of each expert
        QWeights experts_down;     // (n_expert, H, F)
        QWeights ffn_gu, ffn_down; // shared expert or dense FFN: (2, F', H), (1, H, F'); n_mats 0 when absent
        // MoBiE's shared bases (cejd_linear.h), when every routed expert has them: experts_gu / experts_down then
        // hold the residuals. Input side: z = [B_g; B_u] x (2r, H) and f32 coefficients (2·n_expert·F, r); output
        // side: v = Σ_j w_j C_e h_j with C (n_expert, r, F), then B (H, r) v once.
        int      rank_gu = 0, rank_down = 0; // 0: not on that side
        QWeights basis_gu, basis_down, coef_down;
        Buffer   coef_gu;
        // KBVQ (kbvq_linear.h), per side when every routed expert of that kind is KBVQ of one group: experts_gu /
        // experts_down then hold the VQ residuals. gate/up: c = C x for every expert by one linear over kb_coef_gu
        // (1, n_expert·2r, H), then basis, γ, β inside moe_gate_up; down: v = Σ_j w_j C_e h_j by moe_down over
        // kb_coef_down (n_expert, r, F), then basis, γ, β inside the experts' moe_down. Affines: see KbvqAffine.
        bool     kb_gu = false, kb_down = false;
        int      kb_rank_gu = 0, kb_rank_down = 0; // gate's and up's rank padded to one (zero rows)
        QWeights kb_coef_gu, kb_coef_down;
        Buffer   kb_aff_gu, kb_aff_down;
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
    std::vector<Buffer> embed_; // (n_vocab, H) in parts of embed_rows_ rows, each within one binding
    int                 embed_rows_ = 0;
    size_t              split_sets_ = 0;
    Buffer             final_norm_, rope_;
    QWeights           lm_head_;
    std::vector<Layer> layers_;
    std::vector<float> inv_freq_;
    // Activations: x (cap, H); qkv (cap, q_dim + 2·kv_dim); q, attn (cap, q_dim); scores (cap·n_head, n_ctx);
    // rlogits (cap, n_expert + 1); ids, topw (cap, k); h (cap·k, F); hs (cap, F'); delta (cap, H);
    // last (1, H); logits (cap, n_vocab); tokens (cap); lz (cap, 2r), lv (cap, r): MoBiE's basis activations.
    Buffer x_, qkv_, q_, attn_, scores_, rlogits_, ids_, topw_, h_, hs_, delta_, last_, logits_, tokens_;
    Buffer lz_, lv_;
    int    max_rank_ = 0, max_z_ = 0; // lz_ holds max(2·max_rank_, max_z_) per token
    std::vector<std::string> notes_;
    size_t                   last_dispatches_ = 0, last_layer_dispatches_ = 0;
    bool                     profiling_ = false;
    std::vector<KernelStats> profile_;
};

} // namespace moebius::vk
