#include "engine/core/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moebius {

int32_t argmax(const float* x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; ++i)
        if (x[i] > x[best]) best = i;
    return best;
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}

int32_t Sampler::sample(float* logits, int n_vocab, std::span<const int32_t> history) {
    if (p_.repetition_penalty != 1.f) {
        // CTRL-style penalty as in transformers: each distinct previous token once.
        std::vector<int32_t> seen(history.begin(), history.end());
        std::sort(seen.begin(), seen.end());
        seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
        for (int32_t t : seen)
            if (t >= 0 && t < n_vocab)
                logits[t] = logits[t] > 0 ? logits[t] / p_.repetition_penalty : logits[t] * p_.repetition_penalty;
    }
    if (p_.temperature <= 0.f) return argmax(logits, n_vocab);

    // Candidates sorted by logit, highest first (stable: lower id first on ties).
    idx_.resize(n_vocab);
    std::iota(idx_.begin(), idx_.end(), 0);
    int keep = n_vocab;
    if (p_.top_k > 0 && p_.top_k < n_vocab) {
        std::partial_sort(idx_.begin(), idx_.begin() + p_.top_k, idx_.end(), [&](int a, int b) {
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        });
        keep = p_.top_k;
    } else {
        std::sort(idx_.begin(), idx_.end(),
                  [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    }
    prob_.resize(keep);
    const float mx  = logits[idx_[0]] / p_.temperature;
    double      sum = 0;
    for (int i = 0; i < keep; ++i) {
        prob_[i] = std::exp(logits[idx_[i]] / p_.temperature - mx);
        sum += prob_[i];
    }
    for (int i = 0; i < keep; ++i) prob_[i] = (float)(prob_[i] / sum);
    if (p_.top_p < 1.f) {
        // Smallest prefix whose mass reaches top_p (always at least one token).
        double cum = 0;
        int    k   = 0;
        while (k < keep) {
            cum += prob_[k++];
            if (cum >= p_.top_p) break;
        }
        keep = std::max(1, k);
    }
    if (p_.min_p > 0.f) {
        const float floor = p_.min_p * prob_[0];
        int         k     = 1;
        while (k < keep && prob_[k] >= floor) ++k;
        keep = k;
    }
    double total = 0;
    for (int i = 0; i < keep; ++i) total += prob_[i];
    double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
    for (int i = 0; i < keep; ++i) {
        r -= prob_[i];
        if (r <= 0) return idx_[i];
    }
    return idx_[keep - 1];
}

} // namespace moebius
