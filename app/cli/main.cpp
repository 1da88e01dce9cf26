// `moebius`: the command-line front end. Every subcommand has a --json form that prints exactly one JSON object on
// stdout; any error prints one line on stderr and exits non-zero.
#include <cstring>
#include <iostream>
#include <string>

#include "app/cli/commands.h"
#include "engine/core/error.h"

namespace {

struct Command {
    const char* name;
    int (*fn)(const moebius::cli::Argv&);
    const char* help;
};

const Command k_commands[] = {
    {"info", moebius::cli::cmd_info, "info [MODEL] [--json]                         model family, size, experts"},
    {"tokenize", moebius::cli::cmd_tokenize, "tokenize [MODEL] --text STR [--json]         token ids of a text"},
    {"forward", moebius::cli::cmd_forward, "forward [MODEL] --ids 1,2,3 [--json]         logits and routed experts"},
    {"generate", moebius::cli::cmd_generate,
     "generate [MODEL] --prompt STR [--chat] [--system STR] [--max-tokens N] [--temperature T] [--top-k K]\n"
     "           [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S] [--backend cpu|vulkan [--device SEL]] [--json]\n"
     "           stream a completion"},
    {"ppl", moebius::cli::cmd_ppl, "ppl [MODEL] [--text FILE] [--seqlen N] [--backend cpu|vulkan [--device SEL]] [--json]     perplexity"},
    {"tasks", moebius::cli::cmd_tasks,
     "tasks [MODEL] [--tasks FILE.jsonl] [--limit N] [--backend cpu|vulkan [--device SEL]] [--json]\n"
     "           zero-shot multiple-choice accuracy (acc, acc_norm)"},
    {"calibrate", moebius::cli::cmd_calibrate,
     "calibrate [MODEL] (--text FILE | --ebss | --calib SET.jsonl) [--samples N] [--seqlen L] [--seed S]\n"
     "           --out DIR [--force] [--json]   calibration set, expert utilisation, input statistics"},
    {"routing-diff", moebius::cli::cmd_routing_diff,
     "routing-diff REF MODEL [--text FILE] [--seqlen L] [--json]   routing shift between two models"},
    {"quantize", moebius::cli::cmd_quantize,
     "quantize [MODEL] --method rtn|gptq|agq|gptvq|kbvq|billm|arb-x|arb-rc|mobie [--bits B] [--group G] [--vq-dim D] [--sym]\n"
     "           [--rank R] [--no-idre] [--no-bcos] [--no-bcos-bias] [--no-shared-codebooks] [--expert-vq-dim D]   (kbvq)\n"
     "           [--core billm|arb|arb-x|arb-rc] [--rank R] [--no-cejd] [--no-refit] [--cejd-all] [--no-glas] [--glas-samples N]\n"
     "           [--no-nges] [--nges-weight W] [--no-fp-target] [--fp-target-experts] [--fp-ridge R]   (mobie)\n"
     "           [--fp-target]   (other calibrated methods: MoBiE's FP-stream targets, for comparison)\n"
     "           [--vq-group-size N] [--codebook-bits 16|8] [--vq-refine N]   (gptvq, kbvq)  [--act-order] [--calib FILE | --ebss] [--samples N] [--seqlen L] [--seed S]\n"
     "           --out DIR [--force] [--resume] [--max-shard-size MB] [--json]   (rtn --bits 1: sign binarization; interrupted runs resume)"},
    {"export", moebius::cli::cmd_export,
     "export QMODEL --dequantized OUT [--dtype bf16|f16|f32] [--max-shard-size MB] [--force]   plain HF checkpoint"},
    {"bench", moebius::cli::cmd_bench,
     "bench [MODEL] [--prompt-tokens N] [--gen-tokens N] [--backend cpu|vulkan [--device SEL]] [--peak-gbps G]\n"
     "           [--no-profile] [--json]   prefill / decode tokens per second (greedy); on Vulkan the dispatches per\n"
     "           token and each kernel's device time, GB/s and share of the copy bandwidth (or of --peak-gbps)"},
    {"devices", moebius::cli::cmd_devices,
     "devices [--device INDEX|NAME] [--json]       Vulkan devices (type, driver, subgroup, limits, memory)"},
    {"importance", moebius::cli::cmd_importance,
     "importance [MODEL] --layer L --module M [--expert E] [--metric obs|hdiag|glas] (--text F | --ebss | --calib S)\n"
     "           [--out MAP.npy] [--max-size R,C] [--json]   weight importance map of one linear"},
};

void usage(std::ostream& os) {
    os << "moebius " << MOEBIUS_VERSION << " — compress and run Mixture-of-Experts LLMs\n\n"
       << "usage: moebius COMMAND [MODEL] [options]\n"
       << "MODEL is a Hugging Face checkpoint folder; it defaults to the bundled tiny Qwen2-MoE.\n"
       << "Common options: --json (one JSON object on stdout), --threads N.\n\ncommands:\n";
    for (const auto& c : k_commands) os << "  " << c.help << "\n";
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        usage(std::cerr);
        return 2;
    }
    std::string cmd = argv[1];
    if (cmd == "--version" || cmd == "version") {
        std::cout << "moebius " << MOEBIUS_VERSION << std::endl;
        return 0;
    }
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
        usage(std::cout);
        return 0;
    }
    moebius::cli::Argv rest(argv + 2, argv + argc);
    for (const auto& c : k_commands) {
        if (cmd != c.name) continue;
        try {
            return c.fn(rest);
        } catch (const moebius::Cancelled& e) {
            std::cerr << "moebius " << cmd << ": " << e.what() << std::endl;
            return 130;
        } catch (const moebius::InputError& e) {
            std::cerr << "moebius " << cmd << ": error: " << e.what() << std::endl;
            return 2;
        } catch (const std::exception& e) {
            std::cerr << "moebius " << cmd << ": error: " << e.what() << std::endl;
            return 1;
        }
    }
    std::cerr << "moebius: unknown command '" << cmd << "' (see moebius --help)" << std::endl;
    return 2;
}
