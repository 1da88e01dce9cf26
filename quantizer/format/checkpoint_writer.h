#pragma once
// Writes a model whose linears may have been replaced by quantized ones as a Hugging Face-style checkpoint directory
// (docs/FORMAT.md): packed (side tensors + quantization_config) or dequantized (plain X.weight, readable by any tool).
// The directory is written under a temporary name and renamed into place only when complete.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/core/dtype.h"
#include "engine/core/progress.h"
#include "engine/cpu/model.h"

namespace moebius::quant {

struct WriteOptions {
    bool                   dequantized = false;     // write X.weight for every linear instead of packed formats
    DType                  dtype       = DType::BF16; // dtype of dequantized weights (BF16, F16 or F32)
    bool                   force       = false;     // replace an existing output directory
    // Above this many bytes of tensors the weights are split into model-0000i-of-0000n.safetensors shards with a
    // model.safetensors.index.json, as Hugging Face does (a tensor larger than a shard gets a shard of its own).
    int64_t                max_shard_bytes = int64_t(4) << 30;
    nlohmann::ordered_json quantization;            // method-level fields merged into quantization_config (packed)
};

struct WriteReport {
    int64_t bytes_total     = 0; // bytes of all tensors written
    int64_t quantized_bytes = 0; // bytes of the quantized modules' tensors
    int64_t quantized_weights = 0; // weights those modules replace
    int     shards            = 1;
};

// src_dir: the checkpoint the model was loaded from (untouched tensors are copied from it byte for byte).
WriteReport write_checkpoint(const Model& model, const std::filesystem::path& src_dir, const std::filesystem::path& out,
                             const WriteOptions& opt, const ProgressFn& progress = {});

} // namespace moebius::quant
