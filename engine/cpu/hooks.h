#pragma once
// Observation points of the forward pass. Calibration, statistics and analysis attach callbacks here instead of
// touching model code. All pointers are valid only during the callback.
#include <functional>

#include "engine/core/model_config.h"

namespace moebius {

struct LinearEvent {
    int          layer;
    LinearKind   kind;
    int          expert;        // routed expert id, -1 otherwise
    int          n;             // rows (tokens) in x and y
    int          in, out;
    const float* x;             // (n, in) input of the linear
    const float* y;             // (n, out) output (before bias)
    const int*   token_index;   // experts: (n) row of each token within the batch; nullptr otherwise
    const int*   positions;     // (n) absolute positions of those tokens
    const float* router_weight; // experts: (n) combine weight of this expert for each token; nullptr otherwise
};

struct RouterEvent {
    int          layer;
    int          n, n_expert, k;
    const float* logits;  // (n, n_expert)
    const float* probs;   // (n, n_expert) softmax in f32
    const int*   topk_ids;     // (n, k) sorted by descending weight
    const float* topk_weights; // (n, k) combine weights (after optional renormalisation)
    const int*   positions;    // (n)
};

struct LayerEvent {
    int          layer;
    int          n, n_embd;
    const float* input;  // (n, n_embd) residual stream entering the layer
    const float* output; // (n, n_embd) leaving it
    const int*   positions;
};

// How much of a layer a statistics pass runs (Model::forward_layer stops after it). A stopped layer leaves its x
// unspecified, gives on_layer output = nullptr, and the linears it no longer needs run only as far as their events:
enum class LayerStop {
    None,             // the whole layer
    AttentionInputs,  // through q/k/v (their events); no o_proj or FFN events
    Attention,        // through o_proj; no FFN events
    FfnInputs,        // + the router; FFN gate/up events carry y = nullptr and down has none
    FfnIntermediates, // + FFN gate/up outputs; down events carry y = nullptr
};

// Whether a pass with this stop ends inside the attention block (nothing of the FFN runs).
inline bool stops_in_attention(LayerStop s) { return s == LayerStop::AttentionInputs || s == LayerStop::Attention; }

struct Hooks {
    std::function<void(const LinearEvent&)> on_linear;
    std::function<void(const RouterEvent&)> on_router;
    std::function<void(const LayerEvent&)>  on_layer;
    LayerStop                               stop = LayerStop::None;
    bool any() const { return on_linear || on_router || on_layer; }
};

// One callback that runs a, then b (either may be unset).
template <class Fn> Fn chain_callbacks(Fn a, Fn b) {
    if (!a) return b;
    if (!b) return a;
    return [a = std::move(a), b = std::move(b)](const auto& e) {
        a(e);
        b(e);
    };
}

// Hooks that run `first`'s callbacks, then `then`'s, with first's stop: two observers on one pass.
inline Hooks chain_hooks(const Hooks& first, const Hooks& then) {
    Hooks h;
    h.on_linear = chain_callbacks(first.on_linear, then.on_linear);
    h.on_router = chain_callbacks(first.on_router, then.on_router);
    h.on_layer  = chain_callbacks(first.on_layer, then.on_layer);
    h.stop      = first.stop;
    return h;
}

} // namespace moebius
