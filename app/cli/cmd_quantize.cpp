#include "app/cli/calibration_args.h"
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/error.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "quantizer/calibration/calibration_data.h"
#include "quantizer/format/checkpoint_writer.h"
#include "quantizer/pipeline.h"

#include <atomic>
#include <chrono>
#include <csignal>
#include <iostream>
#include <map>
#include <sys/resource.h>

namespace moebius::cli {

using namespace moebius::quant;

namespace {

std::atomic<bool> g_interrupted{false};
void on_sigint(int) { g_interrupted = true; }

double peak_rss_mib() {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

// Module kind for the per-kind bit accounting, from the module name.
std::string module_group(const std::string& name) {
    if (name.find("self_attn.") != std::string::npos) return "attention";
    if (name.find(".experts.") != std::string::npos) return "experts";
    if (name.find("shared_expert") != std::string::npos) return "shared_experts";
    if (name.ends_with(".gate")) return "router";
    return "dense_ffn";
}

} // namespace

int cmd_quantize(const Argv& argv) {
    Args args(argv, {"json", "ebss", "force", "sym", "act-order", "quantize-router", "no-attention", "resume", "no-idre",
                     "no-bcos", "no-bcos-bias", "no-bcos-gamma", "no-cejd", "no-glas", "no-nges", "no-refit", "cejd-all",
                     "no-fp-target", "fp-target-experts", "fp-target", "no-shared-codebooks"},
              {"method", "bits", "group", "calib", "text", "samples", "seqlen", "seed", "out", "threads", "damp",
               "beam", "tau", "max-shard-size", "vq-dim", "vq-group-size", "rank", "core", "nges-weight", "fp-ridge",
               "glas-samples", "expert-vq-dim", "codebook-bits", "vq-refine"});
    apply_threads(args);
    auto dir = model_arg(args);
    auto out = args.get("out");
    if (!out) throw InputError("--out DIR is required");
    QuantizeOptions opt;
    opt.method             = args.get_or("method", "gptq");
    opt.bits               = (int)args.get_int("bits", 4, -1000, 1000);
    opt.group              = (int)args.get_int("group", 128, -1, 1 << 20);
    opt.vq_dim             = (int)args.get_int("vq-dim", 2, -1000, 1000);
    opt.vq_group_size      = (int)args.get_int("vq-group-size", 0, -1, 1 << 30);
    opt.vq_codebook_bits   = (int)args.get_int("codebook-bits", 16, -1000, 1000);
    opt.vq_refine_iters    = (int)args.get_int("vq-refine", 0, -1000, 1000000);
    opt.kbvq_rank          = (int)args.get_int("rank", 4, -1000, 1 << 20);
    opt.idre               = !args.flag("no-idre");
    opt.bcos               = !args.flag("no-bcos");
    opt.bcos_bias          = !args.flag("no-bcos-bias");
    opt.bcos_gamma         = !args.flag("no-bcos-gamma");
    opt.kbvq_shared_codebooks = !args.flag("no-shared-codebooks");
    opt.kbvq_dim           = (int)args.get_int("expert-vq-dim", 0, -1000, 1000);
    opt.mobie_core         = args.get_or("core", "arb-rc");
    opt.mobie_rank         = (int)args.get_int("rank", 16, -1000, 1 << 20);
    opt.cejd               = !args.flag("no-cejd");
    opt.cejd_refit         = !args.flag("no-refit");
    opt.cejd_all           = args.flag("cejd-all");
    opt.glas               = !args.flag("no-glas");
    opt.glas_samples       = (int)args.get_int("glas-samples", opt.glas_samples, -1000, 1 << 30);
    opt.nges               = !args.flag("no-nges");
    opt.nges_weight        = args.get_double("nges-weight", 1.0, 0, 1e6);
    opt.fp_target          = !args.flag("no-fp-target");
    opt.fp_target_any      = args.flag("fp-target");
    opt.fp_target_experts  = args.flag("fp-target-experts");
    opt.fp_ridge           = args.get_double("fp-ridge", 0.1, 0, 1e6);
    opt.sym                = args.flag("sym");
    opt.act_order          = args.flag("act-order");
    opt.damp               = args.get_double("damp", 0.01, 0, 10);
    opt.quantize_router    = args.flag("quantize-router");
    opt.quantize_attention = !args.flag("no-attention");
    const bool show        = !args.flag("json");

    auto t0   = std::chrono::steady_clock::now();
    auto spec = ModelSpec::load(dir);
    validate_options(opt, spec);
    if (std::filesystem::exists(*out) && !args.flag("force") && !std::filesystem::is_empty(*out))
        throw InputError(*out + " already exists (use --force to replace it)");
    // Finished layers are kept in OUT.partial while the run lasts, so an interrupted run can be resumed.
    opt.work_dir = std::filesystem::path(*out + ".partial");
    opt.resume   = args.flag("resume");
    if (std::filesystem::exists(opt.work_dir) && !opt.resume && !args.flag("force"))
        throw InputError(opt.work_dir.string() + " holds an interrupted run: --resume continues it, --force starts over");
    const int64_t shard_mb = args.get_int("max-shard-size", 4096, 1, int64_t(1) << 30);
    Tokenizer tok   = Tokenizer::from_file(dir / "tokenizer.json");
    // Layers are read as the pipeline reaches them (EBSS generates with the whole model first).
    LoadOptions lo;
    lo.lazy_layers  = !args.flag("ebss");
    auto      model = Model::load(dir, {}, lo);
    CalibrationSet calib;
    if (opt.method != "rtn") calib = calibration_from_args(args, *model, tok, show);

    std::signal(SIGINT, on_sigint);
    auto last = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    auto prog = [&](const Progress& p) {
        auto now = std::chrono::steady_clock::now();
        if (show && now - last > std::chrono::milliseconds(200)) { // a redraw at most 5 times a second
            last = now;
            double el  = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            double eta = p.fraction > 0.01 ? el * (1 - p.fraction) / p.fraction : 0;
            std::fprintf(stderr, "\r[%3.0f%%] %-48s ETA %4.0fs", 100 * p.fraction, p.stage.c_str(), eta);
        }
        return !g_interrupted.load();
    };
    QuantizeReport rep;
    try {
        rep = quantize_model(*model, calib, opt, prog);
    } catch (const Cancelled&) {
        if (show) std::fprintf(stderr, "\n");
        throw Cancelled("interrupted; the finished layers are kept in " + opt.work_dir.string() +
                        " (run the same command with --resume to continue)");
    }
    WriteOptions   wo;
    wo.force           = args.flag("force");
    wo.max_shard_bytes = shard_mb << 20;
    wo.quantization = quant::quantization_metadata(opt, calib);
    WriteReport wr = write_checkpoint(*model, dir, *out, wo, [&](const Progress& p) {
        return prog(Progress{1.0, "writing: " + p.stage});
    });
    std::signal(SIGINT, SIG_DFL);
    std::filesystem::remove_all(opt.work_dir); // the checkpoint is complete
    if (show) std::fprintf(stderr, "\r%80s\r", "");
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    std::map<std::string, std::pair<int64_t, int64_t>> kinds; // group → (bytes, weights)
    double nominal = 0, weights = 0;
    for (const auto& m : rep.modules) {
        nominal += m.nominal_bits * m.weights;
        weights += m.weights;
        auto& k = kinds[module_group(m.name)];
        k.first += m.bytes;
        k.second += m.weights;
    }
    nlohmann::ordered_json per_kind;
    for (auto& [k, v] : kinds) per_kind[k] = {{"bits_per_weight", 8.0 * v.first / v.second}, {"weights", v.second}};
    const double bpw = wr.quantized_weights ? 8.0 * wr.quantized_bytes / wr.quantized_weights : 0;
    nlohmann::ordered_json j;
    j["out"]                     = *out;
    j["method"]                  = opt.method;
    j["nominal_bits"]            = weights > 0 ? nominal / weights : 0; // code bits without side data
    j["group"]                   = opt.group;
    j["bits_per_weight"]         = bpw; // storage-exact over the quantized modules: codes + scales + zeros
    j["bits_per_weight_by_kind"] = per_kind;
    j["model_bits_per_param"]    = 8.0 * wr.bytes_total / spec.total_params(); // every tensor, incl. unquantized
    j["bytes"]                   = wr.bytes_total;
    j["shards"]                  = wr.shards;
    j["quantize_seconds"]        = rep.seconds;
    j["seconds"]                 = secs;
    j["peak_rss_mib"]            = peak_rss_mib();
    j["calibration_tokens"]      = calib.n_tokens();
    auto r                       = rep.to_json();
    j["undercalibrated_experts"] = r["undercalibrated_experts"];
    j["stage_seconds"]           = r["stage_seconds"];
    j["stage_cpu_seconds"]       = r["stage_cpu_seconds"];
    j["per_layer"]               = r["per_layer"];
    if (r.contains("moe_output_bias")) j["moe_output_bias"] = r["moe_output_bias"];
    if (args.flag("json")) {
        print_json(j);
        return 0;
    }
    std::printf("%s: %.3f bits/weight storage-exact (%.3f nominal) over %zu quantized modules; model %.3f bits/param,"
                " %.1f MB\n",
                opt.method.c_str(), bpw, weights > 0 ? nominal / weights : 0, rep.modules.size(),
                8.0 * wr.bytes_total / spec.total_params(), wr.bytes_total / 1e6);
    std::printf("time %.1f s (quantization %.1f s), peak RSS %.0f MiB\n", secs, rep.seconds, peak_rss_mib());
    if (!rep.undercalibrated.empty()) {
        std::printf("%zu experts had fewer than %d calibration tokens (quantized with a regularised Hessian):",
                    rep.undercalibrated.size(), opt.min_expert_tokens);
        for (auto& u : rep.undercalibrated) std::printf(" L%d/E%d(%lld)", u.layer, u.expert, (long long)u.tokens);
        std::printf("\n");
    }
    std::printf("wrote %s\n", out->c_str());
    return 0;
}

int cmd_export(const Argv& argv) {
    Args args(argv, {"json", "force"}, {"dequantized", "dtype", "threads", "max-shard-size"});
    apply_threads(args);
    auto dir = model_arg(args);
    auto out = args.get("dequantized");
    if (!out) throw InputError("--dequantized OUT is required");
    std::string dt = args.get_or("dtype", "bf16");
    WriteOptions wo;
    wo.dequantized = true;
    wo.force       = args.flag("force");
    wo.max_shard_bytes = args.get_int("max-shard-size", 4096, 1, int64_t(1) << 30) << 20;
    if (dt == "bf16") wo.dtype = DType::BF16;
    else if (dt == "f16") wo.dtype = DType::F16;
    else if (dt == "f32") wo.dtype = DType::F32;
    else throw InputError("--dtype must be bf16, f16 or f32, got '" + dt + "'");
    auto        model = Model::load(dir);
    WriteReport wr    = write_checkpoint(*model, dir, *out, wo);
    if (args.flag("json")) print_json({{"out", *out}, {"dtype", dt}, {"bytes", wr.bytes_total}});
    else std::printf("wrote %s (%s, %.1f MB)\n", out->c_str(), dt.c_str(), wr.bytes_total / 1e6);
    return 0;
}

} // namespace moebius::cli
