#pragma once
// What the model pane shows about a checkpoint folder, read from config.json and the safetensors headers only
// (nothing is loaded). Plain C++ so it can be checked against `moebius info`.
#include <cstdint>
#include <filesystem>
#include <string>

namespace moebius::studio {

struct ModelSummary {
    std::filesystem::path dir;
    std::string family, model_type, dtype;
    int         layers = 0, moe_layers = 0, experts = 0, experts_per_token = 0, expert_ffn = 0, shared_ffn = 0;
    bool        shared_gated = false;
    int64_t     total_params = 0, active_params = 0, bytes = 0, quantizable_params = 0;
    int         vocab = 0, hidden = 0;
    // Quantized checkpoints (quantization_config present).
    bool        quantized = false;
    std::string method;
    int         bits = 0, group = 0;

    // Throws moebius::Error (naming the file) when the folder is not a readable checkpoint.
    static ModelSummary read(const std::filesystem::path& dir);
    // Bytes after quantizing the attention and expert linears to `bits` with one f16 scale and zero per `group`
    // weights; everything else (embeddings, norms, routers) keeps its current storage.
    int64_t estimated_bytes(int bits, int group) const;
};

std::string human_count(double v); // 1.23 M, 4.56 B
std::string human_bytes(double v); // 12.3 MB

} // namespace moebius::studio
