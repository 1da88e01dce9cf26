#pragma once
// Vulkan compute runtime: device enumeration and selection, buffers, pipelines from embedded SPIR-V, command
// recording. Compute only (no surfaces, no graphics queue requirement); works on any Vulkan 1.2 device, tested on
// Mesa lavapipe. Every failure throws a moebius::Error subclass (VulkanError carries the VkResult).
#include "engine/core/error.h"

#include <vulkan/vulkan.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moebius::vk {

// A Vulkan call failed; result is its VkResult (VK_ERROR_OUT_OF_DEVICE_MEMORY etc.).
struct VulkanError : Error {
    VulkanError(const std::string& what, VkResult r);
    VkResult result;
};

const char* result_name(VkResult r);

struct MemoryHeap {
    uint64_t size         = 0;
    bool     device_local = false;
};

// What `moebius devices` prints and selection looks at.
struct DeviceInfo {
    int                     index = 0; // position in vkEnumeratePhysicalDevices order
    std::string             name, type, vendor, driver_name, driver_info;
    uint32_t                vendor_id = 0, device_id = 0, api_version = 0, driver_id = 0;
    uint32_t                subgroup_size             = 0;
    uint64_t                max_storage_buffer_range  = 0;
    uint64_t                max_memory_allocation     = 0;
    uint32_t                max_memory_allocation_count = 0; // live VkDeviceMemory objects (as low as 4096)
    uint64_t                min_storage_offset_alignment = 0; // minStorageBufferOffsetAlignment
    uint32_t                max_workgroup_size[3]     = {0, 0, 0};
    uint32_t                max_workgroup_invocations = 0;
    uint32_t                max_workgroup_count[3]    = {0, 0, 0};
    uint32_t                max_shared_memory         = 0;
    uint32_t                max_push_constants        = 0;
    bool                    unified_memory            = false; // every device-local memory type is host-visible
    float                   timestamp_period_ns       = 0;     // one timestamp tick
    uint32_t                timestamp_bits            = 0;     // of the compute queue; 0: no timestamps
    std::vector<MemoryHeap> heaps;
};

std::string api_version_string(uint32_t v);

// The Vulkan instance. Validation layers are enabled only when MOEBIUS_VULKAN_VALIDATION=1 and the layer exists.
class Instance {
  public:
    Instance(); // throws UnsupportedError when there is no loader / no ICD
    ~Instance();
    Instance(const Instance&)            = delete;
    Instance& operator=(const Instance&) = delete;

    VkInstance                    handle() const { return inst_; }
    const std::vector<DeviceInfo>& devices() const { return infos_; }
    VkPhysicalDevice               physical(int index) const { return phys_.at((size_t)index); }
    // The device to use: by `selector` when not empty (a decimal index, or a case-insensitive substring of the
    // name), else the best by type (discrete > integrated > virtual > CPU > other), ties by enumeration order.
    // Throws UnsupportedError when there is no device or nothing matches.
    int select(const std::string& selector = "") const;

  private:
    VkInstance                    inst_ = VK_NULL_HANDLE;
    std::vector<VkPhysicalDevice> phys_;
    std::vector<DeviceInfo>       infos_;
};

class Device;

// One VkDeviceMemory shared by several small buffers (Device::create_buffer), freed with the last of them.
struct MemoryBlock {
    VkDevice       dev  = VK_NULL_HANDLE;
    VkDeviceMemory mem  = VK_NULL_HANDLE;
    void*          map  = nullptr; // the whole block, when host-visible
    uint64_t       size = 0, used = 0;
    ~MemoryBlock();
};

// A storage buffer. Device-local; also mapped when the device is unified (lavapipe, integrated GPUs), else data goes
// through a staging buffer (Device::upload / download). Small buffers are placed in a shared MemoryBlock.
class Buffer {
  public:
    Buffer() = default;
    ~Buffer();
    Buffer(Buffer&& o) noexcept;
    Buffer& operator=(Buffer&& o) noexcept;
    Buffer(const Buffer&)            = delete;
    Buffer& operator=(const Buffer&) = delete;

    VkBuffer handle() const { return buf_; }
    uint64_t size() const { return size_; }
    void*    mapped() const { return map_; } // nullptr unless host-visible
    explicit operator bool() const { return buf_ != VK_NULL_HANDLE; }

  private:
    friend class Device;
    void           release();
    VkDevice       dev_  = VK_NULL_HANDLE;
    VkBuffer       buf_  = VK_NULL_HANDLE;
    VkDeviceMemory mem_  = VK_NULL_HANDLE; // own memory; null when in a block
    uint64_t       size_ = 0;
    void*          map_  = nullptr;
    std::shared_ptr<MemoryBlock> block_;   // the shared memory of a sub-allocated buffer
};

// A compute pipeline: descriptor set layout of `n_bindings` storage buffers (bindings 0..n−1), push constants of
// `push_bytes`, specialization constants ids 0..k−1 (each 32-bit).
class Pipeline {
  public:
    ~Pipeline();
    Pipeline(const Pipeline&)            = delete;
    Pipeline& operator=(const Pipeline&) = delete;

    const std::string& name() const { return name_; }
    uint32_t           n_bindings() const { return n_bindings_; }
    uint32_t           push_bytes() const { return push_bytes_; }
    VkPipeline         handle() const { return pipe_; }
    VkPipelineLayout   layout() const { return layout_; }
    VkDescriptorSetLayout set_layout() const { return set_layout_; }

  private:
    friend class Device;
    Pipeline() = default;
    VkDevice              dev_        = VK_NULL_HANDLE;
    std::string           name_;
    uint32_t              n_bindings_ = 0, push_bytes_ = 0;
    VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
    VkPipelineLayout      layout_     = VK_NULL_HANDLE;
    VkPipeline            pipe_       = VK_NULL_HANDLE;
};

// A binding of a dispatch: the whole buffer, or [offset, offset + range).
struct BufferRef {
    const Buffer* buffer = nullptr;
    uint64_t      offset = 0;
    uint64_t      range  = VK_WHOLE_SIZE;
    BufferRef(const Buffer& b) : buffer(&b) {} // NOLINT: implicit on purpose, dispatch({a, b, c})
    BufferRef(const Buffer& b, uint64_t off, uint64_t len) : buffer(&b), offset(off), range(len) {}
};

// Records several dispatches into one command buffer and submits them at once. Dispatches are ordered: a
// compute→compute memory barrier separates consecutive dispatches (conservative; dependency tracking later).
class CommandList {
  public:
    explicit CommandList(Device& dev);
    ~CommandList();
    CommandList(const CommandList&)            = delete;
    CommandList& operator=(const CommandList&) = delete;

    void dispatch(const Pipeline& p, std::initializer_list<BufferRef> bindings, const void* push, uint32_t push_bytes,
                  uint32_t gx, uint32_t gy = 1, uint32_t gz = 1);
    template <class PC>
    void dispatch(const Pipeline& p, std::initializer_list<BufferRef> bindings, const PC& push, uint32_t gx,
                  uint32_t gy = 1, uint32_t gz = 1) {
        dispatch(p, bindings, &push, (uint32_t)sizeof(PC), gx, gy, gz);
    }
    // buffer copy (transfer), ordered like a dispatch.
    void copy(const Buffer& src, const Buffer& dst, uint64_t bytes, uint64_t src_off = 0, uint64_t dst_off = 0);
    // Submits what was recorded, waits on the fence, and starts a fresh recording.
    void submit_and_wait();
    size_t n_dispatches() const { return n_cmds_; }

    // Timing: with enable_timing() (before recording; ignored when the queue has no timestamps) every command is
    // followed by a timestamp, and after submit_and_wait() timings() holds each command's duration (from the end
    // of the previous one, barrier included), its pipeline name ("copy" for copies) and the bytes it was annotated
    // with. annotate(bytes): the memory the last command must move at least (weights read once, activations), what
    // per-kernel GB/s is computed from; 0 when not annotated.
    struct Timing {
        std::string name;
        double      seconds = 0;
        uint64_t    bytes   = 0;
    };
    bool                       enable_timing();
    void                       annotate(uint64_t bytes);
    void                       label(const std::string& name); // renames the last command's timing
    const std::vector<Timing>& timings() const { return timings_; }

  private:
    void begin();
    void barrier();
    Device&         dev_;
    VkCommandPool   pool_  = VK_NULL_HANDLE;
    VkCommandBuffer cmd_   = VK_NULL_HANDLE;
    VkFence         fence_ = VK_NULL_HANDLE;
    std::vector<VkDescriptorPool> desc_pools_; // grown on demand, reset after each submit
    uint32_t        sets_left_ = 0;
    size_t          n_cmds_    = 0;
    void            stamp(const std::string& name);
    VkQueryPool              queries_ = VK_NULL_HANDLE; // (k_max_timed + 1) timestamps when timing
    std::vector<Timing>      pending_, timings_;        // recorded / of the last submit
    static constexpr uint32_t k_max_timed = 8192;
};

class Device {
  public:
    // Opens the device `Instance::select(selector)` picks. Throws UnsupportedError when there is none.
    // force_staging: use the discrete-GPU path (unmapped buffers + staging copies) even on a unified device, so that
    // lavapipe tests it too.
    explicit Device(const std::string& selector = "", bool force_staging = false);
    ~Device();
    Device(const Device&)            = delete;
    Device& operator=(const Device&) = delete;

    const DeviceInfo& info() const { return info_; }
    VkDevice          handle() const { return dev_; }
    VkQueue           queue() const { return queue_; }
    uint32_t          queue_family() const { return qfam_; }
    // Largest binding a shader may see (maxStorageBufferRange, or less: set_max_binding_bytes) and largest single
    // buffer we allocate.
    uint64_t max_binding_bytes() const { return binding_limit_; }
    // Lowers max_binding_bytes() below the device's limit (0: back to the device's), so that lavapipe exercises the
    // paths of large models (weight sets split over several bindings). For tests; the environment variable
    // MOEBIUS_VULKAN_MAX_BINDING (bytes) sets it when the device is opened.
    void     set_max_binding_bytes(uint64_t bytes);
    // VkDeviceMemory allocations made so far for create_buffer (blocks and dedicated ones; never decremented).
    size_t   n_allocations() const { return n_allocs_; }
    uint64_t max_buffer_bytes() const { return info_.max_memory_allocation; }
    // Workgroup size for the row-reduction kernels: a power of two, a multiple of the subgroup size, ≤ the limit.
    uint32_t reduction_workgroup() const { return wg_; }
    // Whether buffers are reached through staging copies (not host-mapped).
    bool uses_staging() const { return staging_; }

    // A storage buffer of `bytes` (≥ 1). Throws UnsupportedError over max_buffer_bytes(), VulkanError when out of
    // memory. Buffers up to k_small_buffer bytes share k_block_bytes memory blocks (one VkDeviceMemory for many norms
    // and biases: maxMemoryAllocationCount may be 4096), each at a multiple of minStorageBufferOffsetAlignment.
    Buffer create_buffer(uint64_t bytes);
    static constexpr uint64_t k_small_buffer = 256 << 10, k_block_bytes = 16 << 20;
    // Host ↔ buffer copies (direct memcpy when mapped, else through a staging buffer and a transfer).
    void upload(Buffer& dst, const void* src, uint64_t bytes, uint64_t dst_off = 0);
    void download(const Buffer& src, void* dst, uint64_t bytes, uint64_t src_off = 0);
    template <class T> Buffer upload_vector(const std::vector<T>& v) {
        Buffer b = create_buffer(std::max<uint64_t>(4, v.size() * sizeof(T)));
        if (!v.empty()) upload(b, v.data(), v.size() * sizeof(T));
        return b;
    }

    // A 4-byte buffer bound where a shader's optional input is switched off by a specialization constant.
    const Buffer& dummy();

    // Pipelines are built once per (shader, specialization constants) and kept; the VkPipelineCache is shared.
    const Pipeline& pipeline(const std::string& shader, uint32_t n_bindings, uint32_t push_bytes,
                             std::vector<uint32_t> spec = {});

  private:
    friend class CommandList;
    uint32_t find_memory_type(uint32_t type_bits, VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid) const;
    Buffer   allocate(uint64_t bytes, VkBufferUsageFlags usage, bool host_visible);
    Buffer   allocate_small(uint64_t bytes, VkBufferUsageFlags usage);
    Buffer   unbound_buffer(uint64_t bytes, VkBufferUsageFlags usage, VkMemoryRequirements& req);

    std::unique_ptr<Instance>        inst_;
    DeviceInfo                       info_;
    VkPhysicalDevice                 phys_  = VK_NULL_HANDLE;
    VkDevice                         dev_   = VK_NULL_HANDLE;
    VkQueue                          queue_ = VK_NULL_HANDLE;
    uint32_t                         qfam_  = 0;
    uint32_t                         wg_    = 64;
    bool                             staging_ = false;
    uint64_t                         binding_limit_ = 0;
    size_t                           n_allocs_      = 0;
    std::shared_ptr<MemoryBlock>     block_; // the block small buffers go to now
    uint32_t                         block_type_ = 0;
    VkPhysicalDeviceMemoryProperties mem_{};
    VkPipelineCache                  cache_ = VK_NULL_HANDLE;
    Buffer                           dummy_;
    std::map<std::pair<std::string, std::vector<uint32_t>>, std::unique_ptr<Pipeline>> pipelines_;
};

} // namespace moebius::vk
