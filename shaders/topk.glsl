// MoE expert selection of token t, as the CPU forward: softmax over the logits LOGIT(0..n_expert), the top k
// (highest probability first, ties to the lower expert id), optionally renormalised over the chosen k (summed in rank
// order); (id, weight) pairs written to ids / w (n, k) sorted by expert id — the down kernel sums the experts in that
// order, the CPU's combine order (ascending expert id), independent of the batch. The including shader defines
// LOGIT(e), the buffers ids and w, and push constants p.n_expert, p.k, p.renorm.
void select_topk(uint t) {
    float mx = LOGIT(0u);
    for (uint e = 1; e < p.n_expert; ++e) mx = max(mx, LOGIT(e));
    float sum = 0.0;
    for (uint e = 0; e < p.n_expert; ++e) sum += exp(LOGIT(e) - mx);
    const float inv = 1.0 / sum;
    uint        taken[MOE_MAX_E / 32];
    for (uint i = 0; i < MOE_MAX_E / 32; ++i) taken[i] = 0u;
    uint  sel[MOE_MAX_K];
    float prob[MOE_MAX_K];
    float tot = 0.0;
    for (uint j = 0; j < p.k; ++j) {
        uint  best = 0;
        float bp   = -1.0;
        for (uint e = 0; e < p.n_expert; ++e) {
            if ((taken[e >> 5] >> (e & 31u) & 1u) != 0u) continue;
            const float pe = exp(LOGIT(e) - mx) * inv;
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
