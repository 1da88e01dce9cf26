#include "engine/core/model_config.h"

#include "engine/core/error.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace moebius {

using json = nlohmann::json;

// clang-format off
static const FamilyTraits k_families[] = {
    // family            model_type   display        qk_norm          qkv_bias moe_block           expert projections               shared block           gated  renorm
    {Family::Qwen2Moe, "qwen2_moe", "Qwen2-MoE",    QkNorm::None,    true,  "mlp",              {"gate_proj", "up_proj", "down_proj"}, "mlp.shared_expert",  true,  false},
    {Family::Qwen3Moe, "qwen3_moe", "Qwen3-MoE",    QkNorm::PerHead, false, "mlp",              {"gate_proj", "up_proj", "down_proj"}, nullptr,              false, false},
    {Family::Mixtral,  "mixtral",   "Mixtral",      QkNorm::None,    false, "block_sparse_moe", {"w1", "w3", "w2"},                    nullptr,              false, true},
    {Family::Olmoe,    "olmoe",     "OLMoE",        QkNorm::Full,    false, "mlp",              {"gate_proj", "up_proj", "down_proj"}, nullptr,              false, false},
    {Family::Deepseek, "deepseek",  "DeepSeek-MoE", QkNorm::None,    false, "mlp",              {"gate_proj", "up_proj", "down_proj"}, "mlp.shared_experts", false, false},
};
static const char* k_linear_names[] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "router",
    "expert.gate_proj", "expert.up_proj", "expert.down_proj",
    "shared.gate_proj", "shared.up_proj", "shared.down_proj", "shared_expert_gate",
    "dense.gate_proj", "dense.up_proj", "dense.down_proj",
};
// clang-format on
static_assert(sizeof(k_linear_names) / sizeof(k_linear_names[0]) == (size_t)LinearKind::Count);

const FamilyTraits& family_traits(Family f) {
    for (const auto& t : k_families)
        if (t.family == f) return t;
    MOEBIUS_ASSERT(false);
    return k_families[0];
}

const FamilyTraits* family_traits_for(const std::string& model_type) {
    for (const auto& t : k_families)
        if (model_type == t.model_type) return &t;
    return nullptr;
}

std::vector<std::string> supported_model_types() {
    std::vector<std::string> v;
    for (const auto& t : k_families) v.emplace_back(t.model_type);
    return v;
}

const char* linear_kind_name(LinearKind k) { return k_linear_names[(int)k]; }

bool linear_kind_from_name(const std::string& name, LinearKind& out) {
    for (int i = 0; i < (int)LinearKind::Count; ++i)
        if (name == k_linear_names[i]) {
            out = (LinearKind)i;
            return true;
        }
    return false;
}

namespace {

// Typed access to config.json keys with errors that name the file and the key.
struct ConfigReader {
    const json&                  j;
    const std::filesystem::path& file;

    [[noreturn]] void fail(const std::string& msg) const { throw FormatError(file.string() + ": " + msg); }

    bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }

    int64_t integer(const char* key) const {
        if (!has(key)) fail(std::string("missing key '") + key + "'");
        const auto& v = j[key];
        if (!v.is_number_integer()) fail(std::string("key '") + key + "' must be an integer, got " + v.dump());
        return v.get<int64_t>();
    }
    int64_t integer_or(const char* key, int64_t dflt) const { return has(key) ? integer(key) : dflt; }
    int positive(const char* key) const {
        int64_t v = integer(key);
        if (v <= 0 || v > (1 << 30)) fail(std::string("key '") + key + "' must be a positive integer, got " + std::to_string(v));
        return (int)v;
    }
    int positive_or(const char* key, int dflt) const { return has(key) ? positive(key) : dflt; }
    double number(const char* key) const {
        if (!has(key)) fail(std::string("missing key '") + key + "'");
        const auto& v = j[key];
        if (!v.is_number()) fail(std::string("key '") + key + "' must be a number, got " + v.dump());
        return v.get<double>();
    }
    double number_or(const char* key, double dflt) const { return has(key) ? number(key) : dflt; }
    bool boolean_or(const char* key, bool dflt) const {
        if (!has(key)) return dflt;
        if (!j[key].is_boolean()) fail(std::string("key '") + key + "' must be true or false, got " + j[key].dump());
        return j[key].get<bool>();
    }
};

} // namespace

ModelSpec ModelSpec::load(const std::filesystem::path& dir_or_config) {
    std::filesystem::path file = dir_or_config;
    if (std::filesystem::is_directory(file)) file /= "config.json";
    std::ifstream f(file, std::ios::binary);
    if (!f) {
        if (!std::filesystem::exists(dir_or_config))
            throw NotFoundError(dir_or_config.string() + ": no such file or directory");
        throw NotFoundError(file.string() + ": cannot open (is this a Hugging Face checkpoint folder?)");
    }
    std::stringstream ss;
    ss << f.rdbuf();
    return from_json_text(ss.str(), file);
}

ModelSpec ModelSpec::from_json_text(const std::string& text, const std::filesystem::path& file) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::parse_error& e) {
        throw FormatError(file.string() + ": invalid JSON: " + e.what());
    }
    if (!j.is_object()) throw FormatError(file.string() + ": expected a JSON object");
    ConfigReader r{j, file};

    ModelSpec s;
    s.dir = file.parent_path();
    if (!j.contains("model_type") || !j["model_type"].is_string()) r.fail("missing key 'model_type'");
    s.model_type             = j["model_type"].get<std::string>();
    const FamilyTraits* t    = family_traits_for(s.model_type);
    if (!t) {
        std::string list;
        for (auto& m : supported_model_types()) list += (list.empty() ? "" : ", ") + m;
        throw UnsupportedError(file.string() + ": unsupported model_type '" + s.model_type + "' (supported: " + list + ")");
    }
    s.family = t->family;

    s.n_layer   = r.positive("num_hidden_layers");
    s.n_embd    = r.positive("hidden_size");
    s.n_head    = r.positive("num_attention_heads");
    s.n_head_kv = r.positive_or("num_key_value_heads", s.n_head);
    s.n_vocab   = r.positive("vocab_size");
    s.head_dim  = r.positive_or("head_dim", 0);
    if (s.head_dim == 0) {
        if (s.n_embd % s.n_head) r.fail("hidden_size is not divisible by num_attention_heads and head_dim is not given");
        s.head_dim = s.n_embd / s.n_head;
    }
    if (s.head_dim % 2) r.fail("head_dim must be even for rotary embeddings");
    if (s.n_head % s.n_head_kv)
        r.fail("num_attention_heads (" + std::to_string(s.n_head) + ") is not a multiple of num_key_value_heads (" +
               std::to_string(s.n_head_kv) + ")");
    s.rms_eps             = (float)r.number_or("rms_norm_eps", 1e-6);
    s.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
    s.max_position        = r.positive_or("max_position_embeddings", 4096);
    if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) s.torch_dtype = j["torch_dtype"];
    if (j.contains("dtype") && j["dtype"].is_string()) s.torch_dtype = j["dtype"];
    if (r.has("hidden_act") && j["hidden_act"] != "silu")
        throw UnsupportedError(file.string() + ": hidden_act '" + j["hidden_act"].dump() + "' is not supported (silu only)");

    // RoPE: transformers v5 writes rope_parameters, older configs rope_theta (+ rope_scaling).
    const json* scaling = nullptr;
    if (r.has("rope_parameters")) {
        const json& rp = j["rope_parameters"];
        if (!rp.is_object()) r.fail("rope_parameters must be an object");
        if (rp.contains("rope_theta")) {
            if (!rp["rope_theta"].is_number()) r.fail("rope_parameters.rope_theta must be a number");
            s.rope_theta = rp["rope_theta"].get<float>();
        }
        scaling = &rp;
    } else {
        s.rope_theta = (float)r.number_or("rope_theta", 10000.0);
        if (r.has("rope_scaling")) scaling = &j["rope_scaling"];
    }
    if (scaling) {
        if (!scaling->is_object()) r.fail("rope_scaling must be an object");
        std::string type = scaling->value("rope_type", scaling->value("type", std::string("default")));
        if (type == "linear") {
            if (!scaling->contains("factor") || !(*scaling)["factor"].is_number()) r.fail("linear rope scaling needs a numeric 'factor'");
            s.rope_linear_factor = (*scaling)["factor"].get<float>();
        } else if (type != "default") {
            throw UnsupportedError(file.string() + ": rope scaling type '" + type + "' is not supported yet");
        }
    }
    if (!(s.rope_theta > 0)) r.fail("rope_theta must be positive");

    // Attention bias: Qwen2 family always has q/k/v bias; others follow attention_bias (q/k/v/o).
    bool attention_bias = r.boolean_or("attention_bias", false);
    s.attn_qkv_bias     = t->qkv_bias || attention_bias;
    s.attn_o_bias       = attention_bias;
    if (r.has("clip_qkv")) s.clip_qkv = (float)r.number("clip_qkv");

    s.layer_is_moe.assign(s.n_layer, false);
    switch (s.family) {
    case Family::Qwen2Moe:
    case Family::Qwen3Moe: {
        s.n_expert      = r.positive("num_experts");
        s.n_expert_used = r.positive("num_experts_per_tok");
        s.n_ff_expert   = r.positive("moe_intermediate_size");
        s.n_ff_dense    = r.positive_or("intermediate_size", 0);
        if (s.family == Family::Qwen2Moe) s.n_ff_shared = (int)r.integer_or("shared_expert_intermediate_size", 0);
        s.norm_topk_prob = r.boolean_or("norm_topk_prob", false);
        int step         = r.positive_or("decoder_sparse_step", 1);
        std::vector<int> mlp_only;
        if (r.has("mlp_only_layers")) {
            if (!j["mlp_only_layers"].is_array()) r.fail("mlp_only_layers must be a list of layer indices");
            for (auto& v : j["mlp_only_layers"]) {
                if (!v.is_number_integer()) r.fail("mlp_only_layers must be a list of layer indices");
                mlp_only.push_back(v.get<int>());
            }
        }
        for (int il = 0; il < s.n_layer; ++il)
            s.layer_is_moe[il] = std::find(mlp_only.begin(), mlp_only.end(), il) == mlp_only.end() && (il + 1) % step == 0;
        break;
    }
    case Family::Mixtral:
        s.n_expert       = r.positive("num_local_experts");
        s.n_expert_used  = r.positive("num_experts_per_tok");
        s.n_ff_expert    = r.positive("intermediate_size");
        s.norm_topk_prob = true;
        s.layer_is_moe.assign(s.n_layer, true);
        break;
    case Family::Olmoe:
        s.n_expert       = r.positive("num_experts");
        s.n_expert_used  = r.positive("num_experts_per_tok");
        s.n_ff_expert    = r.positive("intermediate_size");
        s.norm_topk_prob = r.boolean_or("norm_topk_prob", false);
        s.layer_is_moe.assign(s.n_layer, true);
        break;
    case Family::Deepseek: {
        if (r.has("scoring_func") && j["scoring_func"] != "softmax")
            throw UnsupportedError(file.string() + ": scoring_func " + j["scoring_func"].dump() + " is not supported (softmax only)");
        s.n_expert       = r.positive("n_routed_experts");
        s.n_expert_used  = r.positive("num_experts_per_tok");
        s.n_ff_expert    = r.positive("moe_intermediate_size");
        s.n_ff_dense     = r.positive("intermediate_size");
        int n_shared     = (int)r.integer_or("n_shared_experts", 0);
        s.n_ff_shared    = n_shared * s.n_ff_expert;
        // DeepSeek-MoE renormalises only when top_k > 1 and norm_topk_prob is set.
        s.norm_topk_prob = s.n_expert_used > 1 && r.boolean_or("norm_topk_prob", false);
        int first_dense  = (int)r.integer_or("first_k_dense_replace", 0);
        int freq         = r.positive_or("moe_layer_freq", 1);
        for (int il = 0; il < s.n_layer; ++il) s.layer_is_moe[il] = il >= first_dense && il % freq == 0;
        break;
    }
    }
    if (s.n_expert_used > s.n_expert)
        r.fail("num_experts_per_tok (" + std::to_string(s.n_expert_used) + ") exceeds the number of experts (" +
               std::to_string(s.n_expert) + ")");
    if (s.n_ff_shared < 0) r.fail("shared expert width must not be negative");
    for (int il = 0; il < s.n_layer; ++il)
        if (!s.layer_is_moe[il] && s.n_ff_dense <= 0)
            r.fail("layer " + std::to_string(il) + " is dense but intermediate_size is missing");

    if (r.has("quantization_config")) {
        const json& q = j["quantization_config"];
        if (!q.is_object()) r.fail("quantization_config must be an object");
        std::string method = q.value("quant_method", std::string());
        if (method != "moebius")
            throw UnsupportedError(file.string() + ": quantization method '" + method +
                                   "' is not supported (Moebius reads its own 'moebius' format; dequantize other "
                                   "formats with their own tools first)");
        if (!q.contains("modules") || !q["modules"].is_object())
            r.fail("quantization_config.modules must map module names to their formats");
        s.quantization = q;
    }
    if (r.has("bos_token_id") && j["bos_token_id"].is_number_integer()) s.bos_token_id = j["bos_token_id"].get<int>();
    if (r.has("eos_token_id")) {
        const auto& e = j["eos_token_id"];
        if (e.is_number_integer()) s.eos_token_ids.push_back(e.get<int>());
        else if (e.is_array())
            for (auto& v : e)
                if (v.is_number_integer()) s.eos_token_ids.push_back(v.get<int>());
    }
    return s;
}

int ModelSpec::n_moe_layers() const { return (int)std::count(layer_is_moe.begin(), layer_is_moe.end(), true); }

std::string ModelSpec::linear_name(int il, LinearKind kind, int expert) const {
    const FamilyTraits& t = traits();
    std::string         p = layer_prefix(il);
    std::string         moe = std::string(t.moe_block) + ".";
    switch (kind) {
    case LinearKind::Q: return p + "self_attn.q_proj";
    case LinearKind::K: return p + "self_attn.k_proj";
    case LinearKind::V: return p + "self_attn.v_proj";
    case LinearKind::O: return p + "self_attn.o_proj";
    case LinearKind::Router: return p + moe + "gate";
    case LinearKind::ExpertGate:
    case LinearKind::ExpertUp:
    case LinearKind::ExpertDown:
        MOEBIUS_ASSERT(expert >= 0);
        return p + moe + "experts." + std::to_string(expert) + "." +
               t.expert_proj[(int)kind - (int)LinearKind::ExpertGate];
    case LinearKind::SharedGate: return p + t.shared_block + ".gate_proj";
    case LinearKind::SharedUp: return p + t.shared_block + ".up_proj";
    case LinearKind::SharedDown: return p + t.shared_block + ".down_proj";
    case LinearKind::SharedExpertGate: return p + "mlp.shared_expert_gate";
    case LinearKind::DenseGate: return p + "mlp.gate_proj";
    case LinearKind::DenseUp: return p + "mlp.up_proj";
    case LinearKind::DenseDown: return p + "mlp.down_proj";
    case LinearKind::Count: break;
    }
    MOEBIUS_ASSERT(false);
    return {};
}

std::pair<int, int> ModelSpec::linear_shape(LinearKind kind) const {
    switch (kind) {
    case LinearKind::Q: return {n_head * head_dim, n_embd};
    case LinearKind::K:
    case LinearKind::V: return {n_head_kv * head_dim, n_embd};
    case LinearKind::O: return {n_embd, n_head * head_dim};
    case LinearKind::Router: return {n_expert, n_embd};
    case LinearKind::ExpertGate:
    case LinearKind::ExpertUp: return {n_ff_expert, n_embd};
    case LinearKind::ExpertDown: return {n_embd, n_ff_expert};
    case LinearKind::SharedGate:
    case LinearKind::SharedUp: return {n_ff_shared, n_embd};
    case LinearKind::SharedDown: return {n_embd, n_ff_shared};
    case LinearKind::SharedExpertGate: return {1, n_embd};
    case LinearKind::DenseGate:
    case LinearKind::DenseUp: return {n_ff_dense, n_embd};
    case LinearKind::DenseDown: return {n_embd, n_ff_dense};
    case LinearKind::Count: break;
    }
    MOEBIUS_ASSERT(false);
    return {};
}

int64_t ModelSpec::total_params() const {
    auto    sz  = [&](LinearKind k) { auto [o, i] = linear_shape(k); return (int64_t)o * i; };
    int64_t emb = (int64_t)n_vocab * n_embd;
    int64_t tot = emb + (tie_word_embeddings ? 0 : emb) + n_embd;
    for (int il = 0; il < n_layer; ++il) {
        tot += 2 * (int64_t)n_embd + sz(LinearKind::Q) + sz(LinearKind::K) + sz(LinearKind::V) + sz(LinearKind::O);
        if (attn_qkv_bias) tot += (int64_t)(n_head + 2 * n_head_kv) * head_dim;
        if (attn_o_bias) tot += n_embd;
        if (traits().qk_norm == QkNorm::PerHead) tot += 2 * (int64_t)head_dim;
        if (traits().qk_norm == QkNorm::Full) tot += (int64_t)(n_head + n_head_kv) * head_dim;
        if (layer_is_moe[il]) {
            tot += sz(LinearKind::Router) + (int64_t)n_expert * 3 * sz(LinearKind::ExpertGate);
            if (n_ff_shared > 0) tot += 3 * sz(LinearKind::SharedGate) + (traits().shared_gated ? n_embd : 0);
        } else {
            tot += 3 * sz(LinearKind::DenseGate);
        }
    }
    return tot;
}

int64_t ModelSpec::active_params() const {
    int64_t inactive_per_layer = (int64_t)(n_expert - n_expert_used) * 3 * n_ff_expert * n_embd;
    return total_params() - inactive_per_layer * n_moe_layers();
}

} // namespace moebius
