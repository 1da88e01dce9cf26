#version 450
// x (n, d) = table[tokens[t], :] — the embedding lookup. Token ids are range-checked on the host before upload.
// A table larger than one binding is split by rows: this dispatch holds rows [v0, v0 + rows) and writes only the
// tokens in that range.
layout(local_size_x = 64) in;

layout(std430, binding = 0) readonly buffer Tok { int tok[]; };       // (n)
layout(std430, binding = 1) readonly buffer Table { float table[]; }; // (n_vocab, d)
layout(std430, binding = 2) writeonly buffer X { float x[]; };        // (n, d)
layout(push_constant) uniform P { uint n, d, v0, rows; } p;

void main() {
    const uint j = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (j >= p.d || t >= p.n) return;
    const uint v = uint(tok[t]) - p.v0; // wraps above rows when below v0
    if (v < p.rows) x[t * p.d + j] = table[v * p.d + j];
}
