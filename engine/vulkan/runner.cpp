#include "engine/vulkan/runner.h"

#include "engine/core/error.h"
#include "engine/cpu/cejd_linear.h"
#include "engine/cpu/kbvq_linear.h"
#include "engine/vulkan/ops.h"

#include <algorithm>
#include <cmath>

namespace moebius::vk {

namespace {

// Every buffer here is bound whole by some dispatch: refuse what one binding cannot hold before anything runs.
// Weight sets (QWeights) and the embedding table are split to fit; norms, biases, the KV cache of a layer and the
// activations of a k_max_chunk-token chunk are not (they are far below any real device's limit).
Buffer bindable(Device& dev, uint64_t bytes, const char* what) {
    if (bytes > dev.max_binding_bytes())
        throw UnsupportedError(std::string("vulkan: ") + what + " needs " + std::to_string(bytes >> 10) +
                               " KiB in one binding, the device allows " +
                               std::to_string(dev.max_binding_bytes() >> 10) + " KiB; it is not split");
    return dev.create_buffer(std::max<uint64_t>(bytes, 4));
}

Buffer upload_f32(Device& dev, const std::vector<float>& v) {
    Buffer b = bindable(dev, v.size() * 4, "a norm / bias / embedding table");
    if (!v.empty()) dev.upload(b, v.data(), v.size() * 4);
    return b;
}

// The experts' `kind` (0 gate, 1 up, 2 down) when all are KBVQ of one group (one owner module, whose arrays every
// member holds), else empty.
std::vector<const KbvqLinear*> kbvq_group(const std::vector<std::array<std::unique_ptr<Linear>, 3>>& experts,
                                         int kind) {
    std::vector<const KbvqLinear*> g;
    std::string                    owner;
    for (const auto& e : experts) {
        const auto* k = dynamic_cast<const KbvqLinear*>(e[kind].get());
        if (!k) return {};
        const std::string& o = k->packed().owner;
        if (g.empty()) owner = o;
        if (o != owner || k->rank() != dynamic_cast<const KbvqLinear&>(*experts[0][kind]).rank()) return {};
        g.push_back(k);
    }
    return g;
}

// A KBVQ linear's coefficients as stored: q (rank, in) int8 and f16 row scales, padded with zero rows to `rank`.
void append_kbvq_coef(const KbvqLinear& l, int rank, std::vector<int8_t>& q, std::vector<uint16_t>& scales) {
    const size_t      q0 = q.size(), s0 = scales.size();
    const KbvqPacked& p  = l.packed(); // sizes validated by KbvqLinear's constructor
    q.insert(q.end(), p.coef.begin(), p.coef.end());
    scales.insert(scales.end(), p.coef_scales.begin(), p.coef_scales.end());
    q.resize(q0 + (size_t)rank * l.in_features(), 0);
    scales.resize(s0 + rank, 0);
}

// The group's basis (rows, rank) padded with zero columns, then γ (rows), β (rows; zeros without a bias): appended.
void append_kbvq_affine(const KbvqShared& sh, int rows, int rank, std::vector<float>& basis, std::vector<float>& gamma,
                        std::vector<float>& beta) {
    for (int o = 0; o < rows; ++o)
        for (int q = 0; q < rank; ++q) basis.push_back(q < sh.rank ? sh.basis[(size_t)o * sh.rank + q] : 0.f);
    gamma.insert(gamma.end(), sh.gamma.begin(), sh.gamma.end());
    if (sh.beta.empty()) beta.resize(beta.size() + rows, 0.f);
    else beta.insert(beta.end(), sh.beta.begin(), sh.beta.end());
}

} // namespace

QWeights Runner::upload(const std::vector<const Linear*>& lins, int out, const std::string& what) {
    QWeights q = QWeights::upload(dev_, lins, out);
    if (!q.note.empty()) notes_.push_back(what + ": " + q.note);
    if (q.n_parts() > 1) ++split_sets_;
    return q;
}

Runner::Runner(Device& dev, const Model& model, int n_ctx) : dev_(dev), spec_(model.spec()) {
    const ModelSpec& s = spec_;
    shape_             = {s.n_head, s.n_head_kv, s.head_dim};
    if (s.head_dim % 2 != 0) throw UnsupportedError("vulkan: odd head_dim " + std::to_string(s.head_dim));
    if (s.n_head % s.n_head_kv != 0) throw UnsupportedError("vulkan: n_head is not a multiple of n_head_kv");
    // The kernels' fixed limits (shaders/qk_rope.comp, router_topk.comp), checked before anything is uploaded.
    if (s.n_head + s.n_head_kv > 512) throw UnsupportedError("vulkan: more than 512 attention heads");
    if (s.n_moe_layers() > 0 && (s.n_expert > 1024 || s.n_expert_used > 32))
        throw UnsupportedError("vulkan: routing supports up to 1024 experts and top-32 (model: " +
                               std::to_string(s.n_expert) + " experts, top-" + std::to_string(s.n_expert_used) + ")");
    switch (s.traits().qk_norm) {
    case QkNorm::None: qk_mode_ = QkNormMode::None; break;
    case QkNorm::PerHead: qk_mode_ = QkNormMode::PerHead; break;
    case QkNorm::Full: qk_mode_ = QkNormMode::Full; break;
    }
    for (int il = 0; il < s.n_layer; ++il)
        if (!model.layer_loaded(il))
            throw Error("vulkan: layer " + std::to_string(il) + " is not loaded (lazily loaded model)");

    {
        // The embedding table (n_vocab, H) in row ranges that fit one binding each (one embed dispatch per part).
        const auto&    t   = model.embeddings();
        const uint64_t row = (uint64_t)s.n_embd * 4;
        embed_rows_        = (int)std::min<uint64_t>(s.n_vocab, std::max<uint64_t>(1, dev_.max_binding_bytes() / row));
        for (int v0 = 0; v0 < s.n_vocab; v0 += embed_rows_) {
            const int rows = std::min(embed_rows_, s.n_vocab - v0);
            embed_.push_back(upload_f32(dev_, std::vector<float>(t.begin() + (int64_t)v0 * s.n_embd,
                                                                 t.begin() + (int64_t)(v0 + rows) * s.n_embd)));
        }
    }
    final_norm_ = upload_f32(dev_, model.final_norm());
    lm_head_    = upload({&model.lm_head()}, s.n_vocab, "lm_head");
    inv_freq_   = model.rope_inv_freq();
    layers_.resize(s.n_layer);
    for (int il = 0; il < s.n_layer; ++il) {
        const LayerWeights& L   = model.layer(il);
        Layer&              G   = layers_[il];
        const std::string   pre = "layer " + std::to_string(il) + " ";
        G.attn_norm             = upload_f32(dev_, L.attn_norm);
        G.ffn_norm              = upload_f32(dev_, L.ffn_norm);
        G.qkv = upload({L.q.get(), L.k.get(), L.v.get()}, shape_.q_dim() + 2 * shape_.kv_dim(), pre + "q/k/v");
        G.o   = upload({L.o.get()}, s.n_embd, pre + "o_proj");
        if (!L.bq.empty()) {
            std::vector<float> b = L.bq; // (q_dim + 2·kv_dim): q | k | v, as the stacked rows
            b.insert(b.end(), L.bk.begin(), L.bk.end());
            b.insert(b.end(), L.bv.begin(), L.bv.end());
            G.bqkv = upload_f32(dev_, b);
        }
        if (!L.bo.empty()) G.bo = upload_f32(dev_, L.bo);
        if (!L.q_norm.empty()) {
            G.q_norm = upload_f32(dev_, L.q_norm);
            G.k_norm = upload_f32(dev_, L.k_norm);
        }
        G.is_moe = L.is_moe;
        if (L.is_moe) {
            std::vector<const Linear*> router{L.router.get()};
            G.shared_gated = L.shared_expert_gate != nullptr;
            if (G.shared_gated) router.push_back(L.shared_expert_gate.get());
            G.router = upload(router, (int)(s.n_expert + (G.shared_gated ? 1 : 0)), pre + "router");
            // MoBiE's shared bases (cejd_linear.h), as Model::moe_ffn finds them.
            const CejdLinear* cg = shared_basis_group(L.experts, 0, true);
            const CejdLinear* cu = shared_basis_group(L.experts, 1, true);
            const CejdLinear* cd = shared_basis_group(L.experts, 2, false);
            const bool        in_side = cg && cu && cg->rank() == cu->rank();
            auto part = [](const Linear* l, bool use) { return use ? &static_cast<const CejdLinear*>(l)->residual() : l; };
            // KBVQ's groups: the kernels take the VQ residuals, the coefficients, basis and affine go up below.
            const auto kg = kbvq_group(L.experts, 0), ku = kbvq_group(L.experts, 1), kd = kbvq_group(L.experts, 2);
            G.kb_gu       = !kg.empty() && !ku.empty();
            G.kb_down     = !kd.empty();
            auto kpart    = [](const Linear* l, bool use) {
                return use ? &static_cast<const KbvqLinear*>(l)->residual() : l;
            };
            std::vector<const Linear*> gu, down;
            for (const auto& e : L.experts) {
                gu.push_back(kpart(part(e[0].get(), in_side), G.kb_gu));
                gu.push_back(kpart(part(e[1].get(), in_side), G.kb_gu));
                down.push_back(kpart(part(e[2].get(), cd != nullptr), G.kb_down));
            }
            G.experts_gu   = upload(gu, s.n_ff_expert, pre + "experts gate/up");
            G.experts_down = upload(down, s.n_embd, pre + "experts down");
            if (in_side) {
                G.rank_gu  = cg->rank();
                G.basis_gu = upload({cg->basis().get(), cu->basis().get()}, 2 * G.rank_gu, pre + "experts gate/up basis");
                std::vector<float> coef; // (2·n_expert·F, r): gate's then up's rows of each expert
                for (const auto& e : L.experts)
                    for (int kind = 0; kind < 2; ++kind) {
                        const auto dq = static_cast<const CejdLinear&>(*e[kind]).coef().dequantize();
                        coef.insert(coef.end(), dq.begin(), dq.end());
                    }
                G.coef_gu = upload_f32(dev_, coef);
            }
            if (cd) {
                G.rank_down = cd->rank();
                std::vector<const Linear*> coefs;
                for (const auto& e : L.experts) coefs.push_back(&static_cast<const CejdLinear&>(*e[2]).coef());
                G.coef_down  = upload(coefs, G.rank_down, pre + "experts down coefficients");
                G.basis_down = upload({cd->basis().get()}, s.n_embd, pre + "experts down basis");
            }
            if (G.kb_gu) {
                const int E = (int)L.experts.size(), r = std::max(kg[0]->rank(), ku[0]->rank());
                G.kb_rank_gu = r;
                if (r > 0) {
                    std::vector<int8_t>   q; // (E·2r, H): expert e's gate rows then up rows
                    std::vector<uint16_t> sc;
                    for (int e = 0; e < E; ++e) {
                        append_kbvq_coef(*kg[e], r, q, sc);
                        append_kbvq_coef(*ku[e], r, q, sc);
                    }
                    G.kb_coef_gu = QWeights::upload_int8_rows(dev_, q, sc, 1, E * 2 * r, s.n_embd);
                }
                std::vector<float> basis, gamma, beta; // (2F, r), (2F), (2F): gate's rows then up's
                append_kbvq_affine(*kg[0]->shared(), s.n_ff_expert, r, basis, gamma, beta);
                append_kbvq_affine(*ku[0]->shared(), s.n_ff_expert, r, basis, gamma, beta);
                basis.insert(basis.end(), gamma.begin(), gamma.end());
                basis.insert(basis.end(), beta.begin(), beta.end());
                G.kb_aff_gu = upload_f32(dev_, basis);
                max_z_      = std::max(max_z_, E * 2 * r);
            }
            if (G.kb_down) {
                const int r     = kd[0]->rank();
                G.kb_rank_down = r;
                if (r > 0) {
                    std::vector<int8_t>   q; // (E, r, F)
                    std::vector<uint16_t> sc;
                    for (const KbvqLinear* l : kd) append_kbvq_coef(*l, r, q, sc);
                    G.kb_coef_down = QWeights::upload_int8_rows(dev_, q, sc, (int)kd.size(), r, s.n_ff_expert);
                }
                std::vector<float> basis, gamma, beta; // (H, r), (H), (H)
                append_kbvq_affine(*kd[0]->shared(), s.n_embd, r, basis, gamma, beta);
                basis.insert(basis.end(), gamma.begin(), gamma.end());
                basis.insert(basis.end(), beta.begin(), beta.end());
                G.kb_aff_down = upload_f32(dev_, basis);
            }
            max_rank_ = std::max({max_rank_, G.rank_gu, G.rank_down, G.kb_rank_down});
            if (L.shared_gate) {
                G.ffn_gu   = upload({L.shared_gate.get(), L.shared_up.get()}, s.n_ff_shared, pre + "shared gate/up");
                G.ffn_down = upload({L.shared_down.get()}, s.n_embd, pre + "shared down");
            }
        } else {
            G.ffn_gu   = upload({L.dense_gate.get(), L.dense_up.get()}, L.dense_gate->out_features(),
                                pre + "dense gate/up");
            G.ffn_down = upload({L.dense_down.get()}, s.n_embd, pre + "dense down");
        }
    }
    reset(n_ctx);
    ensure_scratch(1); // a decode step's buffers: what does not fit fails here, before any token runs
}

void Runner::reset(int n_ctx) {
    if (n_ctx <= 0) throw InputError("vulkan: the context must hold at least one token");
    n_past_ = 0;
    if (n_ctx <= n_ctx_ && rope_) return;
    n_ctx_  = n_ctx;
    rope_   = upload_f32(dev_, rope_table(inv_freq_, n_ctx));
    const uint64_t kv_bytes = (uint64_t)n_ctx * shape_.kv_dim() * 4;
    for (auto& G : layers_) {
        G.k_cache = bindable(dev_, kv_bytes, "the KV cache of a layer");
        G.v_cache = bindable(dev_, kv_bytes, "the KV cache of a layer");
    }
    if (cap_ > 0) {
        const int cap = cap_;
        cap_          = 0; // the scores scratch depends on n_ctx
        ensure_scratch(cap);
    }
}

bool Runner::set_profiling(bool on) {
    profiling_ = on && dev_.info().timestamp_bits > 0;
    return profiling_ == on;
}

void Runner::rewind(int n_past) {
    if (n_past < 0 || n_past > n_past_) throw InputError("vulkan: cannot rewind the cache forward");
    n_past_ = n_past;
}

void Runner::ensure_scratch(int n) {
    if (n <= cap_) return;
    const ModelSpec& s   = spec_;
    const uint64_t   cap = (uint64_t)n, f = 4;
    int              ff  = 1; // widest shared / dense FFN
    for (auto& G : layers_)
        if (G.ffn_gu.n_mats) ff = std::max(ff, G.ffn_gu.out);
    const int k = std::max(s.n_expert_used, 1);
    x_       = bindable(dev_, cap * s.n_embd * f, "an activation buffer");
    qkv_     = bindable(dev_, cap * (shape_.q_dim() + 2 * shape_.kv_dim()) * f, "an activation buffer");
    q_       = bindable(dev_, cap * shape_.q_dim() * f, "an activation buffer");
    attn_    = bindable(dev_, cap * shape_.q_dim() * f, "an activation buffer");
    scores_  = bindable(dev_, cap * s.n_head * n_ctx_ * f, "an activation buffer");
    rlogits_ = bindable(dev_, cap * (s.n_expert + 1) * f, "an activation buffer");
    ids_     = bindable(dev_, cap * k * 4, "an activation buffer");
    topw_    = bindable(dev_, cap * k * f, "an activation buffer");
    h_       = bindable(dev_, cap * k * std::max(s.n_ff_expert, 1) * f, "an activation buffer");
    hs_      = bindable(dev_, cap * ff * f, "an activation buffer");
    delta_   = bindable(dev_, cap * s.n_embd * f, "an activation buffer");
    last_    = bindable(dev_, (uint64_t)s.n_embd * f, "an activation buffer");
    logits_  = bindable(dev_, cap * s.n_vocab * f, "an activation buffer");
    tokens_  = bindable(dev_, cap * 4, "an activation buffer");
    lz_      = bindable(dev_, cap * std::max({2 * max_rank_, max_z_, 1}) * f, "an activation buffer");
    lv_      = bindable(dev_, cap * std::max(max_rank_, 1) * f, "an activation buffer");
    cap_     = n;
}

void Runner::forward(const int32_t* tokens, int n, float* logits, bool logits_all) {
    if (n <= 0) return;
    const ModelSpec& s = spec_;
    if (n_past_ + n > n_ctx_)
        throw InputError("context is full: " + std::to_string(n_past_ + n) + " tokens exceed the context of " +
                         std::to_string(n_ctx_));
    for (int i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= s.n_vocab)
            throw InputError("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." +
                             std::to_string(s.n_vocab - 1) + ")");
    // Long prompts run in chunks: causal attention over the cache makes that exact, every kernel is batch-invariant,
    // and the activation buffers stay at k_max_chunk tokens (a (n, n_vocab) logits buffer of a long window would
    // not fit one binding on large models).
    for (int i = 0; i < n; i += k_max_chunk) {
        const int  c    = std::min(k_max_chunk, n - i);
        const bool last = i + c == n;
        forward_chunk(tokens + i, c, logits_all ? (logits ? logits + (size_t)i * s.n_vocab : nullptr)
                                                : (last ? logits : nullptr),
                      logits_all);
    }
}

void Runner::forward_chunk(const int32_t* tokens, int n, float* logits, bool logits_all) {
    const ModelSpec& s = spec_;
    ensure_scratch(n);
    dev_.upload(tokens_, tokens, (uint64_t)n * 4);

    const int   H = s.n_embd, K = s.n_expert_used, E = s.n_expert;
    CommandList cl(dev_);
    if (profiling_) cl.enable_timing();
    for (size_t p = 0; p < embed_.size(); ++p)
        embed(dev_, cl, tokens_, n, embed_[p], H, x_, (int)p * embed_rows_,
              std::min(embed_rows_, s.n_vocab - (int)p * embed_rows_));
    size_t layer_start = cl.n_dispatches();
    for (int il = 0; il < s.n_layer; ++il) {
        Layer& G = layers_[il];
        if (il == s.n_layer - 1) layer_start = cl.n_dispatches();
        // h = x + O(Attn(RoPE(norm(QKV(RMSNorm(x)))))); the RMSNorms run inside the kernels that read them.
        const float eps = s.rms_eps;
        linear(dev_, cl, G.qkv, 0, x_, n, qkv_, {.bias = G.bqkv ? &G.bqkv : nullptr, .norm = &G.attn_norm, .eps = eps});
        cl.label("qkv_proj");
        if (n == 1 && shape_.head_dim <= 256) { // decode: q/k norm + RoPE inside attention, one dispatch
            attention_rope(dev_, cl, qkv_, n_past_, shape_, qk_mode_, G.q_norm ? &G.q_norm : nullptr,
                           G.k_norm ? &G.k_norm : nullptr, s.rms_eps, s.clip_qkv, rope_, G.k_cache, G.v_cache, n_ctx_,
                           scores_, attn_);
        } else {
            qk_rope(dev_, cl, qkv_, n, n_past_, shape_, qk_mode_, G.q_norm ? &G.q_norm : nullptr,
                    G.k_norm ? &G.k_norm : nullptr, s.rms_eps, s.clip_qkv, rope_, q_, G.k_cache, G.v_cache);
            attention(dev_, cl, q_, G.k_cache, G.v_cache, n, n_past_, shape_, n_ctx_, scores_, attn_);
        }
        linear(dev_, cl, G.o, 0, attn_, n, x_, {.bias = G.bo ? &G.bo : nullptr, .residual = true});
        cl.label("o_proj");
        // out = h + FFN(RMSNorm(h))
        const InputNorm fn{&G.ffn_norm, eps};
        if (G.is_moe) {
            const int stride = E + (G.shared_gated ? 1 : 0);
            route(dev_, cl, x_, n, G.router, fn, E, K, s.norm_topk_prob, rlogits_, ids_, topw_);
            LowRank lr;
            if (G.rank_gu) {
                linear(dev_, cl, G.basis_gu, 0, x_, n, lz_, {.norm = &G.ffn_norm, .eps = eps});
                cl.label("basis_gate_up");
                lr = {&lz_, &G.coef_gu, G.rank_gu};
            }
            KbvqAffine kgu, kdown;
            if (G.kb_gu) {
                if (G.kb_rank_gu) {
                    linear(dev_, cl, G.kb_coef_gu, 0, x_, n, lz_, {.norm = &G.ffn_norm, .eps = eps});
                    cl.label("kbvq_coef_gate_up");
                }
                kgu = {&lz_, &G.kb_aff_gu, G.kb_rank_gu, E * 2 * G.kb_rank_gu};
            }
            // The shared expert rides in the routed experts' two dispatches (SharedExpert) unless one of its sets is
            // split or MoBiE's down basis must land between the routed sum and the shared output (the CPU's order).
            const bool   fuse = G.ffn_gu.n_mats && G.ffn_gu.n_parts() == 1 && G.ffn_down.n_parts() == 1 && !G.rank_down;
            SharedExpert se;
            if (fuse) se = {&G.ffn_gu, &G.ffn_down, &hs_, G.shared_gated ? &rlogits_ : nullptr, stride, E};
            moe_gate_up(dev_, cl, x_, n, &ids_, K, G.experts_gu, h_, lr, fn, kgu, se);
            if (G.kb_down) {
                if (G.kb_rank_down) {
                    moe_down(dev_, cl, h_, ids_, topw_, n, K, G.kb_coef_down, lv_, false);
                    cl.label("kbvq_coef_down");
                }
                kdown = {&lv_, &G.kb_aff_down, G.kb_rank_down};
            }
            // Down's shared basis: v = Σ_j w_j C_e h_j (moe_down over the coefficients), then y += B v.
            auto down_basis = [&](Buffer& y) {
                if (!G.rank_down) return;
                moe_down(dev_, cl, h_, ids_, topw_, n, K, G.coef_down, lv_, false);
                cl.label("coef_down");
                linear(dev_, cl, G.basis_down, 0, lv_, n, y, {.residual = true});
                cl.label("basis_down");
            };
            if (fuse) {
                moe_down(dev_, cl, h_, ids_, topw_, n, K, G.experts_down, x_, true, kdown, se);
            } else if (G.ffn_gu.n_mats) {
                moe_gate_up(dev_, cl, x_, n, nullptr, 1, G.ffn_gu, hs_, {}, fn);
                cl.label("shared_gate_up");
                moe_down(dev_, cl, h_, ids_, topw_, n, K, G.experts_down, delta_, false, kdown);
                down_basis(delta_);
                // x += routed + sigmoid(gate) · shared, the CPU's order.
                Epilogue ep{.add = &delta_, .residual = true};
                if (G.shared_gated) {
                    ep.gate        = &rlogits_;
                    ep.gate_stride = stride;
                    ep.gate_off    = E;
                }
                linear(dev_, cl, G.ffn_down, 0, hs_, n, x_, ep);
                cl.label("shared_down");
            } else {
                moe_down(dev_, cl, h_, ids_, topw_, n, K, G.experts_down, x_, true, kdown);
                down_basis(x_);
            }
        } else {
            moe_gate_up(dev_, cl, x_, n, nullptr, 1, G.ffn_gu, hs_, {}, fn);
            cl.label("dense_gate_up");
            linear(dev_, cl, G.ffn_down, 0, hs_, n, x_, {.residual = true});
            cl.label("dense_down");
        }
    }
    last_layer_dispatches_ = cl.n_dispatches() - layer_start;
    const int n_out        = logits_all ? n : 1;
    if (logits) {
        const Epilogue ep{.norm = &final_norm_, .eps = s.rms_eps};
        if (logits_all) {
            linear(dev_, cl, lm_head_, 0, x_, n, logits_, ep);
            cl.label("lm_head");
        } else {
            cl.copy(x_, last_, (uint64_t)H * 4, (uint64_t)(n - 1) * H * 4, 0);
            linear(dev_, cl, lm_head_, 0, last_, 1, logits_, ep);
            cl.label("lm_head");
        }
    }
    last_dispatches_ = cl.n_dispatches();
    cl.submit_and_wait();
    for (const auto& t : cl.timings()) {
        auto it = std::find_if(profile_.begin(), profile_.end(), [&](const KernelStats& k) { return k.name == t.name; });
        if (it == profile_.end()) it = profile_.insert(profile_.end(), KernelStats{t.name});
        it->calls += 1;
        it->seconds += t.seconds;
        it->bytes += t.bytes;
    }
    n_past_ += n;
    if (logits) dev_.download(logits_, logits, (uint64_t)n_out * s.n_vocab * 4);
}

} // namespace moebius::vk
