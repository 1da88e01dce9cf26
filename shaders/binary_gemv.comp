#version 450
// y (n, out) = x (n, in) · Wᵀ for BinaryLinear's packed weights (docs/FORMAT.md "binary", engine/cpu/binary_linear.h),
// decoded on the fly. Each weight is computed with the f32 operations of the CPU decoder in the same order, so W is
// bit-identical to BinaryLinear::dequantize(); only the summation order of the dot products differs.
// One workgroup per output row and per chunk of up to MAX_TOKENS tokens (grid z). A correctness-first version: the
// sum trick / int-dot inner loops of kernels.md §7.2 need a GPU-friendly repack of the sign planes.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 64;             // power of two ≥ MAX_TOKENS
layout(constant_id = 1) const uint SALIENT_GROUPS = 1;  // 1 or 2
layout(constant_id = 2) const bool HAS_MEAN = true;
layout(constant_id = 3) const bool HAS_COL_SCALE = false;
layout(local_size_x_id = 0) in;
const uint MAX_TOKENS = 8;

layout(std430, binding = 0) readonly buffer X { float x[]; };          // (n, in)
layout(std430, binding = 1) writeonly buffer Y { float y[]; };         // (n, out)
layout(std430, binding = 2) readonly buffer Split { uint split[]; };   // (out, row_bytes) bytes, LSB-first bits
layout(std430, binding = 3) readonly buffer Signs { uint signs[]; };   // (out, row_bytes)
layout(std430, binding = 4) readonly buffer Signs2 { uint signs2[]; }; // (out, row_bytes2): salient columns only
layout(std430, binding = 5) readonly buffer SalIdx { int sal_idx[]; }; // (in) rank among salient columns, or −1
layout(std430, binding = 6) readonly buffer RowScales { uint row_scales[]; }; // (out, n_blocks, n_slots) f16
layout(std430, binding = 7) readonly buffer RowMeans { uint row_means[]; };   // (out, n_blocks, n_groups) f16
layout(std430, binding = 8) readonly buffer ColScales { uint col_scales[]; }; // (in, n_slots) f16
layout(push_constant) uniform P { uint n, in_f, out_f, block, row_bytes, row_bytes2; } p;

shared float red[MAX_TOKENS * WG]; // (MAX_TOKENS, WG)

const uint N_SLOTS = 2 + 2 * SALIENT_GROUPS, N_GROUPS = 2 + SALIENT_GROUPS;

// W[row, j], binary_linear.h's formula.
float weight(uint row, uint j) {
    const uint  k1  = row * p.row_bytes * 8 + j;
    const uint  sp  = stream_bit(split[k1 >> 5], k1);
    const float s1  = stream_bit(signs[k1 >> 5], k1) != 0 ? 1.0 : -1.0;
    const int   si  = sal_idx[j];
    const uint  g   = si >= 0 ? 2 + (SALIENT_GROUPS == 2 ? sp : 0) : sp;
    const uint  k0  = g < 2 ? g : 2 + 2 * (g - 2); // first coefficient slot of group g
    const uint  rb  = (row * (p.in_f / p.block) + j / p.block);
    const float m   = HAS_MEAN ? F16_AT(row_means, rb * N_GROUPS + g) : 0.0;
    precise float a0 = F16_AT(row_scales, rb * N_SLOTS + k0);
    if (HAS_COL_SCALE) a0 *= F16_AT(col_scales, j * N_SLOTS + k0);
    precise float v = m + a0 * s1;
    if (si >= 0) {
        const uint  k2 = row * p.row_bytes2 * 8 + uint(si);
        const float s2 = stream_bit(signs2[k2 >> 5], k2) != 0 ? 1.0 : -1.0;
        precise float a1 = F16_AT(row_scales, rb * N_SLOTS + k0 + 1);
        if (HAS_COL_SCALE) a1 *= F16_AT(col_scales, j * N_SLOTS + k0 + 1);
        v = v + a1 * s2;
    }
    return v;
}

void main() {
    const uint row = wg_row();
    if (row >= p.out_f) return; // uniform across the workgroup
    const uint lid = gl_LocalInvocationID.x;
    const uint t0  = gl_WorkGroupID.z * MAX_TOKENS;
    const uint nt  = min(MAX_TOKENS, p.n - t0);
    float acc[MAX_TOKENS];
    for (uint t = 0; t < MAX_TOKENS; ++t) acc[t] = 0.0;
    for (uint j = lid; j < p.in_f; j += WG) {
        const float wv = weight(row, j);
        for (uint t = 0; t < MAX_TOKENS; ++t)
            if (t < nt) acc[t] += wv * x[(t0 + t) * p.in_f + j];
    }
    for (uint t = 0; t < MAX_TOKENS; ++t) red[t * WG + lid] = acc[t];
    barrier();
    for (uint s = WG / 2; s > 0; s >>= 1) {
        if (lid < s)
            for (uint t = 0; t < MAX_TOKENS; ++t) red[t * WG + lid] += red[t * WG + lid + s];
        barrier();
    }
    if (lid < nt) y[(t0 + lid) * p.out_f + row] = red[lid * WG];
}
