#pragma once
// The `moebius` subcommands. Each returns the process exit code and throws moebius::Error on bad input.
#include <string>
#include <vector>

namespace moebius::cli {

using Argv = std::vector<std::string>;

int cmd_info(const Argv& argv);
int cmd_tokenize(const Argv& argv);
int cmd_forward(const Argv& argv);
int cmd_generate(const Argv& argv);
int cmd_ppl(const Argv& argv);
int cmd_tasks(const Argv& argv);
int cmd_calibrate(const Argv& argv);
int cmd_routing_diff(const Argv& argv);
int cmd_importance(const Argv& argv);
int cmd_quantize(const Argv& argv);
int cmd_export(const Argv& argv);
int cmd_devices(const Argv& argv);
int cmd_bench(const Argv& argv);   // prefill / decode speed on the CPU or Vulkan backend // Vulkan devices; an error when built without MOEBIUS_VULKAN

} // namespace moebius::cli
