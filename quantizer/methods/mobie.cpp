#include "quantizer/methods/mobie.h"

#include "engine/core/error.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/cejd_linear.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/ops.h"
#include "quantizer/linalg.h"
#include "quantizer/methods/binarize.h"
#include "quantizer/methods/cejd.h"
#include "quantizer/methods/uniform_quant.h"

#include <Eigen/Core>
#include <algorithm>
#include <exception>
#include <numeric>
#include <omp.h>

namespace moebius::quant {

std::vector<float> glas_row_weight(const GradientStats* grads, int layer, LinearKind kind, int expert, int out) {
    if (!grads) return {};
    const auto* e = grads->find(layer, kind, expert);
    if (!e || e->tokens == 0 || (int)e->sum_sq.size() != out) return {};
    const std::vector<double> g    = e->mean_sq();
    const double              mean = std::accumulate(g.begin(), g.end(), 0.0) / out;
    if (!(mean > 0)) return {};
    std::vector<float> w(out);
    // A floor keeps every row in play: a channel the loss ignores on the calibration set still carries error elsewhere.
    for (int i = 0; i < out; ++i) w[i] = (float)std::max(g[i] / mean, 1e-3);
    return w;
}

std::vector<double> nges_metric(const LayerWeights& next, const std::vector<float>& D, double weight) {
    if (!next.is_moe || !next.router) return {};
    const int          H = next.router->in_features(), E = next.router->out_features();
    std::vector<float> R = next.router->dequantize(); // (E, H)
    for (int e = 0; e < E; ++e)
        for (int j = 0; j < H; ++j) R[(size_t)e * H + j] *= next.ffn_norm[j]; // the router reads norm(x) ⊙ γ
    double fro = 0;
    for (float v : R) fro += (double)v * v;
    std::vector<double> M((size_t)H * H, 0.0);
    for (int i = 0; i < H; ++i) M[(size_t)i * H + i] = D.empty() ? 1.0 : D[i];
    if (!(fro > 0) || weight <= 0) return M;
    const double s = weight * H / fro; // the router's directions get weight ~ H / rank(R) relative to the rest
    for (int e = 0; e < E; ++e) {
        const float* r = R.data() + (size_t)e * H;
        for (int i = 0; i < H; ++i)
            for (int j = 0; j < H; ++j) M[(size_t)i * H + j] += s * r[i] * r[j];
    }
    return M;
}

namespace {

// 8-bit asymmetric grid (a row's values in groups of 128 where the width allows, else the whole row).
std::unique_ptr<Linear> int8_linear(const std::vector<float>& W, int out, int in) {
    UniformConfig c;
    c.bits  = 8;
    c.group = in % 128 == 0 ? 128 : -1;
    return make_nbit_linear(rtn_quantize(W.data(), out, in, c));
}

// tr((W − Ŵ) H (W − Ŵ)ᵀ) and tr(W H Wᵀ): the layer objective, H (in, in) Σ x xᵀ, for the report. One GEMM of
// [W − Ŵ; W] with H (a scalar triple loop here took ~2 s of a 4-layer MoBiE run at one thread), in f32 with the
// final sums in f64: at Qwen1.5-MoE's expert shapes the f64 GEMM was a fifth of MoBiE's time (2·out·in² per expert).
std::pair<double, double> objective(const std::vector<float>& W, const std::vector<float>& Q, int out, int in,
                                    const std::vector<double>& H) {
    using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    RM A(2 * out, in); // rows 0..out: W − Ŵ; out..2·out: W
    for (int o = 0; o < out; ++o)
        for (int j = 0; j < in; ++j) {
            const float w = W[(size_t)o * in + j];
            A(o, j)       = w - Q[(size_t)o * in + j];
            A(out + o, j) = w;
        }
    const RM     AH  = A * Eigen::Map<const Eigen::MatrixXd>(H.data(), in, in).cast<float>(); // H symmetric
    const double err = AH.topRows(out).cwiseProduct(A.topRows(out)).cast<double>().sum();
    const double ref = AH.bottomRows(out).cwiseProduct(A.bottomRows(out)).cast<double>().sum();
    return {std::max(0.0, err), std::max(0.0, ref)};
}

// The low-rank part (out, in): C (out, r) · B (r, in) on the input side, B (out, r) · C (r, in) on the output side.
std::vector<float> low_rank(const std::vector<float>& C, const std::vector<float>& B, bool input, int out, int in,
                            int rank) {
    using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const float* l = input ? C.data() : B.data();
    const float* r = input ? B.data() : C.data();
    std::vector<float> w((size_t)out * in);
    Eigen::Map<RM>(w.data(), out, in) = (Eigen::Map<const RM>(l, out, rank).cast<double>() *
                                         Eigen::Map<const RM>(r, rank, in).cast<double>()).cast<float>();
    return w;
}

} // namespace

std::unique_ptr<Linear> decompose(const std::vector<float>& W, int out, int in, const std::vector<double>& H,
                                  const std::shared_ptr<const Linear>& basis, bool input, const std::vector<double>& M,
                                  const QuantizeOptions& opt, const std::vector<float>* row_weight,
                                  const std::string& owner, bool is_owner, ModuleReport& mr) {
    const int                rank = input ? basis->out_features() : basis->in_features();
    const std::vector<float> Bq   = basis->dequantize();
    auto fit = [&](const std::vector<float>& A) {
        return input ? cejd_input_coef(A.data(), out, in, Bq, rank, H) : cejd_output_coef(A.data(), out, in, Bq, rank, M);
    };
    auto quant_coef = [&](const std::vector<float>& C) { return input ? int8_linear(C, out, rank) : int8_linear(C, rank, in); };
    // The residual of the low-rank part as it will be stored (8-bit coefficients and basis).
    std::unique_ptr<Linear>  coef = quant_coef(fit(W));
    const std::vector<float> low  = low_rank(coef->dequantize(), Bq, input, out, in, rank);
    std::vector<float>       R(W.size());
    for (size_t i = 0; i < R.size(); ++i) R[i] = W[i] - low[i];
    BinarizeOptions bo;
    bo.method = opt.mobie_core;
    bo.block  = std::min(128, in);
    bo.damp   = opt.damp;
    // The 8-bit low-rank part carries the high-energy directions that salient columns (a second sign plane and their
    // own scales) would: the residual goes without them, and the format then drops their slots.
    bo.max_salient = 0;
    bo.row_weight  = row_weight;
    // No BinarizeReport: its two extra (out, in)·(in, in) passes would only repeat what objective() measures below.
    const BinaryWeights bw       = binarize(R.data(), out, in, H, bo);
    const double        salient  = (double)std::count(bw.salient.begin(), bw.salient.end(), 1) / in;
    auto                residual = std::make_unique<BinaryLinear>(bw);
    if (opt.cejd_refit) {
        std::vector<float> A = residual->dequantize();
        for (size_t i = 0; i < A.size(); ++i) A[i] = W[i] - A[i];
        coef = quant_coef(fit(A));
    }
    auto lin              = std::make_unique<CejdLinear>(std::move(residual), std::move(coef), basis, input, owner, is_owner);
    const auto [err, ref] = objective(W, lin->dequantize(), out, in, H);
    mr.rel_error          = ref > 0 ? err / ref : 0;
    mr.weights            = (int64_t)out * in;
    mr.bytes              = (int64_t)lin->storage_bytes();
    // Code bits without side data: the signs and the 8-bit coefficient codes.
    mr.nominal_bits = 1 + salient + 8.0 * rank / (input ? in : out);
    return lin;
}

std::unique_ptr<Linear> mobie_single(const std::vector<float>& W, int out, int in, const std::vector<double>& H,
                                     int64_t tokens, bool input, const std::vector<double>& M,
                                     const QuantizeOptions& opt, const std::string& name, ModuleReport& mr) {
    const int                 rank = std::min({opt.mobie_rank, out, in});
    std::vector<const float*> Wp{W.data()};
    std::vector<float>        B;
    if (input) {
        std::vector<double> Hn(H);
        for (double& v : Hn) v /= (double)std::max<int64_t>(1, tokens);
        B = cejd_input_basis(Wp, out, in, Hn, {}, rank);
    } else {
        B = cejd_output_basis(Wp, out, in, {&H}, M, rank);
    }
    std::shared_ptr<const Linear> basis = input ? int8_linear(B, rank, in) : int8_linear(B, out, rank);
    return decompose(W, out, in, H, basis, input, M, opt, nullptr, name, true, mr);
}

std::vector<float> fp_target_weight(const std::vector<float>& W, int out, int in, const std::vector<double>& H,
                                    const std::vector<double>& C, double ridge) {
    using Mat  = Eigen::MatrixXd;
    using RMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Mat Hm = Eigen::Map<const Mat>(H.data(), in, in); // symmetric: the layout does not matter
    const RMat Cm = Eigen::Map<const RMat>(C.data(), in, in);
    using RMatF   = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const RMat Wm = Eigen::Map<const RMatF>(W.data(), out, in).cast<double>();
    const RMat D    = Cm - RMat(Hm);
    const double mean = Hm.diagonal().mean();
    if (!(mean > 0)) return W;
    Hm.diagonal().array() += ridge * mean;
    // W̃ − W = W D (H + λI)⁻¹ = ((H + λI)⁻¹ Dᵀ Wᵀ)ᵀ
    const RMat corr = spd_solve(Hm, D.transpose() * Wm.transpose()).transpose();
    std::vector<float> r(W.size());
    for (size_t i = 0; i < r.size(); ++i) r[i] = (float)(Wm.data()[i] + corr.data()[i]);
    return r;
}

namespace {
// The linears whose FP inputs the stream keeps: one per distinct input (k/v read q's, the experts and the shared
// gate/up the router's).
bool recorded_kind(LinearKind k) {
    switch (k) {
    case LinearKind::Q: case LinearKind::O: case LinearKind::Router: case LinearKind::SharedDown:
    case LinearKind::DenseGate: case LinearKind::DenseDown: return true;
    default: return false;
    }
}
} // namespace

size_t FpStream::recorded_bytes(const ModelSpec& s, const CalibrationSet& calib) {
    const int64_t per_token = 2 * (int64_t)s.n_embd + (int64_t)s.n_head * s.head_dim + std::max(s.n_ff_shared, s.n_ff_dense);
    return (size_t)per_token * sizeof(float) * s.n_layer * calib.seqlen * calib.samples.size();
}

Hooks FpStream::recorder(Recorded& rec, int sample) {
    Hooks h;
    h.on_linear = [&layers = rec.at(sample)](const LinearEvent& e) {
        if (!recorded_kind(e.kind)) return;
        if ((int)layers.size() <= e.layer) layers.resize(e.layer + 1);
        layers[e.layer][e.kind].assign(e.x, e.x + (size_t)e.n * e.in);
    };
    return h;
}

namespace {
std::unique_ptr<Model> lazy_fp_copy(const ModelSpec& spec) {
    LoadOptions lo;
    lo.lazy_layers = true;
    return Model::load(spec.dir, {}, lo);
}
} // namespace

FpStream::FpStream(const ModelSpec& spec, const CalibrationSet& calib) : model_(lazy_fp_copy(spec)) {
    run_ = std::make_unique<LayerwiseRunner>(*model_, calib);
}

FpStream::FpStream(const ModelSpec& spec, Recorded recorded) : model_(lazy_fp_copy(spec)), recorded_(std::move(recorded)) {}

void FpStream::capture() {
    const int l = next_++;
    if (l > 0) model_->release_layer(l - 1);
    in_.clear();
    if (!run_) {
        for (size_t s = 0; s < recorded_.size(); ++s) {
            MOEBIUS_ASSERT((int)recorded_[s].size() > l);
            for (auto& [kind, x] : recorded_[s][l]) {
                auto& v = in_[kind];
                if (v.size() <= s) v.resize(s + 1);
                v[s] = std::move(x);
            }
            recorded_[s][l].clear();
        }
        layer_ = l;
        return;
    }
    int   sample = 0;
    Hooks h;
    h.on_linear = [&](const LinearEvent& e) {
        if (!recorded_kind(e.kind)) return;
        auto& v = in_[e.kind];
        if ((int)v.size() <= sample) v.resize(sample + 1);
        v[sample].assign(e.x, e.x + (size_t)e.n * e.in);
    };
    h.on_layer = [&](const LayerEvent&) { ++sample; };
    run_->advance(&h); // the recording pass is also the one that moves the FP stream on
    layer_ = l;
}

void FpStream::skip() {
    const int l = next_++;
    if (l > 0) model_->release_layer(l - 1);
    if (!run_) {
        for (auto& layers : recorded_)
            if ((int)layers.size() > l) layers[l].clear();
        return;
    }
    run_->advance();
}

namespace {
// The kind whose input (on either stream) a linear of kind k shares: k/v read q's, up reads gate's.
LinearKind same_input_as(LinearKind k) {
    switch (k) {
    case LinearKind::K: case LinearKind::V: return LinearKind::Q;
    case LinearKind::ExpertUp: return LinearKind::ExpertGate;
    case LinearKind::SharedUp: return LinearKind::SharedGate;
    case LinearKind::DenseUp: return LinearKind::DenseGate;
    default: return k;
    }
}
} // namespace

Hooks FpStream::cross_hooks(const std::vector<LinearKind>& kinds) {
    using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    MOEBIUS_ASSERT(layer_ >= 0);
    // The FP experts' down inputs are recomputed from the FP layer (recorded streams load it only for them).
    if (std::find(kinds.begin(), kinds.end(), LinearKind::ExpertDown) != kinds.end() && !model_->layer_loaded(layer_))
        model_->load_layer(layer_);
    kinds_  = kinds;
    sample_ = 0;
    C_.clear();
    auto add = [this](LinearKind k, int e, const float* xf, const float* xq, int m, int in) {
        auto& c = C_[{k, e}];
        if (c.empty()) c.assign((size_t)in * in, 0.0);
        RowMatF G = Eigen::Map<const RowMatF>(xf, m, in).transpose() * Eigen::Map<const RowMatF>(xq, m, in);
        for (size_t i = 0; i < c.size(); ++i) c[i] += G.data()[i];
    };
    // The FP input of a non-expert kind (the experts' gate/up read the router's input).
    auto fp_of = [this](LinearKind k) -> const std::vector<std::vector<float>>* {
        switch (k) {
        case LinearKind::K: case LinearKind::V: k = LinearKind::Q; break;
        case LinearKind::ExpertGate: case LinearKind::ExpertUp: case LinearKind::ExpertDown:
        case LinearKind::SharedGate: case LinearKind::SharedUp: case LinearKind::SharedExpertGate:
            k = LinearKind::Router;
            break;
        case LinearKind::DenseUp: k = LinearKind::DenseGate; break;
        default: break;
        }
        auto it = in_.find(k);
        return it == in_.end() ? nullptr : &it->second;
    };
    Hooks h;
    h.on_linear = [this, add, fp_of](const LinearEvent& e) {
        if (std::find(kinds_.begin(), kinds_.end(), e.kind) == kinds_.end()) return;
        // A kind that reads the same inputs (FP and quantized) as another requested one gets its sums in take().
        const LinearKind s = same_input_as(e.kind);
        if (s != e.kind && std::find(kinds_.begin(), kinds_.end(), s) != kinds_.end()) return;
        const auto* f = fp_of(e.kind);
        if (!f || (int)f->size() <= sample_) return;
        const std::vector<float>& xs = (*f)[sample_];
        if (e.expert < 0) {
            add(e.kind, -1, xs.data(), e.x, e.n, e.in);
            return;
        }
        const int          D = model_->spec().n_embd;
        std::vector<float> xf((size_t)e.n * D);
        for (int r = 0; r < e.n; ++r)
            std::copy_n(xs.data() + (size_t)e.token_index[r] * D, D, xf.data() + (size_t)r * D);
        if (e.kind != LinearKind::ExpertDown) {
            add(e.kind, e.expert, xf.data(), e.x, e.n, e.in);
            return;
        }
        // Down: the FP expert's intermediate on the FP FFN input of the same tokens.
        const auto&        ex = model_->layer(layer_).experts[e.expert];
        std::vector<float> g((size_t)e.n * e.in), u((size_t)e.n * e.in), hf((size_t)e.n * e.in);
        ex[0]->forward(xf.data(), e.n, g.data());
        ex[1]->forward(xf.data(), e.n, u.data());
        cpu::silu_mul(g.data(), u.data(), e.n, e.in, hf.data());
        add(e.kind, e.expert, hf.data(), e.x, e.n, e.in);
    };
    h.on_layer = [this](const LayerEvent&) { ++sample_; };
    return h;
}

FpStream::Moments FpStream::take() {
    Moments c = std::move(C_);
    C_.clear();
    for (LinearKind k : kinds_) {
        const LinearKind s = same_input_as(k);
        if (s == k || std::find(kinds_.begin(), kinds_.end(), s) == kinds_.end()) continue;
        std::vector<std::pair<std::pair<LinearKind, int>, std::vector<double>>> copies;
        for (const auto& [key, m] : c)
            if (key.first == s) copies.push_back({{k, key.second}, m});
        for (auto& [key, m] : copies) c[key] = std::move(m);
    }
    return c;
}

MobieLayer::MobieLayer(Model& model, int layer, const QuantizeOptions& opt, const GradientStats* grads)
    : model_(model), layer_(layer), opt_(opt), grads_(grads) {}

void MobieLayer::quantize(LinearKind kind, const std::vector<const std::vector<double>*>& H,
                          const std::vector<int64_t>& tokens, const std::vector<double>& pooled_H, int64_t pooled_tokens,
                          QuantizeReport& rep) {
    const ModelSpec& spec  = model_.spec();
    LayerWeights&    Ly    = model_.layer(layer_);
    const int        E     = spec.n_expert;
    const bool       input = kind != LinearKind::ExpertDown;
    const int        out   = Ly.slot(kind, 0)->out_features(), in = Ly.slot(kind, 0)->in_features();
    const int        rank  = std::min({opt_.mobie_rank, out, in});

    std::vector<std::vector<float>> W(E), rw(E);
    std::vector<const float*>       Wp(E);
    for (int e = 0; e < E; ++e) {
        W[e]  = Ly.slot(kind, e)->dequantize();
        Wp[e] = W[e].data();
        if (opt_.glas) rw[e] = glas_row_weight(grads_, layer_, kind, e, out);
    }

    // ---- the shared basis, 8-bit
    std::vector<float>  B;
    std::vector<double> M; // output side: the metric of the basis and the coefficient fit
    if (input) {
        // Experts weigh by their share of the routed tokens (the objective sums over each expert's tokens).
        const double mean_tok = std::max(1.0, (double)std::accumulate(tokens.begin(), tokens.end(), int64_t(0)) / E);
        std::vector<std::vector<float>> bw(E);
        for (int e = 0; e < E; ++e) {
            bw[e] = rw[e].empty() ? std::vector<float>(out, 1.f) : rw[e];
            for (float& v : bw[e]) v *= (float)(tokens[e] / mean_tok);
        }
        std::vector<double> Hp(pooled_H);
        for (double& v : Hp) v /= (double)std::max<int64_t>(1, pooled_tokens);
        B = cejd_input_basis(Wp, out, in, Hp, bw, rank);
    } else {
        // GLAS's diagonal: the experts' down-output gradients pooled by token count (they all write the same stream).
        std::vector<float> D;
        if (opt_.glas) {
            std::vector<double> acc(out, 0.0);
            double              n = 0;
            for (int e = 0; e < E; ++e)
                if (!rw[e].empty()) {
                    for (int i = 0; i < out; ++i) acc[i] += tokens[e] * (double)rw[e][i];
                    n += tokens[e];
                }
            if (n > 0) {
                D.resize(out);
                for (int i = 0; i < out; ++i) D[i] = (float)(acc[i] / n);
            }
        }
        if (opt_.nges && layer_ + 1 < spec.n_layer) {
            if (!model_.layer_loaded(layer_ + 1)) model_.load_layer(layer_ + 1);
            M = nges_metric(model_.layer(layer_ + 1), D, opt_.nges_weight);
        }
        if (M.empty() && !D.empty()) {
            M.assign((size_t)out * out, 0.0);
            for (int i = 0; i < out; ++i) M[(size_t)i * out + i] = D[i];
        }
        B = cejd_output_basis(Wp, out, in, H, M, rank);
    }
    std::shared_ptr<const Linear> basis = input ? int8_linear(B, rank, in) : int8_linear(B, out, rank);

    // ---- per expert: coefficients, binarized residual, refit coefficients
    // The experts are independent given the basis: one per thread (each binarize then runs single-threaded, with the
    // same result as with any thread count), instead of many short parallel loops inside each binarize.
    const std::string                    owner = spec.linear_name(layer_, kind, 0);
    std::vector<ModuleReport>            mrs(E);
    std::vector<std::unique_ptr<Linear>> lins(E);
    std::exception_ptr                   failure;
#pragma omp parallel for schedule(dynamic, 1) if (E > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
    for (int e = 0; e < E; ++e) {
        try {
            ModuleReport& mr = mrs[e];
            mr.name          = spec.linear_name(layer_, kind, e);
            mr.layer         = layer_;
            mr.expert        = e;
            mr.tokens        = tokens[e];
            lins[e] = decompose(W[e], out, in, *H[e], basis, input, M, opt_, rw[e].empty() ? nullptr : &rw[e], owner,
                                e == 0, mr);
        } catch (...) {
#pragma omp critical(moebius_mobie_failure)
            if (!failure) failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
    for (int e = 0; e < E; ++e) {
        Ly.slot(kind, e) = std::move(lins[e]);
        rep.modules.push_back(mrs[e]);
    }
}

} // namespace moebius::quant
