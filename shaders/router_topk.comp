#version 450
// MoE routing for one token per invocation, as the CPU forward: softmax over the router logits, the top k
// (highest probability first, ties to the lower expert id), optionally renormalised over the chosen k (summed in
// rank order). The chosen (id, weight) pairs are written sorted by expert id: the down kernel sums the experts in
// that order, which is the CPU's combine order (ascending expert id) and independent of the batch.
layout(local_size_x = 64) in;
const uint MAX_K = 32, MAX_E = 1024;

layout(std430, binding = 0) readonly buffer L { float logits[]; }; // (n, stride): experts at [0, n_expert)
layout(std430, binding = 1) writeonly buffer I { int ids[]; };     // (n, k)
layout(std430, binding = 2) writeonly buffer W { float w[]; };     // (n, k)
layout(push_constant) uniform P { uint n, n_expert, k, stride, renorm; } p;

void main() {
    const uint t = gl_GlobalInvocationID.x;
    if (t >= p.n) return;
    const uint base = t * p.stride;
    float      mx   = logits[base];
    for (uint e = 1; e < p.n_expert; ++e) mx = max(mx, logits[base + e]);
    float sum = 0.0;
    for (uint e = 0; e < p.n_expert; ++e) sum += exp(logits[base + e] - mx);
    const float inv = 1.0 / sum;
    uint  taken[MAX_E / 32];
    for (uint i = 0; i < MAX_E / 32; ++i) taken[i] = 0u;
    uint  sel[MAX_K];
    float prob[MAX_K];
    float tot = 0.0;
    for (uint j = 0; j < p.k; ++j) {
        uint  best = 0;
        float bp   = -1.0;
        for (uint e = 0; e < p.n_expert; ++e) {
            if ((taken[e >> 5] >> (e & 31u) & 1u) != 0u) continue;
            const float pe = exp(logits[base + e] - mx) * inv;
            if (pe > bp) { // strict: an equal probability keeps the lower id found first
                bp   = pe;
                best = e;
            }
        }
        taken[best >> 5] |= 1u << (best & 31u);
        sel[j]  = best;
        prob[j] = bp;
        tot += bp;
    }
    // Slot of each choice in expert-id order: the number of chosen ids below it (the ids are distinct).
    for (uint j = 0; j < p.k; ++j) {
        uint slot = 0;
        for (uint i = 0; i < p.k; ++i) slot += sel[i] < sel[j] ? 1u : 0u;
        ids[t * p.k + slot] = int(sel[j]);
        w[t * p.k + slot]   = p.renorm != 0u ? prob[j] / tot : prob[j];
    }
}
