// Finite-difference checks of the backward pass (engine/cpu/backward.h) on the tiny random checkpoints, one per
// family feature: Qwen3-MoE (per-head q/k norm, renormalised top-k, a dense layer), OLMoE (full-projection q/k norm,
// and again with clip_qkv), DeepSeek-MoE (ungated shared experts, a dense first layer), Mixtral (4:1 GQA, always
// renormalised; and again with tied embeddings). Qwen2-MoE (q/k/v bias, sigmoid-gated shared expert) is checked
// against PyTorch in the golden test.
//
// The reference loss is an independent double-precision forward written here on the checkpoint tensors, so central
// differences are exact to ~1e-9 (eps = 1e-3: truncation eps²·ℓ'''/6 ≲ 1e-8, rounding 1e-16/eps). The analytic
// gradient is f32: relative rounding ~1e-7 per op, accumulated through sums of up to a few hundred terms and ~10
// chained ops per layer: ~1e-5 of the gradient's typical size (measured: ≲ 1.2e-5·|fd| + 1.2e-6·max|g|). The
// tolerance |g − fd| ≤ 5e-4·|fd| + 5e-5·max|g| (max over the tensor or the linear's dZ) leaves a ≥ 40× margin above
// that and is far below any real bug (a missing term or a wrong factor is an O(1) relative error; dropping the
// clamp mask or the top-k renormalisation term fails by 10³–10⁴ × the tolerance). Perturbations that change a top-k
// set (the loss jumps) or what clip_qkv clamps (its slope jumps) are skipped; a handful at most.
#include <gtest/gtest.h>

#include <random>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>

#include "engine/core/error.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/backward.h"
#include "engine/cpu/backward_ops.h"
#include "engine/cpu/model.h"
#include "test_util.h"

using namespace moebius;

namespace {

using Vec = std::vector<double>;

// Output perturbation of one linear: z[token][channel] += delta (experts: only where the token chose the expert).
struct Perturb {
    int        layer = -1;
    LinearKind kind  = LinearKind::Count;
    int        expert = -1, token = -1, channel = -1;
    double     delta = 0;
};

// The branches a forward took where the loss is only piecewise smooth: the expert set of every (sparse layer, token)
// and which q/k/v entries clip_qkv clamped. A finite difference is valid only if both sides keep them.
struct Branches {
    std::vector<std::vector<int>> topk; // sorted ids
    std::vector<bool>             clamped;
    bool operator==(const Branches&) const = default;
};

// Independent double-precision forward on the checkpoint tensors.
struct RefModel {
    ModelSpec                  spec;
    std::map<std::string, Vec> w;

    const Vec& t(const std::string& name) const { return w.at(name); }
    bool       has(const std::string& name) const { return w.count(name) > 0; }

    // y (rows, out) = x (rows, in) · Wᵀ (+ bias), with the optional output perturbation.
    Vec linear(const Vec& x, int rows, int il, LinearKind kind, int expert, const int* tok, const Perturb* pz) const {
        const std::string base = spec.linear_name(il, kind, expert);
        const Vec&        W    = t(base + ".weight");
        const int         in   = (int)(x.size() / rows), out = (int)(W.size() / in);
        Vec               y((size_t)rows * out);
        for (int r = 0; r < rows; ++r)
            for (int o = 0; o < out; ++o) {
                double s = 0;
                for (int i = 0; i < in; ++i) s += x[(size_t)r * in + i] * W[(size_t)o * in + i];
                y[(size_t)r * out + o] = s;
            }
        if (pz && pz->layer == il && pz->kind == kind && pz->expert == expert)
            for (int r = 0; r < rows; ++r)
                if ((tok ? tok[r] : r) == pz->token) y[(size_t)r * out + pz->channel] += pz->delta;
        if (has(base + ".bias")) {
            const Vec& b = t(base + ".bias");
            for (int r = 0; r < rows; ++r)
                for (int o = 0; o < out; ++o) y[(size_t)r * out + o] += b[o];
        }
        return y;
    }
    Vec rmsnorm(const Vec& x, int d, const Vec& w) const {
        Vec y(x.size());
        for (size_t r = 0; r < x.size() / d; ++r) {
            double ss = 0;
            for (int i = 0; i < d; ++i) ss += x[r * d + i] * x[r * d + i];
            const double inv = 1.0 / std::sqrt(ss / d + spec.rms_eps);
            for (int i = 0; i < d; ++i) y[r * d + i] = w[i] * x[r * d + i] * inv;
        }
        return y;
    }
    static double silu(double g) { return g / (1.0 + std::exp(-g)); }
    Vec swiglu(const Vec& x, int rows, int il, LinearKind kind0, int expert, const int* tok, const Perturb* pz) const {
        Vec g = linear(x, rows, il, kind0, expert, tok, pz);
        Vec u = linear(x, rows, il, (LinearKind)((int)kind0 + 1), expert, tok, pz);
        for (size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * u[i];
        return linear(g, rows, il, (LinearKind)((int)kind0 + 2), expert, tok, pz);
    }

    // Mean next-token loss, and the branches it took.
    double loss(const std::vector<int32_t>& ids, const Perturb* pz, Branches* br) const {
        const ModelSpec& s = spec;
        const int n = (int)ids.size(), H = s.n_embd, hd = s.head_dim, nh = s.n_head, nkv = s.n_head_kv;
        const int qd = nh * hd, kvd = nkv * hd;
        Vec       x((size_t)n * H);
        for (int i = 0; i < n; ++i)
            std::copy_n(t(s.embed_name()).begin() + (int64_t)ids[i] * H, H, x.begin() + (int64_t)i * H);
        std::vector<float> inv_freq(hd / 2); // rounded to f32 as transformers (and the engine) form it
        for (int i = 0; i < hd / 2; ++i)
            inv_freq[i] = (float)(1.0 / std::pow((double)s.rope_theta, (2.0 * i) / hd)) / s.rope_linear_factor;
        Branches local;
        Branches& b = br ? *br : local;
        b       = {};

        for (int il = 0; il < s.n_layer; ++il) {
            const std::string p  = s.layer_prefix(il);
            Vec               hn = rmsnorm(x, H, t(p + "input_layernorm.weight"));
            Vec               q  = linear(hn, n, il, LinearKind::Q, -1, nullptr, pz);
            Vec               k  = linear(hn, n, il, LinearKind::K, -1, nullptr, pz);
            Vec               v  = linear(hn, n, il, LinearKind::V, -1, nullptr, pz);
            if (s.traits().qk_norm == QkNorm::PerHead) {
                q = rmsnorm(q, hd, t(p + "self_attn.q_norm.weight"));
                k = rmsnorm(k, hd, t(p + "self_attn.k_norm.weight"));
            } else if (s.traits().qk_norm == QkNorm::Full) {
                q = rmsnorm(q, qd, t(p + "self_attn.q_norm.weight"));
                k = rmsnorm(k, kvd, t(p + "self_attn.k_norm.weight"));
            }
            if (s.clip_qkv)
                for (Vec* buf : {&q, &k, &v})
                    for (double& f : *buf) {
                        const double c = *s.clip_qkv;
                        b.clamped.push_back(f < -c || f > c);
                        f = std::clamp(f, -c, c);
                    }
            auto rope = [&](Vec& z, int heads) {
                for (int i = 0; i < n; ++i)
                    for (int h = 0; h < heads; ++h)
                        for (int j = 0; j < hd / 2; ++j) {
                            const double a  = (float)i * inv_freq[j];
                            double*      r  = z.data() + ((size_t)i * heads + h) * hd;
                            const double x1 = r[j], x2 = r[j + hd / 2];
                            r[j]            = x1 * std::cos(a) - x2 * std::sin(a);
                            r[j + hd / 2]   = x2 * std::cos(a) + x1 * std::sin(a);
                        }
            };
            rope(q, nh);
            rope(k, nkv);
            Vec attn((size_t)n * qd, 0.0);
            for (int i = 0; i < n; ++i)
                for (int h = 0; h < nh; ++h) {
                    const int kvh = h / (nh / nkv);
                    Vec       sc(i + 1);
                    double    m = -1e300, sum = 0;
                    for (int j = 0; j <= i; ++j) {
                        double d = 0;
                        for (int c = 0; c < hd; ++c)
                            d += q[(size_t)i * qd + h * hd + c] * k[(size_t)j * kvd + kvh * hd + c];
                        sc[j] = d / std::sqrt((double)hd);
                        m     = std::max(m, sc[j]);
                    }
                    for (double& e : sc) sum += (e = std::exp(e - m));
                    for (int j = 0; j <= i; ++j)
                        for (int c = 0; c < hd; ++c)
                            attn[(size_t)i * qd + h * hd + c] += sc[j] / sum * v[(size_t)j * kvd + kvh * hd + c];
                }
            Vec o = linear(attn, n, il, LinearKind::O, -1, nullptr, pz);
            for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

            Vec hn2 = rmsnorm(x, H, t(p + "post_attention_layernorm.weight"));
            Vec ffn((size_t)n * H, 0.0);
            if (s.layer_is_moe[il]) {
                const int E = s.n_expert, K = s.n_expert_used;
                Vec       logits = linear(hn2, n, il, LinearKind::Router, -1, nullptr, pz);
                for (int tk = 0; tk < n; ++tk) {
                    Vec    pr(logits.begin() + (size_t)tk * E, logits.begin() + (size_t)(tk + 1) * E);
                    double m = *std::max_element(pr.begin(), pr.end()), sum = 0;
                    for (double& e : pr) sum += (e = std::exp(e - m));
                    for (double& e : pr) e /= sum;
                    std::vector<int> order(E);
                    std::iota(order.begin(), order.end(), 0);
                    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return pr[a] > pr[b]; });
                    order.resize(K);
                    double wsum = 0;
                    for (int e : order) wsum += pr[e];
                    Vec row(hn2.begin() + (size_t)tk * H, hn2.begin() + (size_t)(tk + 1) * H);
                    for (int e : order) {
                        const double wgt = s.norm_topk_prob ? pr[e] / wsum : pr[e];
                        Vec          y   = swiglu(row, 1, il, LinearKind::ExpertGate, e, &tk, pz);
                        for (int d = 0; d < H; ++d) ffn[(size_t)tk * H + d] += wgt * y[d];
                    }
                    std::sort(order.begin(), order.end());
                    b.topk.push_back(order);
                }
                if (s.n_ff_shared > 0) {
                    Vec sh = swiglu(hn2, n, il, LinearKind::SharedGate, -1, nullptr, pz);
                    Vec gate(n, 1.0);
                    if (s.traits().shared_gated) {
                        gate = linear(hn2, n, il, LinearKind::SharedExpertGate, -1, nullptr, pz);
                        for (double& g : gate) g = 1.0 / (1.0 + std::exp(-g));
                    }
                    for (int tk = 0; tk < n; ++tk)
                        for (int d = 0; d < H; ++d) ffn[(size_t)tk * H + d] += gate[tk] * sh[(size_t)tk * H + d];
                }
            } else {
                ffn = swiglu(hn2, n, il, LinearKind::DenseGate, -1, nullptr, pz);
            }
            for (size_t i = 0; i < x.size(); ++i) x[i] += ffn[i];
        }
        Vec xn = rmsnorm(x, H, t(s.final_norm_name()));
        const Vec& Wl = t(s.lm_head_name());
        const int  V  = s.n_vocab;
        double     total = 0;
        for (int i = 0; i + 1 < n; ++i) {
            Vec l(V);
            for (int v = 0; v < V; ++v) {
                double d = 0;
                for (int c = 0; c < H; ++c) d += xn[(size_t)i * H + c] * Wl[(size_t)v * H + c];
                l[v] = d;
            }
            const double m = *std::max_element(l.begin(), l.end());
            double       sum = 0;
            for (double e : l) sum += std::exp(e - m);
            total += m + std::log(sum) - l[ids[i + 1]];
        }
        return total / (n - 1);
    }
};

RefModel load_reference(const ModelSpec& spec, const std::filesystem::path& dir, const Gradients& g) {
    RefModel   r{spec, {}};
    const auto store = WeightStore::open(dir);
    for (const auto& [name, grad] : g.weights) {
        auto f = store.to_f32(name);
        r.w[name].assign(f.begin(), f.end());
    }
    return r;
}

std::vector<int32_t> test_tokens(int n, int vocab, uint32_t seed) {
    std::vector<int32_t> ids(n);
    for (auto& id : ids) {
        seed = seed * 1664525u + 1013904223u;
        id   = (int32_t)((seed >> 8) % (uint32_t)vocab);
    }
    return ids;
}

struct Stats {
    int    checked = 0, skipped = 0;
    double worst   = 0; // max |g − fd| / (2e-3·|fd| + 2e-4·scale)
};

// Central difference of the loss; false if either side changes a top-k set.
bool central_difference(const RefModel& ref, const std::vector<int32_t>& ids,
                        const Branches& base, const std::function<void(double)>& set,
                        const Perturb* pz_plus, const Perturb* pz_minus, double eps, double* fd) {
    Branches tp, tm;
    set(+eps);
    const double lp = ref.loss(ids, pz_plus, &tp);
    set(-eps);
    const double lm = ref.loss(ids, pz_minus, &tm);
    set(0);
    if (!(tp == base) || !(tm == base)) return false;
    *fd = (lp - lm) / (2 * eps);
    return true;
}

void expect_close(double g, double fd, double scale, const std::string& what, Stats& st) {
    const double tol = 5e-4 * std::fabs(fd) + 5e-5 * scale;
    EXPECT_LE(std::fabs(g - fd), tol) << what << ": analytic " << g << ", finite difference " << fd;
    st.worst = std::max(st.worst, std::fabs(g - fd) / tol);
    ++st.checked;
}

struct CapturedDz {
    LinearKind       kind;
    int              layer, expert, n, out;
    std::vector<int> tok; // (n) sequence row of each row
    std::vector<float> dz; // (n, out)
};

// variant: a config change on top of the checkpoint's (the weights stay), named in the log.
void check_family(const std::filesystem::path& dir, const std::string& variant = {},
                  const std::function<void(ModelSpec&)>& tweak = {}) {
    ModelSpec spec = ModelSpec::load(dir);
    if (tweak) tweak(spec);
    auto model = Model::load(spec, WeightStore::open(dir));
    const auto ids = test_tokens(12, spec.n_vocab, 12345u + (uint32_t)spec.n_vocab + (uint32_t)spec.n_layer);

    std::vector<CapturedDz> events;
    GradientOptions         opt;
    opt.on_linear_grad = [&](const LinearGradEvent& ev) {
        CapturedDz c{ev.kind, ev.layer, ev.expert, ev.n, ev.out, {}, {}};
        for (int r = 0; r < ev.n; ++r) c.tok.push_back(ev.token_index ? ev.token_index[r] : r);
        c.dz.assign(ev.dz, ev.dz + (size_t)ev.n * ev.out);
        events.push_back(std::move(c));
    };
    const Gradients g = loss_and_gradients(*model, ids, opt);

    RefModel ref = load_reference(spec, dir, g);
    Branches     base;
    const double l0 = ref.loss(ids, nullptr, &base);
    EXPECT_NEAR(g.loss, l0, 1e-5 * l0) << "f32 engine vs double reference loss";

    // The engine must have routed as the double forward does, else the gradients are of another function.
    {
        std::vector<std::vector<int>> engine_topk(base.topk.size());
        int                           moe_index = -1;
        std::vector<int>              moe_of_layer(spec.n_layer, -1);
        for (int il = 0; il < spec.n_layer; ++il)
            if (spec.layer_is_moe[il]) moe_of_layer[il] = ++moe_index;
        for (const auto& e : events)
            if (e.kind == LinearKind::ExpertGate)
                for (int t : e.tok) engine_topk[(size_t)moe_of_layer[e.layer] * ids.size() + t].push_back(e.expert);
        for (auto& v : engine_topk) std::sort(v.begin(), v.end());
        ASSERT_EQ(engine_topk, base.topk) << "expert choices differ between the engine and the double forward";
    }

    const double eps = 1e-3;
    Stats        st;
    // Weights: for every tensor the entry with the largest gradient and one pseudo-random entry.
    uint32_t seed = 7;
    for (const auto& [name, grad] : g.weights) {
        double scale = 0;
        size_t imax  = 0;
        for (size_t i = 0; i < grad.size(); ++i)
            if (std::fabs(grad[i]) > scale) scale = std::fabs(grad[i]), imax = i;
        seed = seed * 1664525u + 1013904223u;
        for (size_t idx : {imax, (size_t)(seed >> 4) % grad.size()}) {
            Vec&         w  = ref.w[name];
            const double w0 = w[idx];
            double       fd = 0;
            if (!central_difference(ref, ids, base, [&](double d) { w[idx] = w0 + d; }, nullptr, nullptr, eps, &fd)) {
                ++st.skipped;
                continue;
            }
            expect_close(grad[idx], fd, scale, name + "[" + std::to_string(idx) + "]", st);
        }
    }
    // ∂ℓ/∂Z of every linear (every routed expert that got tokens): the entry with the largest |dZ|.
    for (const auto& e : events) {
        size_t imax  = 0;
        double scale = 0;
        for (size_t i = 0; i < e.dz.size(); ++i)
            if (std::fabs(e.dz[i]) > scale) scale = std::fabs(e.dz[i]), imax = i;
        if (scale == 0) continue;
        Perturb pp{e.layer, e.kind, e.expert, e.tok[imax / e.out], (int)(imax % e.out), +eps};
        Perturb pm = pp;
        pm.delta   = -eps;
        double fd  = 0;
        // The perturbation lives in pz; the setter has nothing to do.
        if (!central_difference(ref, ids, base, [](double) {}, &pp, &pm, eps, &fd)) {
            ++st.skipped;
            continue;
        }
        expect_close(e.dz[imax], fd, scale,
                     std::string("dZ ") + linear_kind_name(e.kind) + " layer " + std::to_string(e.layer) +
                         " expert " + std::to_string(e.expert),
                     st);
    }
    EXPECT_LE(st.skipped, st.checked / 20) << "too many perturbations changed a top-k set or a clamp";
    std::printf("%s%s: %d checks (%zu tensors, %zu linears), %d skipped (branch change), worst |g-fd|/tol %.3f\n",
                dir.filename().c_str(), variant.c_str(), st.checked, g.weights.size(), events.size(),
                st.skipped, st.worst);
}

} // namespace

TEST(BackwardFiniteDifference, Qwen3MoePerHeadQkNormRenormDense) { check_family(test::random_model("qwen3moe")); }
TEST(BackwardFiniteDifference, OlmoeFullQkNorm) { check_family(test::random_model("olmoe")); }
TEST(BackwardFiniteDifference, OlmoeClipQkv) {
    // 1.0 clamps about a third of the entries of q, k and v of this checkpoint (both gradient paths are exercised).
    check_family(test::random_model("olmoe"), " +clip_qkv", [](ModelSpec& s) { s.clip_qkv = 1.0f; });
}
TEST(BackwardFiniteDifference, DeepseekUngatedSharedDense) { check_family(test::random_model("deepseekmoe")); }
TEST(BackwardFiniteDifference, MixtralGqaRenorm) { check_family(test::random_model("mixtral")); }
TEST(BackwardFiniteDifference, MixtralTiedEmbeddings) {
    // lm_head = embed_tokens: both uses accumulate into one gradient.
    check_family(test::random_model("mixtral"), " +tied", [](ModelSpec& s) { s.tie_word_embeddings = true; });
}

// Σ over the ∂ℓ/∂Z events of dZᵀ·X is each linear's weight gradient; without weight gradients the loss and the events
// are unchanged; repeated runs are bit-identical.
TEST(Backward, EventsMatchWeightGradientsAndRunsAreDeterministic) {
    auto       model = Model::load(test::random_model("qwen3moe"));
    const auto& spec = model->spec();
    const auto ids   = test_tokens(20, spec.n_vocab, 99u);
    std::map<std::string, std::vector<double>> from_events;
    std::vector<std::vector<float>>            dz_with;
    GradientOptions                            opt;
    opt.on_linear_grad = [&](const LinearGradEvent& ev) {
        auto& acc = from_events[spec.linear_name(ev.layer, ev.kind, ev.expert) + ".weight"];
        acc.resize((size_t)ev.out * ev.in, 0.0);
        for (int r = 0; r < ev.n; ++r)
            for (int o = 0; o < ev.out; ++o)
                for (int i = 0; i < ev.in; ++i)
                    acc[(size_t)o * ev.in + i] += (double)ev.dz[(size_t)r * ev.out + o] * ev.x[(size_t)r * ev.in + i];
        dz_with.emplace_back(ev.dz, ev.dz + (size_t)ev.n * ev.out);
    };
    const Gradients g = loss_and_gradients(*model, ids, opt);
    for (const auto& [name, acc] : from_events) {
        const auto& w   = g.weights.at(name);
        double      num = 0, den = 0;
        for (size_t i = 0; i < w.size(); ++i) num += (w[i] - acc[i]) * (w[i] - acc[i]), den += acc[i] * acc[i];
        EXPECT_LE(std::sqrt(num), 1e-5 * std::sqrt(den) + 1e-12) << name;
    }
    // Every linear weight is covered by an event except experts no token chose.
    int linears = 0;
    for (const auto& [name, w] : g.weights) {
        if (name.find("_proj.weight") == std::string::npos && name.find("mlp.gate.weight") == std::string::npos)
            continue;
        ++linears;
        const bool zero = std::all_of(w.begin(), w.end(), [](float f) { return f == 0.f; });
        EXPECT_TRUE(from_events.count(name) || zero) << name;
    }
    EXPECT_GT(linears, 0);

    const Gradients again = loss_and_gradients(*model, ids);
    EXPECT_EQ(again.loss, g.loss);
    EXPECT_TRUE(again.weights == g.weights) << "repeated runs differ";

    std::vector<std::vector<float>> dz_without;
    GradientOptions                 no_w;
    no_w.weight_grads   = false;
    no_w.on_linear_grad = [&](const LinearGradEvent& ev) {
        dz_without.emplace_back(ev.dz, ev.dz + (size_t)ev.n * ev.out);
    };
    const Gradients lite = loss_and_gradients(*model, ids, no_w);
    EXPECT_EQ(lite.loss, g.loss);
    EXPECT_TRUE(lite.weights.empty());
    EXPECT_TRUE(dz_without == dz_with);
}

// The backward from kept activations and from per-layer recomputation give the same gradients and events; with
// routed_experts_only (no weight gradients) exactly the routed experts' events come, equal to the full run's.
TEST(Backward, KeptAndRecomputedActivationsAndExpertOnlyEventsAgree) {
    for (const char* family : {"deepseekmoe", "qwen3moe"}) { // deepseekmoe: a dense first layer
        auto        model = Model::load(test::random_model(family));
        const auto& spec  = model->spec();
        const auto  ids   = test_tokens(21, spec.n_vocab, 7u);
        struct Ev {
            int                layer, kind, expert;
            std::vector<float> dz;
            bool               operator==(const Ev&) const = default;
        };
        auto run = [&](GradientOptions opt, std::vector<Ev>& evs) {
            opt.on_linear_grad = [&](const LinearGradEvent& e) {
                evs.push_back({e.layer, (int)e.kind, e.expert, std::vector<float>(e.dz, e.dz + (size_t)e.n * e.out)});
            };
            return loss_and_gradients(*model, ids, opt);
        };
        std::vector<Ev> kept, recomputed, experts;
        GradientOptions o;
        const Gradients a = run(o, kept);
        o.max_activation_bytes = 0;
        const Gradients b = run(o, recomputed);
        EXPECT_EQ(a.loss, b.loss) << family;
        EXPECT_TRUE(a.weights == b.weights) << family;
        EXPECT_TRUE(kept == recomputed) << family;
        GradientOptions x;
        x.weight_grads        = false;
        x.routed_experts_only = true;
        run(x, experts);
        std::vector<Ev> want;
        for (const Ev& e : kept)
            if (is_expert_kind((LinearKind)e.kind)) want.push_back(e);
        ASSERT_FALSE(want.empty()) << family;
        EXPECT_EQ(experts.size(), want.size()) << family;
        EXPECT_TRUE(experts == want) << family;
    }
}

// The blocked attention backward (GEMMs over 32-query blocks, the forward's softmax) agrees with the scalar
// reference: causal blocks that end mid-block, GQA, one and several threads.
TEST(Backward, BlockedAttentionBackwardMatchesReference) {
    for (int n : {1, 45, 300}) {
        const int          nh = 4, nkv = 2, hd = 16, qd = nh * hd, kvd = nkv * hd;
        std::mt19937       rng(11 + n);
        std::normal_distribution<float> d;
        std::vector<float> q((size_t)n * qd), k((size_t)n * kvd), v((size_t)n * kvd), o((size_t)n * qd), go((size_t)n * qd);
        for (auto* b : {&q, &k, &v, &o, &go})
            for (float& f : *b) f = d(rng);
        std::vector<float> rq(q.size()), rk(k.size()), rv(v.size()), bq(q.size()), bk(k.size()), bv(v.size());
        cpu::attention_backward_reference(q.data(), k.data(), v.data(), o.data(), go.data(), n, nh, nkv, hd, rq.data(),
                                          rk.data(), rv.data());
        cpu::attention_backward(q.data(), k.data(), v.data(), o.data(), go.data(), n, nh, nkv, hd, bq.data(), bk.data(),
                                bv.data());
        auto close = [&](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
            double mx = 0, diff = 0;
            for (size_t i = 0; i < a.size(); ++i) mx = std::max(mx, (double)std::abs(a[i])), diff = std::max(diff, (double)std::abs(a[i] - b[i]));
            EXPECT_LE(diff, 2e-5 * mx + 1e-7) << what << " n " << n;
        };
        close(rq, bq, "dq");
        close(rk, bk, "dk");
        close(rv, bv, "dv");
    }
}


// The packet (SIMD) kernels against f64 formulas, with lengths that leave a padded tail and extreme inputs.
TEST(Backward, PacketKernelsMatchDoubleFormulas) {
    std::mt19937                    rng(5);
    std::normal_distribution<float> d(0.f, 4.f);
    for (int64_t count : {1, 7, 8, 9, 1003}) {
        std::vector<float> g(count), u(count), dh(count), dg(count), du(count);
        for (int64_t i = 0; i < count; ++i) g[i] = d(rng), u[i] = d(rng), dh[i] = d(rng);
        g[0] = count == 1 ? -90.f : 60.f; // σ saturates at both ends
        cpu::silu_mul_backward(g.data(), u.data(), dh.data(), count, dg.data(), du.data());
        for (int64_t i = 0; i < count; ++i) {
            const double s = 1.0 / (1.0 + std::exp(-(double)g[i]));
            const double rg = (double)dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s)), ru = (double)dh[i] * g[i] * s;
            // Relative to the terms' size: silu' = s (1 + g (1 − s)) cancels near g ≈ −1.28.
            const double mag = std::abs((double)dh[i] * u[i]) * s * (1.0 + std::abs(g[i]) * (1.0 - s));
            EXPECT_NEAR(dg[i], rg, 2e-6 * mag + 1e-30) << "dg " << i << " of " << count;
            EXPECT_NEAR(du[i], ru, 2e-6 * std::abs(ru) + 1e-30) << "du " << i << " of " << count;
        }
    }
    for (int V : {1, 5, 8, 2051}) {
        std::vector<float> l(V);
        for (float& f : l) f = d(rng);
        const int target = V / 2;
        l[target] -= V > 1 ? 200.f : 0.f; // its exp underflows in f32: the loss must stay finite and exact
        std::vector<float> g = l;
        const float        scale = 0.25f;
        const double       loss  = cpu::cross_entropy_backward(g.data(), V, target, scale);
        double mx = l[0], sum = 0;
        for (float f : l) mx = std::max(mx, (double)f);
        for (float f : l) sum += std::exp(f - mx);
        const double lse = mx + std::log(sum);
        EXPECT_NEAR(loss, lse - l[target], 1e-6 * std::abs(lse - l[target]) + 1e-7) << "V " << V;
        for (int v = 0; v < V; ++v) {
            const double ref = scale * (std::exp(l[v] - lse) - (v == target));
            EXPECT_NEAR(g[v], ref, 1e-6 * std::abs(ref) + 1e-9) << "V " << V << " v " << v;
        }
    }
}
TEST(Backward, RejectsBadInput) {
    auto                       model = Model::load(test::random_model("mixtral"));
    const std::vector<int32_t> one   = {1};
    EXPECT_THROW(loss_and_gradients(*model, one), InputError);
    const std::vector<int32_t> bad = {1, model->spec().n_vocab};
    EXPECT_THROW(loss_and_gradients(*model, bad), InputError);
}
