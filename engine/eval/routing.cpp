#include "engine/eval/routing.h"

#include "engine/core/error.h"

#include <algorithm>
#include <cmath>

namespace moebius {

ExpertUsage::ExpertUsage(const ModelSpec& spec) : n_expert(spec.n_expert), k(spec.n_expert_used) {
    for (int il = 0; il < spec.n_layer; ++il)
        if (spec.layer_is_moe[il]) layers.push_back(il);
    tokens.assign(layers.size(), 0);
    counts.assign(layers.size(), std::vector<int64_t>(n_expert, 0));
    weight_sum.assign(layers.size(), std::vector<double>(n_expert, 0));
    coactive.assign(layers.size(), std::vector<int64_t>((size_t)n_expert * n_expert, 0));
}

int ExpertUsage::moe_index(int layer) const {
    auto it = std::find(layers.begin(), layers.end(), layer);
    return it == layers.end() ? -1 : (int)(it - layers.begin());
}

void ExpertUsage::add(const RouterEvent& ev) {
    int l = moe_index(ev.layer);
    MOEBIUS_ASSERT(l >= 0 && ev.n_expert == n_expert && ev.k == k);
    tokens[l] += ev.n;
    for (int t = 0; t < ev.n; ++t) {
        const int* ids = ev.topk_ids + (size_t)t * k;
        for (int j = 0; j < k; ++j) {
            counts[l][ids[j]] += 1;
            weight_sum[l][ids[j]] += ev.topk_weights[(size_t)t * k + j];
            for (int j2 = 0; j2 < k; ++j2) coactive[l][(size_t)ids[j] * n_expert + ids[j2]] += 1;
        }
    }
}

void ExpertUsage::merge(const ExpertUsage& o) {
    MOEBIUS_ASSERT(o.layers == layers && o.n_expert == n_expert);
    for (size_t l = 0; l < layers.size(); ++l) {
        tokens[l] += o.tokens[l];
        for (int e = 0; e < n_expert; ++e) {
            counts[l][e] += o.counts[l][e];
            weight_sum[l][e] += o.weight_sum[l][e];
        }
        for (size_t i = 0; i < coactive[l].size(); ++i) coactive[l][i] += o.coactive[l][i];
    }
}

double ExpertUsage::fraction(int l, int e) const {
    return tokens[l] ? (double)counts[l][e] / ((double)tokens[l] * k) : 0;
}
double ExpertUsage::mean_weight(int l, int e) const { return counts[l][e] ? weight_sum[l][e] / counts[l][e] : 0; }

double ExpertUsage::imbalance(int l) const {
    if (n_expert < 2 || tokens[l] == 0) return 0;
    double mean = 1.0 / n_expert, ss = 0;
    for (int e = 0; e < n_expert; ++e) ss += (fraction(l, e) - mean) * (fraction(l, e) - mean);
    return std::sqrt(ss / (n_expert - 1));
}

double ExpertUsage::mean_imbalance() const {
    if (layers.empty()) return 0;
    double s = 0;
    for (size_t l = 0; l < layers.size(); ++l) s += imbalance((int)l);
    return s / layers.size();
}

double ExpertUsage::entropy(int l) const {
    double h = 0;
    for (int e = 0; e < n_expert; ++e) {
        double f = fraction(l, e);
        if (f > 0) h -= f * std::log(f);
    }
    return h;
}

nlohmann::ordered_json ExpertUsage::to_json() const {
    nlohmann::ordered_json j;
    j["n_expert"]       = n_expert;
    j["k"]              = k;
    j["mean_imbalance"] = mean_imbalance();
    auto arr            = nlohmann::ordered_json::array();
    for (size_t l = 0; l < layers.size(); ++l) {
        nlohmann::ordered_json L;
        L["layer"]     = layers[l];
        L["tokens"]    = tokens[l];
        L["imbalance"] = imbalance((int)l);
        L["entropy"]   = entropy((int)l);
        L["counts"]    = counts[l];
        std::vector<double> frac(n_expert), mw(n_expert);
        for (int e = 0; e < n_expert; ++e) frac[e] = fraction((int)l, e), mw[e] = mean_weight((int)l, e);
        L["fraction"]    = frac;
        L["mean_weight"] = mw;
        L["weight_sum"]  = weight_sum[l];
        L["coactive"]    = coactive[l];
        arr.push_back(std::move(L));
    }
    j["layers"] = std::move(arr);
    return j;
}

static double mean_of(const std::vector<RoutingDiff::Layer>& v, double RoutingDiff::Layer::*f) {
    if (v.empty()) return 0;
    double s = 0;
    for (const auto& l : v) s += l.*f;
    return s / v.size();
}
double RoutingDiff::shift_rate() const { return mean_of(layers, &Layer::shift_rate); }
double RoutingDiff::top1_flip_rate() const { return mean_of(layers, &Layer::top1_flip_rate); }
double RoutingDiff::router_kl() const { return mean_of(layers, &Layer::router_kl); }

nlohmann::ordered_json RoutingDiff::to_json() const {
    nlohmann::ordered_json j;
    j["shift_rate"]     = shift_rate();
    j["top1_flip_rate"] = top1_flip_rate();
    j["router_kl"]      = router_kl();
    j["n_expert"]       = n_expert;
    auto arr            = nlohmann::ordered_json::array();
    for (const auto& l : layers) {
        nlohmann::ordered_json L;
        L["layer"]          = l.layer;
        L["tokens"]         = l.tokens;
        L["shift_rate"]     = l.shift_rate;
        L["top1_flip_rate"] = l.top1_flip_rate;
        L["router_kl"]      = l.router_kl;
        L["transition"]     = l.transition;
        L["load_delta"]     = l.load_delta;
        arr.push_back(std::move(L));
    }
    j["per_layer"] = std::move(arr);
    return j;
}

namespace {

// Router outputs of one window, per MoE layer: probs (n, E) and top-k ids (n, k).
struct RouterTrace {
    std::vector<int>                layers;
    std::vector<std::vector<float>> probs;
    std::vector<std::vector<int>>   topk;
};

RouterTrace trace(const Model& m, const int32_t* ids, int n, KVCache& cache, ExpertUsage* usage) {
    RouterTrace tr;
    Hooks       h;
    h.on_router = [&](const RouterEvent& ev) {
        tr.layers.push_back(ev.layer);
        tr.probs.emplace_back(ev.probs, ev.probs + (size_t)ev.n * ev.n_expert);
        tr.topk.emplace_back(ev.topk_ids, ev.topk_ids + (size_t)ev.n * ev.k);
        if (usage) usage->add(ev);
    };
    cache.clear();
    m.forward(ids, n, cache, nullptr, false, &h);
    return tr;
}

void check_same_structure(const ModelSpec& a, const ModelSpec& b) {
    auto fail = [&](const std::string& what) {
        throw InputError("cannot compare routing: the models differ in " + what + " (" + a.dir.string() + " vs " +
                         b.dir.string() + ")");
    };
    if (a.model_type != b.model_type) fail("architecture: " + a.model_type + " vs " + b.model_type);
    if (a.n_vocab != b.n_vocab) fail("vocabulary size: " + std::to_string(a.n_vocab) + " vs " + std::to_string(b.n_vocab));
    if (a.n_layer != b.n_layer || a.layer_is_moe != b.layer_is_moe) fail("layer structure");
    if (a.n_expert != b.n_expert || a.n_expert_used != b.n_expert_used) fail("number of experts or top-k");
}

} // namespace

ExpertUsage measure_usage(const Model& model, std::span<const int32_t> ids, int seqlen, const ProgressFn& progress) {
    if (seqlen < 1 || (int64_t)ids.size() < seqlen) throw InputError("the text is shorter than one window");
    ExpertUsage u(model.spec());
    KVCache     cache   = model.new_cache(seqlen);
    const int   windows = (int)(ids.size() / seqlen);
    for (int w = 0; w < windows; ++w) {
        report_progress(progress, (double)w / windows, "window " + std::to_string(w + 1) + "/" + std::to_string(windows));
        trace(model, ids.data() + (int64_t)w * seqlen, seqlen, cache, &u);
    }
    return u;
}

RoutingDiff compare_routing(const Model& ref, const Model& model, std::span<const int32_t> ids, int seqlen,
                            const ProgressFn& progress) {
    check_same_structure(ref.spec(), model.spec());
    if (seqlen < 1 || (int64_t)ids.size() < seqlen) throw InputError("the text is shorter than one window");
    const int E = ref.spec().n_expert, K = ref.spec().n_expert_used;
    for (int32_t id : ids)
        if (id < 0 || id >= ref.spec().n_vocab) throw InputError("token id outside the vocabulary");
    RoutingDiff d;
    d.n_expert = E;
    ExpertUsage ur(ref.spec()), um(model.spec());
    for (int il : ur.layers) {
        RoutingDiff::Layer L;
        L.layer = il;
        L.transition.assign((size_t)E * E, 0);
        L.load_delta.assign(E, 0);
        d.layers.push_back(std::move(L));
    }
    std::vector<int64_t> shifted(d.layers.size(), 0), flipped(d.layers.size(), 0);
    std::vector<double>  kl(d.layers.size(), 0);
    KVCache              c1 = ref.new_cache(seqlen), c2 = model.new_cache(seqlen);
    const int            windows = (int)(ids.size() / seqlen);
    std::vector<int>     a(K), b(K);
    for (int w = 0; w < windows; ++w) {
        report_progress(progress, (double)w / windows, "window " + std::to_string(w + 1) + "/" + std::to_string(windows));
        const int32_t* win = ids.data() + (int64_t)w * seqlen;
        RouterTrace    tr  = trace(ref, win, seqlen, c1, &ur);
        RouterTrace    tm  = trace(model, win, seqlen, c2, &um);
        for (size_t l = 0; l < d.layers.size(); ++l) {
            for (int t = 0; t < seqlen; ++t) {
                a.assign(tr.topk[l].begin() + (size_t)t * K, tr.topk[l].begin() + (size_t)(t + 1) * K);
                b.assign(tm.topk[l].begin() + (size_t)t * K, tm.topk[l].begin() + (size_t)(t + 1) * K);
                d.layers[l].transition[(size_t)a[0] * E + b[0]] += 1;
                flipped[l] += a[0] != b[0];
                std::sort(a.begin(), a.end());
                std::sort(b.begin(), b.end());
                shifted[l] += a != b;
                const float* p = tr.probs[l].data() + (size_t)t * E;
                const float* q = tm.probs[l].data() + (size_t)t * E;
                double       s = 0;
                for (int e = 0; e < E; ++e)
                    if (p[e] > 0) s += (double)p[e] * (std::log((double)p[e]) - std::log(std::max((double)q[e], 1e-30)));
                kl[l] += s;
            }
        }
    }
    for (size_t l = 0; l < d.layers.size(); ++l) {
        auto& L          = d.layers[l];
        L.tokens         = (int64_t)windows * seqlen;
        L.shift_rate     = (double)shifted[l] / L.tokens;
        L.top1_flip_rate = (double)flipped[l] / L.tokens;
        L.router_kl      = kl[l] / L.tokens;
        for (int e = 0; e < E; ++e) L.load_delta[e] = um.fraction((int)l, e) - ur.fraction((int)l, e);
    }
    report_progress(progress, 1.0, "done");
    return d;
}

} // namespace moebius
