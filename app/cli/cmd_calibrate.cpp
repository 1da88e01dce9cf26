#include "app/cli/calibration_args.h"
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/atomic_file.h"
#include "engine/core/error.h"
#include "engine/core/npy.h"
#include "engine/core/resources.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "engine/eval/routing.h"
#include "quantizer/calibration/calibration_data.h"
#include "quantizer/calibration/capture.h"
#include "quantizer/calibration/ebss.h"
#include "quantizer/calibration/importance.h"

#include <algorithm>
#include <numeric>

#include <chrono>
#include <fstream>
#include <iostream>

namespace moebius::cli {

using namespace moebius::quant;

// Builds the calibration set a command asked for: --text FILE (random windows), --ebss, or --calib SET.jsonl.
CalibrationSet calibration_from_args(const Args& args, const Model& model, const Tokenizer& tok, bool show) {
    int      samples = (int)args.get_int("samples", 32, 1, 1 << 20);
    int      seqlen  = (int)args.get_int("seqlen", 256, 2, 1 << 20);
    uint64_t seed    = (uint64_t)args.get_int("seed", 0, 0, INT64_MAX);
    int      sources = (args.get("text") ? 1 : 0) + (args.flag("ebss") ? 1 : 0) + (args.get("calib") ? 1 : 0);
    if (sources != 1) throw InputError("give exactly one calibration source: --calib FILE (text, {\"text\"} JSONL or a saved set), --text FILE or --ebss");
    if (auto f = args.get("calib")) {
        // A saved calibration set (JSONL whose first line is the {"seqlen", ...} header) or a calibration text.
        std::ifstream in(*f);
        std::string   first;
        std::getline(in, first);
        if (std::filesystem::path(*f).extension() == ".jsonl" && first.find("\"seqlen\"") != std::string::npos)
            return load_calibration_set(*f);
        return random_windows(tok.encode(read_calibration_text(*f)), samples, seqlen, seed, *f);
    }
    if (auto f = args.get("text")) return random_windows(tok.encode(read_calibration_text(*f)), samples, seqlen, seed, *f);
    EbssOptions o;
    o.samples = samples;
    o.seqlen  = seqlen;
    o.seed    = seed;
    o.beam    = (int)args.get_int("beam", 4, 1, 64);
    o.tau     = (float)args.get_double("tau", 1.2, 1e-6, 1e6);
    for (int32_t id = 0; id < (int32_t)tok.vocab_size(); ++id)
        if (tok.is_special(id)) o.excluded_first.push_back(id), o.banned.push_back(id);
    return ebss_generate(model, o, [&](const Progress& p) {
        if (show) std::cerr << "\r" << p.stage << "        " << std::flush;
        return true;
    });
}

int cmd_calibrate(const Argv& argv) {
    Args args(argv, {"json", "ebss", "force"},
              {"text", "calib", "samples", "seqlen", "seed", "out", "threads", "beam", "tau"});
    apply_threads(args);
    auto dir = model_arg(args);
    auto out = args.get("out");
    if (!out) throw InputError("--out DIR is required");
    const bool show = !args.flag("json");
    auto       t0   = std::chrono::steady_clock::now();
    AtomicDir  outdir(*out, args.flag("force"));
    Tokenizer  tok   = Tokenizer::from_file(dir / "tokenizer.json");
    // EBSS generates with the whole model; statistics from text need one layer resident at a time.
    LoadOptions lo;
    lo.lazy_layers = !args.flag("ebss");
    auto       model = Model::load(dir, {}, lo);
    const auto& spec = model->spec();
    CalibrationSet set = calibration_from_args(args, *model, tok, show);
    for (const auto& s : set.samples)
        for (int32_t id : s)
            if (id < 0 || id >= spec.n_vocab) throw InputError("calibration set has token ids outside the vocabulary");

    // Layer-sequential pass: per-layer input statistics and expert usage.
    LayerwiseRunner run(*model, set, /*release_passed=*/true);
    ExpertUsage     usage(spec);
    Hooks           usage_hook;
    usage_hook.on_router = [&](const RouterEvent& ev) { usage.add(ev); };
    auto tmp             = outdir.temp_path();
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    while (!run.done()) {
        const int il = run.current_layer();
        auto prog = [&](const Progress& p) {
            if (show) std::cerr << "\rlayer " << il + 1 << "/" << spec.n_layer << ": " << p.stage << "        " << std::flush;
            return true;
        };
        CaptureOptions opt;
        opt.affinity  = true;
        LayerStats st = run.capture(opt, prog);
        nlohmann::ordered_json L;
        L["layer"]  = il;
        L["moe"]    = (bool)spec.layer_is_moe[il];
        auto save_diag = [&](const std::string& name, const InputStats& s) {
            if (s.dim == 0) return;
            auto d = s.diag();
            write_npy(tmp / ("layer" + std::to_string(il) + "." + name + ".hdiag.npy"), {s.dim}, d.data());
        };
        save_diag("attn_in", st.attn_in);
        save_diag("attn_out", st.attn_out);
        save_diag("ffn_in", st.ffn_in);
        if (spec.layer_is_moe[il]) {
            // (n_expert, dim) diagonals of Σ x xᵀ over each expert's routed tokens.
            std::vector<double> din, dmid;
            for (int e = 0; e < spec.n_expert; ++e) {
                auto a = st.expert_in[e].diag(), b = st.expert_mid[e].diag();
                din.insert(din.end(), a.begin(), a.end());
                dmid.insert(dmid.end(), b.begin(), b.end());
            }
            write_npy(tmp / ("layer" + std::to_string(il) + ".expert_in.hdiag.npy"), {spec.n_expert, spec.n_embd}, din.data());
            write_npy(tmp / ("layer" + std::to_string(il) + ".expert_mid.hdiag.npy"), {spec.n_expert, spec.n_ff_expert}, dmid.data());
            std::vector<double> mean_norm(spec.n_expert);
            for (int e = 0; e < spec.n_expert; ++e)
                mean_norm[e] = st.expert_in[e].n_tokens ? std::sqrt(st.expert_in[e].sum_sq_norm / st.expert_in[e].n_tokens) : 0;
            L["expert_tokens"]      = st.expert_tokens;
            L["expert_weight_sum"]  = st.expert_weight_sum;
            L["expert_input_rms_norm"] = mean_norm;
        }
        layers.push_back(std::move(L));
        run.advance(&usage_hook, prog);
    }
    if (show) std::cerr << "\r" << std::string(60, ' ') << "\r";
    save_calibration_set(set, tmp / "calibration.jsonl", &tok);
    nlohmann::ordered_json util = usage.to_json();
    write_file_atomic(tmp / "utilisation.json", util.dump(1));
    nlohmann::ordered_json stats;
    stats["model"]   = std::filesystem::absolute(dir).string();
    stats["source"]  = set.source;
    stats["samples"] = set.samples.size();
    stats["seqlen"]  = set.seqlen;
    stats["seed"]    = set.seed;
    stats["layers"]  = layers;
    write_file_atomic(tmp / "statistics.json", stats.dump(1));
    outdir.commit();

    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::ordered_json j;
    j["out"]            = *out;
    j["source"]         = set.source;
    j["samples"]        = set.samples.size();
    j["seqlen"]         = set.seqlen;
    j["tokens"]         = set.n_tokens();
    j["mean_imbalance"] = usage.mean_imbalance();
    auto per            = nlohmann::ordered_json::array();
    for (size_t l = 0; l < usage.layers.size(); ++l)
        per.push_back({{"layer", usage.layers[l]}, {"imbalance", usage.imbalance((int)l)}, {"entropy", usage.entropy((int)l)}});
    j["per_layer"] = per;
    j["seconds"]   = secs;
    if (args.flag("json")) print_json(j);
    else {
        std::cout << "calibrated on " << set.samples.size() << " x " << set.seqlen << " tokens (" << set.source
                  << ") in " << secs << " s; expert imbalance σ (mean over layers) " << usage.mean_imbalance()
                  << "\nwrote " << *out << "/{calibration.jsonl, utilisation.json, statistics.json, *.npy}\n";
    }
    return 0;
}

int cmd_routing_diff(const Argv& argv) {
    Args args(argv, {"json"}, {"text", "seqlen", "threads", "max-windows"});
    apply_threads(args);
    if (args.positional().size() != 2) throw InputError("usage: moebius routing-diff REF MODEL [--text FILE] [--seqlen L]");
    std::filesystem::path ref_dir = args.positional()[0], dir = args.positional()[1];
    auto file   = args.get_or("text", (resources_dir() / "corpus" / "test.txt").string());
    int  seqlen = (int)args.get_int("seqlen", 256, 2, 1 << 20);
    auto ref    = Model::load(ref_dir);
    auto model  = Model::load(dir);
    Tokenizer tok = Tokenizer::from_file(ref_dir / "tokenizer.json");
    auto ids      = tok.encode(read_file_text(file));
    int64_t max_w = args.get_int("max-windows", 0, 0, 1 << 30);
    if (max_w > 0 && (int64_t)ids.size() > max_w * seqlen) ids.resize(max_w * seqlen);
    const bool show = !args.flag("json");
    RoutingDiff d = compare_routing(*ref, *model, ids, seqlen, [&](const Progress& p) {
        if (show) std::cerr << "\r" << p.stage << "     " << std::flush;
        return true;
    });
    if (args.flag("json")) {
        print_json(d.to_json());
        return 0;
    }
    std::cerr << "\r" << std::string(40, ' ') << "\r";
    printf("layer  shift_rate  top1_flip  router_kl\n");
    for (const auto& L : d.layers) printf("%5d  %10.4f  %9.4f  %9.5f\n", L.layer, L.shift_rate, L.top1_flip_rate, L.router_kl);
    printf(" mean  %10.4f  %9.4f  %9.5f\n", d.shift_rate(), d.top1_flip_rate(), d.router_kl());
    return 0;
}

} // namespace moebius::cli

namespace moebius::cli {

int cmd_importance(const Argv& argv) {
    Args args(argv, {"json", "ebss"},
              {"layer", "module", "expert", "metric", "text", "calib", "samples", "seqlen", "seed", "out", "max-size",
               "threads", "damp"});
    apply_threads(args);
    auto        dir   = model_arg(args);
    auto        model = Model::load(dir);
    const auto& spec  = model->spec();
    int         layer = (int)args.get_int("layer", 0, 0, spec.n_layer - 1);
    LinearKind  kind;
    std::string module = args.get_or("module", "expert.up_proj");
    if (!linear_kind_from_name(module, kind)) {
        std::string list;
        for (int i = 0; i < (int)LinearKind::Count; ++i) list += std::string(i ? ", " : "") + linear_kind_name((LinearKind)i);
        throw InputError("unknown --module '" + module + "' (" + list + ")");
    }
    const bool is_expert = is_expert_kind(kind);
    int expert = is_expert ? (int)args.get_int("expert", 0, 0, std::max(0, spec.n_expert - 1)) : -1;
    auto& slot = model->layer(layer).slot(kind, expert);
    if (!slot) throw InputError("layer " + std::to_string(layer) + " has no " + module);
    auto metric = importance_metric_from_name(args.get_or("metric", "obs"));
    auto out    = args.get("out");
    const bool show = !args.flag("json");
    Tokenizer tok = Tokenizer::from_file(dir / "tokenizer.json");
    CalibrationSet set = calibration_from_args(args, *model, tok, show);

    // Gradients first (full-precision model, whole network), then the input statistics of the chosen layer.
    GradientStats gs;
    std::vector<double> g;
    if (metric == ImportanceMetric::Glas) {
        gs = collect_gradient_stats(*model, set);
        const auto* e = gs.find(layer, kind, expert);
        if (!e || e->tokens == 0) throw InputError("no calibration token reached " + module + " of layer " + std::to_string(layer));
        g = e->mean_sq();
    }
    LayerwiseRunner run(*model, set);
    while (run.current_layer() < layer) run.advance();
    LayerStats        st    = run.capture(CaptureOptions{});
    const InputStats* stats = st.for_linear(kind, expert);
    if (!stats || stats->n_tokens == 0)
        throw InputError("no calibration token reached " + module + (expert >= 0 ? " of expert " + std::to_string(expert) : "") +
                         " in layer " + std::to_string(layer));
    const Linear& lin = *slot;
    auto map = compute_importance(lin.dequantize(), lin.out_features(), lin.in_features(), *stats, metric,
                                  g.empty() ? nullptr : &g, args.get_double("damp", 0.01, 0, 10));
    int max_r = map.rows, max_c = map.cols;
    if (auto ms = args.get("max-size")) {
        if (sscanf(ms->c_str(), "%d,%d", &max_r, &max_c) != 2 || max_r < 1 || max_c < 1)
            throw InputError("--max-size ROWS,COLS expected, got '" + *ms + "'");
    }
    ImportanceMap shown = map.downsample(max_r, max_c);
    if (out) write_npy(*out, {shown.rows, shown.cols}, shown.values.data());
    auto rows = map.row_sum(), cols = map.col_sum();
    std::vector<int> top(cols.size());
    std::iota(top.begin(), top.end(), 0);
    int ntop = std::min<int>(16, (int)top.size());
    std::partial_sort(top.begin(), top.begin() + ntop, top.end(), [&](int a, int b) { return cols[a] > cols[b]; });
    top.resize(ntop);
    nlohmann::ordered_json j;
    j["layer"]       = layer;
    j["module"]      = module;
    j["expert"]      = expert;
    j["metric"]      = importance_metric_name(metric);
    j["tokens"]      = stats->n_tokens;
    j["shape"]       = {map.rows, map.cols};
    j["image_shape"] = {shown.rows, shown.cols};
    j["row_sum"]     = rows;
    j["col_sum"]     = cols;
    j["top_columns"] = top;
    if (out) j["out"] = *out;
    if (args.flag("json")) print_json(j);
    else {
        std::cout << module << " layer " << layer << (expert >= 0 ? " expert " + std::to_string(expert) : "") << ": "
                  << importance_metric_name(metric) << " importance over " << stats->n_tokens << " tokens; top columns:";
        for (int c : top) std::cout << " " << c;
        std::cout << "\n";
        if (out) std::cout << "wrote " << *out << " (" << shown.rows << " x " << shown.cols << ")\n";
    }
    return 0;
}

} // namespace moebius::cli
