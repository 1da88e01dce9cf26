#include "app/cli/backend.h"
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/resources.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "engine/eval/perplexity.h"

#include <chrono>
#include <iostream>

namespace moebius::cli {

int cmd_ppl(const Argv& argv) {
    Args args(argv, {"json", "quiet"}, {"text", "seqlen", "threads", "max-windows", "backend", "device"});
    apply_threads(args);
    auto dir    = model_arg(args);
    auto file   = args.get_or("text", (resources_dir() / "corpus" / "test.txt").string());
    int  seqlen = (int)args.get_int("seqlen", 256, 2, 1 << 20);
    auto t0     = std::chrono::steady_clock::now();
    Tokenizer tok   = Tokenizer::from_file(dir / "tokenizer.json");
    auto      ids   = tok.encode(read_file_text(file), true);
    auto      model = Model::load(dir);
    int64_t   max_w = args.get_int("max-windows", 0, 0, 1 << 30);
    if (max_w > 0 && (int64_t)ids.size() > max_w * seqlen) ids.resize(max_w * seqlen);
    const bool show = !args.flag("json") && !args.flag("quiet");
    auto progress = [&](const Progress& p) {
        if (show) std::cerr << "\r" << p.stage << "   " << std::flush;
        return true;
    };
    auto gpu = open_backend(args, *model, seqlen, "ppl");
    auto r   = perplexity(*BackendSession(gpu.get(), *model), ids, seqlen, progress);
    if (show) std::cerr << "\r" << std::string(40, ' ') << "\r";
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::ordered_json j;
    j["ppl"]      = r.ppl;
    j["mean_nll"] = r.mean_nll;
    j["tokens"]   = r.tokens;
    j["windows"]  = r.windows;
    j["seqlen"]   = r.seqlen;
    j["text"]     = file;
    j["seconds"]  = secs;
    if (args.flag("json")) print_json(j);
    else
        std::cout << "perplexity " << r.ppl << " over " << r.windows << " windows of " << r.seqlen << " tokens ("
                  << secs << " s)\n";
    return 0;
}

} // namespace moebius::cli
