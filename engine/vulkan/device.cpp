#include "engine/vulkan/device.h"

#include "engine/vulkan/shaders.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>

namespace moebius::vk {

namespace {

void check(VkResult r, const char* what) {
    if (r != VK_SUCCESS) throw VulkanError(std::string("vulkan: ") + what + " failed: " + result_name(r), r);
}

std::string lower(std::string s) {
    for (auto& c : s) c = (char)std::tolower((unsigned char)c);
    return s;
}

const char* type_name(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
    }
}

// Higher is preferred: discrete > integrated > virtual > CPU (lavapipe, SwiftShader) > other.
int type_rank(const std::string& t) {
    if (t == "discrete") return 4;
    if (t == "integrated") return 3;
    if (t == "virtual") return 2;
    if (t == "cpu") return 1;
    return 0;
}

std::string vendor_name(uint32_t id) {
    switch (id) {
    case 0x1002: return "AMD";
    case 0x10DE: return "NVIDIA";
    case 0x8086: return "Intel";
    case 0x13B5: return "ARM";
    case 0x5143: return "Qualcomm";
    case 0x1010: return "ImgTec";
    case 0x106B: return "Apple";
    case 0x10005: return "Mesa";
    default: {
        char buf[16];
        std::snprintf(buf, sizeof buf, "0x%04x", id);
        return buf;
    }
    }
}

bool has_layer(const char* name) {
    uint32_t n = 0;
    if (vkEnumerateInstanceLayerProperties(&n, nullptr) != VK_SUCCESS) return false;
    std::vector<VkLayerProperties> layers(n);
    vkEnumerateInstanceLayerProperties(&n, layers.data());
    for (const auto& l : layers)
        if (std::strcmp(l.layerName, name) == 0) return true;
    return false;
}

DeviceInfo describe(VkPhysicalDevice pd, int index) {
    VkPhysicalDeviceSubgroupProperties sub{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
    VkPhysicalDeviceDriverProperties       drv{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
    sub.pNext = &m3;
    m3.pNext  = &drv;
    VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    p2.pNext = &sub;
    vkGetPhysicalDeviceProperties2(pd, &p2);
    const auto& p = p2.properties;
    DeviceInfo  d;
    d.index       = index;
    d.name        = p.deviceName;
    d.type        = type_name(p.deviceType);
    d.vendor_id   = p.vendorID;
    d.device_id   = p.deviceID;
    d.vendor      = vendor_name(p.vendorID);
    d.api_version = p.apiVersion;
    d.driver_id   = (uint32_t)drv.driverID;
    d.driver_name = drv.driverName;
    d.driver_info = drv.driverInfo;
    d.subgroup_size             = sub.subgroupSize;
    d.max_storage_buffer_range  = p.limits.maxStorageBufferRange;
    d.max_memory_allocation     = m3.maxMemoryAllocationSize;
    d.max_memory_allocation_count  = p.limits.maxMemoryAllocationCount;
    d.min_storage_offset_alignment = p.limits.minStorageBufferOffsetAlignment;
    d.max_workgroup_invocations = p.limits.maxComputeWorkGroupInvocations;
    d.max_shared_memory         = p.limits.maxComputeSharedMemorySize;
    d.max_push_constants        = p.limits.maxPushConstantsSize;
    for (int k = 0; k < 3; ++k) {
        d.max_workgroup_size[k]  = p.limits.maxComputeWorkGroupSize[k];
        d.max_workgroup_count[k] = p.limits.maxComputeWorkGroupCount[k];
    }
    VkPhysicalDeviceMemoryProperties mem;
    vkGetPhysicalDeviceMemoryProperties(pd, &mem);
    for (uint32_t h = 0; h < mem.memoryHeapCount; ++h)
        d.heaps.push_back({mem.memoryHeaps[h].size, (mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) != 0});
    bool any_local = false, all_visible = true;
    for (uint32_t t = 0; t < mem.memoryTypeCount; ++t) {
        const auto f = mem.memoryTypes[t].propertyFlags;
        if (!(f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)) continue;
        any_local = true;
        if (!(f & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) || !(f & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT))
            all_visible = false;
    }
    // A discrete GPU with ReBAR also has host-visible device-local memory, but only in a small heap or at a cost
    // (kernels.md §7.5 pitfall 8): only treat non-discrete devices as unified.
    d.unified_memory = any_local && all_visible && d.type != "discrete";
    return d;
}

} // namespace

VulkanError::VulkanError(const std::string& what, VkResult r) : Error(what), result(r) {}

const char* result_name(VkResult r) {
    switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default: return "VkResult error";
    }
}

std::string api_version_string(uint32_t v) {
    return std::to_string(VK_API_VERSION_MAJOR(v)) + "." + std::to_string(VK_API_VERSION_MINOR(v)) + "." +
           std::to_string(VK_API_VERSION_PATCH(v));
}

// ---- Instance -----------------------------------------------------------------------------------------------------

Instance::Instance() {
    uint32_t loader = VK_API_VERSION_1_0;
    if (vkEnumerateInstanceVersion(&loader) != VK_SUCCESS || loader < VK_API_VERSION_1_2)
        throw UnsupportedError("vulkan: the Vulkan loader is older than 1.2 (" + api_version_string(loader) + ")");
    VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "moebius";
    app.pEngineName      = "moebius";
    app.apiVersion       = VK_API_VERSION_1_2;
    VkInstanceCreateInfo ci{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    ci.pApplicationInfo = &app;
    // Validation only on request: it is not installed on user machines and slows every call.
    const char* val       = "VK_LAYER_KHRONOS_validation";
    const char* want_val  = std::getenv("MOEBIUS_VULKAN_VALIDATION");
    if (want_val && std::string(want_val) == "1" && has_layer(val)) {
        ci.enabledLayerCount   = 1;
        ci.ppEnabledLayerNames = &val;
    }
    const VkResult r = vkCreateInstance(&ci, nullptr, &inst_);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER || r == VK_ERROR_INITIALIZATION_FAILED)
        throw UnsupportedError(std::string("vulkan: no Vulkan driver could be loaded (") + result_name(r) + ")");
    check(r, "vkCreateInstance");
    uint32_t n = 0;
    VkResult e = vkEnumeratePhysicalDevices(inst_, &n, nullptr);
    if (e == VK_SUCCESS && n > 0) {
        phys_.resize(n);
        e = vkEnumeratePhysicalDevices(inst_, &n, phys_.data());
        phys_.resize(n);
    }
    if (e != VK_SUCCESS && e != VK_INCOMPLETE) {
        vkDestroyInstance(inst_, nullptr);
        throw VulkanError(std::string("vulkan: vkEnumeratePhysicalDevices failed: ") + result_name(e), e);
    }
    for (size_t i = 0; i < phys_.size(); ++i) {
        DeviceInfo d = describe(phys_[i], (int)i);
        if (d.api_version < VK_API_VERSION_1_2) continue; // we need 1.2 core structures
        infos_.push_back(std::move(d));
    }
}

Instance::~Instance() {
    if (inst_) vkDestroyInstance(inst_, nullptr);
}

int Instance::select(const std::string& selector) const {
    if (infos_.empty())
        throw UnsupportedError("vulkan: no Vulkan 1.2 device found (install a driver; mesa-vulkan-drivers provides "
                               "the lavapipe CPU device)");
    if (!selector.empty()) {
        const bool numeric = selector.size() <= 9 &&
                             std::all_of(selector.begin(), selector.end(), [](char c) { return std::isdigit(c); });
        for (const auto& d : infos_)
            if (numeric ? d.index == std::stoi(selector) : lower(d.name).find(lower(selector)) != std::string::npos)
                return d.index;
        std::string names;
        for (const auto& d : infos_) names += (names.empty() ? "" : ", ") + std::to_string(d.index) + ": " + d.name;
        throw UnsupportedError("vulkan: no device matches '" + selector + "' (devices: " + names + ")");
    }
    const DeviceInfo* best = &infos_[0];
    for (const auto& d : infos_)
        if (type_rank(d.type) > type_rank(best->type)) best = &d;
    return best->index;
}

// ---- Buffer -------------------------------------------------------------------------------------------------------

MemoryBlock::~MemoryBlock() {
    if (map) vkUnmapMemory(dev, mem);
    if (mem) vkFreeMemory(dev, mem, nullptr);
}

void Buffer::release() {
    if (!dev_) return;
    if (map_ && !block_) vkUnmapMemory(dev_, mem_);
    if (buf_) vkDestroyBuffer(dev_, buf_, nullptr);
    if (mem_) vkFreeMemory(dev_, mem_, nullptr);
    block_.reset(); // the block's memory goes with its last buffer
    dev_ = VK_NULL_HANDLE, buf_ = VK_NULL_HANDLE, mem_ = VK_NULL_HANDLE, map_ = nullptr, size_ = 0;
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& o) noexcept { *this = std::move(o); }

Buffer& Buffer::operator=(Buffer&& o) noexcept {
    if (this != &o) {
        release();
        dev_ = o.dev_, buf_ = o.buf_, mem_ = o.mem_, size_ = o.size_, map_ = o.map_, block_ = std::move(o.block_);
        o.dev_ = VK_NULL_HANDLE, o.buf_ = VK_NULL_HANDLE, o.mem_ = VK_NULL_HANDLE, o.map_ = nullptr, o.size_ = 0;
    }
    return *this;
}

// ---- Pipeline -----------------------------------------------------------------------------------------------------

Pipeline::~Pipeline() {
    if (pipe_) vkDestroyPipeline(dev_, pipe_, nullptr);
    if (layout_) vkDestroyPipelineLayout(dev_, layout_, nullptr);
    if (set_layout_) vkDestroyDescriptorSetLayout(dev_, set_layout_, nullptr);
}

// ---- Device -------------------------------------------------------------------------------------------------------

Device::Device(const std::string& selector, bool force_staging) : inst_(std::make_unique<Instance>()) {
    const int idx = inst_->select(selector);
    phys_         = inst_->physical(idx);
    for (const auto& d : inst_->devices())
        if (d.index == idx) info_ = d;
    vkGetPhysicalDeviceMemoryProperties(phys_, &mem_);
    staging_ = force_staging || !info_.unified_memory;
    set_max_binding_bytes(0);
    if (const char* e = std::getenv("MOEBIUS_VULKAN_MAX_BINDING"); e && *e)
        set_max_binding_bytes(std::strtoull(e, nullptr, 10));

    // A compute queue family; prefer a compute-only one (async compute on discrete GPUs), else any with compute.
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(phys_, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> qf(nq);
    vkGetPhysicalDeviceQueueFamilyProperties(phys_, &nq, qf.data());
    int fam = -1;
    for (uint32_t i = 0; i < nq; ++i) {
        if (!(qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) || qf[i].queueCount == 0) continue;
        if (fam < 0 || !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) fam = (int)i;
        if (!(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) break;
    }
    if (fam < 0) throw UnsupportedError("vulkan: device '" + info_.name + "' has no compute queue");
    qfam_ = (uint32_t)fam;
    info_.timestamp_bits = qf[qfam_].timestampValidBits;
    {
        VkPhysicalDeviceProperties pp;
        vkGetPhysicalDeviceProperties(phys_, &pp);
        info_.timestamp_period_ns = pp.limits.timestampPeriod;
    }

    const float             prio = 1.0f;
    VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    qci.queueFamilyIndex = qfam_;
    qci.queueCount       = 1;
    qci.pQueuePriorities = &prio;
    VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    dci.queueCreateInfoCount = 1;
    dci.pQueueCreateInfos    = &qci;
    check(vkCreateDevice(phys_, &dci, nullptr, &dev_), "vkCreateDevice");
    vkGetDeviceQueue(dev_, qfam_, 0, &queue_);
    VkPipelineCacheCreateInfo pci{VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
    check(vkCreatePipelineCache(dev_, &pci, nullptr, &cache_), "vkCreatePipelineCache");

    // 64 covers a wave on AMD and two warps on NVIDIA; never below the subgroup size (PowerVR: 128) nor above the
    // device limit. The reduction kernels only need a power of two ≥ 8 (their token chunk).
    uint32_t wg = std::max<uint32_t>(64, info_.subgroup_size);
    while (wg > info_.max_workgroup_invocations || wg > info_.max_workgroup_size[0]) wg /= 2;
    wg_ = std::max<uint32_t>(8, wg);
}

void Device::set_max_binding_bytes(uint64_t bytes) {
    binding_limit_ = bytes ? std::min<uint64_t>(bytes, info_.max_storage_buffer_range) : info_.max_storage_buffer_range;
}

Device::~Device() {
    dummy_ = Buffer{}; // before the VkDevice goes
    block_.reset();    // buffers still alive keep their block
    pipelines_.clear();
    if (cache_) vkDestroyPipelineCache(dev_, cache_, nullptr);
    if (dev_) vkDestroyDevice(dev_, nullptr);
}

uint32_t Device::find_memory_type(uint32_t bits, VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid) const {
    for (int pass = 0; pass < 2; ++pass)
        for (uint32_t t = 0; t < mem_.memoryTypeCount; ++t) {
            const auto f = mem_.memoryTypes[t].propertyFlags;
            if (!(bits & (1u << t)) || (f & want) != want) continue;
            if (pass == 0 && (f & avoid)) continue; // first try without the flags we would rather not have
            return t;
        }
    return UINT32_MAX;
}

// A VkBuffer of `bytes` without memory yet, and what memory it needs.
Buffer Device::unbound_buffer(uint64_t bytes, VkBufferUsageFlags usage, VkMemoryRequirements& req) {
    Buffer             b;
    VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    bci.size        = bytes;
    bci.usage       = usage;
    bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    check(vkCreateBuffer(dev_, &bci, nullptr, &b.buf_), "vkCreateBuffer");
    b.dev_  = dev_;
    b.size_ = bytes;
    vkGetBufferMemoryRequirements(dev_, b.buf_, &req);
    return b;
}

Buffer Device::allocate(uint64_t bytes, VkBufferUsageFlags usage, bool host_visible) {
    bytes = std::max<uint64_t>(bytes, 4);
    if (bytes > info_.max_memory_allocation)
        throw UnsupportedError("vulkan: a buffer of " + std::to_string(bytes) + " bytes exceeds the device's "
                               "maxMemoryAllocationSize (" + std::to_string(info_.max_memory_allocation) + ")");
    VkMemoryRequirements req;
    Buffer               b = unbound_buffer(bytes, usage, req);
    const VkMemoryPropertyFlags local   = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
    const VkMemoryPropertyFlags visible = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    // Unified devices map their device-local buffers. Staging buffers would rather not take device-local memory (the
    // small BAR heap) on a discrete GPU.
    const VkMemoryPropertyFlags want  = !host_visible ? local : staging_ ? visible : visible | local;
    const VkMemoryPropertyFlags avoid = host_visible && staging_ ? local : 0;
    const uint32_t type = find_memory_type(req.memoryTypeBits, want, avoid);
    if (type == UINT32_MAX) throw UnsupportedError("vulkan: no suitable memory type for a buffer");
    VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    mai.allocationSize  = req.size;
    mai.memoryTypeIndex = type;
    const VkResult r    = vkAllocateMemory(dev_, &mai, nullptr, &b.mem_);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
        throw VulkanError("vulkan: out of memory allocating " + std::to_string(bytes) + " bytes on '" + info_.name +
                              "' (" + result_name(r) + ")",
                          r);
    check(r, "vkAllocateMemory");
    check(vkBindBufferMemory(dev_, b.buf_, b.mem_, 0), "vkBindBufferMemory");
    if (host_visible) check(vkMapMemory(dev_, b.mem_, 0, VK_WHOLE_SIZE, 0, &b.map_), "vkMapMemory");
    return b;
}

Buffer Device::create_buffer(uint64_t bytes) {
    const VkBufferUsageFlags usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                     VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    if (bytes <= k_small_buffer) return allocate_small(bytes, usage);
    // Unified devices (lavapipe, integrated GPUs): device-local memory is host-visible, so no staging copies.
    ++n_allocs_;
    return allocate(bytes, usage, !staging_);
}

// A buffer bound into the current block at the next offset aligned to its requirement and to
// minStorageBufferOffsetAlignment (a bump allocator: space comes back when the block's last buffer goes, which suits
// the runner's buffers, made once per model). A fresh block when it does not fit or has another memory type.
Buffer Device::allocate_small(uint64_t bytes, VkBufferUsageFlags usage) {
    bytes = std::max<uint64_t>(bytes, 4);
    VkMemoryRequirements req;
    Buffer               b = unbound_buffer(bytes, usage, req);
    const bool                  visible = !staging_;
    const VkMemoryPropertyFlags host    = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    const VkMemoryPropertyFlags want    = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | (visible ? host : 0);
    const uint32_t type = find_memory_type(req.memoryTypeBits, want, 0);
    if (type == UINT32_MAX) throw UnsupportedError("vulkan: no suitable memory type for a buffer");
    const uint64_t align = std::max<uint64_t>({req.alignment, info_.min_storage_offset_alignment, 4});
    uint64_t       off   = block_ ? (block_->used + align - 1) / align * align : 0;
    if (!block_ || block_type_ != type || off + req.size > block_->size) {
        auto                 blk = std::make_shared<MemoryBlock>();
        VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
        mai.allocationSize  = std::max<uint64_t>(k_block_bytes, req.size);
        mai.memoryTypeIndex = type;
        const VkResult r    = vkAllocateMemory(dev_, &mai, nullptr, &blk->mem);
        if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
            throw VulkanError("vulkan: out of memory allocating a block of " + std::to_string(mai.allocationSize) +
                                  " bytes on '" + info_.name + "' (" + result_name(r) + ")",
                              r);
        check(r, "vkAllocateMemory");
        blk->dev  = dev_;
        blk->size = mai.allocationSize;
        if (visible) check(vkMapMemory(dev_, blk->mem, 0, VK_WHOLE_SIZE, 0, &blk->map), "vkMapMemory");
        block_      = std::move(blk);
        block_type_ = type;
        off         = 0;
        ++n_allocs_;
    }
    check(vkBindBufferMemory(dev_, b.buf_, block_->mem, off), "vkBindBufferMemory");
    block_->used = off + req.size;
    b.block_     = block_;
    if (visible) b.map_ = (char*)block_->map + off;
    return b;
}

void Device::upload(Buffer& dst, const void* src, uint64_t bytes, uint64_t dst_off) {
    MOEBIUS_ASSERT(dst_off + bytes <= dst.size());
    if (dst.mapped()) {
        std::memcpy((char*)dst.mapped() + dst_off, src, bytes);
        return;
    }
    Buffer staging = allocate(bytes, VK_BUFFER_USAGE_TRANSFER_SRC_BIT, true);
    std::memcpy(staging.mapped(), src, bytes);
    CommandList cl(*this);
    cl.copy(staging, dst, bytes, 0, dst_off);
    cl.submit_and_wait();
}

void Device::download(const Buffer& src, void* dst, uint64_t bytes, uint64_t src_off) {
    MOEBIUS_ASSERT(src_off + bytes <= src.size());
    if (src.mapped()) {
        std::memcpy(dst, (const char*)src.mapped() + src_off, bytes);
        return;
    }
    Buffer      staging = allocate(bytes, VK_BUFFER_USAGE_TRANSFER_DST_BIT, true);
    CommandList cl(*this);
    cl.copy(src, staging, bytes, src_off, 0);
    cl.submit_and_wait();
    std::memcpy(dst, staging.mapped(), bytes);
}

const Buffer& Device::dummy() {
    if (!dummy_) dummy_ = create_buffer(4);
    return dummy_;
}

const Pipeline& Device::pipeline(const std::string& shader, uint32_t n_bindings, uint32_t push_bytes,
                                 std::vector<uint32_t> spec) {
    auto key = std::make_pair(shader, spec);
    if (auto it = pipelines_.find(key); it != pipelines_.end()) {
        MOEBIUS_ASSERT(it->second->n_bindings() == n_bindings && it->second->push_bytes() == push_bytes);
        return *it->second;
    }
    const EmbeddedShader* s = find_shader(shader);
    if (!s) throw NotFoundError("vulkan: no embedded shader named '" + shader + "'");
    if (push_bytes > info_.max_push_constants)
        throw UnsupportedError("vulkan: shader '" + shader + "' needs " + std::to_string(push_bytes) +
                               " bytes of push constants, the device allows " +
                               std::to_string(info_.max_push_constants));

    std::unique_ptr<Pipeline> p(new Pipeline());
    p->dev_        = dev_;
    p->name_       = shader;
    p->n_bindings_ = n_bindings;
    p->push_bytes_ = push_bytes;
    std::vector<VkDescriptorSetLayoutBinding> binds(n_bindings);
    for (uint32_t i = 0; i < n_bindings; ++i)
        binds[i] = {i, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1, VK_SHADER_STAGE_COMPUTE_BIT, nullptr};
    VkDescriptorSetLayoutCreateInfo dl{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
    dl.bindingCount = n_bindings;
    dl.pBindings    = binds.data();
    check(vkCreateDescriptorSetLayout(dev_, &dl, nullptr, &p->set_layout_), "vkCreateDescriptorSetLayout");
    VkPushConstantRange        pcr{VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes};
    VkPipelineLayoutCreateInfo pl{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
    pl.setLayoutCount         = 1;
    pl.pSetLayouts            = &p->set_layout_;
    pl.pushConstantRangeCount = push_bytes ? 1 : 0;
    pl.pPushConstantRanges    = &pcr;
    check(vkCreatePipelineLayout(dev_, &pl, nullptr, &p->layout_), "vkCreatePipelineLayout");

    VkShaderModuleCreateInfo smi{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
    smi.codeSize = s->n_words * 4;
    smi.pCode    = s->words;
    VkShaderModule module;
    check(vkCreateShaderModule(dev_, &smi, nullptr, &module), "vkCreateShaderModule");
    std::vector<VkSpecializationMapEntry> entries(spec.size());
    for (uint32_t i = 0; i < spec.size(); ++i) entries[i] = {i, i * 4, 4};
    VkSpecializationInfo si{(uint32_t)spec.size(), entries.data(), spec.size() * 4, spec.data()};
    VkComputePipelineCreateInfo cpi{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    cpi.stage        = {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO};
    cpi.stage.stage  = VK_SHADER_STAGE_COMPUTE_BIT;
    cpi.stage.module = module;
    cpi.stage.pName  = "main";
    cpi.stage.pSpecializationInfo = spec.empty() ? nullptr : &si;
    cpi.layout                    = p->layout_;
    const VkResult r = vkCreateComputePipelines(dev_, cache_, 1, &cpi, nullptr, &p->pipe_);
    vkDestroyShaderModule(dev_, module, nullptr);
    check(r, ("vkCreateComputePipelines(" + shader + ")").c_str());
    return *pipelines_.emplace(std::move(key), std::move(p)).first->second;
}

// ---- CommandList --------------------------------------------------------------------------------------------------

CommandList::CommandList(Device& dev) : dev_(dev) {
    VkCommandPoolCreateInfo pci{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    pci.flags            = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pci.queueFamilyIndex = dev_.qfam_;
    check(vkCreateCommandPool(dev_.dev_, &pci, nullptr, &pool_), "vkCreateCommandPool");
    VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    ai.commandPool        = pool_;
    ai.level              = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    check(vkAllocateCommandBuffers(dev_.dev_, &ai, &cmd_), "vkAllocateCommandBuffers");
    VkFenceCreateInfo fci{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    check(vkCreateFence(dev_.dev_, &fci, nullptr, &fence_), "vkCreateFence");
    begin();
}

CommandList::~CommandList() {
    if (queries_) vkDestroyQueryPool(dev_.dev_, queries_, nullptr);
    for (auto dp : desc_pools_) vkDestroyDescriptorPool(dev_.dev_, dp, nullptr);
    if (fence_) vkDestroyFence(dev_.dev_, fence_, nullptr);
    if (pool_) vkDestroyCommandPool(dev_.dev_, pool_, nullptr); // frees cmd_
}

void CommandList::begin() {
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    check(vkBeginCommandBuffer(cmd_, &bi), "vkBeginCommandBuffer");
    n_cmds_ = 0;
    pending_.clear();
    if (queries_) {
        vkCmdResetQueryPool(cmd_, queries_, 0, k_max_timed + 1);
        vkCmdWriteTimestamp(cmd_, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, queries_, 0);
    }
}

bool CommandList::enable_timing() {
    if (queries_) return true;
    if (dev_.info_.timestamp_bits == 0 || n_cmds_ > 0) return false;
    VkQueryPoolCreateInfo qi{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
    qi.queryType  = VK_QUERY_TYPE_TIMESTAMP;
    qi.queryCount = k_max_timed + 1;
    check(vkCreateQueryPool(dev_.dev_, &qi, nullptr, &queries_), "vkCreateQueryPool");
    // The recording has begun without the reset and the first stamp: start it again.
    check(vkResetCommandBuffer(cmd_, 0), "vkResetCommandBuffer");
    begin();
    return true;
}

void CommandList::stamp(const std::string& name) {
    if (!queries_ || pending_.size() >= k_max_timed) return; // past the pool: the rest of the recording is untimed
    pending_.push_back({name, 0, 0});
    vkCmdWriteTimestamp(cmd_, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, queries_, (uint32_t)pending_.size());
}

void CommandList::annotate(uint64_t bytes) {
    if (!pending_.empty()) pending_.back().bytes = bytes;
}

void CommandList::label(const std::string& name) {
    if (!pending_.empty()) pending_.back().name = name;
}

void CommandList::barrier() {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_TRANSFER_WRITE_BIT;
    const VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    vkCmdPipelineBarrier(cmd_, st, st, 0, 1, &mb, 0, nullptr, 0, nullptr);
}

void CommandList::dispatch(const Pipeline& p, std::initializer_list<BufferRef> bindings, const void* push,
                           uint32_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz) {
    MOEBIUS_ASSERT(bindings.size() == p.n_bindings() && push_bytes == p.push_bytes());
    const auto& lim = dev_.info_.max_workgroup_count;
    if (gx > lim[0] || gy > lim[1] || gz > lim[2])
        throw UnsupportedError("vulkan: dispatch of " + p.name() + " with grid (" + std::to_string(gx) + ", " +
                               std::to_string(gy) + ", " + std::to_string(gz) + ") exceeds the device's "
                               "maxComputeWorkGroupCount");
    if (gx == 0 || gy == 0 || gz == 0) return;
    if (sets_left_ == 0) {
        // Pools of 64 sets; a long recording simply gets more of them.
        constexpr uint32_t   k_sets = 64;
        VkDescriptorPoolSize ps{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, k_sets * 16};
        VkDescriptorPoolCreateInfo dpi{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
        dpi.maxSets       = k_sets;
        dpi.poolSizeCount = 1;
        dpi.pPoolSizes    = &ps;
        VkDescriptorPool dp;
        check(vkCreateDescriptorPool(dev_.dev_, &dpi, nullptr, &dp), "vkCreateDescriptorPool");
        desc_pools_.push_back(dp);
        sets_left_ = k_sets;
    }
    MOEBIUS_ASSERT(p.n_bindings() <= 16);
    VkDescriptorSetLayout       sl = p.set_layout();
    VkDescriptorSetAllocateInfo ai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
    ai.descriptorPool     = desc_pools_.back();
    ai.descriptorSetCount = 1;
    ai.pSetLayouts        = &sl;
    VkDescriptorSet set;
    check(vkAllocateDescriptorSets(dev_.dev_, &ai, &set), "vkAllocateDescriptorSets");
    --sets_left_;

    std::vector<VkDescriptorBufferInfo> infos;
    infos.reserve(bindings.size());
    for (const auto& b : bindings) {
        const uint64_t range = b.range == VK_WHOLE_SIZE ? b.buffer->size() - b.offset : b.range;
        // A binding larger than maxStorageBufferRange is undefined behaviour (lavapipe: 128 MiB); callers split.
        if (range > dev_.max_binding_bytes())
            throw UnsupportedError("vulkan: " + p.name() + " binds " + std::to_string(range) +
                                   " bytes, over the device's maxStorageBufferRange (" +
                                   std::to_string(dev_.max_binding_bytes()) + ")");
        infos.push_back({b.buffer->handle(), b.offset, range});
    }
    std::vector<VkWriteDescriptorSet> writes(infos.size());
    for (uint32_t i = 0; i < infos.size(); ++i) {
        writes[i]                 = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
        writes[i].dstSet          = set;
        writes[i].dstBinding      = i;
        writes[i].descriptorCount = 1;
        writes[i].descriptorType  = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        writes[i].pBufferInfo     = &infos[i];
    }
    vkUpdateDescriptorSets(dev_.dev_, (uint32_t)writes.size(), writes.data(), 0, nullptr);

    if (n_cmds_ > 0) barrier();
    vkCmdBindPipeline(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, p.handle());
    vkCmdBindDescriptorSets(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout(), 0, 1, &set, 0, nullptr);
    if (push_bytes) vkCmdPushConstants(cmd_, p.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
    vkCmdDispatch(cmd_, gx, gy, gz);
    ++n_cmds_;
    stamp(p.name());
}

void CommandList::copy(const Buffer& src, const Buffer& dst, uint64_t bytes, uint64_t src_off, uint64_t dst_off) {
    if (n_cmds_ > 0) barrier();
    VkBufferCopy c{src_off, dst_off, bytes};
    vkCmdCopyBuffer(cmd_, src.handle(), dst.handle(), 1, &c);
    ++n_cmds_;
    stamp("copy");
}

void CommandList::submit_and_wait() {
    if (n_cmds_ > 0) {
        // Make the results visible to the host (mapped buffers are read right after the fence).
        VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
        mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
        mb.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
        vkCmdPipelineBarrier(cmd_, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, nullptr, 0, nullptr);
    }
    check(vkEndCommandBuffer(cmd_), "vkEndCommandBuffer");
    VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.commandBufferCount = 1;
    si.pCommandBuffers    = &cmd_;
    check(vkQueueSubmit(dev_.queue_, 1, &si, fence_), "vkQueueSubmit");
    check(vkWaitForFences(dev_.dev_, 1, &fence_, VK_TRUE, UINT64_MAX), "vkWaitForFences");
    check(vkResetFences(dev_.dev_, 1, &fence_), "vkResetFences");
    timings_.clear();
    if (queries_ && !pending_.empty()) {
        std::vector<uint64_t> ts(pending_.size() + 1);
        check(vkGetQueryPoolResults(dev_.dev_, queries_, 0, (uint32_t)ts.size(), ts.size() * 8, ts.data(), 8,
                                    VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT),
              "vkGetQueryPoolResults");
        const uint64_t mask = dev_.info_.timestamp_bits >= 64 ? ~0ull : (1ull << dev_.info_.timestamp_bits) - 1;
        for (size_t i = 0; i < pending_.size(); ++i) {
            Timing t = pending_[i];
            t.seconds = (double)((ts[i + 1] - ts[i]) & mask) * dev_.info_.timestamp_period_ns * 1e-9;
            timings_.push_back(std::move(t));
        }
    }
    for (auto dp : desc_pools_) vkDestroyDescriptorPool(dev_.dev_, dp, nullptr);
    desc_pools_.clear();
    sets_left_ = 0;
    check(vkResetCommandBuffer(cmd_, 0), "vkResetCommandBuffer");
    begin();
}

} // namespace moebius::vk
