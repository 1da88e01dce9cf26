#include "app/cli/backend.h"
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/error.h"
#include "engine/core/resources.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/model.h"
#include "engine/eval/tasks.h"

#include <chrono>
#include <iostream>

namespace moebius::cli {

// Declared here until commands.h lists it.
int cmd_tasks(const Argv& argv);

int cmd_tasks(const Argv& argv) {
    Args args(argv, {"json", "quiet"}, {"tasks", "limit", "threads", "backend", "device"});
    apply_threads(args);
    auto dir   = model_arg(args);
    auto file  = args.get_or("tasks", (resources_dir() / "tasks" / "kjv-cloze-test.jsonl").string());
    auto limit = args.get_int("limit", 0, 0, 1LL << 30);
    auto t0    = std::chrono::steady_clock::now();
    // Task file first: a malformed file fails before the model is loaded.
    auto items = load_mc_tasks(file);
    if (limit > 0 && (int64_t)items.size() > limit) items.resize(limit);
    Tokenizer  tok   = Tokenizer::from_file(dir / "tokenizer.json");
    auto       model = Model::load(dir);
    // The context grows per item as needed (the runner's KV cache is re-allocated only when it grows).
    auto       gpu   = open_backend(args, *model, 256, "tasks");
    const bool show  = !args.flag("json") && !args.flag("quiet");
    auto r = evaluate_mc(*BackendSession(gpu.get(), *model), tok, items, [&](const Progress& p) {
        if (show) std::cerr << "\r" << p.stage << "   " << std::flush;
        return true;
    });
    if (show) std::cerr << "\r" << std::string(40, ' ') << "\r";
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::ordered_json j;
    j["acc"]      = r.acc;
    j["acc_norm"] = r.acc_norm;
    j["n"]        = r.n;
    j["tasks"]    = file;
    j["seconds"]  = secs;
    if (args.flag("json")) print_json(j);
    else
        std::cout << "acc " << r.acc << ", acc_norm " << r.acc_norm << " over " << r.n << " items of " << file << " ("
                  << secs << " s)\n";
    return 0;
}

} // namespace moebius::cli
