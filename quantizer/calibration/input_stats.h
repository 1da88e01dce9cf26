#pragma once
// Second-moment statistics of the inputs of a linear layer, accumulated over calibration tokens:
// H = Σ x xᵀ (the GPTQ proxy Hessian up to a factor 2/N) and the affinity-weighted H_aff = Σ c x xᵀ (MoEQuant AGQ),
// with c the router weight of the token for that expert. Per-batch products are formed in f32 and summed in f64.
#include <cstdint>
#include <vector>

namespace moebius::quant {

struct InputStats {
    int                 dim         = 0;
    bool                affinity    = false;
    int64_t             n_tokens    = 0;
    double              sum_weight  = 0; // Σ c (tokens count 1 each when no weights are given)
    double              sum_sq_norm = 0; // Σ ‖x‖²
    std::vector<double> H;               // (dim, dim) Σ x xᵀ, full symmetric, row-major
    std::vector<double> H_aff;           // (dim, dim) Σ c x xᵀ; empty unless affinity

    InputStats() = default;
    InputStats(int dim, bool affinity);
    // x (m, dim); c (m) router weights or nullptr (weight 1).
    void add(const float* x, int m, const float* c);
    void merge(const InputStats& o);
    double mean_weight() const { return n_tokens ? sum_weight / (double)n_tokens : 0; }
    // Diagonal of H (dim).
    std::vector<double> diag() const;
};

} // namespace moebius::quant
