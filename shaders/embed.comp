#version 450
// x (n, d) = table[tokens[t], :] — the embedding lookup. Token ids are range-checked on the host before upload.
layout(local_size_x = 64) in;

layout(std430, binding = 0) readonly buffer Tok { int tok[]; };       // (n)
layout(std430, binding = 1) readonly buffer Table { float table[]; }; // (n_vocab, d)
layout(std430, binding = 2) writeonly buffer X { float x[]; };        // (n, d)
layout(push_constant) uniform P { uint n, d; } p;

void main() {
    const uint j = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (j >= p.d || t >= p.n) return;
    x[t * p.d + j] = table[uint(tok[t]) * p.d + j];
}
