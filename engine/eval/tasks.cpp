#include "engine/eval/tasks.h"

#include "engine/core/error.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

namespace moebius {

namespace {

[[noreturn]] void bad_line(const std::filesystem::path& file, int line, const std::string& problem) {
    throw FormatError(file.string() + ": line " + std::to_string(line) + ": " + problem);
}

McItem parse_item(const std::string& text, const std::filesystem::path& file, int line) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        bad_line(file, line, std::string("not valid JSON (") + e.what() + ")");
    }
    if (!j.is_object()) bad_line(file, line, "expected a JSON object");
    McItem it;
    auto   ctx = j.find("context");
    if (ctx == j.end()) bad_line(file, line, "missing \"context\"");
    if (!ctx->is_string()) bad_line(file, line, "\"context\" must be a string");
    it.context = ctx->get<std::string>();
    auto ch    = j.find("choices");
    if (ch == j.end()) bad_line(file, line, "missing \"choices\"");
    if (!ch->is_array() || ch->empty()) bad_line(file, line, "\"choices\" must be a non-empty array of strings");
    for (const auto& c : *ch) {
        if (!c.is_string()) bad_line(file, line, "\"choices\" must be a non-empty array of strings");
        // An empty continuation has no tokens to score and no length to normalise by.
        if (c.get_ref<const std::string&>().empty())
            bad_line(file, line, "choice " + std::to_string(it.choices.size()) + " is empty");
        it.choices.push_back(c.get<std::string>());
    }
    auto g = j.find("gold");
    if (g == j.end()) bad_line(file, line, "missing \"gold\"");
    if (!g->is_number_integer()) bad_line(file, line, "\"gold\" must be an integer");
    const int64_t gold = g->is_number_unsigned() ? (int64_t)std::min<uint64_t>(g->get<uint64_t>(), INT64_MAX)
                                                 : g->get<int64_t>();
    if (gold < 0 || gold >= (int64_t)it.choices.size())
        bad_line(file, line, "\"gold\" " + std::to_string(gold) + " is out of range (" +
                                 std::to_string(it.choices.size()) + " choices)");
    it.gold = (int)gold;
    return it;
}

// log p(target) from one row of logits; log-softmax in double, as window_nll.
double log_prob(const float* row, int n_vocab, int32_t target) {
    float mx = row[0];
    for (int v = 1; v < n_vocab; ++v) mx = std::max(mx, row[v]);
    double s = 0;
    for (int v = 0; v < n_vocab; ++v) s += std::exp((double)row[v] - mx);
    return (double)row[target] - (std::log(s) + mx);
}

// numpy argmax: the first maximum wins.
int argmax(const std::vector<double>& v) {
    int best = 0;
    for (int i = 1; i < (int)v.size(); ++i)
        if (v[i] > v[best]) best = i;
    return best;
}

struct EncodedItem {
    std::vector<int32_t>              ctx;
    std::vector<std::vector<int32_t>> conts;
};

// lm-eval's _encode_pair (plus the empty-context prefix token of loglikelihood()).
EncodedItem encode_item(const Tokenizer& tok, const McItem& item, int32_t prefix_token) {
    EncodedItem e;
    std::string ctx     = item.context;
    const auto  keep    = ctx.find_last_not_of(" \t\n\r\f\v");
    std::string trailer = ctx.substr(keep == std::string::npos ? 0 : keep + 1);
    ctx.resize(ctx.size() - trailer.size());
    if (ctx.empty()) {
        if (prefix_token < 0) throw InputError("an item has an empty context and the model has no BOS/EOS token");
        e.ctx = {prefix_token};
        for (const auto& c : item.choices) e.conts.push_back(tok.encode(trailer + c, false));
        return e;
    }
    e.ctx = tok.encode(ctx, false);
    for (const auto& c : item.choices) {
        auto whole = tok.encode(ctx + trailer + c, false);
        e.conts.emplace_back(whole.begin() + std::min(e.ctx.size(), whole.size()), whole.end());
    }
    return e;
}

} // namespace

std::vector<McItem> load_mc_tasks(const std::filesystem::path& jsonl) {
    std::ifstream f(jsonl, std::ios::binary);
    if (!f) throw NotFoundError(jsonl.string() + ": cannot open");
    std::vector<McItem> items;
    std::string         text;
    for (int line = 1; std::getline(f, text); ++line) {
        if (text.find_first_not_of(" \t\r\n") == std::string::npos) continue;
        items.push_back(parse_item(text, jsonl, line));
    }
    if (items.empty()) throw FormatError(jsonl.string() + ": no items");
    return items;
}

McResult evaluate_mc(const Model& model, const Tokenizer& tok, const std::vector<McItem>& items,
                     const ProgressFn& progress) {
    CpuSession session(model);
    return evaluate_mc(session, tok, items, progress);
}

McResult evaluate_mc(Session& session, const Tokenizer& tok, const std::vector<McItem>& items,
                     const ProgressFn& progress) {
    const auto& spec    = session.spec();
    const int   V       = spec.n_vocab;
    const int   max_len = spec.max_position > 0 ? spec.max_position : INT_MAX / 2;
    // lm-eval's prefix_token_id: BOS when there is one, else EOS.
    const int32_t prefix = spec.bos_token_id ? *spec.bos_token_id
                           : spec.eos_token_ids.empty() ? -1 : spec.eos_token_ids[0];
    McResult r;
    r.n = (int)items.size();
    std::vector<float> last(V), rows;
    for (int i = 0; i < r.n; ++i) {
        report_progress(progress, (double)i / r.n, "item " + std::to_string(i + 1) + "/" + std::to_string(r.n));
        const McItem& item = items[i];
        if (item.choices.empty() || item.gold < 0 || item.gold >= (int)item.choices.size())
            throw InputError("item " + std::to_string(i) + ": no choices or gold out of range");
        EncodedItem e        = encode_item(tok, item, prefix);
        const int   n_ctx    = (int)e.ctx.size();
        size_t      max_cont = 0;
        for (size_t c = 0; c < e.conts.size(); ++c) {
            if (e.conts[c].empty())
                throw InputError("item " + std::to_string(i) + ": choice " + std::to_string(c) + " has no tokens");
            max_cont = std::max(max_cont, e.conts[c].size());
        }
        std::vector<double> ll(e.conts.size(), 0.0);
        if (n_ctx + (int)max_cont - 1 <= max_len) {
            // Shared prefix: the context runs once, in the same call as the first continuation (one call fewer per
            // item); every later continuation rewinds the cache to the context's end and appends.
            session.reset(n_ctx + (int)max_cont - 1);
            std::vector<int32_t> seq = e.ctx;
            seq.insert(seq.end(), e.conts[0].begin(), e.conts[0].end() - 1);
            rows.resize(seq.size() * V);
            session.forward(seq.data(), (int)seq.size(), rows.data(), true);
            std::copy_n(rows.data() + (size_t)(n_ctx - 1) * V, V, last.data());
            for (size_t t = 0; t < e.conts[0].size(); ++t)
                ll[0] += log_prob(rows.data() + (n_ctx - 1 + t) * V, V, e.conts[0][t]);
            for (size_t c = 1; c < e.conts.size(); ++c) {
                const auto& cont = e.conts[c];
                const int   m    = (int)cont.size();
                ll[c]            = log_prob(last.data(), V, cont[0]);
                if (m == 1) continue;
                session.rewind(n_ctx);
                rows.resize((size_t)(m - 1) * V);
                session.forward(cont.data(), m - 1, rows.data(), true);
                for (int t = 1; t < m; ++t) ll[c] += log_prob(rows.data() + (size_t)(t - 1) * V, V, cont[t]);
            }
        } else {
            // Too long: lm-eval keeps the last max_len + 1 tokens of context + continuation, per choice.
            for (size_t c = 0; c < e.conts.size(); ++c) {
                const auto& cont = e.conts[c];
                const int   m    = (int)cont.size();
                if (m > max_len)
                    throw InputError("item " + std::to_string(i) + ": choice " + std::to_string(c) + " has " +
                                     std::to_string(m) + " tokens, more than the model's context of " +
                                     std::to_string(max_len));
                std::vector<int32_t> seq = e.ctx;
                seq.insert(seq.end(), cont.begin(), cont.end());
                const int      L     = std::min<int>((int)seq.size(), max_len + 1) - 1;
                const int32_t* inp   = seq.data() + seq.size() - 1 - L;
                session.reset(L);
                rows.resize((size_t)L * V);
                session.forward(inp, L, rows.data(), true);
                for (int t = 0; t < m; ++t) ll[c] += log_prob(rows.data() + (size_t)(L - m + t) * V, V, cont[t]);
            }
        }
        std::vector<double> norm(ll.size());
        for (size_t c = 0; c < ll.size(); ++c) norm[c] = ll[c] / (double)item.choices[c].size();
        r.predicted.push_back(argmax(ll));
        r.predicted_norm.push_back(argmax(norm));
        r.acc += r.predicted.back() == item.gold;
        r.acc_norm += r.predicted_norm.back() == item.gold;
        r.loglik.push_back(std::move(ll));
    }
    report_progress(progress, 1.0, "done");
    if (r.n > 0) {
        r.acc /= r.n;
        r.acc_norm /= r.n;
    }
    return r;
}

} // namespace moebius
