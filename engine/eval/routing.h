#pragma once
// Expert utilisation and routing comparison, computed from the router hook.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "engine/core/progress.h"
#include "engine/cpu/hooks.h"
#include "engine/cpu/model.h"

namespace moebius {

// Per MoE layer × expert: how many tokens chose the expert, with what weights, and which experts fire together.
struct ExpertUsage {
    int                               n_expert = 0, k = 0;
    std::vector<int>                  layers;     // model layer index of each MoE layer
    std::vector<int64_t>              tokens;     // [moe layer] tokens seen
    std::vector<std::vector<int64_t>> counts;     // [moe layer][expert] top-k assignments
    std::vector<std::vector<double>>  weight_sum; // [moe layer][expert] Σ combine weight
    std::vector<std::vector<int64_t>> coactive;   // [moe layer][e1 * n_expert + e2] tokens with both in top-k

    explicit ExpertUsage(const ModelSpec& spec);
    void   add(const RouterEvent& ev);
    void   merge(const ExpertUsage& o);
    int    moe_index(int layer) const; // -1 if not a MoE layer
    double fraction(int l, int e) const;    // counts / (tokens · k): share of assignments
    double mean_weight(int l, int e) const; // weight_sum / counts
    // Imbalance: unbiased standard deviation over experts of the assignment frequencies f_e = n_e / Σ n
    // (MoEQuant's σ; 0 = perfectly balanced).
    double imbalance(int l) const;
    double mean_imbalance() const;
    double entropy(int l) const; // of f_e, in nats (log E = balanced)
    nlohmann::ordered_json to_json() const;
};

struct RoutingDiff {
    struct Layer {
        int                  layer = 0;
        int64_t              tokens = 0;
        double               shift_rate = 0;     // fraction of tokens whose top-k set changed
        double               top1_flip_rate = 0; // fraction whose top-1 expert changed
        double               router_kl = 0;      // mean KL(p_ref ‖ p_model)
        std::vector<int64_t> transition;         // (n_expert, n_expert): ref top-1 → model top-1 counts
        std::vector<double>  load_delta;         // (n_expert) fraction_model − fraction_ref
    };
    int                n_expert = 0;
    std::vector<Layer> layers;
    double shift_rate() const;     // mean over layers
    double top1_flip_rate() const;
    double router_kl() const;
    nlohmann::ordered_json to_json() const;
};

// Runs both models over the same non-overlapping windows of ids and compares their routers layer by layer.
// Throws InputError if the models differ in architecture, layer/expert structure or vocabulary.
RoutingDiff compare_routing(const Model& ref, const Model& model, std::span<const int32_t> ids, int seqlen,
                            const ProgressFn& progress = {});

// Expert usage of one model over non-overlapping windows.
ExpertUsage measure_usage(const Model& model, std::span<const int32_t> ids, int seqlen, const ProgressFn& progress = {});

} // namespace moebius
