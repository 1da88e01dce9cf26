#include "app/cli/backend.h"

#include "engine/core/error.h"

#include <iostream>

#if MOEBIUS_HAS_VULKAN
#include "engine/vulkan/ops.h"
#include "engine/vulkan/runner.h"
#endif

namespace moebius::cli {

namespace {

#if MOEBIUS_HAS_VULKAN
class VulkanModel final : public GpuModel {
  public:
    VulkanModel(const std::string& selector, const Model& model, int n_ctx)
        : dev_(selector), runner_(dev_, model, n_ctx) {}
    std::string device_name() const override { return dev_.info().name; }
    Session&    session() override { return runner_; }
    size_t last_dispatches() const override { return runner_.last_dispatches(); }
    size_t last_layer_dispatches() const override { return runner_.last_layer_dispatches(); }
    bool   set_profiling(bool on) override { return runner_.set_profiling(on); }
    void   clear_profile() override { runner_.clear_profile(); }
    std::vector<KernelProfile> profile() const override {
        std::vector<KernelProfile> v;
        for (const auto& k : runner_.profile()) v.push_back({k.name, k.calls, k.seconds, k.bytes});
        return v;
    }
    double copy_bandwidth_gbps() override { return vk::copy_bandwidth_gbps(dev_); }
    const std::vector<std::string>& notes() const { return runner_.notes(); }

  private:
    vk::Device dev_;
    vk::Runner runner_;
};
#endif

} // namespace

std::unique_ptr<GpuModel> open_backend(const Args& args, const Model& model, int n_ctx, const std::string& what) {
    const std::string backend = args.get_or("backend", "cpu");
    if (backend == "cpu") {
        if (args.get("device")) throw InputError("--device needs --backend vulkan");
        return nullptr;
    }
    if (backend != "vulkan") throw InputError("--backend must be cpu or vulkan, not '" + backend + "'");
#if MOEBIUS_HAS_VULKAN
    try {
        auto m = std::make_unique<VulkanModel>(args.get_or("device", ""), model, n_ctx);
        std::cerr << "[" << what << " on Vulkan device " << m->device_name() << "]" << std::endl;
        for (const auto& n : m->notes()) std::cerr << "[vulkan: " << n << "]" << std::endl;
        return m;
    } catch (const Error& e) {
        // No device, a selector matching nothing, a model the kernels or the device's limits cannot hold, or out of
        // device memory during upload: all reasons to run on the CPU rather than to fail.
        std::cerr << "[vulkan backend unavailable (" << e.what() << "); " << what << " runs on the CPU]" << std::endl;
        return nullptr;
    }
#else
    (void)model;
    (void)n_ctx;
    std::cerr << "[vulkan backend unavailable (built without MOEBIUS_VULKAN); " << what << " runs on the CPU]"
              << std::endl;
    return nullptr;
#endif
}

} // namespace moebius::cli
