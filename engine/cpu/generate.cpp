#include "engine/cpu/generate.h"

#include "engine/core/error.h"

#include <algorithm>
#include <chrono>

namespace moebius {

double GenerateResult::decode_tokens_per_s() const {
    // The first generated token comes from the prefill; the rest from decode steps.
    return decode_s > 0 && tokens.size() > 1 ? (tokens.size() - 1) / decode_s : 0;
}
double GenerateResult::prefill_tokens_per_s() const { return prefill_s > 0 ? prompt_tokens / prefill_s : 0; }

GenerateResult generate(const Model& model, std::span<const int32_t> prompt, const GenerateOptions& opt,
                        const std::function<bool(int32_t)>& on_token) {
    CpuSession session(model);
    return generate(session, prompt, opt, on_token);
}

GenerateResult generate(Session& session, std::span<const int32_t> prompt, const GenerateOptions& opt,
                        const std::function<bool(int32_t)>& on_token) {
    using clock = std::chrono::steady_clock;
    if (prompt.empty()) throw InputError("the prompt is empty");
    const ModelSpec& spec  = session.spec();
    int              n_ctx = opt.n_ctx > 0 ? opt.n_ctx : (int)prompt.size() + opt.max_tokens;
    n_ctx                  = std::min(n_ctx, std::max(spec.max_position, (int)prompt.size() + 1));
    if ((int)prompt.size() >= n_ctx)
        throw InputError("the prompt has " + std::to_string(prompt.size()) + " tokens; the context holds " +
                         std::to_string(n_ctx));

    GenerateResult       res;
    res.prompt_tokens = (int)prompt.size();
    std::vector<int32_t> seq(prompt.begin(), prompt.end());
    std::vector<float>   logits(spec.n_vocab);
    Sampler              sampler(opt.sampling);
    session.reset(n_ctx);

    auto t0 = clock::now();
    session.forward(seq.data(), (int)seq.size(), logits.data(), false);
    res.prefill_s = std::chrono::duration<double>(clock::now() - t0).count();
    auto t1       = clock::now();

    res.stop_reason = "length";
    for (int step = 0; step < opt.max_tokens; ++step) {
        if (step > 0) {
            if ((int)seq.size() >= n_ctx) {
                res.stop_reason = "context";
                break;
            }
            if (opt.use_cache) {
                session.forward(&seq.back(), 1, logits.data(), false);
            } else {
                session.clear();
                session.forward(seq.data(), (int)seq.size(), logits.data(), false);
            }
        }
        int32_t tok = sampler.sample(logits.data(), spec.n_vocab, seq);
        if (step == 0) res.time_to_first_token_s = std::chrono::duration<double>(clock::now() - t0).count();
        if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), tok) != opt.stop_ids.end()) {
            res.stop_reason = "eos";
            break;
        }
        seq.push_back(tok);
        res.tokens.push_back(tok);
        if (on_token && !on_token(tok)) {
            res.stop_reason = "cancelled";
            break;
        }
    }
    res.decode_s = std::chrono::duration<double>(clock::now() - t1).count();
    return res;
}

} // namespace moebius
