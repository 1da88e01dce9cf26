#pragma once
// The Studio's long jobs as plain synchronous C++ (no Qt): each one loads what it needs, calls the engine and the
// quantizer exactly as the CLI does, reports progress through a ProgressFn that may cancel, and returns its results
// by value. The panes run them on worker threads (job.h); the GUI tests call them directly to get independent
// reference numbers.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/progress.h"
#include "engine/eval/routing.h"
#include "quantizer/calibration/calibration_data.h"
#include "quantizer/pipeline.h"

namespace moebius::studio {

// Where calibration tokens come from.
struct CalibrationRequest {
    enum class Source { BundledText, File, Ebss };
    Source                source  = Source::BundledText;
    std::filesystem::path file;           // Source::File: plain text or {"text"} JSONL
    int                   samples = 32;
    int                   seqlen  = 256;
    uint64_t              seed    = 0;
};

// The bundled calibration text (resources/corpus/train.txt) and evaluation text (test.txt).
std::filesystem::path bundled_train_text();
std::filesystem::path bundled_test_text();

// Builds the calibration set (random windows of the text, or EBSS self-sampling with the model).
quant::CalibrationSet make_calibration_set(const Model& model, const Tokenizer& tok, const CalibrationRequest& req,
                                           const ProgressFn& progress = {});

struct CalibrationResult {
    quant::CalibrationSet set;
    ExpertUsage           usage;
    double                seconds = 0;
};
// Expert utilisation of the model over the calibration windows.
CalibrationResult calibrate(const std::filesystem::path& model_dir, const CalibrationRequest& req,
                            const ProgressFn& progress = {});

struct QuantizeRequest {
    quant::QuantizeOptions options;
    CalibrationRequest     calibration; // ignored by RTN
    std::filesystem::path  out;
    bool                   force = false; // replace an existing output folder
};
struct QuantizeResult {
    std::filesystem::path out;
    std::string           method;
    double                bits_per_weight = 0; // storage-exact over the quantized modules
    double                nominal_bits    = 0;
    int64_t               bytes           = 0; // all tensors of the written checkpoint
    double                seconds         = 0;
    std::vector<double>   layer_error;         // [layer] mean relative reconstruction error of its modules
};
// Called from the worker each time a layer finishes: (layer, mean relative error of its modules).
using LayerErrorFn = std::function<void(int, double)>;
// Quantizes and writes the checkpoint (temporary name + rename; finished layers go to OUT.partial meanwhile).
QuantizeResult quantize(const std::filesystem::path& model_dir, const QuantizeRequest& req,
                        const ProgressFn& progress = {}, const LayerErrorFn& on_layer = {});

struct CompareRequest {
    std::filesystem::path reference, model;
    std::filesystem::path text;        // evaluation text; empty: the bundled test text
    int                   seqlen  = 128;
    int                   windows = 16; // first N windows of the text (0: all)
    bool                  tasks   = false; // also score the bundled multiple-choice tasks
    int                   task_items = 100;
};
struct ModelScore {
    double  ppl = 0, acc = -1, acc_norm = -1; // acc < 0: not measured
    double  bits_per_weight = 16; // storage-exact over quantized modules; source precision for plain checkpoints
    int64_t bytes = 0;
    std::string label;
};
struct CompareResult {
    ModelScore  reference, model;
    RoutingDiff routing;
    double      seconds = 0;
};
CompareResult compare(const CompareRequest& req, const ProgressFn& progress = {});

struct ImportanceRequest {
    int                layer  = 0;
    std::string        module = "expert.up_proj"; // a linear_kind_name
    int                expert = 0;               // for expert modules
    std::string        metric = "obs";           // obs | hdiag | glas
    CalibrationRequest calibration;
    int                max_rows = 256, max_cols = 256; // mean-pooled for display
};
struct ImportanceResult {
    int                 rows = 0, cols = 0;       // full matrix (out, in)
    int                 shown_rows = 0, shown_cols = 0;
    std::vector<float>  values;                   // (shown_rows, shown_cols)
    std::vector<double> row_sum, col_sum;         // full resolution profiles
    int64_t             tokens = 0;
};
// The importance map of one linear, as `moebius importance` computes it.
ImportanceResult importance(const std::filesystem::path& model_dir, const ImportanceRequest& req,
                            const ProgressFn& progress = {});

// The token ids compare() scores: the text, tokenized, cut to windows × seqlen.
std::vector<int32_t> evaluation_ids(const std::filesystem::path& model_dir, const std::filesystem::path& text,
                                    int seqlen, int windows);

// Maps a sub-job's 0..1 progress into [lo, hi] of the whole job.
ProgressFn sub_progress(const ProgressFn& progress, double lo, double hi, const std::string& prefix);

} // namespace moebius::studio
