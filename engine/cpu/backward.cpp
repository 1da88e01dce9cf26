#include "engine/cpu/backward.h"

#include "engine/core/error.h"
#include "engine/cpu/backward_ops.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/parallel.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <exception>
#include <numeric>

namespace moebius {

namespace {

// W (out, in) in f32: a view of a DenseLinear's storage, otherwise the dequantized copy (quantized formats).
class WeightF32 {
public:
    explicit WeightF32(const Linear& l) {
        if (auto* d = dynamic_cast<const DenseLinear*>(&l)) {
            p_ = d->data();
        } else {
            owned_ = l.dequantize();
            p_     = owned_.data();
        }
    }
    const float* data() const { return p_; }

private:
    std::vector<float> owned_;
    const float*       p_ = nullptr;
};

// Activations of one layer as forward_layer reports them through its hooks (copied: the pointers die with the event).
struct ExpertActs {
    std::vector<int>   tok;           // (m) token row of each bucket row
    std::vector<float> w;             // (m) combine weight
    std::vector<float> x, g, u, a, y; // (m, H), (m, F), (m, F), (m, F) = silu(g)·u, (m, H)
};

struct FfnActs {
    std::vector<float> x, g, u, a, y; // (n, H), (n, F), (n, F), (n, F), (n, H)
};

struct LayerActs {
    std::vector<float>      hn;          // (n, H) RMSNorm(x): input of q, k, v
    std::vector<float>      q, k, v;     // (n, qd), (n, kvd), (n, kvd): projections before bias
    std::vector<float>      attn;        // (n, qd) input of o_proj
    std::vector<float>      attn_out;    // (n, H) o_proj output before bias
    std::vector<float>      router_x;    // (n, H) RMSNorm(h)
    std::vector<float>      probs;       // (n, E) router softmax
    std::vector<int>        topi;        // (n, K)
    std::vector<float>      topw;        // (n, K)
    std::vector<ExpertActs> experts;     // [E]; empty tok: expert unused
    FfnActs                 shared;      // shared expert(s)
    std::vector<float>      shared_gate; // (n) shared_expert_gate logit, before the sigmoid
    FfnActs                 dense;       // dense FFN layers
};

void capture(const LinearEvent& ev, LayerActs& A) {
    auto cp = [](std::vector<float>& dst, const float* src, int rows, int cols) {
        dst.assign(src, src + (int64_t)rows * cols);
    };
    switch (ev.kind) {
    case LinearKind::Q:
        cp(A.hn, ev.x, ev.n, ev.in);
        cp(A.q, ev.y, ev.n, ev.out);
        break;
    case LinearKind::K: cp(A.k, ev.y, ev.n, ev.out); break;
    case LinearKind::V: cp(A.v, ev.y, ev.n, ev.out); break;
    case LinearKind::O:
        cp(A.attn, ev.x, ev.n, ev.in);
        cp(A.attn_out, ev.y, ev.n, ev.out);
        break;
    case LinearKind::Router: cp(A.router_x, ev.x, ev.n, ev.in); break;
    case LinearKind::ExpertGate: {
        ExpertActs& E = A.experts[ev.expert];
        E.tok.assign(ev.token_index, ev.token_index + ev.n);
        E.w.assign(ev.router_weight, ev.router_weight + ev.n);
        cp(E.x, ev.x, ev.n, ev.in);
        cp(E.g, ev.y, ev.n, ev.out);
        break;
    }
    case LinearKind::ExpertUp: cp(A.experts[ev.expert].u, ev.y, ev.n, ev.out); break;
    case LinearKind::ExpertDown:
        cp(A.experts[ev.expert].a, ev.x, ev.n, ev.in);
        cp(A.experts[ev.expert].y, ev.y, ev.n, ev.out);
        break;
    case LinearKind::SharedGate:
    case LinearKind::DenseGate: {
        FfnActs& F = ev.kind == LinearKind::SharedGate ? A.shared : A.dense;
        cp(F.x, ev.x, ev.n, ev.in);
        cp(F.g, ev.y, ev.n, ev.out);
        break;
    }
    case LinearKind::SharedUp: cp(A.shared.u, ev.y, ev.n, ev.out); break;
    case LinearKind::DenseUp: cp(A.dense.u, ev.y, ev.n, ev.out); break;
    case LinearKind::SharedDown:
    case LinearKind::DenseDown: {
        FfnActs& F = ev.kind == LinearKind::SharedDown ? A.shared : A.dense;
        cp(F.a, ev.x, ev.n, ev.in);
        cp(F.y, ev.y, ev.n, ev.out);
        break;
    }
    case LinearKind::SharedExpertGate: cp(A.shared_gate, ev.y, ev.n, ev.out); break;
    case LinearKind::Count: MOEBIUS_ASSERT(false);
    }
}

void add_rows(const float* src, int d, float* dst) {
    for (int i = 0; i < d; ++i) dst[i] += src[i];
}

struct Ctx {
    const Model&           model;
    const ModelSpec&       spec;
    int                    n;
    const GradientOptions& opt;
    Gradients&             G;
    std::vector<int>       positions; // (n) 0..n-1

    // The gradient buffer of a tensor (allocated up front), nullptr when weight gradients are off.
    float* grad(const std::string& name) const {
        if (!opt.weight_grads) return nullptr;
        auto it = G.weights.find(name);
        MOEBIUS_ASSERT(it != G.weights.end());
        return it->second.data();
    }
    float* grad(int il, LinearKind kind, int expert = -1, const char* suffix = ".weight") const {
        return grad(spec.linear_name(il, kind, expert) + suffix);
    }
    void emit(int il, LinearKind kind, int expert, int m, int in, int out, const float* x, const float* dz,
              const int* tok = nullptr, const float* rw = nullptr) const {
        if (!opt.on_linear_grad || (opt.routed_experts_only && !is_expert_kind(kind))) return;
        opt.on_linear_grad(
            LinearGradEvent{il, kind, expert, m, in, out, x, dz, tok, tok ? tok : positions.data(), rw});
    }
};

// Every linear of a layer with its kind and expert id.
template <class Fn> void for_each_linear(const LayerWeights& L, Fn&& fn) {
    auto one = [&](const std::unique_ptr<Linear>& l, LinearKind kind, int e) {
        if (l) fn(kind, e, *l);
    };
    one(L.q, LinearKind::Q, -1);
    one(L.k, LinearKind::K, -1);
    one(L.v, LinearKind::V, -1);
    one(L.o, LinearKind::O, -1);
    one(L.router, LinearKind::Router, -1);
    for (int e = 0; e < (int)L.experts.size(); ++e)
        for (int j = 0; j < 3; ++j) one(L.experts[e][j], (LinearKind)((int)LinearKind::ExpertGate + j), e);
    one(L.shared_gate, LinearKind::SharedGate, -1);
    one(L.shared_up, LinearKind::SharedUp, -1);
    one(L.shared_down, LinearKind::SharedDown, -1);
    one(L.shared_expert_gate, LinearKind::SharedExpertGate, -1);
    one(L.dense_gate, LinearKind::DenseGate, -1);
    one(L.dense_up, LinearKind::DenseUp, -1);
    one(L.dense_down, LinearKind::DenseDown, -1);
}

void allocate_gradients(const Model& model, Gradients& G) {
    const ModelSpec& s   = model.spec();
    const int64_t    H   = s.n_embd;
    auto             add = [&](const std::string& name, int64_t size) { G.weights[name].assign(size, 0.f); };
    add(s.embed_name(), (int64_t)s.n_vocab * H);
    add(s.final_norm_name(), H);
    if (!s.tie_word_embeddings) add(s.lm_head_name(), (int64_t)s.n_vocab * H);
    for (int il = 0; il < s.n_layer; ++il) {
        const LayerWeights& L = model.layer(il);
        const std::string   p = s.layer_prefix(il);
        add(p + "input_layernorm.weight", H);
        add(p + "post_attention_layernorm.weight", H);
        for_each_linear(L, [&](LinearKind kind, int e, const Linear& l) {
            add(s.linear_name(il, kind, e) + ".weight", (int64_t)l.out_features() * l.in_features());
        });
        if (!L.bq.empty()) add(s.linear_name(il, LinearKind::Q) + ".bias", (int64_t)L.bq.size());
        if (!L.bk.empty()) add(s.linear_name(il, LinearKind::K) + ".bias", (int64_t)L.bk.size());
        if (!L.bv.empty()) add(s.linear_name(il, LinearKind::V) + ".bias", (int64_t)L.bv.size());
        if (!L.bo.empty()) add(s.linear_name(il, LinearKind::O) + ".bias", (int64_t)L.bo.size());
        if (!L.q_norm.empty()) add(p + "self_attn.q_norm.weight", (int64_t)L.q_norm.size());
        if (!L.k_norm.empty()) add(p + "self_attn.k_norm.weight", (int64_t)L.k_norm.size());
    }
}

// SwiGLU FFN (dense layer or shared expert) given dy = ∂ℓ/∂(FFN output) (n, H): dhn (n, H) += ∂ℓ/∂(FFN input).
void ffn_backward(const Ctx& c, int il, const Linear& lg, const Linear& lu, const Linear& ld, LinearKind kind0,
                  const FfnActs& A, const float* dy, float* dhn) {
    const int       n = c.n, H = lg.in_features(), F = lg.out_features();
    const auto      k_up = (LinearKind)((int)kind0 + 1), k_down = (LinearKind)((int)kind0 + 2);
    const WeightF32 Wg(lg), Wu(lu), Wd(ld);
    std::vector<float> da((size_t)n * F), dg((size_t)n * F), du((size_t)n * F); // (n, F)
    cpu::matmul_nn(dy, n, H, Wd.data(), F, da.data(), false);
    cpu::silu_mul_backward(A.g.data(), A.u.data(), da.data(), (int64_t)n * F, dg.data(), du.data());
    cpu::matmul_nn(dg.data(), n, F, Wg.data(), H, dhn, true);
    cpu::matmul_nn(du.data(), n, F, Wu.data(), H, dhn, true);
    if (c.opt.weight_grads) {
        cpu::matmul_tn_acc(dy, n, H, A.a.data(), F, c.grad(il, k_down));
        cpu::matmul_tn_acc(dg.data(), n, F, A.x.data(), H, c.grad(il, kind0));
        cpu::matmul_tn_acc(du.data(), n, F, A.x.data(), H, c.grad(il, k_up));
    }
    c.emit(il, k_down, -1, n, F, H, A.a.data(), dy);
    c.emit(il, kind0, -1, n, H, F, A.x.data(), dg.data());
    c.emit(il, k_up, -1, n, H, F, A.x.data(), du.data());
}

// Sparse MoE block (routed experts, router, shared expert) given dout = ∂ℓ/∂(block output) (n, H):
// dhn (n, H) += ∂ℓ/∂(block input). experts_only: just the routed experts' events (dhn untouched).
void moe_backward(const Ctx& c, int il, const LayerActs& A, const float* dout, float* dhn, bool experts_only) {
    const LayerWeights& L = c.model.layer(il);
    const int n = c.n, H = c.spec.n_embd, E = c.spec.n_expert, K = c.spec.n_expert_used, F = c.spec.n_ff_expert;

    std::vector<int> active;
    for (int e = 0; e < E; ++e)
        if (!A.experts[e].tok.empty()) active.push_back(e);

    struct ExpertGrad {
        std::vector<float> dy, dg, du, dx; // (m, H), (m, F), (m, F), (m, H)
        std::vector<float> dw;             // (m) ∂ℓ/∂(combine weight)
    };
    std::vector<ExpertGrad>            eg(E);
    std::vector<std::array<float*, 3>> gw(E, {nullptr, nullptr, nullptr});
    if (c.opt.weight_grads)
        for (int e : active)
            for (int j = 0; j < 3; ++j) gw[e][j] = c.grad(il, (LinearKind)((int)LinearKind::ExpertGate + j), e);

    std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic)
    for (size_t ai = 0; ai < active.size(); ++ai) {
        // Exceptions (dequantize) must not cross the OpenMP region: keep the first, rethrow below.
        try {
            const int         e = active[ai];
            const ExpertActs& X = A.experts[e];
            ExpertGrad&       G = eg[e];
            const int         m = (int)X.tok.size();
            const WeightF32   Wg(*L.experts[e][0]), Wu(*L.experts[e][1]), Wd(*L.experts[e][2]);
            // out_t = Σ_e w_te · y_te: ∂ℓ/∂y = w · dout, ∂ℓ/∂w = dout · y.
            G.dy.resize((size_t)m * H);
            G.dw.resize(m);
            for (int r = 0; r < m; ++r) {
                const float* go = dout + (int64_t)X.tok[r] * H;
                const float* yr = X.y.data() + (int64_t)r * H;
                float*       dy = G.dy.data() + (int64_t)r * H;
                double       s  = 0;
                for (int d = 0; d < H; ++d) {
                    dy[d] = X.w[r] * go[d];
                    s += (double)go[d] * yr[d];
                }
                G.dw[r] = (float)s;
            }
            std::vector<float> da((size_t)m * F); // (m, F)
            cpu::matmul_nn(G.dy.data(), m, H, Wd.data(), F, da.data(), false);
            G.dg.resize((size_t)m * F);
            G.du.resize((size_t)m * F);
            cpu::silu_mul_backward(X.g.data(), X.u.data(), da.data(), (int64_t)m * F, G.dg.data(), G.du.data());
            G.dx.resize((size_t)m * H);
            cpu::matmul_nn(G.dg.data(), m, F, Wg.data(), H, G.dx.data(), false);
            cpu::matmul_nn(G.du.data(), m, F, Wu.data(), H, G.dx.data(), true);
            if (gw[e][0]) {
                cpu::matmul_tn_acc(G.dg.data(), m, F, X.x.data(), H, gw[e][0]);
                cpu::matmul_tn_acc(G.du.data(), m, F, X.x.data(), H, gw[e][1]);
                cpu::matmul_tn_acc(G.dy.data(), m, H, X.a.data(), F, gw[e][2]);
            }
        } catch (...) {
#pragma omp critical(moebius_backward_failure)
            if (!failure) failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
    auto emit_expert = [&](int e) {
        const ExpertActs& X = A.experts[e];
        const ExpertGrad& G = eg[e];
        const int         m = (int)X.tok.size();
        c.emit(il, LinearKind::ExpertDown, e, m, F, H, X.a.data(), G.dy.data(), X.tok.data(), X.w.data());
        c.emit(il, LinearKind::ExpertGate, e, m, H, F, X.x.data(), G.dg.data(), X.tok.data(), X.w.data());
        c.emit(il, LinearKind::ExpertUp, e, m, H, F, X.x.data(), G.du.data(), X.tok.data(), X.w.data());
    };
    if (experts_only) {
        for (int e : active) emit_expert(e);
        return;
    }

    // Scatter back in ascending expert order (deterministic); route ∂ℓ/∂w to its top-k slot.
    std::vector<float> dtopw((size_t)n * K, 0.f); // (n, K)
    for (int e : active) {
        const ExpertActs& X = A.experts[e];
        const ExpertGrad& G = eg[e];
        const int         m = (int)X.tok.size();
        for (int r = 0; r < m; ++r) {
            const int t = X.tok[r];
            add_rows(G.dx.data() + (int64_t)r * H, H, dhn + (int64_t)t * H);
            int j = 0;
            while (j < K && A.topi[(size_t)t * K + j] != e) ++j;
            MOEBIUS_ASSERT(j < K);
            dtopw[(size_t)t * K + j] += G.dw[r];
        }
        emit_expert(e);
        std::vector<float>().swap(eg[e].dx);
    }

    // Router: combine weights ← selected probabilities (÷ their sum if renormalised) ← softmax ← logits. The top-k
    // choice itself is piecewise constant.
    std::vector<float>  dlogits((size_t)n * E); // (n, E)
    std::vector<double> dp(E);
    for (int t = 0; t < n; ++t) {
        const float* p   = A.probs.data() + (size_t)t * E;
        const int*   ids = A.topi.data() + (size_t)t * K;
        const float* dw  = dtopw.data() + (size_t)t * K;
        std::fill(dp.begin(), dp.end(), 0.0);
        if (c.spec.norm_topk_prob) {
            // w_j = p_j / S, S = Σ_k p_k: ∂ℓ/∂p_j = (∂ℓ/∂w_j - Σ_k ∂ℓ/∂w_k · w_k) / S.
            double S = 0, wdw = 0;
            for (int j = 0; j < K; ++j) S += p[ids[j]];
            for (int j = 0; j < K; ++j) wdw += (double)dw[j] * p[ids[j]] / S;
            for (int j = 0; j < K; ++j) dp[ids[j]] = (dw[j] - wdw) / S;
        } else {
            for (int j = 0; j < K; ++j) dp[ids[j]] = dw[j];
        }
        double pdp = 0;
        for (int i = 0; i < E; ++i) pdp += p[i] * dp[i];
        for (int i = 0; i < E; ++i) dlogits[(size_t)t * E + i] = (float)(p[i] * (dp[i] - pdp));
    }
    {
        const WeightF32 Wr(*L.router);
        if (c.opt.weight_grads)
            cpu::matmul_tn_acc(dlogits.data(), n, E, A.router_x.data(), H, c.grad(il, LinearKind::Router));
        cpu::matmul_nn(dlogits.data(), n, E, Wr.data(), H, dhn, true);
        c.emit(il, LinearKind::Router, -1, n, H, E, A.router_x.data(), dlogits.data());
    }

    if (!L.shared_gate) return;
    // out += gate_t · s_t, gate_t = sigmoid(z_t) (Qwen2-MoE) or 1.
    std::vector<float> gate(n, 1.f), ds((size_t)n * H); // (n), (n, H)
    if (L.shared_expert_gate)
        for (int t = 0; t < n; ++t) gate[t] = cpu::sigmoid(A.shared_gate[t]);
    for (int t = 0; t < n; ++t)
        for (int d = 0; d < H; ++d) ds[(size_t)t * H + d] = gate[t] * dout[(size_t)t * H + d];
    if (L.shared_expert_gate) {
        std::vector<float> dz(n); // (n, 1)
        for (int t = 0; t < n; ++t) {
            double s = 0;
            for (int d = 0; d < H; ++d) s += (double)dout[(size_t)t * H + d] * A.shared.y[(size_t)t * H + d];
            dz[t] = (float)(s * gate[t] * (1.0 - gate[t]));
        }
        const WeightF32 Wsg(*L.shared_expert_gate);
        if (c.opt.weight_grads)
            cpu::matmul_tn_acc(dz.data(), n, 1, A.shared.x.data(), H, c.grad(il, LinearKind::SharedExpertGate));
        cpu::matmul_nn(dz.data(), n, 1, Wsg.data(), H, dhn, true);
        c.emit(il, LinearKind::SharedExpertGate, -1, n, H, 1, A.shared.x.data(), dz.data());
    }
    ffn_backward(c, il, *L.shared_gate, *L.shared_up, *L.shared_down, LinearKind::SharedGate, A.shared, ds.data(), dhn);
}

// Attention block. x (n, H) the layer input; dres (n, H): in ∂ℓ/∂h (h = x + attention output), out ∂ℓ/∂x.
void attention_backward(const Ctx& c, int il, const LayerActs& A, const float* x, float* dres) {
    const LayerWeights& L = c.model.layer(il);
    const ModelSpec&    s = c.spec;
    const int           n = c.n, H = s.n_embd, hd = s.head_dim, nh = s.n_head, nkv = s.n_head_kv;
    const int           qd = nh * hd, kvd = nkv * hd;
    const float         eps = s.rms_eps;
    const QkNorm        qk  = s.traits().qk_norm;
    const int*          pos = c.positions.data();
    const float*        inv_freq = c.model.rope_inv_freq().data();

    // q, k, v as the scores saw them, with the forward's ops: bias, q/k norm, clip, RoPE.
    std::vector<float> qb(A.q), kb(A.k), vb(A.v); // (n, qd), (n, kvd), (n, kvd) with bias
    if (!L.bq.empty()) cpu::add_bias(qb.data(), n, qd, L.bq.data());
    if (!L.bk.empty()) cpu::add_bias(kb.data(), n, kvd, L.bk.data());
    if (!L.bv.empty()) cpu::add_bias(vb.data(), n, kvd, L.bv.data());
    std::vector<float> qn(qb), kn(kb); // after the q/k norms
    if (qk == QkNorm::PerHead) {
        cpu::rmsnorm(qn.data(), n * nh, hd, L.q_norm.data(), eps, qn.data());
        cpu::rmsnorm(kn.data(), n * nkv, hd, L.k_norm.data(), eps, kn.data());
    } else if (qk == QkNorm::Full) {
        cpu::rmsnorm(qn.data(), n, qd, L.q_norm.data(), eps, qn.data());
        cpu::rmsnorm(kn.data(), n, kvd, L.k_norm.data(), eps, kn.data());
    }
    std::vector<float> qr(qn), kr(kn), vc(vb); // after clip and RoPE
    if (s.clip_qkv) {
        const float cl = *s.clip_qkv;
        for (auto* buf : {&qr, &kr, &vc})
            for (float& f : *buf) f = std::clamp(f, -cl, cl);
    }
    cpu::rope(qr.data(), n, nh, hd, qd, pos, inv_freq);
    cpu::rope(kr.data(), n, nkv, hd, kvd, pos, inv_freq);

    // o_proj: ∂ℓ/∂Z = dres.
    std::vector<float> dattn((size_t)n * qd); // (n, qd)
    {
        const WeightF32 Wo(*L.o);
        cpu::matmul_nn(dres, n, H, Wo.data(), qd, dattn.data(), false);
        if (c.opt.weight_grads) {
            cpu::matmul_tn_acc(dres, n, H, A.attn.data(), qd, c.grad(il, LinearKind::O));
            if (!L.bo.empty()) cpu::colsum_acc(dres, n, H, c.grad(il, LinearKind::O, -1, ".bias"));
        }
        c.emit(il, LinearKind::O, -1, n, qd, H, A.attn.data(), dres);
    }

    std::vector<float> dq((size_t)n * qd), dk((size_t)n * kvd), dv((size_t)n * kvd);
    cpu::attention_backward(qr.data(), kr.data(), vc.data(), A.attn.data(), dattn.data(), n, nh, nkv, hd, dq.data(),
                            dk.data(), dv.data());
    cpu::rope_backward(dq.data(), n, nh, hd, qd, pos, inv_freq);
    cpu::rope_backward(dk.data(), n, nkv, hd, kvd, pos, inv_freq);
    if (s.clip_qkv) {
        // torch.clamp passes the gradient where min ≤ value ≤ max.
        const float cl   = *s.clip_qkv;
        auto        mask = [cl](std::vector<float>& g, const std::vector<float>& pre) {
            for (size_t i = 0; i < g.size(); ++i)
                if (!(pre[i] >= -cl && pre[i] <= cl)) g[i] = 0.f;
        };
        mask(dq, qn);
        mask(dk, kn);
        mask(dv, vb);
    }
    // Through the q/k norms to the projections' outputs.
    std::vector<float> dzq, dzk; // (n, qd), (n, kvd)
    if (qk == QkNorm::None) {
        dzq = std::move(dq);
        dzk = std::move(dk);
    } else {
        dzq.resize((size_t)n * qd);
        dzk.resize((size_t)n * kvd);
        const std::string p   = s.layer_prefix(il);
        float*            gqn = c.opt.weight_grads ? c.grad(p + "self_attn.q_norm.weight") : nullptr;
        float*            gkn = c.opt.weight_grads ? c.grad(p + "self_attn.k_norm.weight") : nullptr;
        if (qk == QkNorm::PerHead) {
            cpu::rmsnorm_backward(qb.data(), n * nh, hd, L.q_norm.data(), eps, dq.data(), dzq.data(), false, gqn);
            cpu::rmsnorm_backward(kb.data(), n * nkv, hd, L.k_norm.data(), eps, dk.data(), dzk.data(), false, gkn);
        } else {
            cpu::rmsnorm_backward(qb.data(), n, qd, L.q_norm.data(), eps, dq.data(), dzq.data(), false, gqn);
            cpu::rmsnorm_backward(kb.data(), n, kvd, L.k_norm.data(), eps, dk.data(), dzk.data(), false, gkn);
        }
    }
    const std::vector<float>& dzv = dv;

    std::vector<float> dhn((size_t)n * H); // (n, H) ∂ℓ/∂RMSNorm(x)
    {
        const WeightF32 Wq(*L.q), Wk(*L.k), Wv(*L.v);
        cpu::matmul_nn(dzq.data(), n, qd, Wq.data(), H, dhn.data(), false);
        cpu::matmul_nn(dzk.data(), n, kvd, Wk.data(), H, dhn.data(), true);
        cpu::matmul_nn(dzv.data(), n, kvd, Wv.data(), H, dhn.data(), true);
    }
    if (c.opt.weight_grads) {
        cpu::matmul_tn_acc(dzq.data(), n, qd, A.hn.data(), H, c.grad(il, LinearKind::Q));
        cpu::matmul_tn_acc(dzk.data(), n, kvd, A.hn.data(), H, c.grad(il, LinearKind::K));
        cpu::matmul_tn_acc(dzv.data(), n, kvd, A.hn.data(), H, c.grad(il, LinearKind::V));
        if (!L.bq.empty()) cpu::colsum_acc(dzq.data(), n, qd, c.grad(il, LinearKind::Q, -1, ".bias"));
        if (!L.bk.empty()) cpu::colsum_acc(dzk.data(), n, kvd, c.grad(il, LinearKind::K, -1, ".bias"));
        if (!L.bv.empty()) cpu::colsum_acc(dzv.data(), n, kvd, c.grad(il, LinearKind::V, -1, ".bias"));
    }
    c.emit(il, LinearKind::Q, -1, n, H, qd, A.hn.data(), dzq.data());
    c.emit(il, LinearKind::K, -1, n, H, kvd, A.hn.data(), dzk.data());
    c.emit(il, LinearKind::V, -1, n, H, kvd, A.hn.data(), dzv.data());

    // The residual path keeps dres; the norm adds its share.
    cpu::rmsnorm_backward(x, n, H, L.attn_norm.data(), eps, dhn.data(), dres, true,
                          c.opt.weight_grads ? c.grad(s.layer_prefix(il) + "input_layernorm.weight") : nullptr);
}

// Runs layer il on x (n, H) in place with the model's own forward, recording its activations in A; `also` (optional)
// observes the same pass.
void record_layer(const Ctx& c, int il, float* x, LayerActs& A, const Hooks* also = nullptr) {
    A.experts.assign(c.spec.n_expert, ExpertActs{});
    A.shared_gate.clear();
    Hooks hooks;
    hooks.on_linear = [&](const LinearEvent& ev) { capture(ev, A); };
    hooks.on_router = [&](const RouterEvent& ev) {
        A.probs.assign(ev.probs, ev.probs + (int64_t)ev.n * ev.n_expert);
        A.topi.assign(ev.topk_ids, ev.topk_ids + (int64_t)ev.n * ev.k);
        A.topw.assign(ev.topk_weights, ev.topk_weights + (int64_t)ev.n * ev.k);
    };
    if (also) hooks = chain_hooks(hooks, *also);
    c.model.forward_layer(il, x, c.n, nullptr, &hooks);
}

// Upper bound of one layer's LayerActs in bytes for n tokens.
size_t layer_acts_bytes(const ModelSpec& s, int n) {
    const int64_t qd = (int64_t)s.n_head * s.head_dim, kvd = (int64_t)s.n_head_kv * s.head_dim, H = s.n_embd;
    const int64_t ffn = std::max<int64_t>({(int64_t)s.n_ff_shared, (int64_t)s.n_ff_dense, 0});
    const int64_t per_token = 4 * H + 2 * qd + 2 * kvd + s.n_expert + 2 * s.n_expert_used +
                              (int64_t)s.n_expert_used * (2 + 2 * H + 3 * s.n_ff_expert) + 1 + 2 * H + 3 * ffn;
    return (size_t)per_token * n * sizeof(float);
}

// One decoder layer from its stored input x (n, H) and its activations A. dres: in ∂ℓ/∂(layer output), out ∂ℓ/∂x.
// lowest (routed_experts_only without weight gradients): stop after the routed experts' events.
void layer_backward(const Ctx& c, int il, const float* x, float* dres, const LayerActs& A, bool lowest) {
    const LayerWeights& L = c.model.layer(il);
    const int           n = c.n, H = c.spec.n_embd;
    if (lowest) {
        if (L.is_moe) moe_backward(c, il, A, dres, nullptr, true);
        return;
    }
    // h = x + (o_proj output + bias), rounded as forward_layer rounds it.
    std::vector<float> h = A.attn_out; // (n, H)
    if (!L.bo.empty()) cpu::add_bias(h.data(), n, H, L.bo.data());
    for (size_t i = 0; i < h.size(); ++i) h[i] = x[i] + h[i];

    // FFN block: out = h + FFN(RMSNorm(h)).
    std::vector<float> dhn((size_t)n * H, 0.f); // (n, H) ∂ℓ/∂RMSNorm(h)
    if (L.is_moe)
        moe_backward(c, il, A, dres, dhn.data(), false);
    else
        ffn_backward(c, il, *L.dense_gate, *L.dense_up, *L.dense_down, LinearKind::DenseGate, A.dense, dres,
                     dhn.data());
    cpu::rmsnorm_backward(
        h.data(), n, H, L.ffn_norm.data(), c.spec.rms_eps, dhn.data(), dres, true,
        c.opt.weight_grads ? c.grad(c.spec.layer_prefix(il) + "post_attention_layernorm.weight") : nullptr);
    // Attention block: h = x + Attn(RMSNorm(x)).
    attention_backward(c, il, A, x, dres);
}

// Final norm, lm_head and the mean cross-entropy over predictions 0..n-2. x (n, H) the last residual; writes
// dx (n, H) = ∂ℓ/∂x and returns the loss. Logits are formed for a block of rows at a time (bounded memory).
double head_backward(const Ctx& c, std::span<const int32_t> tokens, const float* x, float* dx) {
    const ModelSpec& s = c.spec;
    const int        n = c.n, H = s.n_embd, V = s.n_vocab, N = n - 1;
    const auto&      fn = c.model.final_norm();
    std::vector<float> xn((size_t)n * H), dxn((size_t)n * H, 0.f); // (n, H)
    cpu::rmsnorm(x, n, H, fn.data(), s.rms_eps, xn.data());
    const Linear&   head = c.model.lm_head();
    const WeightF32 W(head);
    float*          gW = c.opt.weight_grads ? c.grad(s.lm_head_name()) : nullptr;

    constexpr int       k_rows = 32;
    std::vector<float>  dlogits((size_t)std::min(k_rows, N) * V); // (rows, V): logits, then ∂ℓ/∂logits
    std::vector<double> row_loss(N);
    for (int t0 = 0; t0 < N; t0 += k_rows) {
        const int m = std::min(k_rows, N - t0);
        head.forward(xn.data() + (int64_t)t0 * H, m, dlogits.data());
#pragma omp parallel for schedule(static) if ((int64_t)m * V > 32768)
        for (int r = 0; r < m; ++r) {
            row_loss[t0 + r] =
                cpu::cross_entropy_backward(dlogits.data() + (int64_t)r * V, V, tokens[t0 + r + 1], 1.0f / N);
        }
        if (gW) cpu::matmul_tn_acc(dlogits.data(), m, V, xn.data() + (int64_t)t0 * H, H, gW);
        cpu::matmul_nn(dlogits.data(), m, V, W.data(), H, dxn.data() + (int64_t)t0 * H, false);
    }
    cpu::rmsnorm_backward(x, n, H, fn.data(), s.rms_eps, dxn.data(), dx, false,
                          c.opt.weight_grads ? c.grad(s.final_norm_name()) : nullptr);
    double loss = 0;
    for (double l : row_loss) loss += l;
    return loss / N;
}

// routed_experts_only without weight gradients: nothing is wanted below the lowest MoE layer's experts (that layer;
// n_layer if none is MoE). -1: the backward goes all the way down.
int lowest_layer(const Model& model, const GradientOptions& opt) {
    if (!opt.routed_experts_only || opt.weight_grads) return -1;
    const ModelSpec& s = model.spec();
    for (int il = 0; il < s.n_layer; ++il)
        if (s.layer_is_moe[il]) return il;
    return s.n_layer;
}

void check_sequence(const ModelSpec& spec, size_t n) {
    if (n < 2) throw InputError("the next-token loss needs at least 2 tokens, got " + std::to_string(n));
    if (n > (size_t)INT_MAX / std::max(1, spec.n_embd))
        throw InputError("sequence of " + std::to_string(n) + " tokens is too long");
}

} // namespace

Gradients loss_and_gradients(const Model& model, std::span<const int32_t> tokens, const GradientOptions& opt) {
    const ModelSpec& spec = model.spec();
    check_sequence(spec, tokens.size());
    const int n = (int)tokens.size(), H = spec.n_embd, nl = spec.n_layer;

    Gradients G;
    G.n_predictions = n - 1;
    if (opt.weight_grads) allocate_gradients(model, G);
    Ctx c{model, spec, n, opt, G, std::vector<int>(n)};
    std::iota(c.positions.begin(), c.positions.end(), 0);

    // Forward, keeping each layer's input residual and, when they fit, its activations.
    const bool keep = layer_acts_bytes(spec, n) * nl <= opt.max_activation_bytes;
    std::vector<LayerActs>          acts(keep ? nl : 1);
    std::vector<std::vector<float>> xs(nl + 1); // [n_layer + 1] (n, H)
    xs[0].resize((size_t)n * H);
    model.embed(tokens.data(), n, xs[0].data());
    for (int il = 0; il < nl; ++il) {
        xs[il + 1] = xs[il];
        if (keep) record_layer(c, il, xs[il + 1].data(), acts[il], opt.forward_hooks);
        else model.forward_layer(il, xs[il + 1].data(), n, nullptr, opt.forward_hooks);
    }

    std::vector<float> dx((size_t)n * H); // (n, H) ∂ℓ/∂(residual stream) at the current depth
    G.loss = head_backward(c, tokens, xs[nl].data(), dx.data());
    std::vector<float>().swap(xs[nl]);

    const int lowest = lowest_layer(model, opt);
    for (int il = nl - 1; il >= std::max(lowest, 0); --il) {
        LayerActs& A = keep ? acts[il] : acts[0];
        if (!keep) {
            std::vector<float> h = xs[il]; // (n, H)
            record_layer(c, il, h.data(), A);
        }
        layer_backward(c, il, xs[il].data(), dx.data(), A, il == lowest);
        if (keep) A = LayerActs{};
        std::vector<float>().swap(xs[il]);
    }
    if (lowest >= 0) return G; // ∂ℓ/∂x below the lowest layer was not formed

    if (float* ge = opt.weight_grads ? c.grad(spec.embed_name()) : nullptr)
        for (int t = 0; t < n; ++t) add_rows(dx.data() + (int64_t)t * H, H, ge + (int64_t)tokens[t] * H);
    return G;
}

std::vector<double> layerwise_losses_and_events(Model& model, std::span<const std::vector<int32_t>> sequences,
                                                const SequenceGradientOptions& sopt, int threads,
                                                const ProgressFn& progress) {
    const ModelSpec& spec = model.spec();
    const int        N = (int)sequences.size(), H = spec.n_embd, nl = spec.n_layer;
    const int        T = threads > 0 ? threads : num_threads();
    for (const auto& seq : sequences) check_sequence(spec, seq.size());

    // Per sequence: the options loss_and_gradients would get (events tagged with the sequence), a context, and each
    // layer's input residual xs[s][l] (n, H), l = 0..n_layer.
    GradientOptions what;
    what.weight_grads        = false;
    what.routed_experts_only = sopt.routed_experts_only;
    std::vector<GradientOptions>                 opts(N, what);
    std::vector<Gradients>                       G(N);
    std::vector<std::unique_ptr<Ctx>>            ctx(N);
    std::vector<std::vector<std::vector<float>>> xs(N, std::vector<std::vector<float>>(nl + 1));
    for (int s = 0; s < N; ++s) {
        const int n = (int)sequences[s].size();
        if (sopt.on_linear_grad) opts[s].on_linear_grad = [&sopt, s](const LinearGradEvent& e) { sopt.on_linear_grad(s, e); };
        ctx[s] = std::make_unique<Ctx>(Ctx{model, spec, n, opts[s], G[s], std::vector<int>(n)});
        std::iota(ctx[s]->positions.begin(), ctx[s]->positions.end(), 0);
        xs[s][0].resize((size_t)n * H);
        model.embed(sequences[s].data(), n, xs[s][0].data());
        G[s].n_predictions = n - 1;
    }
    const int lowest = lowest_layer(model, what);
    const int bottom = std::max(lowest, 0);
    const int steps  = nl + (nl - bottom) + 1;
    int       step   = 0;
    auto      report = [&](const std::string& what) { report_progress(progress, (double)step++ / steps, what); };
    std::vector<bool> resident(nl);
    for (int il = 0; il < nl; ++il) resident[il] = model.layer_loaded(il);
    auto release = [&](int il) {
        if (!resident[il]) model.release_layer(il);
    };

    for (int il = 0; il < nl; ++il) {
        report("forward: layer " + std::to_string(il + 1) + "/" + std::to_string(nl));
        model.load_layer(il);
        parallel_for_each(N, T, [&](int s) { // one sequence per thread, as collect_gradient_stats runs them
            xs[s][il + 1] = xs[s][il];
            Hooks observer;
            if (sopt.forward_hooks) observer = sopt.forward_hooks(s);
            model.forward_layer(il, xs[s][il + 1].data(), ctx[s]->n, nullptr, sopt.forward_hooks ? &observer : nullptr);
            if (il < bottom) std::vector<float>().swap(xs[s][il]); // below the backward's reach
        });
        // Read again by the backward; the top layer is its first, so it stays.
        if (il < nl - 1 || il < bottom) release(il);
    }
    report("loss");
    std::vector<double>             loss(N);
    std::vector<std::vector<float>> dx(N);
    parallel_for_each(N, T, [&](int s) {
        dx[s].resize((size_t)ctx[s]->n * H);
        loss[s] = head_backward(*ctx[s], sequences[s], xs[s][nl].data(), dx[s].data());
        std::vector<float>().swap(xs[s][nl]);
    });
    for (int il = nl - 1; il >= bottom; --il) {
        report("backward: layer " + std::to_string(il + 1) + "/" + std::to_string(nl));
        model.load_layer(il);
        parallel_for_each(N, T, [&](int s) {
            // The activations recorded again from the layer's input (loss_and_gradients' path when they do not fit).
            LayerActs          A;
            std::vector<float> h = xs[s][il]; // (n, H)
            record_layer(*ctx[s], il, h.data(), A);
            layer_backward(*ctx[s], il, xs[s][il].data(), dx[s].data(), A, il == lowest);
            std::vector<float>().swap(xs[s][il]);
        });
        release(il);
        if (sopt.on_layer_done) sopt.on_layer_done(il);
    }
    return loss;
}

} // namespace moebius
