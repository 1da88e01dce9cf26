#pragma once
// Zero-shot multiple-choice evaluation, scored as lm-eval-harness scores `multiple_choice` tasks: each choice is a
// loglikelihood request (context, continuation); acc takes the argmax of the summed log-probabilities, acc_norm the
// argmax of that sum divided by the choice's length in UTF-8 bytes. Ties go to the lowest index (numpy argmax).
//
// Continuations are the choices verbatim: lm-eval joins context and choice with target_delimiter " ", and the
// bundled task file already carries that space at the start of every choice, so nothing is added here.
#include <filesystem>
#include <string>
#include <vector>

#include "engine/core/progress.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "engine/cpu/session.h"

namespace moebius {

struct McItem {
    std::string              context;
    std::vector<std::string> choices;
    int                      gold = 0;
};

// One JSON object per non-blank line: {"context": str, "choices": [str, ...] (non-empty), "gold": int in range}.
// Throws NotFoundError if the file cannot be read, FormatError("<file>: line N: <problem>") on a bad line and
// FormatError("<file>: no items") on a file without any.
std::vector<McItem> load_mc_tasks(const std::filesystem::path& jsonl);

struct McResult {
    double                           acc = 0, acc_norm = 0;
    int                              n = 0;
    std::vector<int>                 predicted, predicted_norm; // per item, index of the chosen choice
    std::vector<std::vector<double>> loglik;                    // per item and choice, sum of log p(continuation)
};

// Tokenization as lm-eval's _encode_pair: trailing spaces of the context move onto the continuation, then
// context_enc = encode(context), continuation_enc = encode(context + continuation)[len(context_enc):], without
// special tokens; an empty context is replaced by the BOS (else EOS) token. The context runs once per item through
// the KV cache and every continuation reuses it; requests longer than the model's context are left-truncated
// to max_position + 1 tokens like lm-eval's, and then scored by a full forward.
McResult evaluate_mc(Session& session, const Tokenizer& tok, const std::vector<McItem>& items,
                     const ProgressFn& progress = {});
McResult evaluate_mc(const Model& model, const Tokenizer& tok, const std::vector<McItem>& items,
                     const ProgressFn& progress = {});

} // namespace moebius
