#include "quantizer/calibration/calibration_data.h"

#include "engine/core/atomic_file.h"
#include "engine/core/error.h"
#include "engine/core/tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

namespace moebius::quant {

using json = nlohmann::json;

std::string read_calibration_text(const std::filesystem::path& file) {
    std::ifstream f(file, std::ios::binary);
    if (!f) throw NotFoundError(file.string() + ": cannot open calibration file");
    std::string text;
    if (file.extension() == ".jsonl") {
        std::string line;
        int         lineno = 0;
        while (std::getline(f, line)) {
            ++lineno;
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            json j;
            try {
                j = json::parse(line);
            } catch (const json::exception& e) {
                throw FormatError(file.string() + ": line " + std::to_string(lineno) + " is not JSON: " + e.what());
            }
            if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
                throw FormatError(file.string() + ": line " + std::to_string(lineno) + " has no string field \"text\"");
            if (!text.empty()) text += "\n\n";
            text += j["text"].get<std::string>();
        }
    } else {
        std::stringstream ss;
        ss << f.rdbuf();
        text = ss.str();
    }
    if (text.find_first_not_of(" \t\r\n") == std::string::npos)
        throw InputError(file.string() + ": the calibration text is empty");
    return text;
}

CalibrationSet random_windows(const std::vector<int32_t>& ids, int n, int seqlen, uint64_t seed,
                              const std::string& source) {
    if (n <= 0) throw InputError("the number of calibration samples must be positive");
    if (seqlen < 2) throw InputError("the calibration sequence length must be at least 2");
    if ((int64_t)ids.size() < seqlen)
        throw InputError(source + ": the calibration text has " + std::to_string(ids.size()) +
                         " tokens, fewer than one window of " + std::to_string(seqlen));
    if ((int64_t)n * seqlen > (int64_t)ids.size())
        throw InputError(source + ": " + std::to_string(n) + " samples x " + std::to_string(seqlen) + " tokens = " +
                         std::to_string((int64_t)n * seqlen) + " exceed the " + std::to_string(ids.size()) +
                         " tokens of the calibration text");
    CalibrationSet s;
    s.seqlen = seqlen;
    s.seed   = seed;
    s.source = source;
    std::mt19937_64                         rng(seed);
    std::uniform_int_distribution<int64_t> start(0, (int64_t)ids.size() - seqlen);
    for (int i = 0; i < n; ++i) {
        int64_t a = start(rng);
        s.samples.emplace_back(ids.begin() + a, ids.begin() + a + seqlen);
    }
    return s;
}

void save_calibration_set(const CalibrationSet& set, const std::filesystem::path& file, const Tokenizer* tok) {
    std::string out = json{{"seqlen", set.seqlen}, {"seed", set.seed}, {"source", set.source},
                           {"samples", set.samples.size()}}
                          .dump() +
                      "\n";
    for (const auto& s : set.samples) {
        json j{{"ids", s}};
        if (tok) j["text"] = tok->decode(s);
        out += j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    }
    write_file_atomic(file, out);
}

CalibrationSet load_calibration_set(const std::filesystem::path& file) {
    std::ifstream f(file, std::ios::binary);
    if (!f) throw NotFoundError(file.string() + ": cannot open calibration set");
    CalibrationSet s;
    std::string    line;
    int            lineno = 0;
    while (std::getline(f, line)) {
        ++lineno;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        json j;
        try {
            j = json::parse(line);
        } catch (const json::exception& e) {
            throw FormatError(file.string() + ": line " + std::to_string(lineno) + " is not JSON: " + e.what());
        }
        auto bad = [&](const std::string& what) {
            throw FormatError(file.string() + ": line " + std::to_string(lineno) + ": " + what);
        };
        if (lineno == 1) {
            if (!j.is_object() || !j.contains("seqlen") || !j["seqlen"].is_number_integer())
                bad("expected a header {\"seqlen\", \"seed\", \"source\"}");
            s.seqlen = j["seqlen"].get<int>();
            s.seed   = j.value("seed", (uint64_t)0);
            s.source = j.value("source", std::string());
            continue;
        }
        if (!j.is_object() || !j.contains("ids") || !j["ids"].is_array()) bad("expected {\"ids\": [...]}");
        std::vector<int32_t> ids;
        for (const auto& v : j["ids"]) {
            if (!v.is_number_integer()) bad("ids must be integers");
            ids.push_back(v.get<int32_t>());
        }
        if ((int)ids.size() != s.seqlen)
            bad("sample has " + std::to_string(ids.size()) + " ids, header says seqlen " + std::to_string(s.seqlen));
        s.samples.push_back(std::move(ids));
    }
    if (s.samples.empty()) throw FormatError(file.string() + ": no samples");
    return s;
}

} // namespace moebius::quant
