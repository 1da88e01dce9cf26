#include "quantizer/format/checkpoint_writer.h"

#include "engine/core/atomic_file.h"
#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "engine/core/weight_store.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

namespace moebius::quant {

namespace {

struct Owned {
    std::string          name;
    DType                dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
};

std::vector<uint8_t> encode_f32(const std::vector<float>& w, DType dt) {
    std::vector<uint8_t> b;
    if (dt == DType::F32) {
        b.resize(w.size() * 4);
        std::memcpy(b.data(), w.data(), b.size());
    } else if (dt == DType::BF16 || dt == DType::F16) {
        b.resize(w.size() * 2);
        for (size_t i = 0; i < w.size(); ++i) {
            uint16_t h = dt == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
            std::memcpy(b.data() + 2 * i, &h, 2);
        }
    } else {
        throw InputError("dequantized export supports bf16, f16 and f32");
    }
    return b;
}

} // namespace

WriteReport write_checkpoint(const Model& model, const std::filesystem::path& src_dir, const std::filesystem::path& out,
                             const WriteOptions& opt, const ProgressFn& progress) {
    namespace fs = std::filesystem;
    const ModelSpec& spec  = model.spec();
    WeightStore      store = WeightStore::open(src_dir);
    AtomicDir        dir(out, opt.force);
    WriteReport      rep;

    // Every decoder linear of the model, by module name.
    std::vector<std::pair<std::string, const Linear*>> modules;
    for (int il = 0; il < spec.n_layer; ++il) {
        if (!model.layer_loaded(il)) throw Error("write_checkpoint: layer " + std::to_string(il) + " is not loaded");
        model.layer(il).for_each_linear([&](LinearKind kind, int e, const std::unique_ptr<Linear>& slot) {
            modules.emplace_back(spec.linear_name(il, kind, e), slot.get());
        });
    }
    // Source tensors that belong to a linear module: replaced by what is produced below (a source may itself be a
    // packed checkpoint, so every side-tensor suffix of every format counts).
    std::set<std::string> module_names;
    for (const auto& [m, _] : modules) module_names.insert(m);
    auto owned = [&](const std::string& name) {
        const auto dot = name.rfind('.');
        return dot != std::string::npos && name.compare(dot, std::string::npos, ".bias") != 0 &&
               module_names.count(name.substr(0, dot)) > 0;
    };

    std::vector<Owned>     produced;
    nlohmann::ordered_json qmodules = nlohmann::ordered_json::object();
    for (size_t i = 0; i < modules.size(); ++i) {
        if (i % 64 == 0) report_progress(progress, 0.8 * i / modules.size(), "writing " + modules[i].first);
        const auto& [name, lin] = modules[i];
        const int64_t out_f = lin->out_features(), in_f = lin->in_features();
        const bool    dense = dynamic_cast<const DenseLinear*>(lin) != nullptr;
        if (!dense && !opt.dequantized) {
            auto parts = lin->packed_tensors();
            if (parts.empty())
                throw UnsupportedError("cannot write module " + name + " of format '" + lin->format() + "'");
            for (const auto& p : parts) {
                produced.push_back({name + p.suffix, p.dtype, p.shape, {p.bytes.begin(), p.bytes.end()}});
                rep.quantized_bytes += (int64_t)p.bytes.size();
            }
            rep.quantized_weights += out_f * in_f;
            qmodules[name] = lin->packed_config();
        } else if (dense && store.has(name + ".weight")) {
            continue; // unchanged dense weight: copied from the source below
        } else {
            DType dt = opt.dequantized ? opt.dtype : DType::F32;
            produced.push_back({name + ".weight", dt, {out_f, in_f}, encode_f32(lin->dequantize(), dt)});
        }
    }

    // Dense, unchanged weights are copied from the source byte for byte; every other tensor of a linear module is
    // replaced by what was produced above.
    std::set<std::string> keep;
    for (const auto& [m, lin] : modules)
        if (dynamic_cast<const DenseLinear*>(lin) && store.has(m + ".weight")) keep.insert(m + ".weight");
    std::vector<TensorToWrite> tensors;
    for (const auto& name : store.names()) {
        if (owned(name) && !keep.count(name)) continue;
        const TensorInfo& ti = store.info(name);
        tensors.push_back({name, ti.dtype, ti.shape, {ti.data, ti.nbytes}});
    }
    for (const auto& o : produced) tensors.push_back({o.name, o.dtype, o.shape, o.bytes});
    for (const auto& t : tensors) rep.bytes_total += t.data.size();
    std::map<std::string, std::string> meta{{"format", "pt"}, {"producer", std::string("moebius ") + MOEBIUS_VERSION}};
    if (opt.max_shard_bytes <= 0) throw InputError("the maximum shard size must be positive");
    if (rep.bytes_total <= opt.max_shard_bytes) {
        report_progress(progress, 0.85, "writing model.safetensors");
        write_safetensors(dir.temp_path() / "model.safetensors", tensors, meta);
    } else {
        // Greedy in name order (the order safetensors files list tensors in), so related tensors stay together.
        std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
        std::vector<std::vector<TensorToWrite>> shards(1);
        int64_t                                 cur = 0;
        for (auto& t : tensors) {
            if (cur > 0 && cur + (int64_t)t.data.size() > opt.max_shard_bytes) {
                shards.emplace_back();
                cur = 0;
            }
            shards.back().push_back(t);
            cur += (int64_t)t.data.size();
        }
        const int              n = (int)shards.size();
        nlohmann::ordered_json index;
        index["metadata"]   = {{"total_size", rep.bytes_total}};
        index["weight_map"] = nlohmann::ordered_json::object();
        for (int i = 0; i < n; ++i) {
            char name[64];
            std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1, n);
            report_progress(progress, 0.85 + 0.1 * i / n, std::string("writing ") + name);
            write_safetensors(dir.temp_path() / name, shards[i], meta);
            for (const auto& t : shards[i]) index["weight_map"][t.name] = name;
        }
        write_file_atomic(dir.temp_path() / "model.safetensors.index.json", index.dump(2));
        rep.shards = n;
    }

    // config.json: the source's, with quantization_config set (packed) or removed (dequantized / nothing quantized).
    nlohmann::ordered_json cfg;
    {
        std::ifstream f(src_dir / "config.json");
        cfg = nlohmann::ordered_json::parse(f);
    }
    cfg.erase("quantization_config");
    if (!opt.dequantized && !qmodules.empty()) {
        nlohmann::ordered_json q = opt.quantization;
        q["quant_method"]        = "moebius";
        q["format_version"]      = 1;
        q["tool"]                = std::string("moebius ") + MOEBIUS_VERSION;
        q["modules"]             = qmodules;
        cfg["quantization_config"] = q;
    }
    if (opt.dequantized) cfg["torch_dtype"] = std::string(opt.dtype == DType::F32 ? "float32" : opt.dtype == DType::F16 ? "float16" : "bfloat16");
    write_file_atomic(dir.temp_path() / "config.json", cfg.dump(2));
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
                          "special_tokens_map.json"})
        if (fs::exists(src_dir / f)) fs::copy_file(src_dir / f, dir.temp_path() / f);
    report_progress(progress, 1.0, "done");
    dir.commit();
    return rep;
}

} // namespace moebius::quant
