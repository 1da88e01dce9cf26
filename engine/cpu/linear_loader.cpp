#include "engine/cpu/linear_loader.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/core/weight_store.h"
#include "engine/cpu/binary_linear.h"
#include "engine/cpu/cejd_linear.h"
#include "engine/cpu/kbvq_linear.h"
#include "engine/cpu/nbit_linear.h"
#include "engine/cpu/vq_linear.h"

#include <cstdint>
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
    if (ti.nbytes) std::memcpy(v.data(), ti.data, ti.nbytes); // zero-size tensors exist (a binary .signs2)
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

namespace {
std::unique_ptr<Linear> load_packed_linear(const WeightStore& store, const std::string& cfg, const std::string& module,
                                           int out, int in, const nlohmann::json* q, SharedParts* shared);
}

std::shared_ptr<const void> SharedParts::get(const std::string& key,
                                             const std::function<std::shared_ptr<const void>()>& make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto                        it = parts_.find(key);
    if (it == parts_.end()) it = parts_.emplace(key, make()).first;
    return it->second;
}

std::unique_ptr<Linear> load_linear(const WeightStore& store, const ModelSpec& spec, const std::string& module, int out,
                                    int in, SharedParts* shared) {
    const nlohmann::json* q = nullptr;
    if (!spec.quantization.is_null()) {
        const auto& mods = spec.quantization["modules"];
        if (auto it = mods.find(module); it != mods.end()) q = &*it;
    }
    if (!q) {
        return std::make_unique<DenseLinear>(in, out, load_f32_checked(store, module + ".weight", {out, in}));
    }
    return load_packed_linear(store, (spec.dir / "config.json").string(), module, out, in, q, shared);
}

namespace {

// A packed linear of `module` from its quantization_config entry q (cfg: the config file, for messages). Nested formats
// (cejd's residual and factors) come back here with their own entries and tensor prefixes.
std::unique_ptr<Linear> load_packed_linear(const WeightStore& store, const std::string& cfg, const std::string& module,
                                           int out, int in, const nlohmann::json* q, SharedParts* shared) {
    // A group-shared part through the cache when there is one, else read for this module alone.
    auto group_part = [&](const std::string& key, const std::function<std::shared_ptr<const void>()>& make) {
        return shared ? shared->get(key, make) : make();
    };
    auto bad = [&](const std::string& m) { throw FormatError(cfg + ": quantization_config.modules['" + module + "']: " + m); };
    if (!q->is_object() || !q->contains("format") || !(*q)["format"].is_string()) bad("missing \"format\"");
    const std::string format = (*q)["format"];
    auto get_int = [&](const char* k) {
        if (!q->contains(k) || !(*q)[k].is_number_integer()) bad(std::string("missing integer \"") + k + "\"");
        const auto v = (*q)[k].get<int64_t>();
        if (v < INT32_MIN || v > INT32_MAX) bad(std::string("\"") + k + "\" out of range");
        return (int)v;
    };
    auto get_bool = [&](const char* k) {
        if (!q->contains(k) || !(*q)[k].is_boolean()) bad(std::string("missing boolean \"") + k + "\"");
        return (*q)[k].get<bool>();
    };
    if (format == "nbit") {
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
    if (format == "binary") {
        BinaryPacked p;
        p.block          = get_int("block_size");
        p.salient_groups = get_int("salient_groups");
        p.has_mean       = get_bool("mean");
        p.has_col_scale  = get_bool("col_scale");
        if (p.block <= 0 || in % p.block) bad("block_size must divide the input size " + std::to_string(in));
        if (p.salient_groups < 0 || p.salient_groups > 2) bad("salient_groups must be 0, 1 or 2");
        const int64_t rb = BinaryLinear::bit_bytes(in), nb = in / p.block, ng = 2 + p.salient_groups,
                      ns = 2 + 2 * p.salient_groups;
        p.salient = copy_as<uint8_t>(side(store, module + ".salient", DType::U8, {rb}));
        // The second sign plane's width follows from the bitmap just read.
        const int64_t rb2 = BinaryLinear::bit_bytes(BinaryLinear::count_salient(p.salient, in));
        p.split      = copy_as<uint8_t>(side(store, module + ".split", DType::U8, {out, rb}));
        p.signs      = copy_as<uint8_t>(side(store, module + ".signs", DType::U8, {out, rb}));
        p.signs2     = copy_as<uint8_t>(side(store, module + ".signs2", DType::U8, {out, rb2}));
        p.row_scales = copy_as<uint16_t>(side(store, module + ".row_scales", DType::F16, {out, nb, ns}));
        if (p.has_mean) p.row_means = copy_as<uint16_t>(side(store, module + ".row_means", DType::F16, {out, nb, ng}));
        if (p.has_col_scale)
            p.col_scales = copy_as<uint16_t>(side(store, module + ".col_scales", DType::F16, {in, ns}));
        try {
            return std::make_unique<BinaryLinear>(in, out, std::move(p));
        } catch (const FormatError& e) {
            bad(e.what());
        }
    }
    // (n_codebooks, K, D) of a vq layout, as stored.
    auto codebook_shape = [&](const VqPacked& p) -> std::vector<int64_t> {
        return {(int64_t)((out + p.rows_per_codebook - 1) / p.rows_per_codebook) * (in / p.group_cols),
                (int64_t)1 << (p.bits * p.dim), p.dim};
    };
    auto read_vq = [&](bool with_codebooks) {
        VqPacked p;
        p.dim               = get_int("dim");
        p.bits              = get_int("bits");
        p.group_cols        = get_int("group_cols");
        p.rows_per_codebook = get_int("rows_per_codebook");
        const bool scaled   = get_bool("scales");
        if (p.dim != 1 && p.dim != 2 && p.dim != 4) bad("dim must be 1, 2 or 4");
        if (p.bits < 1 || p.bits * p.dim > 16) bad("bits·dim must be in 1..16 (at most 65536 centroids)");
        if (p.group_cols <= 0 || p.group_cols % p.dim || in % p.group_cols)
            bad("group_cols must be a multiple of dim dividing the input size " + std::to_string(in));
        if (p.rows_per_codebook <= 0) bad("rows_per_codebook must be positive");
        // Optional key: absent means f16 codebooks (checkpoints written before 8-bit codebooks).
        p.codebook_bits = q->contains("codebook_bits") ? get_int("codebook_bits") : 16;
        if (p.codebook_bits != 8 && p.codebook_bits != 16) bad("codebook_bits must be 8 or 16");
        if (p.codebook_bits == 8 && !with_codebooks) bad("shared codebooks are f16; codebook_bits must be 16");
        p.codes     = copy_as<uint8_t>(side(store, module + ".vq_codes", DType::U8,
                                            {out, VqLinear::row_bytes(in, p.dim, p.bits)}));
        if (with_codebooks && p.codebook_bits == 8) {
            const std::vector<int64_t> shape = codebook_shape(p);
            p.codebooks_i8    = copy_as<int8_t>(side(store, module + ".vq_codebooks", DType::I8, shape));
            p.codebook_scales = copy_as<uint16_t>(side(store, module + ".vq_codebook_scales", DType::F16, {shape[0]}));
        } else if (with_codebooks) {
            p.codebooks = copy_as<uint16_t>(side(store, module + ".vq_codebooks", DType::F16, codebook_shape(p)));
        }
        if (scaled) p.scales = copy_as<uint16_t>(side(store, module + ".vq_scales", DType::F16, {out}));
        return p;
    };
    if (format == "vq") {
        VqPacked p = read_vq(true);
        try {
            return std::make_unique<VqLinear>(in, out, std::move(p));
        } catch (const FormatError& e) {
            bad(e.what());
        }
    }
    if (format == "kbvq") {
        // Routed-expert group member: own residual + coefficients; the group's basis, γ and β live with the owner.
        KbvqPacked p;
        // Optional key: checkpoints written before codebooks could be shared lack it.
        const bool shared_cb = q->contains("shared_codebooks") ? get_bool("shared_codebooks") : false;
        p.vq   = read_vq(!shared_cb);
        p.rank = get_int("rank");
        const bool biased = get_bool("bias");
        // Optional key (absent in older checkpoints, which always store γ): false means γ = 1, not stored.
        const bool scaled_rows = q->contains("gamma") ? get_bool("gamma") : true;
        if (!q->contains("shared") || !(*q)["shared"].is_string()) bad("missing string \"shared\"");
        p.owner    = (*q)["shared"].get<std::string>();
        p.is_owner = p.owner == module;
        if (p.rank < 0 || p.rank > std::min(out, in)) bad("rank must be in 0..min(out, in)");
        p.coef        = copy_as<int8_t>(side(store, module + ".kbvq_coef", DType::I8, {p.rank, in}));
        p.coef_scales = copy_as<uint16_t>(side(store, module + ".kbvq_coef_scales", DType::F16, {p.rank}));
        const std::vector<int64_t> cb_shape = codebook_shape(p.vq);
        const std::string key = p.owner + ".kbvq|" + std::to_string(out) + "|" + std::to_string(p.rank) + "|" +
                                std::to_string(biased) + "|" + std::to_string(scaled_rows) + "|" +
                                (shared_cb ? std::to_string(cb_shape[0]) + "," + std::to_string(cb_shape[1]) + "," +
                                                 std::to_string(cb_shape[2])
                                           : "own");
        auto sh = std::static_pointer_cast<const KbvqShared>(group_part(key, [&]() -> std::shared_ptr<const void> {
            auto s    = std::make_shared<KbvqShared>();
            s->rank   = p.rank;
            auto f16s = [&](const std::string& n, std::vector<int64_t> shape) {
                std::vector<float> v;
                for (uint16_t h : copy_as<uint16_t>(side(store, p.owner + n, DType::F16, std::move(shape))))
                    v.push_back(f16_to_f32(h));
                return v;
            };
            s->basis = f16s(".kbvq_basis", {out, p.rank});
            s->gamma = scaled_rows ? f16s(".kbvq_gamma", {out}) : std::vector<float>(out, 1.0f);
            if (biased) s->beta = f16s(".kbvq_beta", {out});
            if (shared_cb) s->codebooks = f16s(".kbvq_codebooks", cb_shape);
            return s;
        }));
        if (shared_cb)
            for (float v : sh->codebooks) p.vq.codebooks.push_back(f32_to_f16(v));
        try {
            return std::make_unique<KbvqLinear>(in, out, std::move(p), std::move(sh));
        } catch (const FormatError& e) {
            bad(e.what());
        }
    }
    if (format == "cejd") {
        const int rank = get_int("rank");
        if (rank <= 0) bad("rank must be positive");
        if (!q->contains("side") || !(*q)["side"].is_string() || ((*q)["side"] != "input" && (*q)["side"] != "output"))
            bad("\"side\" must be \"input\" or \"output\"");
        if (!q->contains("owner") || !(*q)["owner"].is_string()) bad("missing string \"owner\"");
        const bool        input_side = (*q)["side"] == "input";
        const std::string owner      = (*q)["owner"];
        auto part = [&](const char* key, const std::string& prefix, int o, int i) -> std::unique_ptr<Linear> {
            if (!q->contains(key) || !(*q)[key].is_object()) bad(std::string("missing object \"") + key + "\"");
            const nlohmann::json& sub = (*q)[key];
            if (sub.value("format", "") == "cejd") bad(std::string("\"") + key + "\" cannot be cejd again");
            return load_packed_linear(store, cfg, prefix, o, i, &sub, nullptr);
        };
        auto residual = part("residual", module, out, in);
        auto coef     = input_side ? part("coef", module + ".cejd_coef", out, rank) : part("coef", module + ".cejd_coef", rank, in);
        const std::string key = owner + ".cejd_basis|" + (input_side ? "in|" : "out|") + std::to_string(out) + "|" +
                                std::to_string(in) + "|" + std::to_string(rank);
        auto basis = std::static_pointer_cast<const Linear>(group_part(key, [&]() -> std::shared_ptr<const void> {
            return std::shared_ptr<const Linear>(input_side ? part("basis", owner + ".cejd_basis", rank, in)
                                                            : part("basis", owner + ".cejd_basis", out, rank));
        }));
        try {
            return std::make_unique<CejdLinear>(std::move(residual), std::move(coef), std::move(basis), input_side, owner,
                                                owner == module);
        } catch (const InputError& e) {
            bad(e.what());
        }
    }
    bad("unknown format '" + format + "'");
    return nullptr;
}

} // namespace

} // namespace moebius
