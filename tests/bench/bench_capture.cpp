// bench_capture: throughput of the layer-sequential calibration capture (the first stage of every quantizer).
//
//   bench_capture [MODEL] [--samples N=8] [--seqlen L=256] [--threads T] [--affinity] [--eager] [--json]
//
// Random token windows (fixed seed) are embedded and pushed through every decoder layer: capture of all per-linear
// input statistics (H = Σ x xᵀ per attention input, FFN input, every routed expert's gate/up and down inputs, plus the
// affinity-weighted H with --affinity), then propagation to the next layer. Reported: tokens/s through the whole
// pipeline (tokens × layers / time, and tokens / time), seconds per layer, peak RSS. Layers are read on demand and
// released once passed (the calibration driver's memory rule); --eager loads the whole model first.
#include "bench_args.h"
#include "engine/core/resources.h"
#include "engine/cpu/model.h"
#include "engine/cpu/parallel.h"
#include "quantizer/calibration/capture.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <sys/resource.h>

using namespace moebius;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
    std::string model_dir = default_model_dir().string();
    int         samples = 8, seqlen = 256, threads = 0;
    bool        json = false, affinity = false, eager = false;
    bench::parse_args("bench_capture", argc, argv, model_dir, {{"--samples", &samples}, {"--seqlen", &seqlen}, {"--threads", &threads}},
                      {{"--json", &json}, {"--affinity", &affinity}, {"--eager", &eager}});
    if (samples < 1 || seqlen < 2) {
        std::fprintf(stderr, "bench_capture: --samples and --seqlen must be positive\n");
        return 2;
    }
    set_num_threads(threads);
    try {
        auto t0    = clk::now();
        LoadOptions lo;
        lo.lazy_layers = !eager;
        auto model = Model::load(model_dir, {}, lo);
        double load_s = std::chrono::duration<double>(clk::now() - t0).count();
        const auto& spec = model->spec();
        const quant::CalibrationSet set = bench::random_windows(spec, samples, seqlen);
        auto t1 = clk::now();
        quant::LayerwiseRunner run(*model, set, /*release_passed=*/!eager);
        quant::CaptureOptions  opt;
        opt.affinity = affinity;
        double capture_s = 0, advance_s = 0;
        while (!run.done()) {
            auto a = clk::now();
            quant::LayerStats st = run.capture(opt);
            auto b = clk::now();
            run.advance();
            auto c = clk::now();
            capture_s += std::chrono::duration<double>(b - a).count();
            advance_s += std::chrono::duration<double>(c - b).count();
        }
        double total_s = std::chrono::duration<double>(clk::now() - t1).count();
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        const double tokens = (double)samples * seqlen;
        nlohmann::ordered_json j;
        j["model"]              = model_dir;
        j["layers"]             = spec.n_layer;
        j["threads"]            = num_threads();
        j["tokens"]             = tokens;
        j["affinity"]           = affinity;
        j["lazy_layers"]        = !eager;
        j["load_s"]             = load_s;
        j["capture_s"]          = capture_s;
        j["propagate_s"]        = advance_s;
        j["total_s"]            = total_s;
        j["tokens_per_s"]       = tokens / total_s;
        j["layer_tokens_per_s"] = tokens * spec.n_layer / total_s;
        j["peak_rss_mib"]       = ru.ru_maxrss / 1024.0;
        if (json) std::printf("%s\n", j.dump().c_str());
        else
            std::printf("%s: %d layers, %.0f tokens, %d threads: %.1f tokens/s through the pipeline (%.1f layer-tokens/s), "
                        "capture %.2f s + propagate %.2f s, load %.2f s, peak RSS %.0f MiB\n",
                        model_dir.c_str(), spec.n_layer, tokens, num_threads(), tokens / total_s,
                        tokens * spec.n_layer / total_s, capture_s, advance_s, load_s, ru.ru_maxrss / 1024.0);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_capture: %s\n", e.what());
        return 1;
    }
    return 0;
}
