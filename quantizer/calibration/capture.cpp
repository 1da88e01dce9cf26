#include "quantizer/calibration/capture.h"

#include "engine/core/error.h"
#include "engine/cpu/ops.h"

namespace moebius::quant {

const InputStats* LayerStats::for_linear(LinearKind kind, int expert) const {
    auto ok = [](const InputStats& s) { return s.dim > 0 ? &s : nullptr; };
    switch (kind) {
    case LinearKind::Q:
    case LinearKind::K:
    case LinearKind::V: return ok(attn_in);
    case LinearKind::O: return ok(attn_out);
    case LinearKind::Router:
    case LinearKind::SharedExpertGate:
    case LinearKind::DenseGate:
    case LinearKind::DenseUp: return ok(ffn_in);
    case LinearKind::SharedGate:
    case LinearKind::SharedUp: return shared_in.dim > 0 ? &shared_in : ok(ffn_in);
    case LinearKind::SharedDown: return ok(shared_mid);
    case LinearKind::DenseDown: return ok(dense_mid);
    case LinearKind::ExpertGate:
    case LinearKind::ExpertUp:
        return expert >= 0 && expert < (int)expert_in.size() ? ok(expert_in[expert]) : nullptr;
    case LinearKind::ExpertDown:
        return expert >= 0 && expert < (int)expert_mid.size() ? ok(expert_mid[expert]) : nullptr;
    case LinearKind::Count: break;
    }
    return nullptr;
}

LayerwiseRunner::LayerwiseRunner(Model& model, const CalibrationSet& calib, bool release_passed)
    : model_(model), calib_(calib), release_passed_(release_passed) {
    if (calib.samples.empty()) throw InputError("the calibration set is empty");
    const int H = model.spec().n_embd;
    hidden_.resize(calib.samples.size());
    for (size_t s = 0; s < calib.samples.size(); ++s) {
        const auto& ids = calib.samples[s];
        if ((int)ids.size() != calib.seqlen) throw InputError("calibration sample with a wrong length");
        hidden_[s].resize((size_t)ids.size() * H);
        model.embed(ids.data(), (int)ids.size(), hidden_[s].data());
    }
    model_.load_layer(0); // callers inspect and replace the current layer's weights through model().layer()
}

void LayerwiseRunner::pass(float* x, const Hooks* hooks) {
    if (attention_done_) model_.forward_ffn_block(layer_, x, calib_.seqlen, hooks);
    else model_.forward_layer(layer_, x, calib_.seqlen, nullptr, hooks);
}

void LayerwiseRunner::run(const Hooks& hooks, const ProgressFn& progress) {
    MOEBIUS_ASSERT(!done());
    std::vector<float> x;
    for (size_t s = 0; s < hidden_.size(); ++s) {
        report_progress(progress, (double)s / hidden_.size(),
                        "layer " + std::to_string(layer_) + ": sample " + std::to_string(s + 1) + "/" +
                            std::to_string(hidden_.size()));
        x = hidden_[s];
        pass(x.data(), &hooks);
    }
}

void LayerwiseRunner::finish_attention() {
    MOEBIUS_ASSERT(!done());
    if (attention_done_) return;
    for (auto& x : hidden_) model_.forward_attention_block(layer_, x.data(), calib_.seqlen);
    attention_done_ = true;
}

LayerStats LayerwiseRunner::capture(const CaptureOptions& opt, const ProgressFn& progress, const Hooks* also) {
    if (opt.attention && attention_done_)
        throw Error("capture: layer " + std::to_string(layer_) + "'s attention statistics were asked for after finish_attention");
    const ModelSpec&    spec = model_.spec();
    const LayerWeights& L    = model_.layer(layer_);
    const int           H = spec.n_embd, qd = spec.n_head * spec.head_dim;
    LayerStats          st;
    st.layer = layer_;
    const bool attn_in = opt.attention && opt.attention_inputs, attn_out = opt.attention && opt.attention_output;
    if (attn_in) st.attn_in = InputStats(H, false);
    if (attn_out) st.attn_out = InputStats(qd, false);
    const bool gated_shared = L.shared_expert_gate != nullptr;
    const bool ffn_in = opt.ffn && opt.ffn_inputs, ffn_mid = opt.ffn && opt.ffn_intermediate;
    const bool exp_in = opt.experts && opt.ffn_inputs, exp_mid = opt.experts && opt.ffn_intermediate;
    if (ffn_in) {
        st.ffn_in = InputStats(H, false);
        if (L.shared_gate && opt.affinity) st.shared_in = InputStats(H, true);
    }
    if (ffn_mid) {
        if (L.shared_gate) st.shared_mid = InputStats(spec.n_ff_shared, false);
        if (!L.is_moe) st.dense_mid = InputStats(spec.n_ff_dense, false);
    }
    if (L.is_moe) {
        st.expert_tokens.assign(spec.n_expert, 0);
        st.expert_weight_sum.assign(spec.n_expert, 0);
        if (exp_in)
            for (int e = 0; e < spec.n_expert; ++e) st.expert_in.emplace_back(H, opt.affinity);
        if (exp_mid)
            for (int e = 0; e < spec.n_expert; ++e) st.expert_mid.emplace_back(spec.n_ff_expert, opt.affinity);
    }
    std::vector<float> sig;
    Hooks              hooks;
    hooks.on_linear = [&](const LinearEvent& e) {
        switch (e.kind) {
        case LinearKind::Q:
            if (attn_in) st.attn_in.add(e.x, e.n, nullptr);
            break;
        case LinearKind::O:
            if (attn_out) st.attn_out.add(e.x, e.n, nullptr);
            break;
        case LinearKind::Router:
        case LinearKind::DenseGate:
            if (ffn_in) st.ffn_in.add(e.x, e.n, nullptr);
            break;
        case LinearKind::SharedGate:
            if (ffn_in && opt.affinity && !gated_shared) st.shared_in.add(e.x, e.n, nullptr);
            break;
        case LinearKind::SharedExpertGate:
            if (ffn_in && opt.affinity) {
                sig.resize(e.n);
                for (int t = 0; t < e.n; ++t) sig[t] = cpu::sigmoid(e.y[t]);
                st.shared_in.add(e.x, e.n, sig.data());
            }
            break;
        case LinearKind::SharedDown:
            if (ffn_mid) st.shared_mid.add(e.x, e.n, nullptr);
            break;
        case LinearKind::DenseDown:
            if (ffn_mid) st.dense_mid.add(e.x, e.n, nullptr);
            break;
        case LinearKind::ExpertGate:
            st.expert_tokens[e.expert] += e.n;
            for (int t = 0; t < e.n; ++t) st.expert_weight_sum[e.expert] += e.router_weight[t];
            if (exp_in) st.expert_in[e.expert].add(e.x, e.n, e.router_weight);
            break;
        case LinearKind::ExpertDown:
            if (exp_mid) st.expert_mid[e.expert].add(e.x, e.n, e.router_weight);
            break;
        default: break;
        }
    };
    if (also) hooks = chain_hooks(hooks, *also);
    // The layer runs only as far as these statistics (and `also`, which reads inputs) need.
    hooks.stop = !opt.ffn && !opt.experts ? (attn_out ? LayerStop::Attention : LayerStop::AttentionInputs)
                 : !ffn_mid && !exp_mid   ? LayerStop::FfnInputs
                                          : LayerStop::FfnIntermediates;
    run(hooks, progress);
    return st;
}

void LayerwiseRunner::advance(const Hooks* hooks, const ProgressFn& progress) {
    MOEBIUS_ASSERT(!done());
    for (size_t s = 0; s < hidden_.size(); ++s) {
        report_progress(progress, (double)s / hidden_.size(),
                        "layer " + std::to_string(layer_) + ": propagating sample " + std::to_string(s + 1));
        pass(hidden_[s].data(), hooks);
    }
    attention_done_ = false;
    if (release_passed_) model_.release_layer(layer_);
    ++layer_;
    if (!done()) model_.load_layer(layer_);
}

} // namespace moebius::quant
