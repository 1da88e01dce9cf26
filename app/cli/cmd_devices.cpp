// `moebius devices`: the Vulkan devices this machine offers and the one the backend would pick.
#include "app/cli/cli_common.h"
#include "app/cli/commands.h"
#include "engine/core/error.h"

#include <iostream>

#if MOEBIUS_HAS_VULKAN
#include "engine/vulkan/device.h"
#endif

namespace moebius::cli {

#if MOEBIUS_HAS_VULKAN

namespace {

std::string mib(uint64_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f MiB", (double)bytes / (1024.0 * 1024.0));
    return buf;
}

} // namespace

int cmd_devices(const Argv& argv) {
    Args        args(argv, {"json"}, {"device"});
    if (!args.positional().empty()) throw InputError("devices takes no positional arguments");
    vk::Instance inst; // UnsupportedError when no Vulkan driver can be loaded
    const auto&  devs     = inst.devices();
    const auto   selector = args.get_or("device", "");
    // No device is not an error for a listing (an empty list); a --device that matches nothing is.
    const int selected = devs.empty() && selector.empty() ? -1 : inst.select(selector);

    nlohmann::ordered_json j;
    j["vulkan"]   = true;
    j["selected"] = selected >= 0 ? nlohmann::ordered_json(selected) : nlohmann::ordered_json(nullptr);
    j["devices"]  = nlohmann::ordered_json::array();
    for (const auto& d : devs) {
        nlohmann::ordered_json e;
        e["index"]                     = d.index;
        e["name"]                      = d.name;
        e["type"]                      = d.type;
        e["vendor"]                    = d.vendor;
        e["vendor_id"]                 = d.vendor_id;
        e["device_id"]                 = d.device_id;
        e["api_version"]               = vk::api_version_string(d.api_version);
        e["driver"]                    = d.driver_name;
        e["driver_info"]               = d.driver_info;
        e["subgroup_size"]             = d.subgroup_size;
        e["max_storage_buffer_range"]  = d.max_storage_buffer_range;
        e["max_memory_allocation"]     = d.max_memory_allocation;
        e["max_workgroup_size"]        = {d.max_workgroup_size[0], d.max_workgroup_size[1], d.max_workgroup_size[2]};
        e["max_workgroup_invocations"] = d.max_workgroup_invocations;
        e["max_shared_memory"]         = d.max_shared_memory;
        e["unified_memory"]            = d.unified_memory;
        e["heaps"]                     = nlohmann::ordered_json::array();
        for (const auto& h : d.heaps) e["heaps"].push_back({{"size", h.size}, {"device_local", h.device_local}});
        j["devices"].push_back(e);
    }
    if (args.flag("json")) {
        print_json(j);
        return 0;
    }
    if (devs.empty()) {
        std::cout << "no Vulkan 1.2 device found (mesa-vulkan-drivers provides the lavapipe CPU device)\n";
        return 0;
    }
    for (const auto& d : devs) {
        std::cout << (d.index == selected ? "* " : "  ") << d.index << ": " << d.name << "\n"
                  << "      type " << d.type << ", vendor " << d.vendor << ", Vulkan "
                  << vk::api_version_string(d.api_version) << ", driver " << d.driver_name << " (" << d.driver_info
                  << ")\n"
                  << "      subgroup " << d.subgroup_size << ", max binding " << mib(d.max_storage_buffer_range)
                  << ", max allocation " << mib(d.max_memory_allocation) << ", workgroup ≤ "
                  << d.max_workgroup_invocations << " invocations, shared " << d.max_shared_memory / 1024
                  << " KiB\n      memory";
        for (const auto& h : d.heaps) std::cout << " " << mib(h.size) << (h.device_local ? " (device-local)" : "");
        std::cout << (d.unified_memory ? ", unified\n" : "\n");
    }
    std::cout << "(* the device the Vulkan backend uses; pick another with --device INDEX|NAME)\n";
    return 0;
}

#else

int cmd_devices(const Argv&) {
    throw UnsupportedError("Vulkan support was not built (reconfigure with -DMOEBIUS_VULKAN=ON; needs libvulkan-dev "
                           "and glslc)");
}

#endif

} // namespace moebius::cli
