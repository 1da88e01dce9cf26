// One weight set of a linear layer on the device, in one of the formats the runner uploads without dequantizing.
// The including shader defines QW_BINDING (first of three bindings) and spec constants FORMAT and BITS.
//   FORMAT 0 (f32): qw holds W as f32 bits, (n_mats, out, in) row-major; qs / qz are unused 4-byte dummies.
//   FORMAT 4 (f16), 5 (bf16): the same, two values per word (element 2m in the low half); exact values only.
//   FORMAT 1 (nbit, docs/FORMAT.md "nbit": GPTQ / RTN / AGQ): qw holds the LSB-first code rows, (n_mats·out,
//     row_bytes) bytes plus one slack word, so that a code straddling a word can read the next one; qs the f16
//     scales and qz the u8 zeros, both (n_mats·out, n_groups). w = scale·(code − zero), with the f32 operations of
//     NbitLinear::decode_row, so the decoded weight is bit-identical to NbitLinear::dequantize().
//   FORMAT 2 (vq, docs/FORMAT.md "vq": GPTVQ): qw holds the LSB-first centroid-index rows (BITS = bits·D bits per
//     index), (n_mats·out, row_bytes) bytes plus one slack word; qs the f16 codebooks (n_mats · codebooks per matrix,
//     2^BITS, D); qz the f16 row scales (n_mats·out) when VQ_SCALED. w = scale · codebook[c][index][j mod D], the
//     product VqLinear::decode_row forms, so the decoded weight is bit-identical. Here `group` is the codebook's
//     column count G and `n_groups` its row count R.
//   FORMAT 3 (binary, docs/FORMAT.md "binary": BiLLM / ARB-X / ARB-RC, MoBiE's residuals): qw holds per row
//     row_bytes words of split bits, row_bytes words of first signs, then n_groups words of second signs (salient
//     columns in increasing order), all LSB-first as in the checkpoint; qs per row the f16 scales (n_blocks,
//     n_slots), then with BIN_MEAN the f16 means (n_blocks, n_bgroups); qz per row one word: the offset of its
//     linear's region in qz, which holds the salient rank of each column (int32, −1 if not salient), the salient
//     column bitmap (row_bytes words) and then, with BIN_COLS, the f16 column scales (in, n_slots). A set split by
//     rows is a binary set per part: its rows' offsets, then the regions of its rows' linears. `group` is the column
//     block. The weight is BinaryLinear's formula with its f32 operations in its order (precise), so it is
//     bit-identical to BinaryLinear::dequantize().
// Several matrices (experts) live in one set: global row r = matrix·out + row.
// A kernel may read a second weight set of another format: it includes this file again with QW_BINDING, QW_SPEC (the
// first of its five spec constant ids, 10 by default) and every name below (QW, qw, …, qweight, FORMAT, BITS)
// renamed by macros (moe_gate_up.comp, moe_down.comp: the shared expert in the routed experts' dispatch).
#ifndef QW_SPEC
#define QW_SPEC 10
#endif
layout(constant_id = QW_SPEC + 0) const uint VQ_DIM = 1;
layout(constant_id = QW_SPEC + 1) const bool VQ_SCALED = false;
layout(constant_id = QW_SPEC + 2) const uint BIN_SG = 1; // salient groups 0, 1, 2
layout(constant_id = QW_SPEC + 3) const bool BIN_MEAN = true;
layout(constant_id = QW_SPEC + 4) const bool BIN_COLS = false;
layout(std430, binding = QW_BINDING) readonly buffer QW { uint qw[]; };
layout(std430, binding = QW_BINDING + 1) readonly buffer QS { uint qs[]; };
layout(std430, binding = QW_BINDING + 2) readonly buffer QZ { uint qz[]; };

// W[r, j]. in_f: columns; out_rows: rows per matrix; row_bytes, n_groups, group: the packed layout (unused for f32).
float qweight(uint r, uint j, uint in_f, uint out_rows, uint row_bytes, uint n_groups, uint group) {
    if (FORMAT == 0) return uintBitsToFloat(qw[r * in_f + j]);
    if (FORMAT == 4) return F16_AT(qw, r * in_f + j);
    if (FORMAT == 5) {
        const uint i = r * in_f + j;
        return uintBitsToFloat(((qw[i >> 1] >> ((i & 1u) * 16u)) & 0xffffu) << 16);
    }
    if (FORMAT == 3) {
        const uint n_slots = 2u + 2u * BIN_SG, n_bg = 2u + BIN_SG, nb = in_f / group, b = j / group;
        const uint base = r * (2u * row_bytes + n_groups), wi = j >> 5, sh = j & 31u;
        const uint sp   = (qw[base + wi] >> sh) & 1u;
        const float s1  = ((qw[base + row_bytes + wi] >> sh) & 1u) != 0u ? 1.0 : -1.0;
        const uint  lb  = qz[r];
        const int   si  = BIN_SG > 0u ? int(qz[lb + j]) : -1;
        const uint  g   = si >= 0 ? 2u + (BIN_SG == 2u ? sp : 0u) : sp;
        const uint  k0  = g < 2u ? g : 2u + 2u * (g - 2u);
        const uint  sb  = r * nb * (n_slots + (BIN_MEAN ? n_bg : 0u));
        const uint  cb  = 2u * (lb + in_f + row_bytes) + j * n_slots;
        const float m   = BIN_MEAN ? F16_AT(qs, sb + nb * n_slots + b * n_bg + g) : 0.0;
        precise float a0 = F16_AT(qs, sb + b * n_slots + k0);
        if (BIN_COLS) a0 *= F16_AT(qz, cb + k0);
        precise float v = m + a0 * s1;
        if (si >= 0) {
            const uint  k2 = uint(si);
            const float s2 = ((qw[base + 2u * row_bytes + (k2 >> 5)] >> (k2 & 31u)) & 1u) != 0u ? 1.0 : -1.0;
            precise float a1 = F16_AT(qs, sb + b * n_slots + k0 + 1u);
            if (BIN_COLS) a1 *= F16_AT(qz, cb + k0 + 1u);
            v = v + a1 * s2;
        }
        return v;
    }
    if (FORMAT == 2) {
        const uint k  = r * row_bytes * 8u + (j / VQ_DIM) * BITS;
        const uint sh = k & 31u;
        uint       v  = qw[k >> 5] >> sh;
        if (sh + BITS > 32u) v |= qw[(k >> 5) + 1u] << (32u - sh);
        const uint  idx   = v & ((1u << BITS) - 1u);
        const uint  m     = r / out_rows, row = r % out_rows, n_cg = in_f / group;
        const uint  c     = m * ((out_rows + n_groups - 1u) / n_groups) * n_cg + (row / n_groups) * n_cg + j / group;
        const float value = F16_AT(qs, (c * (1u << BITS) + idx) * VQ_DIM + j % VQ_DIM);
        return VQ_SCALED ? F16_AT(qz, r) * value : value;
    }
    const uint k  = r * row_bytes * 8u + j * BITS;
    const uint sh = k & 31u;
    uint       v  = qw[k >> 5] >> sh;
    if (sh + BITS > 32u) v |= qw[(k >> 5) + 1u] << (32u - sh);
    const uint  code = v & ((1u << BITS) - 1u);
    const uint  gi   = r * n_groups + j / group;
    const float s    = F16_AT(qs, gi);
    const float z    = float((qz[gi >> 2] >> ((gi & 3u) * 8u)) & 255u);
    return s * (float(code) - z);
}

// Σ_j W[r, j] · X(xo, j) over the 32 columns of bit-plane word wi, for FORMAT 3 with 32 | group (the word lies in one
// column block): the sum trick of kernels.md §7.2. A non-salient weight is m_g + a_g·cs_g[j]·s_j with g its split
// bit, so the word's dot is Σ_g m_g·Σ_{j∈g} x_j + a_g·Σ_{j∈g} cs_g[j]·s_j·x_j: four running sums selected by two
// bits, the block's scales applied once. Salient columns (a bitmap word) take the full decode. Same value as
// Σ qweight·x up to f32 rounding. The including shader defines QW_X(xo, j), the input element.
#ifdef QW_X
float qdot_binary_word(uint r, uint wi, uint xo, uint in_f, uint row_bytes, uint n_groups, uint group) {
    const uint n_slots = 2u + 2u * BIN_SG, n_bg = 2u + BIN_SG, nb = in_f / group;
    const uint j0 = wi * 32u, b = j0 / group;
    const uint base = r * (2u * row_bytes + n_groups);
    const uint sw = qw[base + wi], s1w = qw[base + row_bytes + wi];
    const uint lb = qz[r];
    const uint nv = min(32u, in_f - j0);
    const uint live = nv == 32u ? 0xffffffffu : ((1u << nv) - 1u);
    const uint mask = BIN_SG > 0u ? qz[lb + in_f + wi] : 0u;
    const uint sb = r * nb * (n_slots + (BIN_MEAN ? n_bg : 0u));
    float s0 = 0.0, s1 = 0.0, t0 = 0.0, t1 = 0.0;
    uint  rest = live & ~mask;
    while (rest != 0u) {
        const uint  k  = uint(findLSB(rest));
        rest &= rest - 1u;
        const uint  j  = j0 + k;
        const float xv = QW_X(xo, j);
        const bool  g1 = ((sw >> k) & 1u) != 0u;
        float       xs = ((s1w >> k) & 1u) != 0u ? xv : -xv;
        if (BIN_COLS) {
            const vec2 cs = unpackHalf2x16(qz[(2u * (lb + in_f + row_bytes) + j * n_slots) >> 1]); // slots 0, 1
            xs *= g1 ? cs.y : cs.x;
        }
        if (g1) {
            s1 += xv;
            t1 += xs;
        } else {
            s0 += xv;
            t0 += xs;
        }
    }
    float acc = F16_AT(qs, sb + b * n_slots) * t0 + F16_AT(qs, sb + b * n_slots + 1u) * t1;
    if (BIN_MEAN) acc += F16_AT(qs, sb + nb * n_slots + b * n_bg) * s0 + F16_AT(qs, sb + nb * n_slots + b * n_bg + 1u) * s1;
    uint sal = live & mask;
    while (sal != 0u) {
        const uint k = uint(findLSB(sal));
        sal &= sal - 1u;
        acc += qweight(r, j0 + k, in_f, 0u, row_bytes, n_groups, group) * QW_X(xo, j0 + k);
    }
    return acc;
}
#endif
