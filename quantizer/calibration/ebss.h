#pragma once
// EBSS — MoEQuant's expert-balanced self-sampling: the model writes its own calibration sequences by beam search,
// ranking candidates by average NLL + σ/τ (σ = expert-usage imbalance, mean over MoE layers) and keeping the
// *lowest* score, so the set is both likely under the model and balanced over experts.
// Readings chosen where the paper is open, by measurement on the bundled model (set σ, lower is better):
//  - σ over assignment *counts*, as Eq. 4 prints it. Over frequencies, σ ≈ 0.01–0.05 is negligible next to the NLL
//    at τ = 1.2 and beam search degenerates into repetitive text (4 x 48 tokens, 2 seeds: 0.029–0.033 vs 0.014–0.021
//    for random corpus windows).
//  - σ of the samples already chosen plus the candidate, not of the candidate alone (16 x 64 tokens, 3 seeds:
//    0.006–0.009 vs 0.014–0.016 per candidate, random windows 0.009–0.011).
#include <cstdint>
#include <vector>

#include "engine/core/progress.h"
#include "engine/cpu/model.h"
#include "quantizer/calibration/calibration_data.h"

namespace moebius::quant {

struct EbssOptions {
    int                  samples  = 32;
    int                  seqlen   = 256;
    int                  beam     = 4;
    float                tau      = 1.2f;
    int                  children = 64; // next tokens considered per beam (top by probability)
    uint64_t             seed     = 0;
    std::vector<int32_t> excluded_first; // ids never drawn as the random first token (special tokens)
    std::vector<int32_t> banned;         // ids never generated (e.g. end-of-text), so every sample has seqlen tokens
    // σ of the candidate together with the samples already chosen (true), or of the candidate alone (false). The
    // quantizer sees the whole set, so the set's balance is what matters.
    bool balance_set = true;
    // σ over assignment counts (true) or frequencies (false).
    bool sigma_counts = true;
};

CalibrationSet ebss_generate(const Model& model, const EbssOptions& opt, const ProgressFn& progress = {});

} // namespace moebius::quant
