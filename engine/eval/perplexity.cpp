#include "engine/eval/perplexity.h"

#include "engine/core/error.h"

#include <cmath>
#include <vector>

namespace moebius {

double window_nll(const float* logits, int n, int n_vocab, const int32_t* ids) {
    double total = 0;
    for (int i = 0; i + 1 < n; ++i) {
        const float* row = logits + (int64_t)i * n_vocab;
        float        mx  = row[0];
        for (int v = 1; v < n_vocab; ++v) mx = std::max(mx, row[v]);
        double s = 0;
        for (int v = 0; v < n_vocab; ++v) s += std::exp((double)row[v] - mx);
        total += (std::log(s) + mx) - row[ids[i + 1]];
    }
    return total;
}

PerplexityResult perplexity(const Model& model, std::span<const int32_t> ids, int seqlen, const ProgressFn& progress) {
    CpuSession session(model);
    return perplexity(session, ids, seqlen, progress);
}

PerplexityResult perplexity(Session& session, std::span<const int32_t> ids, int seqlen, const ProgressFn& progress) {
    if (seqlen < 2) throw InputError("seqlen must be at least 2");
    PerplexityResult r;
    r.seqlen  = seqlen;
    r.windows = (int)(ids.size() / seqlen);
    if (r.windows == 0)
        throw InputError("the text has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                         std::to_string(seqlen));
    const int          V = session.spec().n_vocab;
    std::vector<float> logits((size_t)seqlen * V);
    session.reset(seqlen);
    double             nll   = 0;
    for (int w = 0; w < r.windows; ++w) {
        report_progress(progress, (double)w / r.windows,
                        "window " + std::to_string(w + 1) + "/" + std::to_string(r.windows));
        session.clear();
        const int32_t* win = ids.data() + (int64_t)w * seqlen;
        session.forward(win, seqlen, logits.data(), true);
        nll += window_nll(logits.data(), seqlen, V, win);
    }
    report_progress(progress, 1.0, "done");
    r.tokens      = (int64_t)r.windows * seqlen;
    r.predictions = (int64_t)r.windows * (seqlen - 1);
    r.mean_nll    = nll / r.predictions;
    r.ppl         = std::exp(r.mean_nll);
    return r;
}

} // namespace moebius
