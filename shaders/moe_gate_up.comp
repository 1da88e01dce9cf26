#version 450
// Fused gate + up + SiLU·mul for the experts chosen on the GPU: h[t·k + j, f] = silu(g) · u with
// g = x_t · Wg[e, f], u = x_t · Wu[e, f], e = ids[t·k + j] (read here, so the host never waits for the router).
// One dispatch for every (token, slot): grid x = row f, y = token, z = slot. Gate and up of each expert are one
// fused weight set (n_expert, 2F, H): rows [0, F) gate, [F, 2F) up. Without ids (USE_IDS false) slot j reads
// matrix j: the shared expert and dense FFN layers (one matrix, k = 1). A set split by rows (model_ops.h QWeights)
// is applied one part per dispatch: rows [f0, f0 + rows) of every matrix, (n_mats, rows, H) in the part.
// LOWRANK (MoBiE's input-side shared basis, engine/cpu/cejd_linear.h): the weights are the residuals R, and
// g += C_g[e, f] · z[t, 0:r], u += C_u[e, f] · z[t, r:2r] with z = [B_g; B_u] x computed once per token before this
// dispatch and the coefficients C (f32) in rows aligned with the weight rows.
// KBVQ (engine/cpu/kbvq_linear.h): the weights are the VQ residuals, the basis B (F, r) of each kind is shared by the
// experts and on the output side, so g = γ_g[f] · (g + B_g[f] · c_g) + β_g[f] (u alike) with c = [C_g[e]; C_u[e]] x
// computed for every expert before this dispatch (z (n, zs), expert e's 2r values at e·2r) and the affine (binding
// 7, f32) basis (2F, r), γ (2F), β (2F): gate's rows then up's.
// SHARED: the shared expert rides in the same dispatch as slot z = k, from a second weight set of any format (bindings
// 9–11, qweight_second.glsl; (2, F', H): gate then up) into hs (n, F'): one dispatch instead of two.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64; // power of two
layout(constant_id = 1) const uint FORMAT = 0;
layout(constant_id = 2) const uint BITS = 4;
layout(constant_id = 3) const bool USE_IDS = true;
layout(constant_id = 4) const bool LOWRANK = false;
layout(constant_id = 5) const bool NORM = false; // x is the residual stream: apply RMSNorm(x; ng) as linear.comp does
layout(constant_id = 6) const bool KBVQ = false;
layout(constant_id = 7) const bool SHARED = false;
layout(constant_id = 15) const uint FORMAT2 = 0; // the shared expert's set
layout(constant_id = 16) const uint BITS2 = 4;
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer X { float x[]; };     // (n, H)
layout(std430, binding = 1) readonly buffer I { int ids[]; };     // (n, k) or a dummy
layout(std430, binding = 2) writeonly buffer Hb { float h[]; };   // (n·k, F)
layout(std430, binding = 8) readonly buffer NG { float ng[]; };   // (H) RMSNorm weight or a dummy
#define QW_BINDING 3
#define QW_X(xo, j) (NORM ? ng[j] * x[(xo) + (j)] : x[(xo) + (j)])
#include "qweight.glsl"
layout(std430, binding = 6) readonly buffer Z { float z[]; };     // (n, 2r), KBVQ (n, zs), or a dummy
layout(std430, binding = 7) readonly buffer C { float coef[]; };  // (2·n_expert·F, r), KBVQ the affine, or a dummy
layout(std430, binding = 12) writeonly buffer HS { float hs[]; }; // (n, F') with SHARED, else a dummy
#define QW2_BINDING 9
#include "qweight_second.glsl"
layout(push_constant) uniform P {
    uint n, k, in_f, ff, row_bytes, n_groups, group, rank;
    float eps;
    uint zs, f0, rows;
    uint ff2, row_bytes2, n_groups2, group2; // the shared expert's set
} p;

shared float rg[WG], ru[WG], rs[WG];

// hs[t, f] of the shared expert: the routed path below with the second set's decode.
void shared_expert(uint f, uint t) {
    const uint lid = gl_LocalInvocationID.x;
    float      g = 0.0, u = 0.0, ss = 0.0;
    if (FORMAT2 == 3 && p.group2 % 32u == 0u) {
        for (uint wi = lid; wi < (p.in_f + 31u) / 32u; wi += WG) {
            g += qdot_binary_word2(f, wi, t * p.in_f, p.in_f, p.row_bytes2, p.n_groups2, p.group2);
            u += qdot_binary_word2(p.ff2 + f, wi, t * p.in_f, p.in_f, p.row_bytes2, p.n_groups2, p.group2);
        }
        if (NORM)
            for (uint i = lid; i < p.in_f; i += WG) ss += x[t * p.in_f + i] * x[t * p.in_f + i];
    } else
    for (uint i = lid; i < p.in_f; i += WG) {
        float xv = x[t * p.in_f + i];
        if (NORM) {
            ss += xv * xv;
            xv = ng[i] * xv;
        }
        g += qweight2(f, i, p.in_f, p.ff2, p.row_bytes2, p.n_groups2, p.group2) * xv;
        u += qweight2(p.ff2 + f, i, p.in_f, p.ff2, p.row_bytes2, p.n_groups2, p.group2) * xv;
    }
    rg[lid] = g;
    ru[lid] = u;
    if (NORM) rs[lid] = ss;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) {
            rg[lid] += rg[lid + s];
            ru[lid] += ru[lid + s];
            if (NORM) rs[lid] += rs[lid + s];
        }
        barrier();
    }
    if (lid == 0) {
        float gv = rg[0], uv = ru[0];
        if (NORM) {
            const float inv = 1.0 / sqrt(rs[0] / float(p.in_f) + p.eps);
            gv *= inv;
            uv *= inv;
        }
        hs[t * p.ff2 + f] = gv / (1.0 + exp(-gv)) * uv;
    }
}

void main() {
    const uint fl = gl_WorkGroupID.x, t = gl_WorkGroupID.y, j = gl_WorkGroupID.z;
    if (SHARED && j == p.k) { // uniform across the workgroup
        if (fl < p.ff2 && t < p.n) shared_expert(fl, t);
        return;
    }
    if (fl >= p.rows || t >= p.n) return;
    const uint lid = gl_LocalInvocationID.x, f = p.f0 + fl;
    const uint e   = USE_IDS ? uint(ids[t * p.k + j]) : j;
    const uint r0  = e * 2 * p.ff + f, r1 = r0 + p.ff;          // global rows (the coefficients)
    const uint w0  = e * 2 * p.rows + fl, w1 = w0 + p.rows;     // rows in the part
    float g = 0.0, u = 0.0, ss = 0.0;
    if (FORMAT == 3 && p.group % 32u == 0u) {
        // Binary: a word of 32 columns per lane, the sum trick (qweight.glsl); Σx² for the norm in its own pass.
        for (uint wi = lid; wi < (p.in_f + 31u) / 32u; wi += WG) {
            g += qdot_binary_word(w0, wi, t * p.in_f, p.in_f, p.row_bytes, p.n_groups, p.group);
            u += qdot_binary_word(w1, wi, t * p.in_f, p.in_f, p.row_bytes, p.n_groups, p.group);
        }
        if (NORM)
            for (uint i = lid; i < p.in_f; i += WG) ss += x[t * p.in_f + i] * x[t * p.in_f + i];
    } else
    for (uint i = lid; i < p.in_f; i += WG) {
        float xv = x[t * p.in_f + i];
        if (NORM) {
            ss += xv * xv;
            xv = ng[i] * xv;
        }
        g += qweight(w0, i, p.in_f, p.rows, p.row_bytes, p.n_groups, p.group) * xv;
        u += qweight(w1, i, p.in_f, p.rows, p.row_bytes, p.n_groups, p.group) * xv;
    }
    rg[lid] = g;
    ru[lid] = u;
    if (NORM) rs[lid] = ss;
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s) {
            rg[lid] += rg[lid + s];
            ru[lid] += ru[lid + s];
            if (NORM) rs[lid] += rs[lid + s];
        }
        barrier();
    }
    if (lid == 0) {
        float gv = rg[0], uv = ru[0];
        if (NORM) {
            const float inv = 1.0 / sqrt(rs[0] / float(p.in_f) + p.eps);
            gv *= inv;
            uv *= inv;
        }
        if (LOWRANK) {
            float cg = 0.0, cu = 0.0;
            for (uint q = 0; q < p.rank; ++q) {
                cg += coef[r0 * p.rank + q] * z[t * 2u * p.rank + q];
                cu += coef[r1 * p.rank + q] * z[t * 2u * p.rank + p.rank + q];
            }
            gv += cg;
            uv += cu;
        }
        if (KBVQ) {
            const uint zb = t * p.zs + e * 2u * p.rank, ab = 2u * p.ff * p.rank;
            float      cg = 0.0, cu = 0.0;
            for (uint q = 0; q < p.rank; ++q) {
                cg += coef[f * p.rank + q] * z[zb + q];
                cu += coef[(p.ff + f) * p.rank + q] * z[zb + p.rank + q];
            }
            gv = coef[ab + f] * (gv + cg) + coef[ab + 2u * p.ff + f];
            uv = coef[ab + p.ff + f] * (uv + cu) + coef[ab + 3u * p.ff + f];
        }
        h[(t * p.k + j) * p.ff + f] = gv / (1.0 + exp(-gv)) * uv;
    }
}
