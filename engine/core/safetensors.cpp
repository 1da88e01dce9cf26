#include "engine/core/safetensors.h"

#include "engine/core/atomic_file.h"
#include "engine/core/error.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace moebius {

int64_t TensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
        n *= d;
    return n;
}

namespace {

[[noreturn]] void fail(const fs::path& file, const std::string& problem, const std::string& tensor = {}) {
    std::string msg = file.string() + ": " + problem;
    if (!tensor.empty())
        msg += ", tensor '" + tensor + "'";
    throw FormatError(msg);
}

// nlohmann keeps the last of duplicate keys silently; a parse callback sees every key, so track one key set per open
// object and remember the first duplicate.
struct DuplicateKeyFinder {
    std::vector<std::set<std::string>> stack;
    std::string                        duplicate;
    bool                               found = false;

    bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
        switch (event) {
        case json::parse_event_t::object_start:
            stack.emplace_back();
            break;
        case json::parse_event_t::object_end:
            if (!stack.empty())
                stack.pop_back();
            break;
        case json::parse_event_t::key:
            if (!stack.empty() && parsed.is_string() && !stack.back().insert(parsed.get<std::string>()).second &&
                !found) {
                found     = true;
                duplicate = parsed.get<std::string>();
            }
            break;
        default:
            break;
        }
        return true;
    }
};

bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
    return !__builtin_mul_overflow(a, b, &out);
}

uint64_t read_u64_le(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = (v << 8) | p[i];
    return v;
}

} // namespace

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& file) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR)
            throw NotFoundError(file.string() + ": no such file");
        throw Error(file.string() + ": cannot open: " + std::strerror(err));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        throw Error(file.string() + ": cannot stat: " + std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        fail(file, "not a regular file");
    }
    std::unique_ptr<SafetensorsFile> f(new SafetensorsFile);
    f->path_ = file;
    f->size_ = size_t(st.st_size);
    if (f->size_ < 8) {
        ::close(fd);
        fail(file, "file too small for a safetensors header (" + std::to_string(f->size_) + " bytes)");
    }
    // MAP_PRIVATE|PROT_READ: pages are loaded lazily, so opening never reads tensor data.
    void* m   = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    int   err = errno;
    ::close(fd); // the mapping keeps the file alive
    if (m == MAP_FAILED)
        throw Error(file.string() + ": mmap failed: " + std::strerror(err));
    f->map_ = m;

    const uint8_t* base = static_cast<const uint8_t*>(m);
    uint64_t       n    = read_u64_le(base);
    if (n > safetensors_max_header)
        fail(file, "header length " + std::to_string(n) + " exceeds the 100 MiB limit");
    if (n > f->size_ - 8)
        fail(file, "header length " + std::to_string(n) + " runs past the end of the file (" +
                       std::to_string(f->size_) + " bytes)");
    if (n == 0 || base[8] != '{')
        fail(file, "header is not a JSON object");
    const char* hdr = reinterpret_cast<const char*>(base + 8);
    // nlohmann stops at a NUL as if the input ended, which would accept "{}\0<garbage>"; the reference parser rejects
    // it.
    if (std::memchr(hdr, 0, n))
        fail(file, "header is not valid JSON: contains a NUL byte");

    DuplicateKeyFinder dups;
    json               j;
    try {
        j = json::parse(hdr, hdr + n, std::ref(dups));
    } catch (const json::exception& e) {
        fail(file, std::string("header is not valid JSON: ") + e.what());
    }
    if (!j.is_object())
        fail(file, "header is not a JSON object");
    if (dups.found)
        fail(file, "duplicate key '" + dups.duplicate + "' in header");

    const uint64_t data_len = f->size_ - 8 - n;
    const uint8_t* data     = base + 8 + n;
    struct Range {
        uint64_t           begin, end;
        const std::string* name;
    };
    std::vector<Range> ranges;
    ranges.reserve(j.size());

    for (auto& [name, entry] : j.items()) {
        if (name == "__metadata__") {
            if (!entry.is_object())
                fail(file, "__metadata__ is not an object");
            for (auto& [k, v] : entry.items()) {
                if (!v.is_string())
                    fail(file, "__metadata__ value for '" + k + "' is not a string");
                f->metadata_[k] = v.get<std::string>();
            }
            continue;
        }
        if (!entry.is_object())
            fail(file, "entry is not an object", name);
        auto dt = entry.find("dtype");
        if (dt == entry.end() || !dt->is_string())
            fail(file, "missing or non-string dtype", name);
        auto dtype = dtype_from_name(dt->get<std::string>());
        if (!dtype)
            fail(file, "unknown dtype '" + dt->get<std::string>() + "'", name);

        auto sh = entry.find("shape");
        if (sh == entry.end() || !sh->is_array())
            fail(file, "missing or non-array shape", name);
        TensorInfo info;
        info.name      = name;
        info.dtype     = *dtype;
        info.file      = file;
        uint64_t numel = 1;
        for (const auto& d : *sh) {
            if (!d.is_number_integer())
                fail(file, "shape has a non-integer dimension", name);
            if (d.is_number_unsigned()) {
                uint64_t u = d.get<uint64_t>();
                if (u > uint64_t(INT64_MAX))
                    fail(file, "shape dimension too large", name);
                info.shape.push_back(int64_t(u));
            } else {
                int64_t v = d.get<int64_t>();
                if (v < 0)
                    fail(file, "shape has a negative dimension", name);
                info.shape.push_back(v);
            }
            if (!checked_mul(numel, uint64_t(info.shape.back()), numel))
                fail(file, "shape overflows", name);
        }
        uint64_t expected = 0;
        if (!checked_mul(numel, dtype_size(*dtype), expected))
            fail(file, "tensor size overflows", name);

        auto off = entry.find("data_offsets");
        if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
            !(*off)[1].is_number_unsigned())
            fail(file, "data_offsets must be two non-negative integers", name);
        uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
        if (e < b)
            fail(file, "data_offsets end before begin", name);
        if (e - b != expected)
            fail(file,
                 "data_offsets span " + std::to_string(e - b) + " bytes but shape x dtype needs " +
                     std::to_string(expected),
                 name);
        if (e > data_len)
            fail(file,
                 "data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                     "] out of range of the data buffer (" + std::to_string(data_len) + " bytes; file truncated?)",
                 name);
        info.data           = data + b;
        info.nbytes         = size_t(expected);
        auto [it, inserted] = f->tensors_.emplace(name, std::move(info));
        MOEBIUS_ASSERT(inserted); // duplicates were rejected above
        if (e > b)
            ranges.push_back({b, e, &it->first});
    }

    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    for (size_t i = 1; i < ranges.size(); ++i) {
        if (ranges[i].begin < ranges[i - 1].end)
            fail(file, "data_offsets overlap with tensor '" + *ranges[i - 1].name + "'", *ranges[i].name);
    }
    return f;
}

void SafetensorsFile::release_resident_pages() const {
    if (map_) ::madvise(map_, size_, MADV_DONTNEED);
}

SafetensorsFile::~SafetensorsFile() {
    if (map_)
        ::munmap(map_, size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

namespace {

std::vector<const TensorToWrite*> sorted_for_write(const std::vector<TensorToWrite>& tensors) {
    std::vector<const TensorToWrite*> order;
    order.reserve(tensors.size());
    for (const auto& t : tensors)
        order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->name < b->name; });
    for (size_t i = 0; i < order.size(); ++i) {
        const TensorToWrite& t = *order[i];
        if (t.name == "__metadata__")
            throw InputError("safetensors: '__metadata__' is not a valid tensor name");
        if (i > 0 && order[i - 1]->name == t.name)
            throw InputError("safetensors: duplicate tensor '" + t.name + "'");
        uint64_t numel = 1;
        for (int64_t d : t.shape) {
            if (d < 0)
                throw InputError("safetensors: negative dimension in tensor '" + t.name + "'");
            numel *= uint64_t(d);
        }
        if (numel * dtype_size(t.dtype) != t.data.size())
            throw InputError("safetensors: tensor '" + t.name + "' has " + std::to_string(t.data.size()) +
                             " bytes, shape x dtype needs " + std::to_string(numel * dtype_size(t.dtype)));
    }
    return order;
}

std::string header_for(const std::vector<const TensorToWrite*>&  order,
                       const std::map<std::string, std::string>& metadata) {
    // Written by hand (not via a json object) to keep __metadata__ first and the tensors in name order.
    std::string js    = "{";
    bool        first = true;
    if (!metadata.empty()) {
        js += "\"__metadata__\":" + json(metadata).dump();
        first = false;
    }
    uint64_t offset = 0;
    for (const TensorToWrite* t : order) {
        if (!first)
            js += ',';
        first      = false;
        json shape = json::array();
        for (int64_t d : t->shape)
            shape.push_back(d);
        js += json(t->name).dump() + ":{\"dtype\":\"" + std::string(dtype_name(t->dtype)) +
              "\",\"shape\":" + shape.dump() + ",\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t->data.size()) + "]}";
        offset += t->data.size();
    }
    js += '}';
    js.append((8 - js.size() % 8) % 8, ' '); // 8 + len is then a multiple of 8: data starts aligned
    std::string out(8, '\0');
    uint64_t    n = js.size();
    for (int i = 0; i < 8; ++i)
        out[i] = char((n >> (8 * i)) & 0xff);
    return out + js;
}

} // namespace

std::string safetensors_header(const std::vector<TensorToWrite>&         tensors,
                               const std::map<std::string, std::string>& metadata) {
    return header_for(sorted_for_write(tensors), metadata);
}

void write_safetensors(const fs::path& file, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    auto        order  = sorted_for_write(tensors);
    std::string header = header_for(order, metadata);

    AtomicFile out(file);
    int        fd = ::open(out.temp_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        throw Error(out.temp_path().string() + ": cannot create: " + std::strerror(errno));
    auto write_all = [&](const void* p, size_t n) {
        const char* c = static_cast<const char*>(p);
        while (n > 0) {
            ssize_t w = ::write(fd, c, n);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                int err = errno;
                ::close(fd);
                throw Error(file.string() + ": write failed: " + std::strerror(err));
            }
            c += w;
            n -= size_t(w);
        }
    };
    write_all(header.data(), header.size());
    for (const TensorToWrite* t : order)
        write_all(t->data.data(), t->data.size());
    if (::close(fd) != 0)
        throw Error(file.string() + ": close failed: " + std::strerror(errno));
    out.commit();
}

} // namespace moebius
