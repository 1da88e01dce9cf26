#pragma once
// Builds a checkpoint module's linear layer: dense `X.weight` (any float dtype, converted to f32), or a packed
// quantized format named in config.json's quantization_config.modules (docs/FORMAT.md).
#include <memory>
#include <string>
#include <vector>

#include "engine/core/model_config.h"
#include "engine/cpu/linear.h"

namespace moebius {

class WeightStore;

// A tensor as f32 after checking its shape against what config.json implies (FormatError naming the file if not).
std::vector<float> load_f32_checked(const WeightStore& store, const std::string& name, const std::vector<int64_t>& shape);

// module: e.g. "model.layers.3.mlp.experts.7.up_proj"; out/in: the shape config.json implies.
// Throws FormatError naming the file for shape or parameter mismatches, NotFoundError for missing tensors.
std::unique_ptr<Linear> load_linear(const WeightStore& store, const ModelSpec& spec, const std::string& module, int out,
                                    int in);

} // namespace moebius
