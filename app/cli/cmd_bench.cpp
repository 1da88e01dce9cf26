#include "app/cli/backend.h"
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/error.h"
#include "engine/core/resources.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/generate.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace moebius::cli {

// Greedy generation from a prompt cut from the bundled test text, timed: prefill and decode tokens per second on the
// chosen backend. No stop tokens, so every run decodes exactly --gen-tokens tokens. On a device with timestamps the
// decode steps are also profiled per kernel: device time, the bytes each kernel must move (weights of the experts
// it applies, activations; engine/vulkan/model_ops.cpp), GB/s and the share of the device's measured copy bandwidth
// (or of --peak-gbps, a datasheet number).
int cmd_bench(const Argv& argv) {
    Args args(argv, {"json", "no-profile"}, {"prompt-tokens", "gen-tokens", "threads", "backend", "device", "peak-gbps"});
    apply_threads(args);
    auto         dir   = model_arg(args);
    const int    n_in  = (int)args.get_int("prompt-tokens", 64, 1, 1 << 20);
    const int    n_gen = (int)args.get_int("gen-tokens", 32, 2, 1 << 20);
    const double peak  = args.get_double("peak-gbps", 0, 0, 1e6);
    Tokenizer    tok   = Tokenizer::from_file(dir / "tokenizer.json");
    auto         text  = read_file_text(resources_dir() / "corpus" / "test.txt");
    auto         ids   = tok.encode(text.substr(0, 50 * (size_t)n_in), true);
    if ((int)ids.size() < n_in) throw InputError("the test text has fewer than " + std::to_string(n_in) + " tokens");
    ids.resize(n_in);
    auto model = Model::load(dir);
    GenerateOptions opt;
    opt.max_tokens = n_gen;
    auto       gpu      = open_backend(args, *model, n_in + n_gen, "bench");
    const bool profiled = gpu && !args.flag("no-profile") && gpu->set_profiling(true);
    bool       first    = true;
    // The first token comes from the prefill: the profile restarts there, so it covers the decode steps only.
    auto on_token = [&](int32_t) {
        if (first && profiled) gpu->clear_profile();
        first = false;
        return true;
    };
    auto res = generate(*BackendSession(gpu.get(), *model), ids, opt, on_token);
    nlohmann::ordered_json j;
    j["backend"]              = gpu ? "vulkan" : "cpu";
    j["device"]               = gpu ? gpu->device_name() : "cpu";
    j["prompt_tokens"]        = res.prompt_tokens;
    j["generated_tokens"]     = res.tokens.size();
    j["prefill_tokens_per_s"] = res.prefill_tokens_per_s();
    j["decode_tokens_per_s"]  = res.decode_tokens_per_s();
    if (gpu) {
        j["dispatches_per_decode_token"] = gpu->last_dispatches();
        j["dispatches_per_layer"]        = gpu->last_layer_dispatches();
    }
    if (profiled) {
        const double steps = (double)res.tokens.size() - 1; // decode forward calls profiled
        const double copy  = gpu->copy_bandwidth_gbps();
        auto         prof  = gpu->profile();
        std::sort(prof.begin(), prof.end(), [](const auto& a, const auto& b) { return a.seconds > b.seconds; });
        double total_s = 0, total_b = 0;
        for (const auto& k : prof) total_s += k.seconds, total_b += (double)k.bytes;
        j["copy_bandwidth_gbps"] = copy;
        if (peak > 0) j["peak_gbps"] = peak;
        j["decode_device_ms_per_token"] = total_s / steps * 1e3;
        j["decode_bytes_per_token"]     = total_b / steps;
        // What the whole decode step achieves: bytes it must move over the wall time per token.
        const double eff                = total_b / steps * res.decode_tokens_per_s() * 1e-9;
        j["decode_gbps"]                = eff;
        j["decode_share_of_copy_bandwidth"] = copy > 0 ? eff / copy : 0;
        if (peak > 0) j["decode_share_of_peak"] = eff / peak;
        auto& ks = j["kernels"] = nlohmann::ordered_json::array();
        for (const auto& k : prof) {
            const double gbps = k.seconds > 0 ? (double)k.bytes / k.seconds * 1e-9 : 0;
            nlohmann::ordered_json e;
            e["name"]            = k.name;
            e["calls_per_token"] = (double)k.calls / steps;
            e["us_per_token"]    = k.seconds / steps * 1e6;
            e["time_share"]      = total_s > 0 ? k.seconds / total_s : 0;
            e["bytes_per_token"] = (double)k.bytes / steps;
            e["gbps"]            = gbps;
            e["share_of_copy_bandwidth"] = copy > 0 ? gbps / copy : 0;
            if (peak > 0) e["share_of_peak"] = gbps / peak;
            ks.push_back(e);
        }
    }
    if (args.flag("json")) print_json(j);
    else {
        std::cout << j["backend"].get<std::string>() << " (" << j["device"].get<std::string>() << "): prefill "
                  << res.prefill_tokens_per_s() << " tok/s over " << res.prompt_tokens << " tokens, decode "
                  << res.decode_tokens_per_s() << " tok/s over " << res.tokens.size() << " tokens";
        if (gpu)
            std::cout << ", " << gpu->last_dispatches() << " dispatches per decode token ("
                      << gpu->last_layer_dispatches() << " per layer)";
        std::cout << "\n";
        if (profiled) {
            std::printf("decode: %.3f ms device time and %.2f MB per token, %.2f GB/s = %.1f %% of the copy bandwidth "
                        "(%.2f GB/s)",
                        j["decode_device_ms_per_token"].get<double>(), j["decode_bytes_per_token"].get<double>() / 1e6,
                        j["decode_gbps"].get<double>(), 100 * j["decode_share_of_copy_bandwidth"].get<double>(),
                        j["copy_bandwidth_gbps"].get<double>());
            if (peak > 0) std::printf(", %.1f %% of %.0f GB/s peak", 100 * j["decode_share_of_peak"].get<double>(), peak);
            std::printf("\n%-16s %8s %10s %7s %12s %9s %8s\n", "kernel", "calls/tok", "us/tok", "time", "bytes/tok",
                        "GB/s", "of copy");
            for (const auto& e : j["kernels"])
                std::printf("%-16s %8.1f %10.1f %6.1f%% %12.0f %9.2f %7.1f%%\n", e["name"].get<std::string>().c_str(),
                            e["calls_per_token"].get<double>(), e["us_per_token"].get<double>(),
                            100 * e["time_share"].get<double>(), e["bytes_per_token"].get<double>(),
                            e["gbps"].get<double>(), 100 * e["share_of_copy_bandwidth"].get<double>());
        } else if (gpu && !args.flag("no-profile")) {
            std::cout << "(the device's queue has no timestamps: no per-kernel profile)\n";
        }
    }
    return 0;
}

} // namespace moebius::cli
