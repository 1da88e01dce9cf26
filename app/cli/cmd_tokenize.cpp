#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/error.h"
#include "engine/core/tokenizer.h"

#include <iostream>

namespace moebius::cli {

int cmd_tokenize(const Argv& argv) {
    Args args(argv, {"json", "no-special"}, {"text", "file"});
    auto dir  = model_arg(args);
    auto text = args.get("text");
    if (args.get("file")) text = read_file_text(*args.get("file"));
    if (!text) throw InputError("--text STR or --file FILE is required");
    Tokenizer tok = Tokenizer::from_file(dir / "tokenizer.json");
    auto      ids = tok.encode(*text, !args.flag("no-special"));
    if (args.flag("json")) {
        nlohmann::ordered_json j;
        j["ids"] = ids;
        print_json(j);
        return 0;
    }
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
    return 0;
}

} // namespace moebius::cli
