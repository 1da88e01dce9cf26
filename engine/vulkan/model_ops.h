#pragma once
// The ops of the Vulkan model runner (engine/vulkan/runner.h): quantized linears, embedding, q/k norm + RoPE + KV
// cache write, attention, MoE routing and expert-indexed dispatch. Each is the GPU twin of a step of the CPU forward
// (engine/cpu/model.cpp) and has a parity test against it (tests/unit/test_vulkan_model_ops.cpp). Like ops.h, they
// only record into a CommandList.
#include "engine/cpu/linear.h"
#include "engine/vulkan/device.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

namespace moebius::vk {

// Weight formats a shader reads directly (shaders/qweight.glsl).
// F16 / Bf16: dense weights that are exactly representable in that type (a bf16 checkpoint's weights are), stored at
// half the bytes of F32 with the same values.
enum class WeightFormat : uint32_t { F32 = 0, Nbit = 1, Vq = 2, Binary = 3, F16 = 4, Bf16 = 5 };

// One or more linears of the same input width stacked by rows into one weight set: matrix m, row r is global row
// m·out + r. Several linears stacked into one matrix (q | k | v) use n_mats = 1; the experts of a layer use one
// matrix per expert (or per gate / up of each expert, for the fused gate+up set).
struct QWeights {
    WeightFormat format = WeightFormat::F32;
    int          in = 0, out = 0, n_mats = 0; // W (n_mats, out, in)
    // nbit: bits per code, columns per group, bytes per row, groups per row.
    // vq: bits = index bits (bits·D), group = codebook columns G, n_groups = codebook rows R, vq_dim = D.
    // binary: row_bytes = 32-bit words per bit plane row, n_groups = words of a row's second sign plane, group = the
    // column block; bin_* the BinaryLinear parameters (one set for all).
    int          bits = 0, group = 0, row_bytes = 0, n_groups = 0, vq_dim = 1;
    bool         vq_scaled = false;
    int          bin_salient_groups = 0;
    bool         bin_mean = false, bin_col_scale = false;
    Buffer       w, scales, zeros; // f32 (n_mats·out, in);
                                   // nbit codes (n_mats·out, row_bytes) + slack word, f16 scales and u8 zeros
                                   // (n_mats·out, n_groups);
                                   // vq indices (n_mats·out, row_bytes) + slack word, f16 codebooks
                                   // (n_mats·codebooks, 2^bits, D), f16 row scales (n_mats·out) or a dummy;
                                   // binary: see shaders/qweight.glsl FORMAT 3
    std::string  note;             // why the set was dequantized at upload, empty when it was not
    // A set whose buffers exceed the device's largest binding is split by output rows: part p holds rows
    // [p·part_rows, min(out, (p + 1)·part_rows)) of every matrix, laid out as a set of its own (n_mats, rows, in);
    // w, scales, zeros above are part 0, `more` holds parts 1... The kernels run one dispatch per part. Dense and nbit
    // sets split at any row, vq sets at whole codebook row blocks (each part with its blocks' codebooks), binary sets at
    // any row (each part with the per-linear regions of the linears its rows belong to).
    struct Part {
        Buffer w, scales, zeros;
    };
    int               part_rows = 0; // = out when not split
    std::vector<Part> more;
    int               n_parts() const { return 1 + (int)more.size(); }
    // Part p's buffers and rows [r0, r0 + rows).
    const Buffer& part_w(int p) const { return p ? more[p - 1].w : w; }
    const Buffer& part_scales(int p) const { return p ? more[p - 1].scales : scales; }
    const Buffer& part_zeros(int p) const { return p ? more[p - 1].zeros : zeros; }
    int           part_r0(int p) const { return p * part_rows; }
    int           part_n(int p) const { return std::min(out, (p + 1) * part_rows) - p * part_rows; }

    // Device bytes of one matrix (codes or weights, scales, zeros / codebooks), what a kernel reads to apply it once.
    uint64_t matrix_bytes() const {
        uint64_t b = 0;
        for (int p = 0; p < n_parts(); ++p) b += part_w(p).size() + part_scales(p).size() + part_zeros(p).size();
        return n_mats ? b / n_mats : 0;
    }

    // Stacks `linears` (all of in_features `in`, Σ out_features = n_mats·out). All NbitLinear with one (bits, group)
    // → nbit; all VqLinear of `out` rows with one (dim, bits, G, R, scales) → vq; all BinaryLinear with one (block,
    // salient groups, means, column scales) → binary; otherwise every weight is dequantized and, unless all were
    // dense already, `note` says why. Dense (or dequantized) weights go up as bf16 when every value is bf16-exact,
    // else f16 when f16-exact, else f32: the same numbers either way.
    static QWeights upload(Device& dev, const std::vector<const Linear*>& linears, int out);
    // Symmetric 8-bit rows (KBVQ's coefficients, kbvq_linear.h): W[r, :] = scale[r] · q[r, :], q (n_mats·out, in),
    // f16 scales (n_mats·out). Read as the nbit format (8 bits, one group per row, zero 128): the same f32 products.
    static QWeights upload_int8_rows(Device& dev, const std::vector<int8_t>& q, const std::vector<uint16_t>& scales,
                                     int n_mats, int out, int in);
};

// What runs after a linear's dot products (shaders/linear.comp), in this order.
struct Epilogue {
    const Buffer* bias        = nullptr; // (out): v = dot + bias
    const Buffer* gate        = nullptr; // (n, gate_stride): v = sigmoid(gate[t·gate_stride + gate_off]) · v
    int           gate_stride = 0, gate_off = 0;
    const Buffer* add         = nullptr; // (n, out): v = add + v
    bool          residual    = false;   // y = y + v instead of y = v
    // x is the residual stream and the linear applies to RMSNorm(x; norm, eps) (the norm fused into the dot products).
    const Buffer* norm        = nullptr; // (in)
    float         eps         = 0;
};

// y (n, out) = epilogue(x (n, in) · W_matᵀ).
void linear(Device& dev, CommandList& cl, const QWeights& w, int mat, const Buffer& x, int n, Buffer& y,
            const Epilogue& ep = {});

// x (n, d) = table (n_vocab, d)[tokens (n) int32]. Ids must be in range (the runner checks them on the host).
// A table split by rows: `table` holds rows [v0, v0 + rows) and only the tokens in that range are written.
void embed(Device& dev, CommandList& cl, const Buffer& tokens, int n, const Buffer& table, int d, Buffer& x,
           int v0 = 0, int rows = -1);

// The attention geometry.
struct AttnShape {
    int n_head = 0, n_head_kv = 0, head_dim = 0;
    int q_dim() const { return n_head * head_dim; }
    int kv_dim() const { return n_head_kv * head_dim; }
};

enum class QkNormMode : uint32_t { None = 0, PerHead = 1, Full = 2 };

// cos / sin of RoPE for positions 0..n_pos−1: (n_pos, head_dim/2, 2), computed as engine/cpu/ops.cpp rope() does.
std::vector<float> rope_table(const std::vector<float>& inv_freq, int n_pos);

// For tokens at positions n_past + t: optional q/k RMSNorm (weights qn, kn; (head_dim) per head or (q_dim)/(kv_dim)
// full), optional clamp to ±clip, RoPE, then q (n, q_dim) and k, v into the caches kc, vc (n_ctx, kv_dim).
// qkv (n, q_dim + 2·kv_dim) holds the projections with bias.
void qk_rope(Device& dev, CommandList& cl, const Buffer& qkv, int n, int n_past, const AttnShape& s, QkNormMode mode,
             const Buffer* qn, const Buffer* kn, float eps, std::optional<float> clip, const Buffer& rope,
             Buffer& q, Buffer& kc, Buffer& vc);

// Causal attention of q (n, q_dim) at positions n_past.. against the caches: o (n, q_dim). scores: scratch of
// n · n_head · n_ctx floats.
void attention(Device& dev, CommandList& cl, const Buffer& q, const Buffer& kc, const Buffer& vc, int n, int n_past,
               const AttnShape& s, int n_ctx, Buffer& scores, Buffer& o);

// A decode step (one token) of qk_rope then attention in one dispatch: each (head) workgroup norms, clips and rotates
// its q and its kv head's k from qkv (1, q_dim + 2·kv_dim) and appends k, v to the caches, with qk_rope's operations;
// then attention as above. head_dim ≤ 256 (UnsupportedError otherwise).
void attention_rope(Device& dev, CommandList& cl, const Buffer& qkv, int n_past, const AttnShape& s,
                    QkNormMode mode, const Buffer* qn, const Buffer* kn, float eps, std::optional<float> clip,
                    const Buffer& rope, Buffer& kc, Buffer& vc, int n_ctx, Buffer& scores, Buffer& o);

// Softmax over logits (n, stride)[:, 0..n_expert), top k, optional renormalisation: ids (n, k) int32 and w (n, k),
// each token's slots sorted by expert id.
void router_topk(Device& dev, CommandList& cl, const Buffer& logits, int n, int n_expert, int k, int stride,
                 bool renorm, Buffer& ids, Buffer& w);

// x is the residual stream and the op applies to RMSNorm(x; norm, eps), as Epilogue::norm.
struct InputNorm {
    const Buffer* norm = nullptr; // (H)
    float         eps  = 0;
};

// Routing in one dispatch: logits (n, stride) = RMSNorm(x; norm) · routerᵀ (norm optional; router (stride, H), the
// experts' rows first, then e.g. a shared-expert gate row), then router_topk's selection into ids and w.
void route(Device& dev, CommandList& cl, const Buffer& x, int n, const QWeights& router, const InputNorm& norm,
           int n_expert, int k, bool renorm, Buffer& logits, Buffer& ids, Buffer& w);

// h (n·k, F) = silu(x Wg[e]ᵀ) ⊙ (x Wu[e]ᵀ) for e = ids[t·k + j]; gu: gate and up stacked per expert
// (QWeights with n_mats = 2·n_expert, out = F). ids == nullptr: slot j uses expert j (shared expert, dense FFN).
// lowrank: MoBiE's input-side shared basis (gu then holds the residuals): g, u += C[e] · z[t] with z (n, 2r) =
// [B_gate; B_up] x and coef (2·n_expert·F, r) f32, rows aligned with gu's.
struct LowRank {
    const Buffer* z    = nullptr;
    const Buffer* coef = nullptr;
    int           rank = 0;
};
// KBVQ's output-side shared basis and channel affine (kbvq_linear.h: W = γ ⊙ (VQ + B C_e), y = x Wᵀ + β), B, γ
// and β shared by the layer's experts of one kind; the expert weights are then the VQ residuals.
// gate/up: c (n, zs) = C x of every expert (expert e's gate then up coefficients at e·2r), affine f32 B (2F, r),
// γ (2F), β (2F) (gate's rows then up's). down: c (n, r) = Σ_j w_j C_e h_j (moe_down over the coefficients), affine
// f32 B (H, r), γ (H), β (H); β is scaled by the router weights like the output. rank may be 0 (c unused).
struct KbvqAffine {
    const Buffer* c      = nullptr;
    const Buffer* affine = nullptr;
    int           rank = 0, zs = 0;
};
// The shared expert fused into the routed experts' dispatches (its weight sets in any formats, one part each):
// moe_gate_up also writes hs (n, F') = silu(x Wgᵀ) ⊙ (x Wuᵀ) from gu (2, F', H); moe_down adds
// sigmoid(gate[t·gate_stride + gate_off]) · hs Wdᵀ (gate null: weight 1) from down (1, H, F') to the routed sum, the
// CPU's order (routed sum, then the gated shared output, then the residual).
struct SharedExpert {
    const QWeights* gu   = nullptr;
    const QWeights* down = nullptr;
    Buffer*         hs   = nullptr;
    const Buffer*   gate = nullptr;
    int             gate_stride = 0, gate_off = 0;
};
void moe_gate_up(Device& dev, CommandList& cl, const Buffer& x, int n, const Buffer* ids, int k, const QWeights& gu,
                 Buffer& h, const LowRank& lowrank = {}, const InputNorm& norm = {}, const KbvqAffine& kbvq = {},
                 const SharedExpert& shared = {});

// y (n, H) (+)= Σ_j w[t, j] · h[t·k + j] · Wd[ids[t·k + j]]ᵀ, in slot order; down: (n_expert, H, F).
void moe_down(Device& dev, CommandList& cl, const Buffer& h, const Buffer& ids, const Buffer& w, int n, int k,
              const QWeights& down, Buffer& y, bool residual, const KbvqAffine& kbvq = {},
              const SharedExpert& shared = {});

} // namespace moebius::vk
