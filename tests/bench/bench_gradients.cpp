// bench_gradients: time of GLAS's loss-gradient statistics (collect_gradient_stats: forward + backward of the FP model
// on every calibration sample) against one plain forward of the same samples.
//
//   bench_gradients [MODEL] [--samples N=32] [--seqlen L=256] [--threads T] [--all-linears] [--layerwise] [--json]
//
// Random token windows (fixed seed). --all-linears: statistics for every linear (the importance map's request)
// instead of the routed experts only (MoBiE's). --layerwise: the statistics from a lazily loaded copy with a resident
// budget of 0, i.e. layer by layer with one decoder layer in memory (what models over 4 GiB of f32 weights get). Reported: seconds for the forward and for the statistics, their ratio.
#include "bench_args.h"
#include "engine/core/resources.h"
#include "engine/cpu/model.h"
#include "engine/cpu/parallel.h"
#include "quantizer/calibration/importance.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

using namespace moebius;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
    std::string model_dir = default_model_dir().string();
    int         samples = 32, seqlen = 256, threads = 0;
    bool        json = false, all = false, layerwise = false;
    bench::parse_args("bench_gradients", argc, argv, model_dir, {{"--samples", &samples}, {"--seqlen", &seqlen}, {"--threads", &threads}},
                      {{"--all-linears", &all}, {"--layerwise", &layerwise}, {"--json", &json}});
    if (samples < 1 || seqlen < 2) {
        std::fprintf(stderr, "bench_gradients: --samples must be positive and --seqlen at least 2\n");
        return 2;
    }
    set_num_threads(threads);
    try {
        auto        model = Model::load(model_dir);
        const auto& spec  = model->spec();
        const quant::CalibrationSet set = bench::random_windows(spec, samples, seqlen);
        auto               t0 = clk::now();
        std::vector<float> x((size_t)seqlen * spec.n_embd); // (seqlen, n_embd)
        for (const auto& s : set.samples) {
            model->embed(s.data(), seqlen, x.data());
            for (int il = 0; il < spec.n_layer; ++il) model->forward_layer(il, x.data(), seqlen, nullptr);
        }
        auto t1 = clk::now();
        std::unique_ptr<Model> lazy;
        if (layerwise) {
            LoadOptions lo;
            lo.lazy_layers = true;
            lazy           = Model::load(model_dir, {}, lo);
        }
        const auto tg = clk::now(); // the lazy copy's load (embeddings, lm_head) is not timed
        const quant::GradientStats gs =
            layerwise ? quant::collect_gradient_stats(*lazy, set, {}, !all, {}, /*max_resident_bytes=*/0)
                      : quant::collect_gradient_stats(*model, set, {}, !all);
        auto t2 = clk::now();
        const double fwd = std::chrono::duration<double>(t1 - t0).count(), grad = std::chrono::duration<double>(t2 - tg).count();
        nlohmann::ordered_json j;
        j["model"]       = model_dir;
        j["threads"]     = num_threads();
        j["tokens"]      = (int64_t)samples * seqlen;
        j["linears"]     = all ? "all" : "routed experts";
        j["layerwise"]   = layerwise;
        j["entries"]     = gs.entries.size();
        j["forward_s"]   = fwd;
        j["gradients_s"] = grad;
        j["ratio"]       = grad / fwd;
        if (json) std::printf("%s\n", j.dump().c_str());
        else
            std::printf("%s: %d × %d tokens, %d threads, %s: forward %.2f s, gradient statistics%s %.2f s (%.2f× the forward)\n",
                        model_dir.c_str(), samples, seqlen, num_threads(), all ? "all linears" : "routed experts", fwd,
                        layerwise ? " (layer by layer)" : "", grad, grad / fwd);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gradients: %s\n", e.what());
        return 1;
    }
    return 0;
}
