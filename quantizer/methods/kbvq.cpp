#include "quantizer/methods/kbvq.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/linear.h"
#include "engine/cpu/ops.h"
#include "quantizer/linalg.h"
#include "quantizer/methods/hessian.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <omp.h>

namespace moebius::quant {

namespace {

using Mat    = Eigen::MatrixXd;
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

float f16r(double v) { return f16_to_f32(f32_to_f16((float)v)); }

// GPTVQ zeroes dead columns' weights (weight 0 there anyway): the same value here.
double dead_or(float w, double weight) { return weight > 0 ? (double)w : 0.0; }


} // namespace

int kbvq_expert_dim(const QuantizeOptions& opt, int experts, int out, int in) {
    if (!opt.kbvq_shared_codebooks) return opt.vq_dim;
    if (opt.kbvq_dim > 0) return opt.kbvq_dim;
    // The widest D whose codebook (K = 2^(bits·D) ≤ 256 centroids, f16) costs at most 1/16 bit per weight of the
    // group: at 2 bits on the bundled model's 16 experts D = 4 (0.031 bit); at 3 bits K = 4096 would cost 0.5 bit.
    const double weights = (double)experts * out * in;
    for (int D : {4, 2, 1})
        if (in % D == 0 && opt.bits * D <= 8 && (double)(1 << (opt.bits * D)) * D * 16 / weights <= 1.0 / 16) return D;
    return 1;
}

std::vector<float> shared_codebooks(const std::vector<std::vector<float>>& R, int out, int in,
                                    const std::vector<const std::vector<double>*>& H, const GptvqOptions& vo,
                                    double damp) {
    const int E = (int)R.size(), D = vo.dim, K = 1 << (vo.bits * D);
    // Each coordinate weighted as GPTVQ does within one matrix, 1/U_jj² (U: upper Cholesky factor of the expert's
    // (H + λI)⁻¹): H is a sum over the expert's tokens, so experts also weigh by how many tokens they serve — the
    // layer output's error counts every token once.
    std::vector<std::vector<double>> hw(E);
    for (int e = 0; e < E; ++e) {
        const std::vector<char> dead = dead_columns(*H[e], in);
        const PreparedHessian   ph   = prepare_hessian(*H[e], in, dead, damp, nullptr, 1, "kbvq");
        hw[e].resize(in);
        for (int j = 0; j < in; ++j) hw[e][j] = dead[j] ? 0.0 : 1.0 / (ph.U(j, j) * ph.U(j, j));
    }
    // Fitted on the residuals before any error feedback (every expert's sweep then uses it); at most 512 points per
    // centroid, evenly strided, so real experts (60 × 1408 × 2048) stay affordable.
    const int64_t per_row = in / D, total = (int64_t)E * out * per_row, cap = (int64_t)512 * K;
    const int64_t n       = std::min(total, cap);
    std::vector<double> pts((size_t)n * D), pw((size_t)n * D);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t p = n == total ? i : i * total / n;
        const int     e = (int)(p / ((int64_t)out * per_row)), o = (int)(p / per_row % out);
        const int     j = (int)(p % per_row) * D;
        for (int d = 0; d < D; ++d) {
            pts[(size_t)i * D + d] = dead_or(R[e][(size_t)o * in + j + d], hw[e][j + d]);
            pw[(size_t)i * D + d]  = hw[e][j + d];
        }
    }
    const KmeansResult km = weighted_kmeans(pts.data(), pw.data(), (int)n, D, K, vo.kmeans);
    std::vector<float> cb((size_t)K * D);
    for (size_t t = 0; t < cb.size(); ++t) cb[t] = f16r(km.centroids[t]);
    return cb;
}

IdreResult idre_decompose(const std::vector<std::vector<float>>& W, int out, int in,
                          const std::vector<const std::vector<double>*>& H, int rank, bool activation_weighted,
                          double clamp) {
    const int E = (int)W.size();
    if (E == 0 || out <= 0 || in <= 0 || (int)H.size() != E) throw InputError("idre: need experts with Hessians");
    if (rank < 0) throw InputError("idre: rank must not be negative");
    IdreResult r;
    r.rank = std::min(rank, out);
    r.coef.assign(E, std::vector<double>((size_t)r.rank * in, 0.0));
    if (r.rank == 0) return r;
    // Gram matrix of the KLT-weighted concatenation: Σ_e W̃_e W̃_eᵀ = Σ_e W_e U_e (Λ_e + δ_e) U_eᵀ W_eᵀ
    // = Σ_e W_e (H_e + δ_e I) W_eᵀ; no eigendecomposition of H_e is needed for the basis itself.
    Mat G = Mat::Zero(out, out);
    for (int e = 0; e < E; ++e) {
        Mat w(out, in);
        for (int o = 0; o < out; ++o)
            for (int j = 0; j < in; ++j) w(o, j) = W[e][(size_t)o * in + j];
        if (activation_weighted && H[e]) {
            Eigen::Map<const RowMat> h(H[e]->data(), in, in);
            const double             delta = clamp * std::max(0.0, h.trace()) / in;
            Mat                      hw    = h * w.transpose();
            hw += delta * w.transpose();
            G.noalias() += w * hw;
        } else {
            G.noalias() += w * w.transpose();
        }
    }
    const SymmetricEigen es = symmetric_eigen(G);
    if (!es.ok) throw Error("idre: eigendecomposition failed");
    // Eigen sorts ascending: the top-r eigenvectors are the last columns. Sign fixed (largest |entry| positive) so
    // the result does not depend on the solver's sign choice.
    Mat B(out, r.rank);
    for (int k = 0; k < r.rank; ++k) {
        Eigen::VectorXd v = es.vectors.col(out - 1 - k);
        Eigen::Index    im;
        v.cwiseAbs().maxCoeff(&im);
        if (v(im) < 0) v = -v;
        for (int o = 0; o < out; ++o) B(o, k) = f16r(v(o));
    }
    r.basis.resize((size_t)out * r.rank);
    for (int o = 0; o < out; ++o)
        for (int k = 0; k < r.rank; ++k) r.basis[(size_t)o * r.rank + k] = (float)B(o, k);
    // Least squares for the f16 basis (nearly orthonormal): C_e = (BᵀB)⁻¹ Bᵀ W_e; for a fixed left basis this is
    // optimal under any input covariance.
    const Mat P = inverse(B.transpose() * B) * B.transpose(); // (r, out)
    for (int e = 0; e < E; ++e) {
        Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> w(W[e].data(), out, in);
        RowMat c = P * w.cast<double>();
        std::copy(c.data(), c.data() + c.size(), r.coef[e].begin());
    }
    return r;
}

// ---- BCOS -------------------------------------------------------------------------------------------------------------

BcosFit::BcosFit(int channels) : c_(channels) {
    for (auto& f : f_)
        for (auto* v : {&f.q, &f.y, &f.qq, &f.qs, &f.qy, &f.sy, &f.yy}) v->assign(channels, 0.0);
}

void BcosFit::add(int fold, const float* yq, const float* yfp, double s) {
    Stats& f = f_[fold & 1];
    ++f.n;
    f.s += s;
    f.ss += s * s;
    for (int c = 0; c < c_; ++c) {
        const double q = yq[c], y = yfp[c];
        f.q[c] += q, f.y[c] += y, f.qq[c] += q * q, f.qs[c] += q * s, f.qy[c] += q * y, f.sy[c] += s * y,
            f.yy[c] += y * y;
    }
}

void BcosFit::fit(const Stats& a, bool bias, bool gamma, std::vector<double>& g, std::vector<double>& b) const {
    g.assign(c_, 1.0);
    b.assign(c_, 0.0);
    if (a.n == 0) return;
    for (int c = 0; c < c_; ++c) {
        // Normal equations of min Σ_t (y − γ ŷ − β s)², with a tiny ridge toward (1, 0) for channels that are
        // (nearly) constant on the calibration tokens.
        const double lq = 1e-6 * a.qq[c] + 1e-30, ls = 1e-6 * a.ss + 1e-30;
        if (!gamma) {
            if (bias) b[c] = (a.sy[c] - a.qs[c]) / (a.ss + ls); // min Σ (y − ŷ − β s)²
            continue;
        }
        if (!bias) {
            g[c] = (a.qy[c] + lq) / (a.qq[c] + lq);
            continue;
        }
        const double A = a.qq[c] + lq, Bm = a.qs[c], C = a.ss + ls, r0 = a.qy[c] + lq, r1 = a.sy[c];
        const double det = A * C - Bm * Bm;
        if (!(det > 0)) {
            g[c] = r0 / A;
            continue;
        }
        g[c] = (C * r0 - Bm * r1) / det;
        b[c] = (A * r1 - Bm * r0) / det;
    }
}

BcosFit::Result BcosFit::solve(bool bias, bool gamma) const {
    Stats all = f_[0];
    all.n += f_[1].n, all.s += f_[1].s, all.ss += f_[1].ss;
    for (int c = 0; c < c_; ++c) {
        all.q[c] += f_[1].q[c], all.y[c] += f_[1].y[c], all.qq[c] += f_[1].qq[c], all.qs[c] += f_[1].qs[c];
        all.qy[c] += f_[1].qy[c], all.sy[c] += f_[1].sy[c], all.yy[c] += f_[1].yy[c];
    }
    Result r;
    fit(all, bias, gamma, r.gamma, r.beta);
    r.tokens = all.n;
    if (all.n == 0) return r;
    double before = 0, after = 0, yy = 0;
    for (int c = 0; c < c_; ++c) {
        before += std::abs(all.y[c] - all.q[c]) / all.n;
        yy += all.yy[c];
    }
    // Held-out: parameters fitted on one fold, bias measured on the other; both directions, token-weighted.
    int64_t held = 0;
    for (int k = 0; k < 2; ++k) {
        const Stats& tr = f_[k];
        const Stats& te = f_[1 - k];
        if (te.n == 0) continue;
        std::vector<double> g, b;
        fit(tr, bias, gamma, g, b);
        double a = 0;
        for (int c = 0; c < c_; ++c) a += std::abs(te.y[c] - g[c] * te.q[c] - b[c] * te.s) / te.n;
        after += a * te.n;
        held += te.n;
    }
    r.bias_before = before / c_;
    r.bias_after  = held ? after / held / c_ : 0;
    r.rms_output  = std::sqrt(yy / ((double)all.n * c_));
    return r;
}

// ---- per-layer driver -------------------------------------------------------------------------------------------------

KbvqLayer::KbvqLayer(Model& model, int layer, const QuantizeOptions& opt) : model_(model), layer_(layer), opt_(opt) {
    auto& L = model.layer(layer);
    fp_.resize(L.experts.size());
    for (size_t e = 0; e < L.experts.size(); ++e)
        for (int k = 0; k < 3; ++k) fp_[e][k] = L.experts[e][k]->dequantize();
}

void KbvqLayer::quantize(LinearKind kind, const std::vector<const std::vector<double>*>& H,
                         const std::vector<int64_t>& tokens, QuantizeReport& rep) {
    auto&       L    = model_.layer(layer_);
    const auto& spec = model_.spec();
    const int   E    = (int)L.experts.size();
    const int   ki   = (int)kind - (int)LinearKind::ExpertGate;
    const int   out  = L.experts[0][ki]->out_features(), in = L.experts[0][ki]->in_features();
    std::vector<std::vector<float>> W(E);
    for (int e = 0; e < E; ++e) W[e] = fp_[e][ki];
    const IdreResult idre = idre_decompose(W, out, in, H, opt_.idre ? opt_.kbvq_rank : 0, true);

    auto shared   = std::make_shared<KbvqShared>();
    shared->rank  = idre.rank;
    shared->basis = idre.basis;
    shared->gamma.assign(out, 1.0f);

    GptvqOptions vo = gptvq_options(opt_);
    const std::string owner = spec.linear_name(layer_, kind, 0);
    std::vector<KbvqPacked>         packs(E);
    std::vector<std::vector<float>> Res(E);
    for (int e = 0; e < E; ++e) {
        KbvqPacked& p = packs[e];
        p.rank     = idre.rank;
        p.owner    = owner;
        p.is_owner = e == 0;
        KbvqLinear::quantize_coef(idre.coef[e], idre.rank, in, p.coef, p.coef_scales);
        // Residual target: W − B · Q(C), so the VQ (and its error feedback) absorbs the coefficients' rounding.
        std::vector<float>& R = Res[e];
        R = W[e];
        for (int k = 0; k < idre.rank; ++k) {
            const float s = f16_to_f32(p.coef_scales[k]);
            for (int o = 0; o < out; ++o) {
                const float b = idre.basis[(size_t)o * idre.rank + k];
                for (int j = 0; j < in; ++j) R[(size_t)o * in + j] -= b * (s * (float)p.coef[(size_t)k * in + j]);
            }
        }
    }
    if (opt_.kbvq_shared_codebooks) {
        vo.dim        = kbvq_expert_dim(opt_, E, out, in);
        vo.group_cols = in; // one codebook for the whole group: R = out rows × G = in columns of every expert
        vo.group_size = out * in;
        vo.codebook_bits = 16; // --codebook-bits is for per-matrix codebooks; one per layer and kind stays f16
        vo.refine_iters  = 0;  // and is fitted on all the experts, not refined for one
        vo.codebooks  = shared_codebooks(Res, out, in, H, vo, opt_.damp);
        shared->codebooks = vo.codebooks;
    }
    for (int e = 0; e < E; ++e) {
        KbvqPacked          p = std::move(packs[e]);
        std::vector<float>& R = Res[e];
        GptvqReport vr;
        const VqWeights vq  = gptvq_quantize(R.data(), out, in, *H[e], vo, &vr);
        auto            lin = std::make_unique<KbvqLinear>(vq, std::move(p), shared);
        ModuleReport    mr;
        mr.name   = spec.linear_name(layer_, kind, e);
        mr.layer  = layer_;
        mr.expert = e;
        mr.tokens = tokens[e];
        {
            // Whole-weight objective (the residual's error is the weight's error; the reference is W's).
            const std::vector<float> deq = lin->dequantize();
            std::vector<double>      err((size_t)out * in), ref((size_t)out * in);
            for (size_t i = 0; i < err.size(); ++i) err[i] = (double)W[e][i] - deq[i], ref[i] = W[e][i];
            const double den = hessian_norm(ref, out, in, *H[e]);
            mr.rel_error     = den > 0 ? std::max(0.0, hessian_norm(err, out, in, *H[e])) / den : 0;
        }
        mr.nominal_bits = opt_.bits;
        mr.weights      = (int64_t)out * in;
        mr.bytes        = (int64_t)lin->storage_bytes();
        L.experts[e][ki] = std::move(lin);
        rep.modules.push_back(mr);
    }
}

BcosFit::Result KbvqLayer::fit_bcos(LayerwiseRunner& run, QuantizeReport& rep) {
    auto&     L = model_.layer(layer_);
    const int E = (int)L.experts.size(), Hd = model_.spec().n_embd, F = model_.spec().n_ff_expert;
    const int n = run.calibration().seqlen;
    std::vector<DenseLinear> fp;
    fp.reserve(3 * E);
    for (int e = 0; e < E; ++e)
        for (int k = 0; k < 3; ++k)
            fp.emplace_back(k == 2 ? F : Hd, k == 2 ? Hd : F, fp_[e][k]);
    BcosFit            fit(Hd);
    std::vector<float> agg_q((size_t)n * Hd), agg_fp((size_t)n * Hd), gsum(n); // (n, H), (n, H), (n)
    std::vector<float> g, u, h, y;                                             // per-expert scratch
    int                sample = -1;
    auto               flush  = [&] {
        if (sample < 0) return;
        for (int t = 0; t < n; ++t)
            if (gsum[t] > 0) fit.add(sample & 1, agg_q.data() + (size_t)t * Hd, agg_fp.data() + (size_t)t * Hd, gsum[t]);
    };
    Hooks hooks;
    hooks.on_router = [&](const RouterEvent& ev) {
        if (ev.layer != layer_) return;
        flush();
        ++sample;
        std::fill(agg_q.begin(), agg_q.end(), 0.f);
        std::fill(agg_fp.begin(), agg_fp.end(), 0.f);
        std::fill(gsum.begin(), gsum.end(), 0.f);
    };
    hooks.on_linear = [&](const LinearEvent& ev) {
        if (ev.layer != layer_ || ev.expert < 0) return;
        const int m = ev.n;
        if (ev.kind == LinearKind::ExpertGate) {
            // FP expert on the same (quantized-stream) input the quantized expert saw.
            g.resize((size_t)m * F), u.resize((size_t)m * F), h.resize((size_t)m * F), y.resize((size_t)m * Hd);
            fp[3 * ev.expert + 0].forward(ev.x, m, g.data());
            fp[3 * ev.expert + 1].forward(ev.x, m, u.data());
            cpu::silu_mul(g.data(), u.data(), m, F, h.data());
            fp[3 * ev.expert + 2].forward(h.data(), m, y.data());
            for (int r = 0; r < m; ++r) {
                const float w  = ev.router_weight[r];
                float*      af = agg_fp.data() + (size_t)ev.token_index[r] * Hd;
                for (int d = 0; d < Hd; ++d) af[d] += w * y[(size_t)r * Hd + d];
            }
        } else if (ev.kind == LinearKind::ExpertDown) {
            for (int r = 0; r < m; ++r) {
                const float w  = ev.router_weight[r];
                float*      aq = agg_q.data() + (size_t)ev.token_index[r] * Hd;
                for (int d = 0; d < Hd; ++d) aq[d] += w * ev.y[(size_t)r * Hd + d];
                gsum[ev.token_index[r]] += w;
            }
        }
    };
    run.run(hooks);
    flush();
    BcosFit::Result res = fit.solve(opt_.bcos_bias, opt_.bcos_gamma);
    auto            down0 = dynamic_cast<const KbvqLinear*>(L.experts[0][2].get());
    MOEBIUS_ASSERT(down0);
    auto sh = std::make_shared<KbvqShared>(*down0->shared());
    for (int c = 0; c < Hd; ++c) sh->gamma[c] = f16r(res.gamma[c]);
    if (opt_.bcos_bias) {
        sh->beta.resize(Hd);
        for (int c = 0; c < Hd; ++c) sh->beta[c] = f16r(res.beta[c]);
    }
    for (int e = 0; e < E; ++e) {
        auto* d = dynamic_cast<KbvqLinear*>(L.experts[e][2].get());
        MOEBIUS_ASSERT(d);
        d->set_shared(sh);
    }
    const std::string owner = model_.spec().linear_name(layer_, LinearKind::ExpertDown, 0);
    for (auto& m : rep.modules)
        if (m.name == owner) m.bytes = (int64_t)L.experts[0][2]->storage_bytes(); // now with γ and β
    return res;
}

} // namespace moebius::quant
