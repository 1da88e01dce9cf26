#include "quantizer/format/checkpoint_writer.h"

#include "engine/core/atomic_file.h"
#include "engine/core/error.h"
#include "engine/core/safetensors.h"
#include "engine/core/weight_store.h"

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
        const auto& L = model.layer(il);
        for (int k = 0; k < (int)LinearKind::Count; ++k) {
            auto kind = (LinearKind)k;
            bool per_expert = kind == LinearKind::ExpertGate || kind == LinearKind::ExpertUp || kind == LinearKind::ExpertDown;
            for (int e = 0; e < (per_expert ? (int)L.experts.size() : 1); ++e) {
                const auto& slot = L.slot(kind, per_expert ? e : -1);
                if (slot) modules.emplace_back(spec.linear_name(il, kind, per_expert ? e : -1), slot.get());
            }
        }
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
    report_progress(progress, 0.85, "writing model.safetensors");
    std::map<std::string, std::string> meta{{"format", "pt"}, {"producer", std::string("moebius ") + MOEBIUS_VERSION}};
    write_safetensors(dir.temp_path() / "model.safetensors", tensors, meta);

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
