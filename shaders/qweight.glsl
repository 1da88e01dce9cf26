// One weight set of a linear layer on the device, in one of the formats the runner uploads without dequantizing.
// The including shader defines QW_BINDING (first of three bindings) and spec constants FORMAT and BITS.
//   FORMAT 0 (f32): qw holds W as f32 bits, (n_mats, out, in) row-major; qs / qz are unused 4-byte dummies.
//   FORMAT 1 (nbit, docs/FORMAT.md "nbit": GPTQ / RTN / AGQ): qw holds the LSB-first code rows, (n_mats·out,
//     row_bytes) bytes plus one slack word, so that a code straddling a word can read the next one; qs the f16
//     scales and qz the u8 zeros, both (n_mats·out, n_groups). w = scale·(code − zero), with the f32 operations of
//     NbitLinear::decode_row, so the decoded weight is bit-identical to NbitLinear::dequantize().
//   FORMAT 2 (vq, docs/FORMAT.md "vq": GPTVQ): qw holds the LSB-first centroid-index rows (BITS = bits·D bits per
//     index), (n_mats·out, row_bytes) bytes plus one slack word; qs the f16 codebooks (n_mats · codebooks per matrix,
//     2^BITS, D); qz the f16 row scales (n_mats·out) when VQ_SCALED. w = scale · codebook[c][index][j mod D], the
//     product VqLinear::decode_row forms, so the decoded weight is bit-identical. Here `group` is the codebook's
//     column count G and `n_groups` its row count R.
// Several matrices (experts) live in one set: global row r = matrix·out + row.
layout(constant_id = 10) const uint VQ_DIM = 1;
layout(constant_id = 11) const bool VQ_SCALED = false;
layout(std430, binding = QW_BINDING) readonly buffer QW { uint qw[]; };
layout(std430, binding = QW_BINDING + 1) readonly buffer QS { uint qs[]; };
layout(std430, binding = QW_BINDING + 2) readonly buffer QZ { uint qz[]; };

// W[r, j]. in_f: columns; out_rows: rows per matrix; row_bytes, n_groups, group: the packed layout (unused for f32).
float qweight(uint r, uint j, uint in_f, uint out_rows, uint row_bytes, uint n_groups, uint group) {
    if (FORMAT == 0) return uintBitsToFloat(qw[r * in_f + j]);
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
