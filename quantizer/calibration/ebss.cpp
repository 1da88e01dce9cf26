#include "quantizer/calibration/ebss.h"

#include "engine/core/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace moebius::quant {

namespace {

using Counts = std::vector<std::vector<int64_t>>; // [moe layer][expert] top-k assignments

struct Beam {
    std::vector<int32_t> ids;
    double               logprob = 0; // Σ log p of generated tokens (the random first token excluded)
    Counts               counts;
    KVCache              cache;
    std::vector<float>   logits; // next-token logits
};

// Appends one token to a beam: forward with the KV cache, expert assignments from the router hook.
void step(const Model& m, Beam& b, int32_t tok) {
    Hooks h;
    int   l = 0;
    h.on_router = [&](const RouterEvent& ev) {
        for (int j = 0; j < ev.k; ++j) b.counts[l][ev.topk_ids[j]] += 1;
        ++l;
    };
    b.ids.push_back(tok);
    b.logits.resize(m.spec().n_vocab);
    m.forward(&tok, 1, b.cache, b.logits.data(), false, &h);
}

// MoEQuant's σ: per MoE layer the unbiased standard deviation over experts of the assignment frequencies,
// averaged over layers; of a + b (b may be empty).
double sigma(const Counts& a, const Counts& b, bool counts) {
    double s = 0;
    for (size_t l = 0; l < a.size(); ++l) {
        const size_t E   = a[l].size();
        double       tot = 0;
        for (size_t e = 0; e < E; ++e) tot += a[l][e] + (b.empty() ? 0 : b[l][e]);
        if (tot == 0 || E < 2) continue;
        double ss = 0;
        for (size_t e = 0; e < E; ++e) {
            double n = a[l][e] + (b.empty() ? 0 : b[l][e]);
            double f = counts ? n - tot / E : n / tot - 1.0 / E;
            ss += f * f;
        }
        s += std::sqrt(ss / (E - 1));
    }
    return a.empty() ? 0 : s / a.size();
}

double score(const Beam& b, const Counts& set, const EbssOptions& o) {
    const double n = std::max<size_t>(1, b.ids.size() - 1);
    return -b.logprob / n + sigma(b.counts, set, o.sigma_counts) / o.tau;
}

} // namespace

CalibrationSet ebss_generate(const Model& m, const EbssOptions& opt, const ProgressFn& progress) {
    const ModelSpec& spec = m.spec();
    if (opt.samples <= 0 || opt.seqlen < 2 || opt.beam <= 0 || opt.children <= 0 || !(opt.tau > 0))
        throw InputError("EBSS: samples, seqlen ≥ 2, beam, children and tau must be positive");
    if (spec.n_moe_layers() == 0) throw InputError("EBSS needs a model with MoE layers");
    std::vector<int32_t> first;
    for (int32_t v = 0; v < spec.n_vocab; ++v)
        if (std::find(opt.excluded_first.begin(), opt.excluded_first.end(), v) == opt.excluded_first.end())
            first.push_back(v);
    std::mt19937_64 rng(opt.seed);
    CalibrationSet  set;
    set.seqlen = opt.seqlen;
    set.seed   = opt.seed;
    set.source = "ebss(beam=" + std::to_string(opt.beam) + ",tau=" + std::to_string(opt.tau) + ")";
    const int V     = spec.n_vocab;
    const int total = opt.samples * (opt.seqlen - 1);
    std::vector<double> lsm(V);
    std::vector<int>    order(V);
    const Counts zero(spec.n_moe_layers(), std::vector<int64_t>(spec.n_expert, 0));
    Counts       set_counts = zero; // assignments of the samples chosen so far
    const Counts none;
    for (int s = 0; s < opt.samples; ++s) {
        const Counts&     context = opt.balance_set ? set_counts : none;
        std::vector<Beam> beams;
        beams.push_back(Beam{{}, 0, zero, m.new_cache(opt.seqlen), {}});
        step(m, beams[0], first[std::uniform_int_distribution<size_t>(0, first.size() - 1)(rng)]);
        for (int j = 1; j < opt.seqlen; ++j) {
            report_progress(progress, (double)(s * (opt.seqlen - 1) + j - 1) / total,
                            "EBSS sample " + std::to_string(s + 1) + "/" + std::to_string(opt.samples) + ", token " +
                                std::to_string(j + 1) + "/" + std::to_string(opt.seqlen));
            // Expand: top children of every beam, scored with the parent's imbalance (deferred σ: one forward per
            // kept beam instead of one per child).
            struct Child {
                int     parent;
                int32_t tok;
                double  logprob, score;
            };
            std::vector<Child> kids;
            for (int bi = 0; bi < (int)beams.size(); ++bi) {
                const Beam& b  = beams[bi];
                float       mx = *std::max_element(b.logits.begin(), b.logits.end());
                double      z  = 0;
                for (int v = 0; v < V; ++v) z += std::exp((double)b.logits[v] - mx);
                const double lz = std::log(z) + mx;
                for (int v = 0; v < V; ++v) lsm[v] = b.logits[v] - lz;
                for (int32_t v : opt.banned)
                    if (v >= 0 && v < V) lsm[v] = -INFINITY;
                std::iota(order.begin(), order.end(), 0);
                const int nc = std::min(opt.children, V);
                std::partial_sort(order.begin(), order.begin() + nc, order.end(),
                                  [&](int a, int c) { return lsm[a] > lsm[c] || (lsm[a] == lsm[c] && a < c); });
                const double sig = sigma(b.counts, context, opt.sigma_counts) / opt.tau;
                for (int c = 0; c < nc; ++c) {
                    double lp = b.logprob + lsm[order[c]];
                    kids.push_back({bi, order[c], lp, -lp / j + sig});
                }
            }
            const int keep = std::min<int>(opt.beam, (int)kids.size());
            std::partial_sort(kids.begin(), kids.begin() + keep, kids.end(), [](const Child& a, const Child& b) {
                return a.score < b.score || (a.score == b.score && (a.parent < b.parent || (a.parent == b.parent && a.tok < b.tok)));
            });
            std::vector<Beam> next;
            next.reserve(keep);
            for (int c = 0; c < keep; ++c) {
                next.push_back(beams[kids[c].parent]); // copies ids, usage and KV cache
                next.back().logprob = kids[c].logprob;
                step(m, next.back(), kids[c].tok);
            }
            beams = std::move(next);
        }
        auto best = std::min_element(beams.begin(), beams.end(), [&](const Beam& a, const Beam& b) {
            return score(a, context, opt) < score(b, context, opt);
        });
        set.samples.push_back(best->ids);
        for (size_t l = 0; l < set_counts.size(); ++l)
            for (int e = 0; e < spec.n_expert; ++e) set_counts[l][e] += best->counts[l][e];
    }
    report_progress(progress, 1.0, "EBSS done");
    return set;
}

} // namespace moebius::quant
