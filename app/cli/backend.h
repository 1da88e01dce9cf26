#pragma once
// --backend cpu|vulkan [--device SEL] for the commands that run a model (generate, ppl, tasks). The Vulkan runner
// (engine/vulkan/runner.h) stays behind this interface so that the commands build without MOEBIUS_VULKAN; when the
// backend cannot run (not built, no device, a model it cannot hold), the reason goes to stderr and the CPU runs.
#include <memory>
#include <string>
#include <vector>

#include "app/cli/args.h"
#include "engine/cpu/session.h"

namespace moebius::cli {

// A model on a device: its Session runs generate(), perplexity() and evaluate_mc().
class GpuModel {
  public:
    virtual ~GpuModel() = default;
    virtual std::string device_name() const = 0;
    virtual Session&    session()           = 0;
    // Commands recorded by the last forward call, and of those, per decoder layer (the last layer).
    virtual size_t last_dispatches() const       = 0;
    virtual size_t last_layer_dispatches() const = 0;
    // Per-kernel device time (engine/vulkan/runner.h Runner::profile) of the calls since clear_profile(), while
    // profiling is on; set_profiling returns false when the device has no timestamps.
    struct KernelProfile {
        std::string name;
        size_t      calls   = 0;
        double      seconds = 0;
        uint64_t    bytes   = 0;
    };
    virtual bool                       set_profiling(bool on) = 0;
    virtual void                       clear_profile()        = 0;
    virtual std::vector<KernelProfile> profile() const        = 0;
    // Measured buffer-copy bandwidth of the device, GB/s (the practical memory roofline).
    virtual double copy_bandwidth_gbps() = 0;
};

// The device's session, or a CPU session over `model` when gpu is null.
class BackendSession {
  public:
    BackendSession(GpuModel* gpu, const Model& model) : gpu_(gpu), cpu_(model) {}
    Session& operator*() { return gpu_ ? gpu_->session() : cpu_; }

  private:
    GpuModel*  gpu_;
    CpuSession cpu_;
};

// nullptr for --backend cpu (the default), or when the Vulkan backend cannot run `model`: then the reason is
// printed on stderr. `what` names the command for messages. Throws InputError for an unknown --backend.
std::unique_ptr<GpuModel> open_backend(const Args& args, const Model& model, int n_ctx, const std::string& what);

} // namespace moebius::cli
