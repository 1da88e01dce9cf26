#include "app/cli/backend.h"
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/chat_template.h"
#include "engine/core/error.h"
#include "engine/core/generation_config.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/generate.h"

#include <algorithm>
#include <iostream>

namespace moebius::cli {

int cmd_generate(const Argv& argv) {
    Args args(argv, {"json", "chat", "raw"},
              {"prompt", "system", "max-tokens", "temperature", "top-k", "top-p", "min-p", "repetition-penalty",
               "seed", "threads", "backend", "device"});
    apply_threads(args);
    auto dir    = model_arg(args);
    auto prompt = args.get("prompt");
    if (!prompt) throw InputError("--prompt STR is required");

    Tokenizer        tok  = Tokenizer::from_file(dir / "tokenizer.json");
    GenerationConfig gen  = GenerationConfig::load(dir);
    auto             model = Model::load(dir);
    const auto&      spec  = model->spec();

    // Prompt text: the model's own chat template with --chat, the raw string otherwise.
    std::string          text = *prompt;
    std::vector<int32_t> stop = gen.eos_token_ids;
    if (stop.empty()) stop = spec.eos_token_ids;
    if (args.flag("chat")) {
        TokenizerConfig tc = TokenizerConfig::load(dir);
        if (!tc.chat_template) throw InputError((dir / "tokenizer_config.json").string() + ": the model has no chat_template");
        ChatTemplate             tpl(*tc.chat_template, (dir / "tokenizer_config.json").string());
        std::vector<ChatMessage> msgs;
        if (auto sys = args.get("system")) msgs.push_back({"system", *sys});
        msgs.push_back({"user", *prompt});
        text = apply_chat_template(tpl, tc, msgs, true);
        if (tc.eos_token) {
            int32_t id = tok.token_id(*tc.eos_token);
            if (id >= 0 && std::find(stop.begin(), stop.end(), id) == stop.end()) stop.push_back(id);
        }
    } else if (args.get("system")) {
        throw InputError("--system needs --chat");
    }
    auto ids = tok.encode(text, true);

    GenerateOptions opt;
    opt.stop_ids  = stop;
    opt.sampling  = gen.sampling;
    opt.max_tokens = (int)args.get_int("max-tokens", gen.max_new_tokens > 0 ? gen.max_new_tokens : 128, 1, 1 << 20);
    auto& s       = opt.sampling;
    s.temperature = (float)args.get_double("temperature", s.temperature, 0, 100);
    s.top_k       = (int)args.get_int("top-k", s.top_k, 0, 1 << 30);
    s.top_p       = (float)args.get_double("top-p", s.top_p, 0, 1);
    s.min_p       = (float)args.get_double("min-p", s.min_p, 0, 1);
    s.repetition_penalty = (float)args.get_double("repetition-penalty", s.repetition_penalty, 0.01, 100);
    s.seed        = (uint64_t)args.get_int("seed", 0, 0, INT64_MAX);

    const bool json = args.flag("json");
    StreamingDecoder dec(tok);
    std::string      out;
    auto on_token = [&](int32_t t) {
        std::string piece = dec.push(t);
        out += piece;
        if (!json) std::cout << piece << std::flush;
        return true;
    };
    const int n_ctx = std::min((int)ids.size() + opt.max_tokens, std::max(spec.max_position, (int)ids.size() + 1));
    auto      gpu   = open_backend(args, *model, n_ctx, "generate");
    auto      res   = generate(*BackendSession(gpu.get(), *model), ids, opt, on_token);
    std::string tail = dec.flush();
    out += tail;
    if (!json) {
        std::cout << tail << std::endl;
        std::cerr << "[" << res.tokens.size() << " tokens, " << res.decode_tokens_per_s() << " tok/s decode, "
                  << res.prefill_tokens_per_s() << " tok/s prefill, first token " << res.time_to_first_token_s * 1000
                  << " ms, stop: " << res.stop_reason << "]" << std::endl;
        return 0;
    }
    nlohmann::ordered_json j;
    j["text"]                  = out;
    j["tokens"]                = res.tokens;
    j["prompt_tokens"]         = res.prompt_tokens;
    j["generated_tokens"]      = res.tokens.size();
    j["stop_reason"]           = res.stop_reason;
    j["time_to_first_token_s"] = res.time_to_first_token_s;
    j["tokens_per_s"]          = res.decode_tokens_per_s();
    j["prefill_tokens_per_s"]  = res.prefill_tokens_per_s();
    j["total_s"]               = res.prefill_s + res.decode_s;
    print_json(j);
    return 0;
}

} // namespace moebius::cli
