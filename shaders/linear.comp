#version 450
// y (n, out) = epilogue(x (n, in) · W_mᵀ) for one matrix m of a weight set in any uploaded format (qweight.glsl).
// One workgroup per output row and per chunk of TOKENS tokens (grid z; TOKENS = min(n, 8), a specialization
// constant so that the per-token loops unroll and only live tokens are reduced): each weight is decoded once for
// every token of the chunk. Epilogue, each step a specialization constant (one pipeline per combination):
//   v = dot (+ bias[row]);  v = sigmoid(gate[t]) · v;  v = add[t, row] + v;  y = y + v (residual) or y = v.
// The steps follow the CPU forward's order of operations: O projection + bias then the residual add; the shared
// expert scaled by its sigmoid gate, added to the routed sum, then to the residual stream.
// NORM: x is the residual stream and the linear applies to RMSNorm(x) with weight ng: dot = Σ_j w_j·(ng_j·x_j) and
// Σ_j x_j² in the same pass, then dot / sqrt(mean(x²) + eps), so no separate norm dispatch is needed.
// A weight set larger than one binding is split by output rows (model_ops.h QWeights): this dispatch applies the
// part holding rows [r0, r0 + rows) of every matrix, laid out as a set of its own (n_mats, rows, in).
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two ≥ MAX_TOKENS
layout(constant_id = 1) const uint FORMAT = 0;
layout(constant_id = 2) const uint BITS = 4;
layout(constant_id = 3) const bool HAS_BIAS = false;
layout(constant_id = 4) const bool HAS_GATE = false;
layout(constant_id = 5) const bool HAS_ADD = false;
layout(constant_id = 6) const bool RESIDUAL = false;
layout(constant_id = 7) const uint TOKENS = 8; // 1..8
layout(constant_id = 8) const bool NORM = false;
layout(local_size_x_id = 0) in;
const uint MAX_TOKENS = TOKENS;

layout(std430, binding = 0) readonly buffer X { float x[]; };        // (n, in)
layout(std430, binding = 1) buffer Y { float y[]; };                 // (n, out)
layout(std430, binding = 2) readonly buffer Bias { float bias[]; };  // (out) or a dummy
layout(std430, binding = 3) readonly buffer Add { float add_[]; };   // (n, out) or a dummy
layout(std430, binding = 4) readonly buffer Gate { float gate[]; };  // (n, gate_stride) logits or a dummy
layout(std430, binding = 8) readonly buffer NG { float ng[]; };      // (in) RMSNorm weight or a dummy
#define QW_BINDING 5
#define QW_X(xo, j) (NORM ? ng[j] * x[(xo) + (j)] : x[(xo) + (j)])
#include "qweight.glsl"
layout(push_constant) uniform P {
    uint n, in_f, out_f, row_bytes, n_groups, group, mat, gate_stride, gate_off;
    float eps;
    uint r0, rows;
} p;

shared float red[MAX_TOKENS * WG];  // (MAX_TOKENS, WG)
shared float red2[MAX_TOKENS * WG]; // (MAX_TOKENS, WG) Σ x² with NORM

void main() {
    const uint lrow = wg_row();
    if (lrow >= p.rows) return; // uniform across the workgroup
    const uint row = p.r0 + lrow, lid = gl_LocalInvocationID.x;
    const uint t0  = gl_WorkGroupID.z * MAX_TOKENS;
    const uint nt  = min(MAX_TOKENS, p.n - t0);
    const uint r   = p.mat * p.rows + lrow; // in the part
    float acc[MAX_TOKENS], ss[MAX_TOKENS];
    for (uint t = 0; t < MAX_TOKENS; ++t) acc[t] = ss[t] = 0.0;
    if (FORMAT == 3 && p.group % 32u == 0u) {
        // Binary: a word of 32 columns per lane, the sum trick (qweight.glsl); Σx² for the norm in its own pass.
        const uint words = (p.in_f + 31u) / 32u;
        for (uint wi = lid; wi < words; wi += WG)
            for (uint t = 0; t < MAX_TOKENS; ++t)
                if (t < nt) acc[t] += qdot_binary_word(r, wi, (t0 + t) * p.in_f, p.in_f, p.row_bytes, p.n_groups, p.group);
        if (NORM)
            for (uint j = lid; j < p.in_f; j += WG)
                for (uint t = 0; t < MAX_TOKENS; ++t)
                    if (t < nt) ss[t] += x[(t0 + t) * p.in_f + j] * x[(t0 + t) * p.in_f + j];
    } else
    for (uint j = lid; j < p.in_f; j += WG) {
        const float wv = qweight(r, j, p.in_f, p.rows, p.row_bytes, p.n_groups, p.group);
        const float gj = NORM ? ng[j] : 1.0;
        for (uint t = 0; t < MAX_TOKENS; ++t)
            if (t < nt) {
                const float xv = x[(t0 + t) * p.in_f + j];
                if (NORM) {
                    ss[t] += xv * xv;
                    acc[t] += wv * (gj * xv);
                } else {
                    acc[t] += wv * xv;
                }
            }
    }
    for (uint t = 0; t < MAX_TOKENS; ++t) {
        red[t * WG + lid] = acc[t];
        if (NORM) red2[t * WG + lid] = ss[t];
    }
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s)
            for (uint t = 0; t < MAX_TOKENS; ++t) {
                red[t * WG + lid] += red[t * WG + lid + s];
                if (NORM) red2[t * WG + lid] += red2[t * WG + lid + s];
            }
        barrier();
    }
    if (lid < nt) {
        const uint t = t0 + lid, o = t * p.out_f + row;
        float      v = red[lid * WG];
        if (NORM) v = v * (1.0 / sqrt(red2[lid * WG] / float(p.in_f) + p.eps));
        if (HAS_BIAS) v = v + bias[row];
        if (HAS_GATE) v = 1.0 / (1.0 + exp(-gate[t * p.gate_stride + p.gate_off])) * v;
        if (HAS_ADD) v = add_[o] + v;
        y[o] = RESIDUAL ? y[o] + v : v;
    }
}
