#pragma once
// ModelSpec: everything the forward pass needs from config.json, normalised over the supported MoE families.
// The families differ only in the switches of FamilyTraits (table in model_config.cpp); there is one forward.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace moebius {

enum class Family { Qwen2Moe, Qwen3Moe, Mixtral, Olmoe, Deepseek };

enum class QkNorm {
    None,
    PerHead, // Qwen3: RMSNorm over head_dim, weight [head_dim]
    Full,    // OLMoE: RMSNorm over the whole projection, weight [n_head*head_dim] / [n_head_kv*head_dim]
};

// Per-family conventions. Tensor names are relative to "model.layers.{L}.".
struct FamilyTraits {
    Family      family;
    const char* model_type;
    const char* display_name;
    QkNorm      qk_norm;
    bool        qkv_bias;        // Qwen2 family: q/k/v projections carry a bias
    const char* moe_block;       // "mlp" or "block_sparse_moe"
    const char* expert_proj[3];  // gate, up, down names inside experts.{e}
    const char* shared_block;    // nullptr, "mlp.shared_expert" or "mlp.shared_experts"
    bool        shared_gated;    // Qwen2-MoE: sigmoid(shared_expert_gate · x) scales the shared expert
    bool        always_renorm;   // Mixtral renormalises top-k weights regardless of config
};

const FamilyTraits& family_traits(Family f);
const FamilyTraits* family_traits_for(const std::string& model_type); // nullptr if unknown
std::vector<std::string> supported_model_types();

// Kinds of linear layer in a decoder layer (also used to name hooks and quantizable modules).
enum class LinearKind : int {
    Q, K, V, O,
    Router,                                        // [n_expert, n_embd]
    ExpertGate, ExpertUp, ExpertDown,              // per routed expert
    SharedGate, SharedUp, SharedDown,              // shared expert(s), concatenated width
    SharedExpertGate,                              // Qwen2-MoE [1, n_embd]
    DenseGate, DenseUp, DenseDown,                 // dense FFN layers
    Count
};
const char* linear_kind_name(LinearKind k); // "q_proj", "expert.gate_proj", ...
inline bool is_expert_kind(LinearKind k) {
    return k == LinearKind::ExpertGate || k == LinearKind::ExpertUp || k == LinearKind::ExpertDown;
}
bool        linear_kind_from_name(const std::string& name, LinearKind& out);

struct ModelSpec {
    std::filesystem::path dir;
    Family                family = Family::Qwen2Moe;
    std::string           model_type;

    int n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_vocab = 0;
    int n_ff_dense  = 0; // dense FFN width (dense layers)
    int n_ff_expert = 0; // routed expert width
    int n_ff_shared = 0; // total shared-expert width (0: none)
    int n_expert = 0, n_expert_used = 0;
    bool norm_topk_prob = false; // effective: true for Mixtral
    float rms_eps = 1e-6f;
    float rope_theta = 10000.f;
    float rope_linear_factor = 1.f;
    std::optional<float> clip_qkv;
    bool attn_qkv_bias = false, attn_o_bias = false;
    bool tie_word_embeddings = false;
    int  max_position = 0;
    std::vector<bool> layer_is_moe; // [n_layer]
    std::string torch_dtype;
    std::optional<int> bos_token_id;
    std::vector<int> eos_token_ids;
    // quantization_config of a Moebius quantized checkpoint (null for a plain checkpoint); see docs/FORMAT.md.
    nlohmann::json quantization;

    const FamilyTraits& traits() const { return family_traits(family); }
    int n_moe_layers() const;

    // Reads <dir>/config.json (or a config.json path). Throws FormatError naming the file for missing/invalid keys,
    // UnsupportedError for an unknown model_type or rope scaling type.
    static ModelSpec load(const std::filesystem::path& dir_or_config);
    static ModelSpec from_json_text(const std::string& text, const std::filesystem::path& origin);

    // Checkpoint tensor names.
    std::string embed_name() const { return "model.embed_tokens.weight"; }
    std::string final_norm_name() const { return "model.norm.weight"; }
    std::string lm_head_name() const { return tie_word_embeddings ? embed_name() : "lm_head.weight"; }
    std::string layer_prefix(int il) const { return "model.layers." + std::to_string(il) + "."; }
    // Weight name of a linear module, e.g. "model.layers.3.mlp.experts.7.up_proj" (without ".weight").
    std::string linear_name(int il, LinearKind kind, int expert = -1) const;
    // Expected [out, in] shape of a linear weight.
    std::pair<int, int> linear_shape(LinearKind kind) const;
    // Parameter counts over the whole model.
    int64_t total_params() const;
    int64_t active_params() const; // per token: all dense weights + top-k routed experts + shared experts
};

} // namespace moebius
