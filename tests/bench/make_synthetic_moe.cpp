// make_synthetic_moe: writes a Qwen2-MoE checkpoint with the real Qwen1.5-MoE-A2.7B layer shapes and random bf16
// weights, for benchmarks that need realistic matrix sizes without downloading the 28 GB model.
//
//   make_synthetic_moe --out DIR [--layers N=2] [--vocab V=151936] [--seed S=1234] [--shards K=2] [--force]
//
// Shapes (Qwen1.5-MoE-A2.7B config.json): hidden 2048, 16 heads (MHA) x head_dim 128 with q/k/v bias, 60 routed
// experts top-4 of width 1408 (norm_topk_prob false), one shared expert of width 5632 with a sigmoid gate,
// rms eps 1e-6, rope_theta 1e6, untied lm_head. Weights are uniform with std 1/sqrt(fan_in) so activations stay
// O(1) through the layers; norm weights are 1 ± 0.05, biases ± 0.02. Every value is a pure function of
// (seed, tensor name, element index), so the output does not depend on the thread count.
// Output: config.json, model-0000k-of-0000K.safetensors shards (split by bytes, whole tensors), and
// model.safetensors.index.json; the directory is written under a temporary name and renamed into place.
#include "engine/core/atomic_file.h"
#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using moebius::DType;

namespace {

constexpr int kHidden = 2048, kHeads = 16, kHeadDim = 128, kExperts = 60, kTopK = 4, kExpertFF = 1408,
              kSharedFF = 5632, kDenseFF = 5632;

uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
}

uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

enum class Init { Uniform, Norm, Bias };

struct Spec {
    std::string          name;
    std::vector<int64_t> shape;
    Init                 init   = Init::Uniform;
    int64_t              fan_in = 1;
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
    int64_t nbytes() const { return numel() * 2; }
};

// bf16 bytes of one tensor; element i depends only on (seed, name, i).
std::vector<uint8_t> generate(const Spec& s, uint64_t seed) {
    const int64_t        n = s.numel();
    std::vector<uint8_t> bytes((size_t)n * 2);
    auto*                out = reinterpret_cast<uint16_t*>(bytes.data());
    const uint64_t       key = splitmix64(seed ^ fnv1a(s.name));
    // Uniform on [-a, a] has std a/sqrt(3).
    float center = 0, half = 0;
    switch (s.init) {
    case Init::Uniform: half = std::sqrt(3.0f / (float)s.fan_in); break;
    case Init::Norm: center = 1.0f, half = 0.05f; break;
    case Init::Bias: half = 0.02f; break;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        uint64_t r = splitmix64(key + (uint64_t)i * 0x632be59bd9b4e019ull);
        float    u = (float)(r >> 40) * (1.0f / 16777216.0f); // [0, 1), 24 bits
        out[i]     = moebius::f32_to_bf16(center + half * (2.0f * u - 1.0f));
    }
    return bytes;
}

std::vector<Spec> tensor_list(int layers, int vocab) {
    std::vector<Spec> t;
    const int64_t     H = kHidden, Q = (int64_t)kHeads * kHeadDim;
    auto lin = [&](const std::string& name, int64_t out, int64_t in) { t.push_back({name, {out, in}, Init::Uniform, in}); };
    // Embeddings: std 1 per element (the first RMSNorm rescales anyway).
    t.push_back({"model.embed_tokens.weight", {vocab, H}, Init::Uniform, 1});
    for (int l = 0; l < layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        t.push_back({p + "input_layernorm.weight", {H}, Init::Norm});
        t.push_back({p + "post_attention_layernorm.weight", {H}, Init::Norm});
        for (const char* qkv : {"q_proj", "k_proj", "v_proj"}) {
            lin(p + "self_attn." + qkv + ".weight", Q, H);
            t.push_back({p + "self_attn." + qkv + ".bias", {Q}, Init::Bias});
        }
        lin(p + "self_attn.o_proj.weight", H, Q);
        lin(p + "mlp.gate.weight", kExperts, H);
        for (int e = 0; e < kExperts; ++e) {
            const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
            lin(ep + "gate_proj.weight", kExpertFF, H);
            lin(ep + "up_proj.weight", kExpertFF, H);
            lin(ep + "down_proj.weight", H, kExpertFF);
        }
        lin(p + "mlp.shared_expert.gate_proj.weight", kSharedFF, H);
        lin(p + "mlp.shared_expert.up_proj.weight", kSharedFF, H);
        lin(p + "mlp.shared_expert.down_proj.weight", H, kSharedFF);
        lin(p + "mlp.shared_expert_gate.weight", 1, H);
    }
    t.push_back({"model.norm.weight", {H}, Init::Norm});
    lin("lm_head.weight", vocab, H);
    return t;
}

nlohmann::ordered_json config_json(int layers, int vocab) {
    nlohmann::ordered_json c;
    c["architectures"]                    = {"Qwen2MoeForCausalLM"};
    c["model_type"]                       = "qwen2_moe";
    c["vocab_size"]                       = vocab;
    c["hidden_size"]                      = kHidden;
    c["num_hidden_layers"]                = layers;
    c["num_attention_heads"]              = kHeads;
    c["num_key_value_heads"]              = kHeads;
    c["intermediate_size"]                = kDenseFF;
    c["moe_intermediate_size"]            = kExpertFF;
    c["shared_expert_intermediate_size"]  = kSharedFF;
    c["num_experts"]                      = kExperts;
    c["num_experts_per_tok"]              = kTopK;
    c["norm_topk_prob"]                   = false;
    c["decoder_sparse_step"]              = 1;
    c["mlp_only_layers"]                  = nlohmann::ordered_json::array();
    c["max_position_embeddings"]          = 8192;
    c["max_window_layers"]                = layers;
    c["rms_norm_eps"]                     = 1e-6;
    c["rope_theta"]                       = 1000000.0;
    c["hidden_act"]                       = "silu";
    c["tie_word_embeddings"]              = false;
    c["use_sliding_window"]               = false;
    c["sliding_window"]                   = nullptr;
    c["attention_dropout"]                = 0.0;
    c["initializer_range"]                = 0.02;
    c["output_router_logits"]             = false;
    c["router_aux_loss_coef"]             = 0.001;
    if (vocab > 151643) {
        c["bos_token_id"] = 151643;
        c["eos_token_id"] = 151643;
    }
    c["torch_dtype"]          = "bfloat16";
    c["transformers_version"] = "4.40.0";
    c["use_cache"]            = true;
    c["_moebius_synthetic"]   = "random weights with Qwen1.5-MoE-A2.7B shapes (tests/bench/make_synthetic_moe)";
    return c;
}

[[noreturn]] void usage(const char* msg = nullptr) {
    if (msg) std::fprintf(stderr, "make_synthetic_moe: %s\n", msg);
    std::fprintf(stderr, "usage: make_synthetic_moe --out DIR [--layers N=2] [--vocab V=151936] [--seed S=1234] "
                         "[--shards K=2] [--force]\n");
    std::exit(2);
}

long parse_int(const char* opt, const char* s, long lo, long hi) {
    char* end = nullptr;
    errno     = 0;
    long v    = std::strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        std::string m = std::string(opt) + ": '" + s + "' is not an integer in [" + std::to_string(lo) + ", " +
                        std::to_string(hi) + "]";
        usage(m.c_str());
    }
    return v;
}

} // namespace

int main(int argc, char** argv) {
    fs::path out;
    int      layers = 2, vocab = 151936, shards = 2;
    uint64_t seed  = 1234;
    bool     force = false;
    for (int i = 1; i < argc; ++i) {
        std::string a    = argv[i];
        auto        next = [&]() -> const char* {
            if (i + 1 >= argc) usage((a + " needs a value").c_str());
            return argv[++i];
        };
        if (a == "--out") out = next();
        else if (a == "--layers") layers = (int)parse_int("--layers", next(), 1, 1000);
        else if (a == "--vocab") vocab = (int)parse_int("--vocab", next(), 1, 1 << 24);
        else if (a == "--seed") seed = (uint64_t)parse_int("--seed", next(), 0, INT64_MAX);
        else if (a == "--shards") shards = (int)parse_int("--shards", next(), 1, 999);
        else if (a == "--force") force = true;
        else if (a == "-h" || a == "--help") usage();
        else usage(("unknown argument '" + a + "'").c_str());
    }
    if (out.empty()) usage("--out is required");
    std::error_code ec;
    if (!force && fs::exists(out, ec) && !fs::is_empty(out, ec))
        usage((out.string() + " exists and is not empty (--force replaces it)").c_str());

    try {
        auto                   t0    = std::chrono::steady_clock::now();
        std::vector<Spec>      specs = tensor_list(layers, vocab);
        int64_t                total = 0;
        for (auto& s : specs) total += s.nbytes();
        // Split into `shards` files of about equal bytes, keeping the tensor order (embeddings first, lm_head last).
        std::vector<int> shard_of(specs.size());
        int64_t          acc = 0;
        for (size_t i = 0; i < specs.size(); ++i) {
            shard_of[i] = std::min<int>(shards - 1, (int)(acc * shards / total));
            acc += specs[i].nbytes();
        }
        auto shard_name = [&](int k) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", k + 1, shards);
            return std::string(buf);
        };

        moebius::AtomicDir     dir(out, force);
        nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
        std::map<std::string, std::string> wm; // sorted like transformers writes it
        for (int k = 0; k < shards; ++k) {
            std::vector<std::vector<uint8_t>>   data;
            std::vector<moebius::TensorToWrite> tensors;
            std::vector<size_t>                 idx;
            for (size_t i = 0; i < specs.size(); ++i)
                if (shard_of[i] == k) idx.push_back(i);
            data.reserve(idx.size());
            for (size_t i : idx) {
                data.push_back(generate(specs[i], seed));
                tensors.push_back({specs[i].name, DType::BF16, specs[i].shape,
                                   std::span<const uint8_t>(data.back().data(), data.back().size())});
                wm[specs[i].name] = shard_name(k);
            }
            moebius::write_safetensors(dir.temp_path() / shard_name(k), tensors, {{"format", "pt"}});
            std::fprintf(stderr, "wrote %s (%zu tensors)\n", shard_name(k).c_str(), tensors.size());
        }
        for (auto& [n, f] : wm) weight_map[n] = f;
        nlohmann::ordered_json index;
        index["metadata"]   = {{"total_size", total}};
        index["weight_map"] = weight_map;
        moebius::write_file_atomic(dir.temp_path() / "model.safetensors.index.json", index.dump(2) + "\n");
        moebius::write_file_atomic(dir.temp_path() / "config.json", config_json(layers, vocab).dump(2) + "\n");
        dir.commit();
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("%s: %d layers, vocab %d, %zu tensors, %.2f GB bf16, seed %llu (%.1f s)\n", out.c_str(), layers,
                    vocab, specs.size(), total / 1e9, (unsigned long long)seed, s);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "make_synthetic_moe: %s\n", e.what());
        return 1;
    }
    return 0;
}
