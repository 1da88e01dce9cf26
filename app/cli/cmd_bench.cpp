#include "app/cli/backend.h"
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/error.h"
#include "engine/core/resources.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/generate.h"

#include <iostream>

namespace moebius::cli {

// Greedy generation from a prompt cut from the bundled test text, timed: prefill and decode tokens per second on the
// chosen backend. No stop tokens, so every run decodes exactly --gen-tokens tokens.
int cmd_bench(const Argv& argv) {
    Args args(argv, {"json"}, {"prompt-tokens", "gen-tokens", "threads", "backend", "device"});
    apply_threads(args);
    auto      dir   = model_arg(args);
    const int n_in  = (int)args.get_int("prompt-tokens", 64, 1, 1 << 20);
    const int n_gen = (int)args.get_int("gen-tokens", 32, 1, 1 << 20);
    Tokenizer tok   = Tokenizer::from_file(dir / "tokenizer.json");
    auto      text  = read_file_text(resources_dir() / "corpus" / "test.txt");
    auto      ids   = tok.encode(text.substr(0, 50 * (size_t)n_in), true);
    if ((int)ids.size() < n_in) throw InputError("the test text has fewer than " + std::to_string(n_in) + " tokens");
    ids.resize(n_in);
    auto model = Model::load(dir);
    GenerateOptions opt;
    opt.max_tokens = n_gen;
    auto gpu       = open_backend(args, *model, n_in + n_gen, "bench");
    auto res       = gpu ? gpu->generate(ids, opt, {}) : generate(*model, ids, opt);
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
    if (args.flag("json")) print_json(j);
    else {
        std::cout << j["backend"].get<std::string>() << " (" << j["device"].get<std::string>() << "): prefill "
                  << res.prefill_tokens_per_s() << " tok/s over " << res.prompt_tokens << " tokens, decode "
                  << res.decode_tokens_per_s() << " tok/s over " << res.tokens.size() << " tokens";
        if (gpu)
            std::cout << ", " << gpu->last_dispatches() << " dispatches per decode token ("
                      << gpu->last_layer_dispatches() << " per layer)";
        std::cout << "\n";
    }
    return 0;
}

} // namespace moebius::cli
