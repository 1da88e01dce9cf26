#version 450
// h (n, d) = silu(g) ⊙ u, elementwise over total = n·d values; the grid is 2-D for totals above 65535 workgroups.
layout(constant_id = 0) const uint WG = 64;
layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer G { float g[]; };  // (n, d)
layout(std430, binding = 1) readonly buffer U { float u[]; };  // (n, d)
layout(std430, binding = 2) writeonly buffer H { float h[]; }; // (n, d)
layout(push_constant) uniform P { uint total; } p;

void main() {
    const uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * WG;
    if (i >= p.total) return;
    const float gv = g[i];
    h[i] = gv / (1.0 + exp(-gv)) * u[i];
}
