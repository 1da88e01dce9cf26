#pragma once
// Layer-sequential calibration driver (GPTQ style). The calibration set is embedded once; then, layer by layer, the
// held hidden states are run through the current layer with hooks attached (statistics), the caller may replace the
// layer's linears (quantization), and advance() pushes the hidden states through the layer as it now is, so a
// quantized layer feeds the next one.
#include <vector>

#include "engine/core/progress.h"
#include "engine/cpu/hooks.h"
#include "engine/cpu/model.h"
#include "quantizer/calibration/calibration_data.h"
#include "quantizer/calibration/input_stats.h"

namespace moebius::quant {

struct CaptureOptions {
    bool attention = true;  // q/k/v (shared input) and o inputs
    // Within attention: the inputs of q/k/v (attn_in) and of o (attn_out). A quantizer needs them in two passes (o
    // sees the quantized q/k/v); a pass without o's input stops after q/k/v.
    bool attention_inputs = true;
    bool attention_output = true;
    bool ffn       = true;  // router / shared / dense FFN inputs
    bool experts   = true;  // routed experts' inputs (gate/up) and intermediate (down)
    bool affinity  = false; // also Σ c x xᵀ: router weight for experts, sigmoid gate for Qwen2-MoE's shared expert
    // Within ffn/experts: the inputs of router, gate and up (ffn_in, shared_in, expert_in) and the intermediate inputs
    // of down (shared_mid, dense_mid, expert_mid). A quantizer needs them in two passes (down sees the quantized
    // gate/up), so each pass can skip the half it does not use.
    bool ffn_inputs       = true;
    bool ffn_intermediate = true;
};

// Statistics of one decoder layer. Linears that share an input share one InputStats.
struct LayerStats {
    int                     layer = -1;
    InputStats              attn_in;    // q, k, v
    InputStats              attn_out;   // o
    InputStats              ffn_in;     // router, shared gate/up, shared_expert_gate, dense gate/up
    InputStats              shared_in;  // shared gate/up with affinity (only when affinity is on)
    InputStats              shared_mid; // shared down
    InputStats              dense_mid;  // dense down
    std::vector<InputStats> expert_in;  // [n_expert] gate/up inputs on routed tokens
    std::vector<InputStats> expert_mid; // [n_expert] down inputs
    std::vector<int64_t>    expert_tokens;     // [n_expert] routed tokens
    std::vector<double>     expert_weight_sum; // [n_expert] Σ router weight
    // The statistics of a linear's input (nullptr if not captured).
    const InputStats* for_linear(LinearKind kind, int expert = -1) const;
};

class LayerwiseRunner {
public:
    // release_passed: free each layer's weights once advance() has left it (lazily loaded models; statistics-only
    // drivers), so one layer is resident at a time. Quantizers keep their packed layers instead.
    LayerwiseRunner(Model& model, const CalibrationSet& calib, bool release_passed = false);
    Model&                    model() { return model_; }
    const CalibrationSet&     calibration() const { return calib_; }
    int                       current_layer() const { return layer_; }
    bool                      done() const { return layer_ >= model_.spec().n_layer; }
    // Runs the current layer on every sample with statistics hooks; outputs are discarded. The layer stops once the
    // requested statistics are complete (Hooks::stop), so `also` (optional: a second collector on the same pass) sees
    // every linear's input but only the outputs the pass computed (y = nullptr for the others).
    LayerStats capture(const CaptureOptions& opt, const ProgressFn& progress = {}, const Hooks* also = nullptr);
    // Runs the current layer on every sample with arbitrary hooks; outputs are discarded.
    void run(const Hooks& hooks, const ProgressFn& progress = {});
    // Hidden states ← current layer(hidden states); moves to the next layer. Hooks (optional) observe this pass.
    void advance(const Hooks* hooks = nullptr, const ProgressFn& progress = {});
    // The current layer's attention is final (quantized, or kept): the held states move past it now, once, and until
    // advance() every pass runs only the layer's FFN block (Model::forward_ffn_block; same values) — the FFN
    // statistics passes and the propagation no longer recompute the attention. Those passes have no attention
    // events, and their on_layer events give the residual after the attention as `input`. Capturing attention
    // statistics afterwards throws Error.
    void finish_attention();
    // (seqlen, n_embd) hidden states entering the current layer for one sample.
    const std::vector<float>& hidden(int sample) const { return hidden_[sample]; }

private:
    Model&                          model_;
    const CalibrationSet&           calib_;
    int                             layer_ = 0;
    bool                            release_passed_ = false;
    bool                            attention_done_ = false; // hidden_ holds the residual after the attention
    std::vector<std::vector<float>> hidden_; // [samples] (seqlen, n_embd)
    // One sample's pass through the current layer (from hidden_[s]'s place in it) with hooks, x (seqlen, n_embd)
    // in/out.
    void pass(float* x, const Hooks* hooks);
};

} // namespace moebius::quant
