#include "app/studio/workflows.h"

#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "engine/core/resources.h"
#include "engine/core/tokenizer.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/model.h"
#include "engine/eval/perplexity.h"
#include "engine/eval/tasks.h"
#include "quantizer/calibration/capture.h"
#include "quantizer/calibration/ebss.h"
#include "quantizer/calibration/importance.h"
#include "quantizer/format/checkpoint_writer.h"

namespace moebius::studio {

namespace fs = std::filesystem;
using Clock  = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string read_text(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw InputError(file.string() + ": cannot read the file");
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// Storage of a checkpoint in bits per parameter over all its tensors (16 for a bf16 checkpoint).
void score_storage(const fs::path& dir, ModelScore& s) {
    ModelSpec   spec  = ModelSpec::load(dir);
    WeightStore store = WeightStore::open(dir);
    s.bytes           = store.total_bytes();
    s.bits_per_weight = 8.0 * (double)s.bytes / (double)spec.total_params();
    s.label           = dir.filename().string();
}

} // namespace

fs::path bundled_train_text() { return resources_dir() / "corpus" / "train.txt"; }
fs::path bundled_test_text() { return resources_dir() / "corpus" / "test.txt"; }

ProgressFn sub_progress(const ProgressFn& progress, double lo, double hi, const std::string& prefix) {
    return [=](const Progress& p) {
        if (!progress) return true;
        return progress(Progress{lo + (hi - lo) * p.fraction, prefix + p.stage});
    };
}

quant::CalibrationSet make_calibration_set(const Model& model, const Tokenizer& tok, const CalibrationRequest& req,
                                           const ProgressFn& progress) {
    using Source = CalibrationRequest::Source;
    if (req.source == Source::Ebss) {
        // Same settings as `moebius quantize --ebss`: special tokens neither start nor appear in a sample.
        quant::EbssOptions o;
        o.samples = req.samples;
        o.seqlen  = req.seqlen;
        o.seed    = req.seed;
        for (int32_t id = 0; id < (int32_t)tok.vocab_size(); ++id)
            if (tok.is_special(id)) o.excluded_first.push_back(id), o.banned.push_back(id);
        return quant::ebss_generate(model, o, progress);
    }
    const fs::path file = req.source == Source::File ? req.file : bundled_train_text();
    if (file.empty()) throw InputError("choose a calibration text file");
    auto ids = tok.encode(quant::read_calibration_text(file));
    return quant::random_windows(ids, req.samples, req.seqlen, req.seed, file.filename().string());
}

CalibrationResult calibrate(const fs::path& dir, const CalibrationRequest& req, const ProgressFn& progress) {
    const auto t0    = Clock::now();
    Tokenizer  tok   = Tokenizer::from_file(dir / "tokenizer.json");
    auto       model = Model::load(dir, sub_progress(progress, 0, 0.05, "loading: "));
    const bool ebss  = req.source == CalibrationRequest::Source::Ebss;
    auto set = make_calibration_set(*model, tok, req, sub_progress(progress, 0.05, ebss ? 0.6 : 0.1, "calibration set: "));
    std::vector<int32_t> ids;
    for (const auto& s : set.samples) ids.insert(ids.end(), s.begin(), s.end());
    // measure_usage cuts the concatenation back into the same windows (each exactly seqlen ids).
    ExpertUsage usage = measure_usage(*model, ids, set.seqlen, sub_progress(progress, ebss ? 0.6 : 0.1, 1.0, "routing: "));
    return CalibrationResult{std::move(set), std::move(usage), seconds_since(t0)};
}

QuantizeResult quantize(const fs::path& dir, const QuantizeRequest& req, const ProgressFn& progress,
                        const LayerErrorFn& on_layer) {
    const auto t0   = Clock::now();
    auto       spec = ModelSpec::load(dir);
    auto       opt  = req.options;
    quant::validate_options(opt, spec);
    if (req.out.empty()) throw InputError("choose an output folder");
    if (fs::exists(req.out) && !req.force && !(fs::is_directory(req.out) && fs::is_empty(req.out)))
        throw InputError(req.out.string() + " already exists");
    if (fs::weakly_canonical(req.out) == fs::weakly_canonical(dir))
        throw InputError("the output folder is the model's own folder");
    // Finished layers go to OUT.partial (as with the CLI); its state.json, rewritten atomically per layer, is also
    // where the live per-layer reconstruction error is read from.
    if (req.out.has_parent_path()) fs::create_directories(req.out.parent_path());
    opt.work_dir = fs::path(req.out.string() + ".partial");
    opt.resume   = false;
    Tokenizer   tok = Tokenizer::from_file(dir / "tokenizer.json");
    LoadOptions lo;
    lo.lazy_layers = req.calibration.source != CalibrationRequest::Source::Ebss;
    auto model     = Model::load(dir, {}, lo);
    quant::CalibrationSet calib;
    const bool rtn = opt.method == "rtn";
    if (!rtn) calib = make_calibration_set(*model, tok, req.calibration, sub_progress(progress, 0, 0.1, "calibration: "));

    std::vector<double> layer_error(spec.n_layer, 0.0);
    int reported = 0;
    auto read_finished_layers = [&] {
        std::ifstream in(opt.work_dir / "state.json");
        if (!in) return;
        nlohmann::json st;
        try { in >> st; } catch (const std::exception&) { return; } // replaced while we read: next time
        const auto& layers = st["layers"];
        for (; reported < (int)layers.size(); ++reported) {
            double sum = 0;
            int    n   = 0;
            for (const auto& m : layers[reported]["report"]) sum += m.value("rel_error", 0.0), ++n;
            int il          = layers[reported].value("layer", reported);
            double e        = n ? sum / n : 0;
            if (il >= 0 && il < spec.n_layer) layer_error[il] = e;
            if (on_layer) on_layer(il, e);
        }
    };
    const double q0 = rtn ? 0 : 0.1;
    auto prog = [&](const Progress& p) {
        read_finished_layers();
        return progress ? progress(Progress{q0 + (0.95 - q0) * p.fraction, p.stage}) : true;
    };
    quant::QuantizeReport rep;
    try {
        rep = quant::quantize_model(*model, calib, opt, prog);
    } catch (...) {
        std::error_code ec;
        fs::remove_all(opt.work_dir, ec); // nothing half-done is left next to the output
        throw;
    }
    read_finished_layers();
    quant::WriteOptions wo;
    wo.force        = req.force;
    wo.quantization = quant::quantization_metadata(opt, calib);
    quant::WriteReport wr;
    try {
        wr = quant::write_checkpoint(*model, dir, req.out, wo, sub_progress(progress, 0.95, 1.0, "writing: "));
    } catch (...) {
        std::error_code ec;
        fs::remove_all(opt.work_dir, ec);
        throw;
    }
    std::error_code ec;
    fs::remove_all(opt.work_dir, ec);

    // Per-layer errors from the report itself (the state file may have been skipped by a fast run).
    std::vector<double> sum(spec.n_layer, 0.0);
    std::vector<int>    cnt(spec.n_layer, 0);
    double nominal = 0, weights = 0;
    for (const auto& m : rep.modules) {
        if (m.layer >= 0 && m.layer < spec.n_layer) sum[m.layer] += m.rel_error, ++cnt[m.layer];
        nominal += m.nominal_bits * (double)m.weights;
        weights += (double)m.weights;
    }
    for (int il = 0; il < spec.n_layer; ++il)
        if (cnt[il]) layer_error[il] = sum[il] / cnt[il];
    QuantizeResult r;
    r.out             = req.out;
    r.method          = opt.method;
    r.bits_per_weight = wr.quantized_weights ? 8.0 * (double)wr.quantized_bytes / (double)wr.quantized_weights : 0;
    r.nominal_bits    = weights > 0 ? nominal / weights : 0;
    r.bytes           = wr.bytes_total;
    r.seconds         = seconds_since(t0);
    r.layer_error     = std::move(layer_error);
    return r;
}

ImportanceResult importance(const fs::path& dir, const ImportanceRequest& req, const ProgressFn& progress) {
    auto        model = Model::load(dir, sub_progress(progress, 0, 0.1, "loading: "));
    const auto& spec  = model->spec();
    if (req.layer < 0 || req.layer >= spec.n_layer) throw InputError("layer " + std::to_string(req.layer) + " is out of range");
    LinearKind kind;
    if (!linear_kind_from_name(req.module, kind)) throw InputError("unknown module '" + req.module + "'");
    const int expert = is_expert_kind(kind) ? req.expert : -1;
    if (is_expert_kind(kind) && (expert < 0 || expert >= spec.n_expert)) throw InputError("expert out of range");
    auto& slot = model->layer(req.layer).slot(kind, expert);
    if (!slot) throw InputError("layer " + std::to_string(req.layer) + " has no " + req.module);
    auto metric = quant::importance_metric_from_name(req.metric);
    Tokenizer tok = Tokenizer::from_file(dir / "tokenizer.json");
    auto set = make_calibration_set(*model, tok, req.calibration, sub_progress(progress, 0.1, 0.2, "calibration: "));
    // Same order as the CLI: gradients of the full-precision model first, then the chosen layer's input statistics.
    quant::GradientStats gs;
    std::vector<double>  g;
    if (metric == quant::ImportanceMetric::Glas) {
        gs = quant::collect_gradient_stats(*model, set, sub_progress(progress, 0.2, 0.6, "gradients: "));
        const auto* e = gs.find(req.layer, kind, expert);
        if (!e || e->tokens == 0) throw InputError("no calibration token reached " + req.module);
        g = e->mean_sq();
    }
    quant::LayerwiseRunner run(*model, set);
    while (run.current_layer() < req.layer) {
        report_progress(progress, 0.6 + 0.3 * run.current_layer() / std::max(1, req.layer), "layer " + std::to_string(run.current_layer()));
        run.advance();
    }
    quant::LayerStats st    = run.capture(quant::CaptureOptions{});
    const auto*       stats = st.for_linear(kind, expert);
    if (!stats || stats->n_tokens == 0)
        throw InputError("no calibration token reached " + req.module + (expert >= 0 ? " of expert " + std::to_string(expert) : "") +
                         " in layer " + std::to_string(req.layer) + " (more samples may help)");
    const Linear& lin = *slot;
    auto map   = quant::compute_importance(lin.dequantize(), lin.out_features(), lin.in_features(), *stats, metric,
                                           g.empty() ? nullptr : &g);
    auto shown = map.downsample(req.max_rows, req.max_cols);
    report_progress(progress, 1.0, "done");
    return ImportanceResult{map.rows, map.cols, shown.rows, shown.cols, std::move(shown.values), map.row_sum(),
                            map.col_sum(), stats->n_tokens};
}

std::vector<int32_t> evaluation_ids(const fs::path& model_dir, const fs::path& text, int seqlen, int windows) {
    Tokenizer tok = Tokenizer::from_file(model_dir / "tokenizer.json");
    auto      ids = tok.encode(read_text(text.empty() ? bundled_test_text() : text));
    if ((int64_t)ids.size() < seqlen) throw InputError("the evaluation text is shorter than one window of " + std::to_string(seqlen) + " tokens");
    if (windows > 0 && (int64_t)ids.size() > (int64_t)windows * seqlen) ids.resize((size_t)windows * seqlen);
    return ids;
}

CompareResult compare(const CompareRequest& req, const ProgressFn& progress) {
    const auto t0 = Clock::now();
    CompareResult r;
    auto ids = evaluation_ids(req.reference, req.text, req.seqlen, req.windows);
    auto ref   = Model::load(req.reference, sub_progress(progress, 0, 0.05, "loading reference: "));
    auto model = Model::load(req.model, sub_progress(progress, 0.05, 0.1, "loading model: "));
    const double tasks_share = req.tasks ? 0.3 : 0;
    const double span        = 0.9 - tasks_share;
    r.routing = compare_routing(*ref, *model, ids, req.seqlen, sub_progress(progress, 0.1, 0.1 + span / 3, "routing: "));
    r.reference.ppl = perplexity(*ref, ids, req.seqlen, sub_progress(progress, 0.1 + span / 3, 0.1 + 2 * span / 3, "ppl (reference): ")).ppl;
    r.model.ppl     = perplexity(*model, ids, req.seqlen, sub_progress(progress, 0.1 + 2 * span / 3, 0.1 + span, "ppl (model): ")).ppl;
    if (req.tasks) {
        Tokenizer tok   = Tokenizer::from_file(req.reference / "tokenizer.json");
        auto      items = load_mc_tasks(resources_dir() / "tasks" / "kjv-cloze-test.jsonl");
        if (req.task_items > 0 && (int)items.size() > req.task_items) items.resize(req.task_items);
        auto a = evaluate_mc(*ref, tok, items, sub_progress(progress, 0.1 + span, 0.1 + span + tasks_share / 2, "tasks (reference): "));
        auto b = evaluate_mc(*model, tok, items, sub_progress(progress, 0.1 + span + tasks_share / 2, 1.0, "tasks (model): "));
        r.reference.acc = a.acc, r.reference.acc_norm = a.acc_norm;
        r.model.acc = b.acc, r.model.acc_norm = b.acc_norm;
    }
    score_storage(req.reference, r.reference);
    score_storage(req.model, r.model);
    r.seconds = seconds_since(t0);
    return r;
}

} // namespace moebius::studio
