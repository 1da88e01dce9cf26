#pragma once
// Backward pass of the CPU model: the mean next-token cross-entropy of one sequence and its gradients with respect to
// every weight (∂ℓ/∂W) and to every decoder linear's output (∂ℓ/∂Z, per token, through a callback; GLAS saliency).
//
// The forward keeps every layer's activations for the backward while they fit in GradientOptions::
// max_activation_bytes; beyond that memory is bounded by recomputation: the forward keeps only each layer's input
// residual (n × n_embd per layer) and the backward re-runs one layer at a time from it (Model::forward_layer with
// hooks; the same values) before backpropagating through it. Attention probabilities are recomputed from the scores,
// never stored (no n² buffer).
//
// Top-k expert selection is piecewise constant: gradients flow through the selected probabilities, the softmax and the
// optional renormalisation, as autograd does. Results are bit-reproducible for a given thread count (no atomics or
// racy reductions; the backward's own GEMM chunking does not depend on the thread count, the forward's may).
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "engine/core/progress.h"
#include "engine/cpu/model.h"

namespace moebius {

struct LinearGradEvent {
    int          layer;
    LinearKind   kind;
    int          expert;        // routed expert id, -1 otherwise
    int          n;             // rows (tokens) in x and dz
    int          in, out;
    const float* x;             // (n, in) input of the linear
    const float* dz;            // (n, out) ∂ℓ/∂(linear output) of the mean loss (equal before and after a bias)
    const int*   token_index;   // experts: (n) row of each token within the sequence; nullptr otherwise
    const int*   positions;     // (n) positions of those tokens (0-based in the sequence)
    const float* router_weight; // experts: (n) combine weight of this expert for each token; nullptr otherwise
};

struct GradientOptions {
    // Accumulate ∂ℓ/∂W for every linear, bias, norm weight, the embeddings and lm_head. Off: only the loss, the
    // on_linear_grad events and none of the weight-gradient GEMMs.
    bool weight_grads = true;
    // Called once per decoder linear (routed experts: once per expert that received tokens), serially on the calling
    // thread, layers from last to first. Pointers are valid only during the callback.
    std::function<void(const LinearGradEvent&)> on_linear_grad;
    // Only the routed experts' events are wanted (GLAS): the others are not emitted and, without weight gradients,
    // the backward stops after the experts of the lowest MoE layer (nothing else reads what lies below them).
    bool routed_experts_only = false;
    // The forward's activations of all layers are kept for the backward when they take at most this many bytes;
    // otherwise each layer is recomputed from its input (one more forward, less memory). Results are identical.
    size_t max_activation_bytes = size_t(1) << 30;
    // Optional observer of the forward pass: every layer once, in order, on the calling thread (the backward's
    // recomputation is not reported). Lets a caller that also needs the FP model's forward share this one.
    const Hooks* forward_hooks = nullptr;
};

struct Gradients {
    double loss          = 0; // mean next-token cross-entropy (nats)
    int    n_predictions = 0; // n - 1
    // ∂loss/∂tensor keyed by checkpoint name ("model.layers.0.mlp.experts.3.down_proj.weight", "...q_proj.bias"), with
    // the tensor's stored shape, row-major. Every trainable tensor is present (zeros for experts no token chose); tied
    // embeddings hold the sum of both uses under "model.embed_tokens.weight". Empty when !weight_grads.
    std::map<std::string, std::vector<float>> weights;
};

// Mean next-token cross-entropy over tokens[0..n) (predictions of tokens 1..n-1 at positions 0..n-2, causal attention
// from position 0) and its gradients. Every family the forward runs is supported (q/k norms per head or over the
// projection, q/k/v and o biases, clip_qkv, gated or ungated shared experts, dense layers, tied embeddings). Throws
// InputError for n < 2 or a token outside the vocabulary.
Gradients loss_and_gradients(const Model& model, std::span<const int32_t> tokens, const GradientOptions& opt = {});

// Losses and gradient events of several sequences, layer-major, for models too large to hold in f32 at once (GLAS
// on a real MoE): the forward takes every sequence through layer l before layer l + 1 is read and keeps only each
// layer's input (n × n_embd per sequence and layer); the backward takes every sequence back through layer l,
// recomputing its activations from that input, before layer l − 1. Layers not resident are loaded when reached and
// released when done with, so a lazily loaded model (LoadOptions::lazy_layers) holds one decoder layer's weights at a
// time (layers resident before the call stay). The sequences of a layer run concurrently, one per thread (threads
// <= 0: num_threads()); on_linear_grad and forward_hooks(seq)'s hooks are called on those threads with the
// sequence's index. Each sequence's loss and events equal loss_and_gradients' without weight gradients (same
// routed_experts_only), bit for bit. progress may cancel between layers (Cancelled).
struct SequenceGradientOptions {
    bool                                                 routed_experts_only = false;
    std::function<void(int seq, const LinearGradEvent&)> on_linear_grad;
    std::function<Hooks(int seq)>                        forward_hooks; // optional observers of the forward
    std::function<void(int layer)> on_layer_done; // on the calling thread, after every sequence's backward of a layer
};
std::vector<double> layerwise_losses_and_events(Model& model, std::span<const std::vector<int32_t>> sequences,
                                                const SequenceGradientOptions& opt, int threads = 0,
                                                const ProgressFn& progress = {});

} // namespace moebius
