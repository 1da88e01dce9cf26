// bench_cpu: prefill and decode throughput of the CPU engine on one checkpoint.
//
//   bench_cpu [MODEL] [--prompt N=256] [--decode N=64] [--threads T] [--repeat R=3] [--warmup W=1] [--json]
//
// MODEL defaults to the bundled tiny-qwen2moe. Each run: a fresh KV cache (cleared), one forward of the N prompt
// tokens (prefill; logits of the last token only), then N greedy decode steps of one token each through the cache.
// Reported: best and median tokens/s over R timed runs (after W untimed warm-up runs), load time, and the process's
// peak RSS (getrusage ru_maxrss, which includes loading). The prompt is a fixed pseudo-random id sequence (the same
// LCG as tests/bench/torch_eager_qwen2moe.py), so both benchmarks run identical inputs.
#include "engine/core/error.h"
#include "engine/core/resources.h"
#include "engine/cpu/model.h"
#include "engine/cpu/parallel.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <sys/resource.h>
#include <vector>

namespace fs = std::filesystem;
using clk    = std::chrono::steady_clock;

namespace {

[[noreturn]] void usage(const std::string& msg = {}) {
    if (!msg.empty()) std::fprintf(stderr, "bench_cpu: %s\n", msg.c_str());
    std::fprintf(stderr, "usage: bench_cpu [MODEL] [--prompt N=256] [--decode N=64] [--threads T] [--repeat R=3] "
                         "[--warmup W=1] [--json]\n");
    std::exit(2);
}

long parse_int(const std::string& opt, const char* s, long lo, long hi) {
    char* end = nullptr;
    errno     = 0;
    long v    = std::strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        usage(opt + ": '" + s + "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v;
}

// x <- (1103515245 x + 12345) mod 2^31, id = x mod vocab; x0 = 42.
std::vector<int32_t> prompt_ids(int n, int vocab) {
    std::vector<int32_t> ids(n);
    uint64_t             x = 42;
    for (int i = 0; i < n; ++i) {
        x      = (1103515245ull * x + 12345ull) % 2147483648ull;
        ids[i] = (int32_t)(x % (uint64_t)vocab);
    }
    return ids;
}

double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double peak_rss_mib() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; // Linux: KiB
}

} // namespace

int main(int argc, char** argv) {
    fs::path model_dir;
    int      n_prompt = 256, n_decode = 64, threads = 0, repeat = 3, warmup = 1;
    bool     as_json = false;
    for (int i = 1; i < argc; ++i) {
        std::string a    = argv[i];
        auto        next = [&]() -> const char* {
            if (i + 1 >= argc) usage(a + " needs a value");
            return argv[++i];
        };
        if (a == "--prompt") n_prompt = (int)parse_int(a, next(), 1, 1 << 20);
        else if (a == "--decode") n_decode = (int)parse_int(a, next(), 0, 1 << 20);
        else if (a == "--threads") threads = (int)parse_int(a, next(), 1, 4096);
        else if (a == "--repeat") repeat = (int)parse_int(a, next(), 1, 1000);
        else if (a == "--warmup") warmup = (int)parse_int(a, next(), 0, 1000);
        else if (a == "--json") as_json = true;
        else if (a == "-h" || a == "--help") usage();
        else if (!a.empty() && a[0] == '-') usage("unknown option '" + a + "'");
        else if (model_dir.empty()) model_dir = a;
        else usage("more than one MODEL given");
    }
    if (model_dir.empty()) model_dir = moebius::default_model_dir();

    try {
        moebius::set_num_threads(threads);
        threads = moebius::num_threads();

        auto t_load = clk::now();
        auto model  = moebius::Model::load(model_dir);
        double load_s = seconds_since(t_load);
        const auto& spec = model->spec();
        const int   n_ctx = n_prompt + n_decode;
        if (n_ctx > spec.max_position)
            std::fprintf(stderr, "bench_cpu: note: %d tokens exceed max_position_embeddings %d (run anyway)\n", n_ctx,
                         spec.max_position);

        const std::vector<int32_t> prompt = prompt_ids(n_prompt, spec.n_vocab);
        moebius::KVCache           cache  = model->new_cache(n_ctx);
        std::vector<float>         logits(spec.n_vocab);
        std::vector<double>        prefill_tps, decode_tps;
        std::vector<int32_t>       generated;

        for (int r = 0; r < warmup + repeat; ++r) {
            cache.clear();
            auto t0 = clk::now();
            model->forward(prompt.data(), n_prompt, cache, logits.data(), false);
            double prefill_s = seconds_since(t0);

            std::vector<int32_t> gen;
            auto                 t1 = clk::now();
            for (int s = 0; s < n_decode; ++s) {
                int32_t tok = (int32_t)(std::max_element(logits.begin(), logits.end()) - logits.begin());
                gen.push_back(tok);
                model->forward(&tok, 1, cache, logits.data(), false);
            }
            double decode_s = seconds_since(t1);
            if (r < warmup) continue;
            prefill_tps.push_back(n_prompt / prefill_s);
            if (n_decode > 0) decode_tps.push_back(n_decode / decode_s);
            generated = gen;
        }

        auto best = [](const std::vector<double>& v) { return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()); };
        auto med  = [](const std::vector<double>& v) { return v.empty() ? 0.0 : median(v); };
        const double rss = peak_rss_mib();

        if (as_json) {
            nlohmann::ordered_json j;
            j["engine"]               = "moebius";
            j["model"]                = fs::absolute(model_dir).lexically_normal().string();
            j["model_type"]           = spec.model_type;
            j["n_layer"]              = spec.n_layer;
            j["threads"]              = threads;
            j["prompt_tokens"]        = n_prompt;
            j["decode_tokens"]        = n_decode;
            j["repeat"]               = repeat;
            j["load_s"]               = load_s;
            j["prefill_tok_s_best"]   = best(prefill_tps);
            j["prefill_tok_s_median"] = med(prefill_tps);
            j["decode_tok_s_best"]    = best(decode_tps);
            j["decode_tok_s_median"]  = med(decode_tps);
            j["prefill_tok_s_all"]    = prefill_tps;
            j["decode_tok_s_all"]     = decode_tps;
            j["peak_rss_mib"]         = rss;
            j["first_generated_ids"]  = std::vector<int32_t>(generated.begin(),
                                                             generated.begin() + std::min<size_t>(8, generated.size()));
            std::printf("%s\n", j.dump().c_str());
        } else {
            std::printf("model    %s (%s, %d layers, %.2f GB f32 in memory)\n", model_dir.c_str(),
                        spec.model_type.c_str(), spec.n_layer, model->storage_bytes() / 1e9);
            std::printf("threads  %d   prompt %d   decode %d   repeat %d (+%d warm-up)\n", threads, n_prompt, n_decode,
                        repeat, warmup);
            std::printf("load     %.3f s\n", load_s);
            std::printf("%-8s %14s %14s\n", "", "best tok/s", "median tok/s");
            std::printf("%-8s %14.2f %14.2f\n", "prefill", best(prefill_tps), med(prefill_tps));
            if (n_decode > 0) std::printf("%-8s %14.2f %14.2f\n", "decode", best(decode_tps), med(decode_tps));
            std::printf("peak RSS %.1f MiB\n", rss);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_cpu: %s\n", e.what());
        return 1;
    }
    return 0;
}
