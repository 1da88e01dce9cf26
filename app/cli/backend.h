#pragma once
// --backend cpu|vulkan [--device SEL] for the commands that run a model (generate, ppl, tasks). The Vulkan runner
// (engine/vulkan/runner.h) stays behind this interface so that the commands build without MOEBIUS_VULKAN; when the
// backend cannot run (not built, no device, a model it cannot hold), the reason goes to stderr and the CPU runs.
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "app/cli/args.h"
#include "engine/cpu/generate.h"
#include "engine/eval/perplexity.h"

namespace moebius::cli {


class GpuModel {
  public:
    virtual ~GpuModel() = default;
    virtual std::string      device_name() const = 0;
    virtual GenerateResult   generate(std::span<const int32_t> prompt, const GenerateOptions& opt,
                                      const std::function<bool(int32_t)>& on_token) = 0;
    virtual PerplexityResult perplexity(std::span<const int32_t> ids, int seqlen, const ProgressFn& progress) = 0;
    // Commands recorded by the last forward call, and of those, per decoder layer (the last layer).
    virtual size_t last_dispatches() const       = 0;
    virtual size_t last_layer_dispatches() const = 0;
};

// nullptr for --backend cpu (the default), or when the Vulkan backend cannot run `model`: then the reason is
// printed on stderr. `what` names the command for messages. Throws InputError for an unknown --backend.
std::unique_ptr<GpuModel> open_backend(const Args& args, const Model& model, int n_ctx, const std::string& what);

} // namespace moebius::cli
