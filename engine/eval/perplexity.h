#pragma once
// Perplexity by the WikiText-2/GPTQ protocol: the text is tokenized once, cut into floor(n/seqlen) non-overlapping
// windows, each scored independently (fresh context) on its seqlen-1 shifted predictions; ppl = exp(mean NLL).
#include <cstdint>
#include <span>

#include "engine/core/progress.h"
#include "engine/cpu/model.h"
#include "engine/cpu/session.h"

namespace moebius {

struct PerplexityResult {
    double  ppl      = 0;
    double  mean_nll = 0;
    int64_t tokens   = 0; // tokens inside the scored windows (windows * seqlen)
    int64_t predictions = 0;
    int     windows  = 0;
    int     seqlen   = 0;
};

PerplexityResult perplexity(Session& session, std::span<const int32_t> ids, int seqlen,
                            const ProgressFn& progress = {});
PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, int seqlen,
                            const ProgressFn& progress = {});

// Sum of -log p(ids[i+1] | ids[..i]) over one window's positions, from logits (n, n_vocab); log-softmax in double.
double window_nll(const float* logits, int n, int n_vocab, const int32_t* ids);

} // namespace moebius
