#pragma once
// Autoregressive generation on the CPU model: prefill the prompt in one batch, then decode token by token.
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engine/core/sampling.h"
#include "engine/cpu/model.h"
#include "engine/cpu/session.h"

namespace moebius {

struct GenerateOptions {
    int                  max_tokens = 128;
    SamplingParams       sampling;
    std::vector<int32_t> stop_ids;         // eos ids from generation_config.json / the template
    int                  n_ctx     = 0;    // 0: prompt + max_tokens, capped at the model's max_position
    bool                 use_cache = true; // false recomputes the whole sequence per token (testing reference)
};

struct GenerateResult {
    std::vector<int32_t> tokens;       // generated ids (stop token excluded)
    int                  prompt_tokens = 0;
    double               prefill_s = 0, decode_s = 0, time_to_first_token_s = 0;
    std::string          stop_reason;  // "eos", "length", "cancelled", "context"
    double               decode_tokens_per_s() const;
    double               prefill_tokens_per_s() const;
};

// on_token is called for every generated token (stop token excluded); return false to stop. The session's cache is
// reset to the context this call needs.
GenerateResult generate(Session& session, std::span<const int32_t> prompt, const GenerateOptions& opt,
                        const std::function<bool(int32_t)>& on_token = {});
// The same on the CPU model.
GenerateResult generate(const Model& model, std::span<const int32_t> prompt, const GenerateOptions& opt,
                        const std::function<bool(int32_t)>& on_token = {});

} // namespace moebius
