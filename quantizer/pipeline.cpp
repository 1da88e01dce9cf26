#include "quantizer/pipeline.h"

#include "engine/core/error.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/vq_linear.h"
#include "quantizer/calibration/capture.h"
#include "quantizer/format/layer_checkpoint.h"
#include "quantizer/methods/binarize.h"
#include "quantizer/methods/gptq.h"
#include "quantizer/methods/gptvq.h"
#include "quantizer/methods/kbvq.h"
#include "quantizer/methods/mobie.h"
#include "quantizer/methods/uniform_quant.h"

#include <chrono>
#include <ctime>
#include <functional>
#include <map>

namespace moebius::quant {

std::vector<std::string> quantize_methods() { return {"rtn", "gptq", "agq", "gptvq", "kbvq", "billm", "arb-x", "arb-rc", "mobie"}; }

bool is_binary_method(const std::string& m) { return m == "billm" || m == "arb-x" || m == "arb-rc" || m == "mobie"; }

void validate_options(const QuantizeOptions& o, const ModelSpec& spec) {
    bool known = false;
    for (auto& m : quantize_methods()) known |= m == o.method;
    if (!known) {
        std::string list;
        for (auto& m : quantize_methods()) list += (list.empty() ? "" : ", ") + m;
        throw InputError("unknown method '" + o.method + "' (available: " + list + ")");
    }
    const bool binary = is_binary_method(o.method);
    if (o.method == "mobie") {
        if (o.mobie_core != "billm" && o.mobie_core != "arb" && o.mobie_core != "arb-x" && o.mobie_core != "arb-rc")
            throw InputError("--core must be billm, arb, arb-x or arb-rc, got '" + o.mobie_core + "'");
        if (o.cejd && (o.mobie_rank < 1 || o.mobie_rank > 4096))
            throw InputError("--rank must be in 1..4096 for mobie, got " + std::to_string(o.mobie_rank));
        if (o.nges_weight < 0) throw InputError("--nges-weight must not be negative");
        if (o.glas_samples < 0) throw InputError("--glas-samples must not be negative (0: every calibration sequence)");
    }
    if (!(o.fp_ridge >= 0)) throw InputError("--fp-ridge must not be negative");
    if (o.fp_target_any && (o.method == "rtn" || o.method == "mobie"))
        throw InputError("--fp-target is for the other calibrated methods (rtn has no calibration; mobie uses FP-stream "
                         "targets unless --no-fp-target)");
    const bool vq = o.method == "gptvq" || o.method == "kbvq";
    if (o.method == "kbvq" && (o.kbvq_rank < 0 || o.kbvq_rank > 4096))
        throw InputError("--rank must be in 0..4096, got " + std::to_string(o.kbvq_rank));
    if (o.method == "kbvq" && o.kbvq_dim != 0 && o.kbvq_dim != 1 && o.kbvq_dim != 2 && o.kbvq_dim != 4)
        throw InputError("--expert-vq-dim must be 1, 2 or 4 (0: automatic), got " + std::to_string(o.kbvq_dim));
    if (o.method == "kbvq" && o.kbvq_dim > 0 && o.bits * o.kbvq_dim > 12)
        throw InputError("--bits · --expert-vq-dim must be at most 12 (4096 centroids), got " + std::to_string(o.bits) +
                         " · " + std::to_string(o.kbvq_dim));
    if (vq) {
        if (o.vq_dim != 1 && o.vq_dim != 2 && o.vq_dim != 4)
            throw InputError("--vq-dim must be 1, 2 or 4, got " + std::to_string(o.vq_dim));
        if (o.vq_group_size < 0) throw InputError("--vq-group-size must be positive (0: automatic)");
        if (o.vq_codebook_bits != 8 && o.vq_codebook_bits != 16)
            throw InputError("--codebook-bits must be 8 or 16, got " + std::to_string(o.vq_codebook_bits));
        if (o.vq_refine_iters < 0 || o.vq_refine_iters > 1000)
            throw InputError("--vq-refine must be in 0..1000, got " + std::to_string(o.vq_refine_iters));
        if (o.bits < 1 || o.bits * o.vq_dim > 12)
            throw InputError("--bits for " + o.method + " must be ≥ 1 with bits·vq-dim ≤ 12 (at most 4096 centroids), got " +
                             std::to_string(o.bits) + " with --vq-dim " + std::to_string(o.vq_dim));
        if (o.vq_refine_iters > 0 && (1 << (o.bits * o.vq_dim)) * o.vq_dim > 256)
            throw InputError("--vq-refine solves a (K·D)² system per codebook and needs K·D ≤ 256; --bits " +
                             std::to_string(o.bits) + " with --vq-dim " + std::to_string(o.vq_dim) + " gives " +
                             std::to_string((1 << (o.bits * o.vq_dim)) * o.vq_dim));
    } else if (!binary && (o.bits < (o.method == "rtn" ? 1 : 2) || o.bits > 8))
        throw InputError("--bits must be " + std::string(o.method == "rtn" ? "1" : "2") + "..8 for " + o.method +
                         ", got " + std::to_string(o.bits));
    if (o.group == 0 || o.group < -1) throw InputError("--group must be positive or -1 (per channel)");
    for (LinearKind k : {LinearKind::Q, LinearKind::O, LinearKind::ExpertGate, LinearKind::ExpertDown,
                         LinearKind::SharedDown, LinearKind::DenseDown}) {
        const int in = spec.linear_shape(k).second;
        if (in <= 0) continue; // the family has no such linear
        // Binary methods work on blocks of 128 columns (the whole row when narrower).
        const int g = binary ? std::min(128, in) : vq ? -1 : o.group;
        if (g > 0 && in % g)
            throw InputError((binary ? "block size " : "--group ") + std::to_string(g) + " does not divide the input size " +
                             std::to_string(in) + " of " + linear_kind_name(k));
    }
    if (o.damp < 0) throw InputError("--damp must not be negative");
}

GptvqOptions gptvq_options(const QuantizeOptions& o) {
    GptvqOptions vo;
    vo.dim           = o.vq_dim;
    vo.bits          = o.bits;
    vo.damp          = o.damp;
    vo.codebook_bits = o.vq_codebook_bits;
    vo.refine_iters  = o.vq_refine_iters;
    vo.group_size    = o.vq_group_size > 0 ? o.vq_group_size : 8 * o.vq_codebook_bits * o.vq_dim * (1 << (o.bits * o.vq_dim));
    return vo;
}

nlohmann::ordered_json quantization_metadata(const QuantizeOptions& opt, const CalibrationSet& calib) {
    nlohmann::ordered_json j = {{"method", opt.method},
            {"bits", opt.bits},
            {"group_size", opt.group},
            {"sym", opt.sym},
            {"act_order", opt.act_order},
            {"damp", opt.damp},
            {"calibration",
             {{"source", opt.method == "rtn" ? "none" : calib.source},
              {"samples", calib.samples.size()},
              {"seqlen", calib.seqlen},
              {"seed", calib.seed}}}};
    // Only when set, so checkpoints made without it keep their config byte for byte.
    if (opt.fp_target_any) j["fp_target"] = true;
    return j;
}

void QuantizeReport::add_stage_seconds(const std::string& stage, double wall, double cpu) {
    for (StageTime& s : stages)
        if (s.name == stage) {
            s.wall += wall;
            s.cpu += cpu;
            return;
        }
    stages.push_back({stage, wall, cpu});
}

namespace {
double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
} // namespace

StageTimer::StageTimer(QuantizeReport& rep, std::string stage)
    : rep_(rep), stage_(std::move(stage)), t0_(std::chrono::steady_clock::now()), cpu0_(process_cpu_seconds()) {}

StageTimer::~StageTimer() {
    rep_.add_stage_seconds(stage_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(),
                           process_cpu_seconds() - cpu0_);
}

nlohmann::ordered_json QuantizeReport::to_json() const {
    nlohmann::ordered_json j;
    auto                   under = nlohmann::ordered_json::array();
    for (const auto& u : undercalibrated) under.push_back({{"layer", u.layer}, {"expert", u.expert}, {"tokens", u.tokens}});
    j["undercalibrated_experts"] = under;
    auto layers = nlohmann::ordered_json::array();
    int  cur    = -1;
    for (const auto& m : modules) {
        if (m.layer != cur) {
            layers.push_back({{"layer", m.layer}, {"modules", nlohmann::ordered_json::array()}});
            cur = m.layer;
        }
        layers.back()["modules"].push_back(
            {{"name", m.name}, {"tokens", m.tokens}, {"rel_error", m.rel_error}, {"bits", 8.0 * m.bytes / m.weights}});
    }
    j["per_layer"] = layers;
    auto wall = nlohmann::ordered_json::object();
    auto cpu  = nlohmann::ordered_json::object();
    for (const StageTime& s : stages) {
        wall[s.name] = s.wall;
        cpu[s.name]  = s.cpu;
    }
    j["stage_seconds"]     = wall;
    j["stage_cpu_seconds"] = cpu;
    if (!moe_output_bias.empty()) {
        auto b = nlohmann::ordered_json::array();
        for (const auto& m : moe_output_bias)
            b.push_back({{"layer", m.layer}, {"tokens", m.tokens}, {"before", m.before}, {"after", m.after}, {"rms", m.rms}});
        j["moe_output_bias"] = b;
    }
    return j;
}

namespace {

struct LayerQuantizer {
    Model&                 model;
    const QuantizeOptions& opt;
    QuantizeReport&        report;
    // Binarizer saliency row weights by module name (MoBiE's GLAS), set per layer; none: all rows weigh 1.
    std::map<std::string, std::vector<float>> row_weights;

    // Quantizes the linear in `slot` with the Hessian H (in, in) (may be empty for RTN).
    void quantize(std::unique_ptr<Linear>& slot, const std::string& name, int layer, int expert, int64_t tokens,
                  const std::vector<double>* H) {
        StageTimer         timer(report, "quantize");
        const int          in = slot->in_features(), out = slot->out_features();
        std::vector<float> W  = slot->dequantize();
        ModuleReport mr;
        mr.name   = name;
        mr.layer  = layer;
        mr.expert = expert;
        mr.tokens = tokens;
        std::unique_ptr<Linear> lin;
        if (opt.method == "mobie" && opt.cejd && opt.cejd_all && expert < 0 && H) {
            // MoBiE outside the routed experts: a group of one (mobie.h). The linears that write into the residual
            // stream take the output side, with NGES's metric of the router that reads it next (o_proj: this
            // layer's; the FFN's down: the next layer's).
            const auto&  spec  = model.spec();
            const bool   o     = name == spec.linear_name(layer, LinearKind::O);
            const bool   down  = !o && name.size() >= 10 && name.compare(name.size() - 10, 10, ".down_proj") == 0;
            const int    next  = o ? layer : layer + 1;
            std::vector<double> M;
            if (opt.nges && (o || down) && next < spec.n_layer) {
                if (!model.layer_loaded(next)) model.load_layer(next);
                M = nges_metric(model.layer(next), {}, opt.nges_weight);
            }
            lin = mobie_single(W, out, in, *H, tokens, !(o || down), M, opt, name, mr);
            slot = std::move(lin);
            report.modules.push_back(mr);
            return;
        }
        if (is_binary_method(opt.method)) {
            MOEBIUS_ASSERT(H); // calibrated methods always pass a Hessian
            BinarizeOptions bo;
            bo.method = opt.method == "mobie" ? opt.mobie_core : opt.method;
            if (auto it = row_weights.find(name); it != row_weights.end() && !it->second.empty()) bo.row_weight = &it->second;
            bo.block  = std::min(128, in);
            bo.damp   = opt.damp;
            BinarizeReport br;
            lin             = std::make_unique<BinaryLinear>(binarize(W.data(), out, in, *H, bo, &br));
            mr.rel_error    = br.rel_error;
            mr.nominal_bits = 1 + br.salient_fraction;
        } else if (opt.method == "gptvq" || opt.method == "kbvq") { // kbvq: the linears outside routed experts
            MOEBIUS_ASSERT(H);
            GptvqReport vr;
            lin = std::make_unique<VqLinear>(gptvq_quantize(W.data(), out, in, *H, gptvq_options(opt), &vr));
            mr.rel_error    = vr.rel_error;
            mr.nominal_bits = opt.bits;
        } else if (opt.bits == 1) {
            lin             = std::make_unique<BinaryLinear>(rtn_binarize(W.data(), out, in, opt.group));
            mr.nominal_bits = 1;
        } else {
            UniformConfig grid;
            grid.bits  = opt.bits;
            grid.group = opt.group;
            grid.sym   = opt.sym;
            UniformQuantized q;
            if (opt.method == "rtn" || !H) {
                q = rtn_quantize(W.data(), out, in, grid);
            } else {
                GptqOptions go;
                go.grid          = grid;
                go.damp          = opt.damp;
                go.block         = opt.block;
                go.act_order     = opt.act_order;
                go.static_groups = true;
                GptqReport gr;
                q            = gptq_quantize(W.data(), out, in, *H, go, &gr);
                mr.rel_error = gr.rel_error;
            }
            lin             = make_nbit_linear(q);
            mr.nominal_bits = opt.bits;
        }
        mr.weights = (int64_t)out * in;
        mr.bytes   = (int64_t)lin->storage_bytes();
        slot       = std::move(lin);
        report.modules.push_back(mr);
    }
};

// An expert that saw few calibration tokens gets H_e + (deficit) · mean-per-token H of the whole layer input (for
// gate/up, whose input distribution is the layer's FFN input) or a scaled identity (for down, whose input is expert
// specific): the estimate shrinks toward a prior instead of being singular or noise-dominated.
// H_s (dim, dim) is the expert's own (plain or affinity-weighted) Hessian over n_tokens tokens.
std::vector<double> regularised(const std::vector<double>& H_s, int d, int64_t n_tokens, const InputStats* prior,
                                int min_tokens) {
    std::vector<double> H       = H_s;
    const double        deficit = std::max<int64_t>(0, min_tokens - n_tokens);
    if (deficit == 0) return H;
    if (prior && prior->n_tokens > 0) {
        for (size_t i = 0; i < H.size(); ++i) H[i] += deficit * prior->H[i] / prior->n_tokens;
    } else {
        double tr = 0;
        for (int i = 0; i < d; ++i) tr += H_s[(size_t)i * d + i];
        double diag = n_tokens > 0 ? tr / d / n_tokens : 1.0;
        for (int i = 0; i < d; ++i) H[(size_t)i * d + i] += deficit * std::max(diag, 1e-8);
    }
    return H;
}

} // namespace

namespace {

bool selected(LinearKind kind, const QuantizeOptions& opt) {
    if ((kind == LinearKind::Router || kind == LinearKind::SharedExpertGate) && !opt.quantize_router) return false;
    if (kind <= LinearKind::O && !opt.quantize_attention) return false;
    return true;
}

// Everything that determines the result, for resuming: a saved layer is reused only under the same fingerprint.
nlohmann::ordered_json fingerprint(const Model& model, const CalibrationSet& calib, const QuantizeOptions& opt) {
    return {{"model", std::filesystem::absolute(model.spec().dir).lexically_normal().string()},
            {"method", opt.method},
            {"bits", opt.bits},
            {"group", opt.group},
            {"vq_dim", opt.vq_dim},
            {"vq_group_size", opt.vq_group_size},
            {"vq_codebook_bits", opt.vq_codebook_bits},
            {"vq_refine_iters", opt.vq_refine_iters},
            {"kbvq", {opt.kbvq_rank, opt.idre, opt.bcos, opt.bcos_bias, opt.bcos_gamma, opt.kbvq_shared_codebooks,
                      opt.kbvq_dim}},
            {"mobie", {opt.mobie_core, opt.mobie_rank, opt.cejd, opt.cejd_refit, opt.cejd_all, opt.glas, opt.nges, opt.nges_weight,
                       opt.fp_target, opt.fp_target_experts, opt.fp_ridge, opt.fp_target_any, opt.glas_samples}},
            {"sym", opt.sym},
            {"act_order", opt.act_order},
            {"damp", opt.damp},
            {"block", opt.block},
            {"quantize_router", opt.quantize_router},
            {"quantize_attention", opt.quantize_attention},
            {"min_expert_tokens", opt.min_expert_tokens},
            {"calibration_samples", calib.samples.size()},
            {"calibration_seqlen", calib.seqlen},
            {"calibration_hash", std::to_string(calibration_hash(calib.samples))}};
}

// MoBiE's FP-stream targets: the linears with cross moments in C (FpStream) on the current layer are replaced by W̃
// (mobie.h), with H their quantized-stream Σ x̂ x̂ᵀ (nullptr: leave the linear as it is).
void retarget(Model& model, int il, const FpStream::Moments& C, const QuantizeOptions& opt,
              const std::function<const std::vector<double>*(LinearKind, int)>& H, QuantizeReport& rep) {
    StageTimer timer(rep, "fp_target");
    for (const auto& [key, c] : C) {
        const std::vector<double>* h = H(key.first, key.second);
        if (!h) continue;
        auto&     slot = model.layer(il).slot(key.first, key.second);
        const int in = slot->in_features(), out = slot->out_features();
        slot = std::make_unique<DenseLinear>(in, out, fp_target_weight(slot->dequantize(), out, in, *h, c, opt.fp_ridge));
    }
}

// The calibrated methods' work on the runner's current layer (GPTQ order: attention, router, FFN in, FFN mid).
void quantize_layer_calibrated(LayerwiseRunner& run, LayerQuantizer& lq, const QuantizeOptions& opt,
                               QuantizeReport& rep, const GradientStats* grads, const ProgressFn& progress,
                               FpStream* fps) {
    Model&      model = run.model();
    const auto& spec  = model.spec();
    const int   L     = spec.n_layer;
    const int   il    = run.current_layer();
    auto&       Ly    = model.layer(il);
    const bool  agq   = opt.method == "agq";
    auto prog = [&](double f, const std::string& what) {
        report_progress(progress, (il + f) / L, "layer " + std::to_string(il + 1) + "/" + std::to_string(L) + ": " + what);
    };
    auto sub = [&](double f0, double f1, const std::string& what) {
        return [&, f0, f1, what](const Progress& p) {
            prog(f0 + (f1 - f0) * p.fraction, what);
            return true;
        };
    };
    // The statistics passes (with the FP stream's cross moments when its hooks ride along).
    auto capture = [&](const CaptureOptions& co, const ProgressFn& pf, const Hooks* also = nullptr) {
        StageTimer timer(rep, "capture");
        return run.capture(co, pf, also);
    };
    lq.row_weights.clear();
    if (opt.method == "mobie" && opt.glas) // the routed experts (the other linears measured better without)
        Ly.for_each_linear([&](LinearKind k, int e, const std::unique_ptr<Linear>& slot) {
            if (is_expert_kind(k))
                lq.row_weights[spec.linear_name(il, k, e)] = glas_row_weight(grads, il, k, e, slot->out_features());
        });
    if (opt.quantize_attention) {
        CaptureOptions c;
        c.ffn = c.experts   = false;
        c.attention_output  = false; // o's input after q/k/v are quantized, below
        const bool fq = fps && opt.fp_target;
        Hooks      xh;
        if (fq) xh = fps->cross_hooks({LinearKind::Q, LinearKind::K, LinearKind::V});
        LayerStats st = capture(c, sub(0.0, 0.1, "attention inputs"), fq ? &xh : nullptr);
        if (fq) retarget(model, il, fps->take(), opt, [&](LinearKind, int) { return &st.attn_in.H; }, rep);
        for (LinearKind k : {LinearKind::Q, LinearKind::K, LinearKind::V})
            lq.quantize(Ly.slot(k), spec.linear_name(il, k), il, -1, st.attn_in.n_tokens, &st.attn_in.H);
        if (fq) xh = fps->cross_hooks({LinearKind::O});
        c.attention_inputs = false;
        c.attention_output = true;
        st = capture(c, sub(0.1, 0.2, "attention output"), fq ? &xh : nullptr);
        if (fq) retarget(model, il, fps->take(), opt, [&](LinearKind, int) { return &st.attn_out.H; }, rep);
        lq.quantize(Ly.o, spec.linear_name(il, LinearKind::O), il, -1, st.attn_out.n_tokens, &st.attn_out.H);
    }
    {
        // The attention is final from here on: the FFN passes and the propagation start from its output.
        StageTimer timer(rep, "capture");
        run.finish_attention();
    }
    if (opt.quantize_router) {
        // The router first, so the experts' affinities come from the quantized router (MoEQuant's order).
        CaptureOptions c;
        c.attention = c.experts = false;
        LayerStats st = capture(c, sub(0.2, 0.3, "router input"));
        for (LinearKind k : {LinearKind::Router, LinearKind::SharedExpertGate})
            if (Ly.slot(k)) lq.quantize(Ly.slot(k), spec.linear_name(il, k), il, -1, st.ffn_in.n_tokens, &st.ffn_in.H);
    }
    CaptureOptions c;
    c.attention        = false;
    c.affinity         = agq;
    c.ffn_intermediate = false;
    // FP-stream targets (mobie.h): the kinds whose cross moments this pass also collects.
    std::vector<LinearKind> xk;
    if (fps && Ly.is_moe) {
        if (opt.fp_target_experts) xk = {LinearKind::ExpertGate, LinearKind::ExpertUp};
        if (opt.fp_target && Ly.shared_gate) xk.insert(xk.end(), {LinearKind::SharedGate, LinearKind::SharedUp});
    } else if (fps && opt.fp_target) {
        xk = {LinearKind::DenseGate, LinearKind::DenseUp};
    }
    Hooks xh;
    if (!xk.empty()) xh = fps->cross_hooks(xk);
    LayerStats st = capture(c, sub(0.3, 0.6, "FFN inputs"), xk.empty() ? nullptr : &xh);
    auto hessian = [&](const InputStats& s) -> const std::vector<double>& { return agq && s.affinity ? s.H_aff : s.H; };
    // Experts with too few tokens for a cross moment keep their weights (their Hessian is regularised below).
    auto fp_H = [&](const std::vector<InputStats>& ex, const InputStats* shared) {
        return [&opt, ex = &ex, shared](LinearKind, int e) -> const std::vector<double>* {
            if (e < 0) return opt.fp_target && shared ? &shared->H : nullptr;
            const InputStats& s = (*ex)[e];
            return s.n_tokens >= std::max(opt.min_expert_tokens, s.dim) ? &s.H : nullptr;
        };
    };
    if (!xk.empty()) retarget(model, il, fps->take(), opt, fp_H(st.expert_in, &st.ffn_in), rep);
    // KBVQ quantizes a layer's routed experts of one kind jointly and keeps their FP weights for BCOS.
    std::unique_ptr<KbvqLayer> kbvq;
    if (opt.method == "kbvq" && Ly.is_moe) kbvq = std::make_unique<KbvqLayer>(model, il, opt);
    // MoBiE with CEJD quantizes a layer's routed experts of one kind jointly (shared basis).
    std::unique_ptr<MobieLayer> mobie;
    if (opt.method == "mobie" && opt.cejd && Ly.is_moe) mobie = std::make_unique<MobieLayer>(model, il, opt, grads);
    if (Ly.is_moe) {
        std::vector<std::vector<double>> Hreg(spec.n_expert);
        for (int e = 0; e < spec.n_expert; ++e) {
            const InputStats& s = st.expert_in[e];
            if (s.n_tokens < opt.min_expert_tokens) {
                rep.undercalibrated.push_back({il, e, s.n_tokens});
                // AGQ: the prior is the plain FFN input (weights unknown for tokens the expert never saw).
                Hreg[e] = regularised(hessian(s), s.dim, s.n_tokens, &st.ffn_in, opt.min_expert_tokens);
            }
        }
        std::vector<const std::vector<double>*> Hs(spec.n_expert);
        std::vector<int64_t>                    ntok(spec.n_expert);
        for (int e = 0; e < spec.n_expert; ++e) {
            prog(0.6, "experts gate/up");
            const InputStats& s = st.expert_in[e];
            Hs[e]               = Hreg[e].empty() ? &hessian(s) : &Hreg[e];
            ntok[e]             = s.n_tokens;
            if (!kbvq && !mobie)
                for (LinearKind k : {LinearKind::ExpertGate, LinearKind::ExpertUp})
                    lq.quantize(Ly.slot(k, e), spec.linear_name(il, k, e), il, e, s.n_tokens, Hs[e]);
        }
        if (kbvq || mobie) {
            StageTimer timer(rep, "quantize");
            if (kbvq)
                for (LinearKind k : {LinearKind::ExpertGate, LinearKind::ExpertUp}) kbvq->quantize(k, Hs, ntok, rep);
            if (mobie)
                for (LinearKind k : {LinearKind::ExpertGate, LinearKind::ExpertUp})
                    mobie->quantize(k, Hs, ntok, st.ffn_in.H, st.ffn_in.n_tokens, rep);
        }
        if (Ly.shared_gate)
            for (LinearKind k : {LinearKind::SharedGate, LinearKind::SharedUp}) {
                const InputStats* s = st.for_linear(k);
                lq.quantize(Ly.slot(k), spec.linear_name(il, k), il, -1, s->n_tokens, &hessian(*s));
            }
    } else {
        for (LinearKind k : {LinearKind::DenseGate, LinearKind::DenseUp})
            lq.quantize(Ly.slot(k), spec.linear_name(il, k), il, -1, st.ffn_in.n_tokens, &st.ffn_in.H);
    }
    // Down projections see the outputs of the quantized gate/up.
    c.ffn_inputs       = false;
    c.ffn_intermediate = true;
    xk.clear();
    if (fps && Ly.is_moe) {
        if (opt.fp_target_experts) xk = {LinearKind::ExpertDown};
        if (opt.fp_target && Ly.shared_down) xk.push_back(LinearKind::SharedDown);
    } else if (fps && opt.fp_target) {
        xk = {LinearKind::DenseDown};
    }
    if (!xk.empty()) xh = fps->cross_hooks(xk);
    st = capture(c, sub(0.7, 0.9, "FFN intermediate"), xk.empty() ? nullptr : &xh);
    if (!xk.empty()) retarget(model, il, fps->take(), opt, fp_H(st.expert_mid, Ly.is_moe ? &st.shared_mid : &st.dense_mid), rep);
    if (Ly.is_moe) {
        std::vector<std::vector<double>>        Hreg(spec.n_expert);
        std::vector<const std::vector<double>*> Hs(spec.n_expert);
        std::vector<int64_t>                    ntok(spec.n_expert);
        for (int e = 0; e < spec.n_expert; ++e) {
            const InputStats& s = st.expert_mid[e];
            if (s.n_tokens < opt.min_expert_tokens)
                Hreg[e] = regularised(hessian(s), s.dim, s.n_tokens, nullptr, opt.min_expert_tokens);
            Hs[e]   = Hreg[e].empty() ? &hessian(s) : &Hreg[e];
            ntok[e] = s.n_tokens;
            if (!kbvq && !mobie)
                lq.quantize(Ly.slot(LinearKind::ExpertDown, e), spec.linear_name(il, LinearKind::ExpertDown, e), il, e,
                            s.n_tokens, Hs[e]);
        }
        if (kbvq || mobie) {
            StageTimer timer(rep, "quantize");
            if (kbvq) kbvq->quantize(LinearKind::ExpertDown, Hs, ntok, rep);
            if (mobie) mobie->quantize(LinearKind::ExpertDown, Hs, ntok, {}, 0, rep);
        }
        if (Ly.shared_down)
            lq.quantize(Ly.shared_down, spec.linear_name(il, LinearKind::SharedDown), il, -1, st.shared_mid.n_tokens,
                        &st.shared_mid.H);
        if (kbvq && opt.bcos) {
            prog(0.9, "BCOS");
            StageTimer            timer(rep, "quantize");
            const BcosFit::Result b = kbvq->fit_bcos(run, rep);
            rep.moe_output_bias.push_back({il, b.tokens, b.bias_before, b.bias_after, b.rms_output});
        }
    } else {
        lq.quantize(Ly.dense_down, spec.linear_name(il, LinearKind::DenseDown), il, -1, st.dense_mid.n_tokens,
                    &st.dense_mid.H);
    }
}

} // namespace

CalibrationSet glas_subset(const CalibrationSet& calib, int n) {
    const int N = (int)calib.samples.size();
    if (n <= 0 || n >= N) return calib;
    CalibrationSet s;
    s.seqlen = calib.seqlen;
    s.seed   = calib.seed;
    s.source = calib.source;
    for (int i = 0; i < n; ++i) s.samples.push_back(calib.samples[(int64_t)i * N / n]);
    return s;
}

QuantizeReport quantize_model(Model& model, const CalibrationSet& calib, const QuantizeOptions& opt,
                              const ProgressFn& progress) {
    const auto  t0   = std::chrono::steady_clock::now();
    const auto& spec = model.spec();
    validate_options(opt, spec);
    QuantizeReport rep;
    LayerQuantizer lq{model, opt, rep, {}};
    const int      L     = spec.n_layer;
    const bool     rtn   = opt.method == "rtn";
    std::unique_ptr<LayerCheckpoints> saved;
    if (!opt.work_dir.empty()) saved = std::make_unique<LayerCheckpoints>(opt.work_dir, fingerprint(model, calib, opt), opt.resume);
    const int resumed = saved ? saved->saved_layers() : 0;

    // MoBiE's GLAS: loss gradients of the FP model on the calibration set, before any layer is replaced (every layer
    // resident in f32 when they fit in k_gradient_resident_bytes, else one at a time: collect_gradient_stats).
    const bool want_fps = (opt.method == "mobie" || opt.fp_target_any) && (opt.fp_target || opt.fp_target_experts) && resumed < L;
    std::unique_ptr<GradientStats> grads;
    std::unique_ptr<FpStream>      fps;
    if (opt.method == "mobie" && opt.glas && resumed < L) {
        StageTimer timer(rep, "glas");
        const CalibrationSet gcal = glas_subset(calib, opt.glas_samples);
        // GLAS's forward is the FP model on the calibration set, i.e. the FP stream: it records the stream's inputs
        // when it covers every sequence and they fit in k_fp_stream_bytes (else the stream runs its own forward).
        constexpr size_t   k_fp_stream_bytes = size_t(1) << 30;
        const bool         share = want_fps && gcal.samples.size() == calib.samples.size() &&
                                   FpStream::recorded_bytes(spec, calib) <= k_fp_stream_bytes;
        FpStream::Recorded rec(share ? calib.samples.size() : 0);
        std::function<Hooks(int)> record;
        if (share) record = [&rec](int s) { return FpStream::recorder(rec, s); };
        grads = std::make_unique<GradientStats>(collect_gradient_stats(model, gcal, [&](const Progress& p) {
            report_progress(progress, 0.0, "GLAS: " + p.stage);
            return true;
        }, /*routed_experts_only=*/true, record));
        if (share) fps = std::make_unique<FpStream>(spec, std::move(rec));
    }
    std::unique_ptr<LayerwiseRunner> run;
    if (!rtn) {
        StageTimer timer(rep, "capture"); // embedding the calibration set
        run = std::make_unique<LayerwiseRunner>(model, calib);
    }
    if (want_fps && !fps) {
        StageTimer timer(rep, "fp_stream");
        fps = std::make_unique<FpStream>(spec, calib);
    }
    for (int il = 0; il < L; ++il) {
        model.load_layer(il);
        if (il < resumed) {
            // Saved by an interrupted run: restore the packed linears; the calibration states still pass through.
            report_progress(progress, (double)il / L, "layer " + std::to_string(il + 1) + "/" + std::to_string(L) + ": restored");
            saved->restore(model, il, rep);
            if (run) run->advance();
            if (fps) fps->skip();
            continue;
        }
        if (rtn) {
            report_progress(progress, (double)il / L, "layer " + std::to_string(il + 1) + "/" + std::to_string(L));
            model.layer(il).for_each_linear([&](LinearKind kind, int e, std::unique_ptr<Linear>& slot) {
                if (selected(kind, opt)) lq.quantize(slot, spec.linear_name(il, kind, e), il, e, 0, nullptr);
            });
        } else {
            if (fps) {
                StageTimer timer(rep, "fp_stream");
                fps->capture();
            }
            quantize_layer_calibrated(*run, lq, opt, rep, grads.get(), progress, fps.get());
            StageTimer timer(rep, "propagate");
            run->advance(nullptr, [&](const Progress& p) {
                report_progress(progress, (il + 0.9 + 0.1 * p.fraction) / L,
                                "layer " + std::to_string(il + 1) + "/" + std::to_string(L) + ": propagating");
                return true;
            });
        }
        if (saved) {
            StageTimer timer(rep, "checkpoint");
            saved->save(model, il, rep);
        }
    }
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    report_progress(progress, 1.0, "done");
    return rep;
}

} // namespace moebius::quant
