#pragma once
// Token sampling with the usual knobs, applied in transformers' order: repetition penalty, temperature, top-k,
// top-p, min-p. temperature <= 0 means greedy (argmax, lowest id on ties).
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace moebius {

struct SamplingParams {
    float    temperature        = 0.f; // <= 0: greedy
    int      top_k              = 0;   // 0: off
    float    top_p              = 1.f; // 1: off
    float    min_p              = 0.f; // 0: off
    float    repetition_penalty = 1.f; // 1: off
    uint64_t seed               = 0;
};

class Sampler {
public:
    explicit Sampler(const SamplingParams& p);
    // logits (n_vocab) are modified in place; history: tokens so far (prompt + generated) for the penalty.
    int32_t sample(float* logits, int n_vocab, std::span<const int32_t> history);

private:
    SamplingParams     p_;
    std::mt19937_64    rng_;
    std::vector<int>   idx_;
    std::vector<float> prob_;
};

int32_t argmax(const float* x, int n);

} // namespace moebius
