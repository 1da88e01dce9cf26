#include "engine/core/weight_store.h"

#include "engine/core/error.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

namespace fs = std::filesystem;
using nlohmann::json;

namespace moebius {

namespace {

json read_index(const fs::path& index) {
    std::ifstream in(index, std::ios::binary);
    if (!in)
        throw NotFoundError(index.string() + ": cannot open");
    std::ostringstream ss;
    ss << in.rdbuf();
    try {
        return json::parse(ss.str());
    } catch (const json::exception& e) {
        throw FormatError(index.string() + ": not valid JSON: " + e.what());
    }
}

// Shard names come from a downloaded file: keep them inside the checkpoint directory.
bool is_safe_shard_name(const std::string& s) {
    if (s.empty())
        return false;
    fs::path p(s);
    if (p.is_absolute())
        return false;
    for (const auto& part : p)
        if (part == "..")
            return false;
    return true;
}

} // namespace

WeightStore::~WeightStore() = default;

WeightStore WeightStore::open(const fs::path& dir_or_file) {
    WeightStore     ws;
    std::error_code ec;
    auto            status = fs::status(dir_or_file, ec);
    if (!fs::exists(status))
        throw NotFoundError(dir_or_file.string() + ": no such file or directory");

    if (!fs::is_directory(status)) {
        ws.root_ = dir_or_file;
        ws.files_.push_back(SafetensorsFile::open(dir_or_file));
        for (const auto& [name, info] : ws.files_.back()->tensors())
            ws.index_.emplace(name, &info);
        return ws;
    }

    ws.root_        = dir_or_file;
    fs::path index  = dir_or_file / "model.safetensors.index.json";
    fs::path single = dir_or_file / "model.safetensors";
    if (!fs::exists(index)) {
        if (!fs::exists(single))
            throw NotFoundError(dir_or_file.string() +
                                ": no model.safetensors or model.safetensors.index.json in directory");
        ws.files_.push_back(SafetensorsFile::open(single));
        for (const auto& [name, info] : ws.files_.back()->tensors())
            ws.index_.emplace(name, &info);
        return ws;
    }

    json j = read_index(index);
    if (!j.is_object())
        throw FormatError(index.string() + ": not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object())
        throw FormatError(index.string() + ": missing or non-object weight_map");

    // Group tensors by shard (std::map: shards open in name order, each once).
    std::map<std::string, std::vector<std::string>> by_shard;
    for (auto& [tensor, shard] : wm->items()) {
        if (!shard.is_string())
            throw FormatError(index.string() + ": weight_map entry is not a string, tensor '" + tensor + "'");
        std::string s = shard.get<std::string>();
        if (!is_safe_shard_name(s))
            throw FormatError(index.string() + ": invalid shard name '" + s + "', tensor '" + tensor + "'");
        by_shard[s].push_back(tensor);
    }
    for (const auto& [shard, tensors] : by_shard) {
        fs::path path = dir_or_file / shard;
        if (!fs::is_regular_file(path))
            throw NotFoundError(index.string() + ": shard '" + shard + "' listed in weight_map does not exist (" +
                                path.string() + ")");
        ws.files_.push_back(SafetensorsFile::open(path));
        const SafetensorsFile& f = *ws.files_.back();
        for (const std::string& t : tensors) {
            const TensorInfo* info = f.find(t);
            if (!info)
                throw FormatError(index.string() + ": weight_map says tensor '" + t + "' is in shard '" + shard +
                                  "', but " + path.string() + " does not contain it");
            ws.index_.emplace(t, info);
        }
    }
    return ws;
}

const TensorInfo* WeightStore::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : it->second;
}

bool WeightStore::has(const std::string& name) const {
    return index_.count(name) != 0;
}

const TensorInfo& WeightStore::info(const std::string& name) const {
    const TensorInfo* i = find(name);
    if (!i)
        throw NotFoundError(root_.string() + ": missing tensor '" + name + "'");
    return *i;
}

std::vector<std::string> WeightStore::names() const {
    std::vector<std::string> out;
    out.reserve(index_.size());
    for (const auto& [name, info] : index_)
        out.push_back(name);
    std::sort(out.begin(), out.end());
    return out;
}

void WeightStore::to_f32(const std::string& name, float* dst) const {
    const TensorInfo& i = info(name);
    if (!dtype_is_float(i.dtype))
        throw UnsupportedError(i.file.string() + ": tensor '" + name + "' has dtype " +
                               std::string(dtype_name(i.dtype)) + ", which does not convert to F32");
    convert_to_f32(i.dtype, i.data, dst, size_t(i.numel()));
}

std::vector<float> WeightStore::to_f32(const std::string& name) const {
    std::vector<float> out(size_t(info(name).numel()));
    to_f32(name, out.data());
    return out;
}

size_t WeightStore::total_bytes() const {
    size_t total = 0;
    for (const auto& [name, info] : index_)
        total += info->nbytes;
    return total;
}

} // namespace moebius
