#include "quantizer/calibration/importance.h"

#include "engine/core/error.h"
#include "engine/cpu/backward.h"
#include "engine/cpu/parallel.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>

namespace moebius::quant {

ImportanceMetric importance_metric_from_name(const std::string& n) {
    if (n == "obs") return ImportanceMetric::Obs;
    if (n == "hdiag") return ImportanceMetric::HessianDiag;
    if (n == "glas") return ImportanceMetric::Glas;
    throw InputError("unknown importance metric '" + n + "' (obs, hdiag, glas)");
}

const char* importance_metric_name(ImportanceMetric m) {
    switch (m) {
    case ImportanceMetric::Obs: return "obs";
    case ImportanceMetric::HessianDiag: return "hdiag";
    case ImportanceMetric::Glas: return "glas";
    }
    return "?";
}

std::vector<double> ImportanceMap::row_sum() const {
    std::vector<double> r(rows, 0);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) r[i] += values[(size_t)i * cols + j];
    return r;
}

std::vector<double> ImportanceMap::col_sum() const {
    std::vector<double> c(cols, 0);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j) c[j] += values[(size_t)i * cols + j];
    return c;
}

ImportanceMap ImportanceMap::downsample(int max_rows, int max_cols) const {
    ImportanceMap d;
    d.rows = std::min(rows, std::max(1, max_rows));
    d.cols = std::min(cols, std::max(1, max_cols));
    d.values.assign((size_t)d.rows * d.cols, 0.f);
    for (int i = 0; i < d.rows; ++i) {
        int r0 = (int)((int64_t)rows * i / d.rows), r1 = (int)((int64_t)rows * (i + 1) / d.rows);
        for (int j = 0; j < d.cols; ++j) {
            int    c0 = (int)((int64_t)cols * j / d.cols), c1 = (int)((int64_t)cols * (j + 1) / d.cols);
            double s  = 0;
            for (int r = r0; r < r1; ++r)
                for (int c = c0; c < c1; ++c) s += values[(size_t)r * cols + c];
            d.values[(size_t)i * d.cols + j] = (float)(s / ((double)(r1 - r0) * (c1 - c0)));
        }
    }
    return d;
}

ImportanceMap compute_importance(const std::vector<float>& W, int out, int in, const InputStats& st,
                                 ImportanceMetric metric, const std::vector<double>* g, double damp) {
    if (st.dim != in) throw InputError("importance: statistics of dimension " + std::to_string(st.dim) +
                                       " do not match the weight's input dimension " + std::to_string(in));
    if (st.n_tokens == 0) throw InputError("importance: no calibration token reached this linear");
    if (metric == ImportanceMetric::Glas && (!g || (int)g->size() != out))
        throw InputError("importance: the GLAS metric needs loss-gradient statistics for this linear");
    Eigen::MatrixXd H = Eigen::Map<const Eigen::MatrixXd>(st.H.data(), in, in) / (double)st.n_tokens;
    std::vector<double> coef(in); // per-column factor multiplying w²
    if (metric == ImportanceMetric::HessianDiag) {
        for (int j = 0; j < in; ++j) coef[j] = H(j, j);
    } else {
        for (int j = 0; j < in; ++j)
            if (H(j, j) == 0) H(j, j) = 1; // dead input: GPTQ's convention
        H.diagonal().array() += damp * H.diagonal().mean();
        Eigen::LLT<Eigen::MatrixXd> llt(H);
        if (llt.info() != Eigen::Success) throw Error("importance: the Hessian is not positive definite after damping");
        Eigen::MatrixXd Hinv = llt.solve(Eigen::MatrixXd::Identity(in, in));
        for (int j = 0; j < in; ++j) coef[j] = 1.0 / (Hinv(j, j) * Hinv(j, j));
    }
    ImportanceMap m;
    m.rows = out;
    m.cols = in;
    m.values.resize((size_t)out * in);
    for (int i = 0; i < out; ++i) {
        const double gi = metric == ImportanceMetric::Glas ? (*g)[i] : 1.0;
        for (int j = 0; j < in; ++j) {
            const double w = W[(size_t)i * in + j];
            m.values[(size_t)i * in + j] = (float)(gi * coef[j] * w * w);
        }
    }
    return m;
}

std::vector<double> GradientStats::Entry::mean_sq() const {
    std::vector<double> m(sum_sq.size(), 0);
    if (tokens)
        for (size_t i = 0; i < m.size(); ++i) m[i] = sum_sq[i] / tokens;
    return m;
}

const GradientStats::Entry* GradientStats::find(int layer, LinearKind kind, int expert) const {
    auto it = entries.find({layer, (int)kind, expert});
    return it == entries.end() ? nullptr : &it->second;
}

namespace {

// One sample's events summed into p (the routed experts' entries, or every linear's).
void add_event(GradientStats& p, const LinearGradEvent& e) {
    auto& en = p.entries[{e.layer, (int)e.kind, e.expert}];
    if (en.sum_sq.empty()) en.sum_sq.assign(e.out, 0.0);
    en.tokens += e.n;
    for (int t = 0; t < e.n; ++t)
        for (int r = 0; r < e.out; ++r) {
            const double d = e.dz[(size_t)t * e.out + r];
            en.sum_sq[r] += d * d;
        }
}

// gs += p entry by entry (called for the samples in order: the sums do not depend on how they were scheduled).
void merge(GradientStats& gs, const GradientStats& p) {
    for (const auto& [key, e] : p.entries) {
        auto& en = gs.entries[key];
        if (en.sum_sq.empty()) en.sum_sq.assign(e.sum_sq.size(), 0.0);
        en.tokens += e.tokens;
        for (size_t r = 0; r < e.sum_sq.size(); ++r) en.sum_sq[r] += e.sum_sq[r];
    }
}

// f32 bytes of every decoder layer's weights.
int64_t decoder_f32_bytes(const ModelSpec& s) {
    const int64_t embeddings = (int64_t)s.n_vocab * s.n_embd * (s.tie_word_embeddings ? 1 : 2);
    return 4 * (s.total_params() - embeddings - s.n_embd);
}

} // namespace

GradientStats collect_gradient_stats(Model& model, const CalibrationSet& calib, const ProgressFn& progress,
                                     bool routed_experts_only, const std::function<Hooks(int)>& forward_hooks,
                                     int64_t max_resident_bytes) {
    GradientStats gs;
    const int     N = (int)calib.samples.size(), T = num_threads(), L = model.spec().n_layer;
    bool          resident = true;
    for (int il = 0; il < L; ++il) resident = resident && model.layer_loaded(il);
    if (!resident && decoder_f32_bytes(model.spec()) > max_resident_bytes) {
        // Layer-major: the samples' entries of the current layer, merged in sample order when it is done.
        std::vector<GradientStats> part(N);
        SequenceGradientOptions    so;
        so.routed_experts_only = routed_experts_only;
        so.forward_hooks       = forward_hooks;
        so.on_linear_grad      = [&part](int s, const LinearGradEvent& e) { add_event(part[s], e); };
        so.on_layer_done       = [&](int) {
            for (GradientStats& p : part) {
                merge(gs, p);
                p.entries.clear();
            }
        };
        layerwise_losses_and_events(model, calib.samples, so, T, [&](const Progress& p) {
            report_progress(progress, p.fraction, "gradients, layer by layer: " + p.stage);
            return true;
        });
        return gs;
    }
    for (int il = 0; il < L; ++il) model.load_layer(il);
    // A round of T samples at a time (bounded memory), one per thread: every thread runs its sample's backward
    // single-threaded (nested regions are inactive) whether or not the others have work, so each sample's sums are
    // the same at any thread count.
    for (int s0 = 0; s0 < N; s0 += T) {
        const int m = std::min(T, N - s0);
        report_progress(progress, (double)s0 / N,
                        "gradients: samples " + std::to_string(s0 + 1) + "-" + std::to_string(s0 + m) + "/" + std::to_string(N));
        std::vector<GradientStats> part(m);
        // Every thread gets an index (those past m idle), so each sample runs single-threaded at any thread count.
        parallel_for_each(T, T, [&](int i) {
            if (i >= m) return;
            GradientOptions opt;
            opt.weight_grads        = false;
            opt.routed_experts_only = routed_experts_only;
            // The kept activations of all concurrent samples together stay within 2 GiB.
            opt.max_activation_bytes = (size_t(2) << 30) / T;
            Hooks observer;
            if (forward_hooks) {
                observer          = forward_hooks(s0 + i);
                opt.forward_hooks = &observer;
            }
            opt.on_linear_grad = [&p = part[i]](const LinearGradEvent& e) { add_event(p, e); };
            loss_and_gradients(model, calib.samples[s0 + i], opt);
        });
        for (const GradientStats& p : part) merge(gs, p);
    }
    return gs;
}

} // namespace moebius::quant
