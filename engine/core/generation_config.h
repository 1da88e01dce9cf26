#pragma once
// generation_config.json: default sampling and the stop tokens a model was released with.
#include <filesystem>
#include <vector>

#include "engine/core/sampling.h"

namespace moebius {

struct GenerationConfig {
    SamplingParams       sampling;          // temperature 0 when do_sample is false
    std::vector<int32_t> eos_token_ids;
    int                  max_new_tokens = 0; // 0: not given
    // Missing file → defaults; malformed → FormatError naming the file.
    static GenerationConfig load(const std::filesystem::path& model_dir);
};

} // namespace moebius
