#pragma once
// The calibration source options shared by calibrate, importance and quantize.
#include "app/cli/args.h"
#include "quantizer/calibration/calibration_data.h"

namespace moebius {
class Model;
class Tokenizer;
} // namespace moebius

namespace moebius::cli {

// --calib FILE (text, {"text"} JSONL or a saved set), --text FILE, or --ebss; with --samples/--seqlen/--seed.
quant::CalibrationSet calibration_from_args(const Args& args, const Model& model, const Tokenizer& tok, bool show);

} // namespace moebius::cli
