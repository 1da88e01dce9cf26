#include "engine/cpu/linear_loader.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/nbit_linear.h"

#include <cstring>

namespace moebius {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

// A side tensor with the expected dtype and shape, as raw bytes.
const TensorInfo& side(const WeightStore& store, const std::string& name, DType dtype, std::vector<int64_t> shape) {
    const TensorInfo& ti = store.info(name);
    if (ti.dtype != dtype || ti.shape != shape)
        throw FormatError(ti.file.string() + ": tensor '" + name + "' is " + std::string(dtype_name(ti.dtype)) + " " +
                          shape_str(ti.shape) + ", the quantization_config implies " + std::string(dtype_name(dtype)) +
                          " " + shape_str(shape));
    return ti;
}

template <class T> std::vector<T> copy_as(const TensorInfo& ti) {
    std::vector<T> v(ti.nbytes / sizeof(T));
    std::memcpy(v.data(), ti.data, ti.nbytes);
    return v;
}

} // namespace

std::vector<float> load_f32_checked(const WeightStore& store, const std::string& name, const std::vector<int64_t>& shape) {
    const TensorInfo& ti = store.info(name);
    if (ti.shape != shape)
        throw FormatError(ti.file.string() + ": tensor '" + name + "' has shape " + shape_str(ti.shape) +
                          ", but config.json implies " + shape_str(shape));
    return store.to_f32(name);
}

std::unique_ptr<Linear> load_linear(const WeightStore& store, const ModelSpec& spec, const std::string& module, int out,
                                    int in) {
    const nlohmann::json* q = nullptr;
    if (!spec.quantization.is_null()) {
        const auto& mods = spec.quantization["modules"];
        if (auto it = mods.find(module); it != mods.end()) q = &*it;
    }
    if (!q) {
        return std::make_unique<DenseLinear>(in, out, load_f32_checked(store, module + ".weight", {out, in}));
    }
    const std::string cfg = (spec.dir / "config.json").string();
    auto bad = [&](const std::string& m) { throw FormatError(cfg + ": quantization_config.modules['" + module + "']: " + m); };
    if (!q->is_object() || !q->contains("format") || !(*q)["format"].is_string()) bad("missing \"format\"");
    const std::string format = (*q)["format"];
    if (format == "nbit") {
        auto get_int = [&](const char* k) {
            if (!q->contains(k) || !(*q)[k].is_number_integer()) bad(std::string("missing integer \"") + k + "\"");
            return (*q)[k].get<int>();
        };
        const int bits = get_int("bits"), group = get_int("group_size");
        if (bits < 1 || bits > 8) bad("bits must be 1..8");
        if (group <= 0 || in % group) bad("group_size must divide the input size " + std::to_string(in));
        const int64_t ng = in / group;
        auto packed = copy_as<uint8_t>(side(store, module + ".qweight", DType::U8, {out, NbitLinear::row_bytes(in, bits)}));
        auto scales = copy_as<uint16_t>(side(store, module + ".scales", DType::F16, {out, ng}));
        auto zeros  = copy_as<uint8_t>(side(store, module + ".zeros", DType::U8, {out, ng}));
        try {
            return std::make_unique<NbitLinear>(in, out, bits, group, std::move(packed), std::move(scales), std::move(zeros));
        } catch (const FormatError& e) {
            bad(e.what());
        }
    }
    bad("unknown format '" + format + "'");
    return nullptr;
}

} // namespace moebius
