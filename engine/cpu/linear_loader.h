#pragma once
// Builds a checkpoint module's linear layer: dense `X.weight` (any float dtype, converted to f32), or a packed
// quantized format named in config.json's quantization_config.modules (docs/FORMAT.md).
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/core/model_config.h"
#include "engine/cpu/linear.h"

namespace moebius {

class WeightStore;

// A tensor as f32 after checking its shape against what config.json implies (FormatError naming the file if not).
std::vector<float> load_f32_checked(const WeightStore& store, const std::string& name, const std::vector<int64_t>& shape);

// Arrays the modules of a group share (a CEJD basis; KBVQ's basis, γ and β), read once per cache: with one cache
// passed to the loads of a layer's modules, a group's members hold one copy instead of one each (n_expert copies
// before). Thread-safe (experts load concurrently).
class SharedParts {
public:
    // The part stored under key, made by make() on its first use (nothing is kept if make throws).
    std::shared_ptr<const void> get(const std::string& key, const std::function<std::shared_ptr<const void>()>& make);

private:
    std::mutex                                         mutex_;
    std::map<std::string, std::shared_ptr<const void>> parts_;
};

// module: e.g. "model.layers.3.mlp.experts.7.up_proj"; out/in: the shape config.json implies. shared (optional): the
// cache for group-shared arrays. Throws FormatError naming the file for shape or parameter mismatches, NotFoundError
// for missing tensors.
std::unique_ptr<Linear> load_linear(const WeightStore& store, const ModelSpec& spec, const std::string& module, int out,
                                    int in, SharedParts* shared = nullptr);

} // namespace moebius
