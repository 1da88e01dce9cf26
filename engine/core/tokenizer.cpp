#include "engine/core/tokenizer.h"

#include "engine/core/error.h"
#include "engine/core/unicode.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace moebius {

namespace {

using json = nlohmann::json;
using unicode::npos;

// Thrown while building; from_file/from_string prefix it with the file name and rethrow as FormatError.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
[[noreturn]] void fail(const std::string& msg) {
    throw ConfigError(msg);
}

struct StringHash {
    using is_transparent = void;

    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V> using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// ---- small JSON accessors that turn type mismatches into readable messages ----------------------------------------

const json& member(const json& obj, const char* key, const std::string& where) {
    if (!obj.is_object())
        fail(where + " is not an object");
    auto it = obj.find(key);
    if (it == obj.end())
        fail(where + " has no \"" + key + "\"");
    return *it;
}
std::string get_string(const json& obj, const char* key, const std::string& where) {
    const json& v = member(obj, key, where);
    if (!v.is_string())
        fail(where + "." + key + " is not a string");
    return v.get<std::string>();
}
template <class T> T get_or(const json& obj, const char* key, T fallback) {
    if (!obj.is_object())
        return fallback;
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null())
        return fallback;
    try {
        return it->get<T>();
    } catch (const json::exception&) {
        fail(std::string("\"") + key + "\" has the wrong type");
    }
}
std::string type_of(const json& obj, const std::string& where) {
    if (!obj.is_object())
        fail(where + " is not an object");
    auto it = obj.find("type");
    if (it == obj.end() || !it->is_string())
        fail(where + " has no \"type\"");
    return it->get<std::string>();
}

// ---- Unicode character classes -------------------------------------------------------------------------------------

bool is_whitespace(char32_t c) { // Rust char::is_whitespace (Unicode White_Space)
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
bool is_numeric(char32_t c) {
    auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}
bool is_word_char(char32_t c) { // regex \w: letters, marks, numbers, connector punctuation
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}
char32_t last_char(std::string_view s) {
    size_t p = s.size();
    while (p > 0 && (static_cast<unsigned char>(s[p - 1]) & 0xC0) == 0x80)
        --p;
    if (p == 0)
        return 0;
    size_t q = p - 1;
    return unicode::utf8_next(s, q);
}

// ---- PCRE2 wrapper -------------------------------------------------------------------------------------------------

// One JIT stack per thread: pcre2 JIT stacks must not be shared between concurrent matches.
struct JitContext {
    pcre2_jit_stack*     stack = nullptr;
    pcre2_match_context* mctx  = nullptr;

    JitContext() {
        stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
        mctx  = pcre2_match_context_create(nullptr);
        if (stack && mctx)
            pcre2_jit_stack_assign(mctx, nullptr, stack);
    }
    ~JitContext() {
        if (mctx)
            pcre2_match_context_free(mctx);
        if (stack)
            pcre2_jit_stack_free(stack);
    }
};

class Regex {
  public:
    explicit Regex(const std::string& pattern) {
        int        err    = 0;
        PCRE2_SIZE erroff = 0;
        code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                              &erroff, nullptr);
        if (!code_) {
            PCRE2_UCHAR buf[256];
            pcre2_get_error_message(err, buf, sizeof(buf));
            fail("cannot compile regex '" + pattern + "': " + reinterpret_cast<const char*>(buf) + " at offset " +
                 std::to_string(erroff));
        }
        jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0; // falls back to the interpreter if unavailable
    }
    ~Regex() { pcre2_code_free(code_); }
    Regex(const Regex&)            = delete;
    Regex& operator=(const Regex&) = delete;

    // Calls f(start, end) for every match left to right; an empty match moves the search on by one character.
    // `s` must be valid UTF-8 (checked by the caller, so PCRE2 need not rescan the subject on every call).
    template <class F> void for_each_match(std::string_view s, F&& f) const {
        thread_local JitContext ctx;
        pcre2_match_data*       md  = pcre2_match_data_create_from_pattern(code_, nullptr);
        size_t                  off = 0;
        while (off <= s.size()) {
            int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), off, PCRE2_NO_UTF_CHECK, md,
                                 jit_ ? ctx.mctx : nullptr);
            if (rc == PCRE2_ERROR_NOMATCH)
                break;
            if (rc < 0) {
                pcre2_match_data_free(md);
                PCRE2_UCHAR buf[256];
                pcre2_get_error_message(rc, buf, sizeof(buf));
                throw Error(std::string("regex match failed: ") + reinterpret_cast<const char*>(buf));
            }
            const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
            size_t            st = ov[0], en = ov[1];
            f(st, en);
            if (en > st) {
                off = en;
            } else {
                if (en >= s.size())
                    break;
                off = en + unicode::utf8_sequence_length(static_cast<unsigned char>(s[en]));
            }
        }
        pcre2_match_data_free(md);
    }

  private:
    pcre2_code* code_ = nullptr;
    bool        jit_  = false;
};

// A split pattern: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
    std::string            literal;
    std::unique_ptr<Regex> regex;

    static Pattern parse(const json& p, const std::string& where) {
        Pattern out;
        if (p.is_object() && p.contains("String") && p["String"].is_string()) {
            out.literal = p["String"].get<std::string>();
        } else if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
            out.regex = std::make_unique<Regex>(p["Regex"].get<std::string>());
        } else {
            fail(where + ": pattern must be {\"String\": ...} or {\"Regex\": ...}");
        }
        return out;
    }
    static Pattern regex_of(const std::string& re) {
        Pattern out;
        out.regex = std::make_unique<Regex>(re);
        return out;
    }
    static Pattern literal_of(std::string lit) {
        Pattern out;
        out.literal = std::move(lit);
        return out;
    }

    template <class F> void for_each_match(std::string_view s, F&& f) const {
        if (regex)
            return regex->for_each_match(s, f);
        if (literal.empty())
            return;
        for (size_t p = s.find(literal); p != npos; p = s.find(literal, p + literal.size()))
            f(p, p + literal.size());
    }
    std::string replace_all(std::string_view s, std::string_view content) const {
        std::string out;
        size_t      prev = 0;
        for_each_match(s, [&](size_t st, size_t en) {
            out.append(s.substr(prev, st - prev));
            out.append(content);
            prev = en;
        });
        out.append(s.substr(prev));
        return out;
    }
};

// ---- normalizers ---------------------------------------------------------------------------------------------------

struct Normalizer {
    virtual ~Normalizer()                        = default;
    virtual void normalize(std::string& s) const = 0;
};

struct UnicodeNormalizer : Normalizer {
    int  options;
    bool ascii_identity; // ASCII text is already in this form: skip the copy

    UnicodeNormalizer(int opts, bool ascii_id) : options(opts), ascii_identity(ascii_id) {}

    void normalize(std::string& s) const override {
        if (ascii_identity && std::all_of(s.begin(), s.end(), [](char c) { return (c & 0x80) == 0; }))
            return;
        const auto*       src = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
        auto              len = static_cast<utf8proc_ssize_t>(s.size());
        utf8proc_uint8_t* dst = nullptr;
        auto              n   = utf8proc_map(src, len, &dst, static_cast<utf8proc_option_t>(options));
        if (n < 0)
            throw InputError(std::string("Unicode normalization failed: ") + utf8proc_errmsg(n));
        s.assign(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
        std::free(dst);
    }
};

struct LowercaseNormalizer : Normalizer {
    void normalize(std::string& s) const override {
        std::string out;
        out.reserve(s.size());
        for (size_t p = 0; p < s.size();)
            unicode::utf8_append(out, utf8proc_tolower(static_cast<utf8proc_int32_t>(unicode::utf8_next(s, p))));
        s = std::move(out);
    }
};

struct StripNormalizer : Normalizer {
    bool left, right;

    StripNormalizer(bool l, bool r) : left(l), right(r) {}
    void normalize(std::string& s) const override {
        size_t b = 0, e = s.size();
        if (left) {
            while (b < e) {
                size_t q = b;
                if (!is_whitespace(unicode::utf8_next(s, q)))
                    break;
                b = q;
            }
        }
        if (right) {
            while (e > b && is_whitespace(last_char(std::string_view(s).substr(0, e)))) {
                --e;
                while (e > b && (static_cast<unsigned char>(s[e]) & 0xC0) == 0x80)
                    --e;
            }
        }
        s = s.substr(b, e - b);
    }
};

struct StripAccentsNormalizer : Normalizer {
    void normalize(std::string& s) const override {
        std::string out;
        out.reserve(s.size());
        for (size_t p = 0; p < s.size();) {
            char32_t c = unicode::utf8_next(s, p);
            if (utf8proc_category(static_cast<utf8proc_int32_t>(c)) != UTF8PROC_CATEGORY_MN)
                unicode::utf8_append(out, c);
        }
        s = std::move(out);
    }
};

struct ReplaceNormalizer : Normalizer {
    Pattern     pattern;
    std::string content;

    void normalize(std::string& s) const override { s = pattern.replace_all(s, content); }
};

struct PrependNormalizer : Normalizer {
    std::string prepend;

    void normalize(std::string& s) const override {
        if (!s.empty())
            s.insert(0, prepend); // HF leaves empty strings alone
    }
};

struct SequenceNormalizer : Normalizer {
    std::vector<std::unique_ptr<Normalizer>> steps;

    void normalize(std::string& s) const override {
        for (const auto& n : steps)
            n->normalize(s);
    }
};

std::unique_ptr<Normalizer> make_normalizer(const json& cfg) {
    if (cfg.is_null())
        return nullptr;
    std::string type = type_of(cfg, "normalizer");
    if (type == "NFC")
        return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE, true);
    if (type == "NFD")
        return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, true);
    if (type == "NFKC")
        return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT, true);
    if (type == "NFKD")
        return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, true);
    if (type == "Lowercase")
        return std::make_unique<LowercaseNormalizer>();
    if (type == "StripAccents")
        return std::make_unique<StripAccentsNormalizer>();
    if (type == "Strip")
        return std::make_unique<StripNormalizer>(get_or(cfg, "strip_left", true), get_or(cfg, "strip_right", true));
    if (type == "Replace") {
        auto r     = std::make_unique<ReplaceNormalizer>();
        r->pattern = Pattern::parse(member(cfg, "pattern", "Replace normalizer"), "Replace normalizer");
        r->content = get_string(cfg, "content", "Replace normalizer");
        return r;
    }
    if (type == "Prepend") {
        auto p     = std::make_unique<PrependNormalizer>();
        p->prepend = get_string(cfg, "prepend", "Prepend normalizer");
        return p;
    }
    if (type == "Sequence") {
        auto        seq  = std::make_unique<SequenceNormalizer>();
        const json& list = member(cfg, "normalizers", "Sequence normalizer");
        if (!list.is_array())
            fail("Sequence normalizer: \"normalizers\" is not an array");
        for (const auto& n : list)
            if (auto step = make_normalizer(n))
                seq->steps.push_back(std::move(step));
        return seq;
    }
    fail("unsupported normalizer type '" + type + "'");
}

// ---- pre-tokenizers ------------------------------------------------------------------------------------------------

struct Piece {
    std::string text;
    bool        at_start; // begins at offset 0 of the original input (Metaspace prepend_scheme "first")
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

SplitBehavior parse_behavior(const std::string& b) {
    if (b == "Removed")
        return SplitBehavior::Removed;
    if (b == "Isolated")
        return SplitBehavior::Isolated;
    if (b == "MergedWithPrevious")
        return SplitBehavior::MergedWithPrevious;
    if (b == "MergedWithNext")
        return SplitBehavior::MergedWithNext;
    if (b == "Contiguous")
        return SplitBehavior::Contiguous;
    fail("unsupported split behavior '" + b + "'");
}

struct Span {
    size_t begin, end;
    bool   is_match;
};

// Applies a split behaviour to the (gap, match) spans covering a piece, as HF NormalizedString::split does.
void split_piece(const Piece& piece, std::vector<Span> spans, SplitBehavior behavior, std::vector<Piece>& out) {
    std::vector<Span> merged;
    bool              prev_match = false;

    switch (behavior) {
    case SplitBehavior::Isolated:
    case SplitBehavior::Removed:
        merged = std::move(spans);
        break;
    case SplitBehavior::MergedWithPrevious:
        for (const Span& s : spans) {
            if (s.is_match && !prev_match && !merged.empty())
                merged.back().end = s.end;
            else
                merged.push_back({s.begin, s.end, false});
            prev_match = s.is_match;
        }
        break;
    case SplitBehavior::MergedWithNext:
        for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
            if (it->is_match && !prev_match && !merged.empty())
                merged.back().begin = it->begin;
            else
                merged.push_back({it->begin, it->end, false});
            prev_match = it->is_match;
        }
        std::reverse(merged.begin(), merged.end());
        break;
    case SplitBehavior::Contiguous:
        for (const Span& s : spans) {
            if (s.is_match == prev_match && !merged.empty())
                merged.back().end = s.end;
            else
                merged.push_back({s.begin, s.end, false});
            prev_match = s.is_match;
        }
        break;
    }
    for (const Span& s : merged) {
        if (s.end <= s.begin)
            continue;
        if (behavior == SplitBehavior::Removed && s.is_match)
            continue;
        out.push_back({piece.text.substr(s.begin, s.end - s.begin), piece.at_start && s.begin == 0});
    }
}

// Turns the matches of `pattern` into spans covering the whole string; `invert` swaps what counts as a match.
std::vector<Span> pattern_spans(const Pattern& pattern, std::string_view s, bool invert) {
    std::vector<Span> spans;
    size_t            prev = 0;

    pattern.for_each_match(s, [&](size_t st, size_t en) {
        if (st > prev)
            spans.push_back({prev, st, invert});
        spans.push_back({st, en, !invert});
        prev = en;
    });
    if (prev < s.size())
        spans.push_back({prev, s.size(), invert});
    return spans;
}

struct PreTokenizer {
    virtual ~PreTokenizer()                              = default;
    virtual void apply(std::vector<Piece>& pieces) const = 0;
};

struct SequencePreTokenizer : PreTokenizer {
    std::vector<std::unique_ptr<PreTokenizer>> steps;

    void apply(std::vector<Piece>& pieces) const override {
        for (const auto& s : steps)
            s->apply(pieces);
    }
};

struct SplitPreTokenizer : PreTokenizer {
    Pattern       pattern;
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool          invert   = false;

    void apply(std::vector<Piece>& pieces) const override {
        std::vector<Piece> out;
        out.reserve(pieces.size() * 2);
        for (const Piece& p : pieces)
            split_piece(p, pattern_spans(pattern, p.text, invert), behavior, out);
        pieces = std::move(out);
    }
};

const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPreTokenizer : PreTokenizer {
    bool    add_prefix_space = false;
    bool    use_regex        = true;
    Pattern regex            = Pattern::regex_of(kGpt2Regex);

    void apply(std::vector<Piece>& pieces) const override {
        const auto&        table = unicode::byte_level_encode_table();
        std::vector<Piece> split;
        split.reserve(pieces.size());
        for (Piece& p : pieces) {
            if (add_prefix_space && (p.text.empty() || p.text[0] != ' '))
                p.text.insert(0, " ");
            if (use_regex)
                split_piece(p, pattern_spans(regex, p.text, false), SplitBehavior::Isolated, split);
            else
                split.push_back(std::move(p));
        }
        for (Piece& p : split) {
            std::string mapped;
            mapped.reserve(p.text.size() * 2);
            for (unsigned char b : p.text)
                mapped += table[b];
            p.text = std::move(mapped);
        }
        pieces = std::move(split);
    }
};

enum class PrependScheme { Always, First, Never };

struct MetaspacePreTokenizer : PreTokenizer {
    std::string   replacement = "\xE2\x96\x81"; // U+2581
    PrependScheme scheme      = PrependScheme::Always;
    bool          split       = true;

    void apply(std::vector<Piece>& pieces) const override {
        Pattern            delimiter = Pattern::literal_of(replacement);
        std::vector<Piece> out;
        for (Piece& p : pieces) {
            std::string t;
            t.reserve(p.text.size() + 8);
            for (char c : p.text) {
                if (c == ' ')
                    t += replacement;
                else
                    t += c;
            }
            bool prepend = scheme == PrependScheme::Always || (scheme == PrependScheme::First && p.at_start);
            if (prepend && t.compare(0, replacement.size(), replacement) != 0)
                t.insert(0, replacement);
            Piece np{std::move(t), p.at_start};
            if (split)
                split_piece(np, pattern_spans(delimiter, np.text, false), SplitBehavior::MergedWithNext, out);
            else
                out.push_back(std::move(np));
        }
        pieces = std::move(out);
    }
};

// Splits on characters that satisfy `pred` (digits, whitespace).
template <class Pred> std::vector<Span> char_spans(std::string_view s, Pred&& pred) {
    std::vector<Span> spans;
    for (size_t p = 0; p < s.size();) {
        size_t   q = p;
        char32_t c = unicode::utf8_next(s, q);
        spans.push_back({p, q, pred(c)});
        p = q;
    }
    return spans;
}

struct DigitsPreTokenizer : PreTokenizer {
    bool individual = false;

    void apply(std::vector<Piece>& pieces) const override {
        std::vector<Piece> out;
        for (const Piece& p : pieces)
            split_piece(p, char_spans(p.text, is_numeric),
                        individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous, out);
        pieces = std::move(out);
    }
};

struct WhitespaceSplitPreTokenizer : PreTokenizer {
    void apply(std::vector<Piece>& pieces) const override {
        std::vector<Piece> out;
        for (const Piece& p : pieces)
            split_piece(p, char_spans(p.text, is_whitespace), SplitBehavior::Removed, out);
        pieces = std::move(out);
    }
};

struct WhitespacePreTokenizer : PreTokenizer {
    Pattern regex = Pattern::regex_of(R"(\w+|[^\w\s]+)");

    void apply(std::vector<Piece>& pieces) const override {
        std::vector<Piece> out;
        for (const Piece& p : pieces)
            split_piece(p, pattern_spans(regex, p.text, true), SplitBehavior::Removed, out);
        pieces = std::move(out);
    }
};

PrependScheme parse_prepend_scheme(const json& cfg) {
    if (cfg.contains("prepend_scheme") && cfg["prepend_scheme"].is_string()) {
        std::string s = cfg["prepend_scheme"].get<std::string>();
        if (s == "always")
            return PrependScheme::Always;
        if (s == "first")
            return PrependScheme::First;
        if (s == "never")
            return PrependScheme::Never;
        fail("unsupported Metaspace prepend_scheme '" + s + "'");
    }
    return get_or(cfg, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never; // legacy field
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& cfg) {
    if (cfg.is_null())
        return nullptr;
    std::string type = type_of(cfg, "pre_tokenizer");
    if (type == "Sequence") {
        auto        seq  = std::make_unique<SequencePreTokenizer>();
        const json& list = member(cfg, "pretokenizers", "Sequence pre_tokenizer");
        if (!list.is_array())
            fail("Sequence pre_tokenizer: \"pretokenizers\" is not an array");
        for (const auto& p : list)
            if (auto step = make_pre_tokenizer(p))
                seq->steps.push_back(std::move(step));
        return seq;
    }
    if (type == "Split") {
        auto s      = std::make_unique<SplitPreTokenizer>();
        s->pattern  = Pattern::parse(member(cfg, "pattern", "Split pre_tokenizer"), "Split pre_tokenizer");
        s->behavior = parse_behavior(get_string(cfg, "behavior", "Split pre_tokenizer"));
        s->invert   = get_or(cfg, "invert", false);
        return s;
    }
    if (type == "ByteLevel") {
        auto b              = std::make_unique<ByteLevelPreTokenizer>();
        b->add_prefix_space = get_or(cfg, "add_prefix_space", true);
        b->use_regex        = get_or(cfg, "use_regex", true);
        return b;
    }
    if (type == "Metaspace") {
        auto m         = std::make_unique<MetaspacePreTokenizer>();
        m->replacement = get_or<std::string>(cfg, "replacement", m->replacement);
        if (m->replacement.empty())
            fail("Metaspace pre_tokenizer: empty replacement");
        m->scheme = parse_prepend_scheme(cfg);
        m->split  = get_or(cfg, "split", true);
        return m;
    }
    if (type == "Digits") {
        auto d        = std::make_unique<DigitsPreTokenizer>();
        d->individual = get_or(cfg, "individual_digits", false);
        return d;
    }
    if (type == "WhitespaceSplit")
        return std::make_unique<WhitespaceSplitPreTokenizer>();
    if (type == "Whitespace")
        return std::make_unique<WhitespacePreTokenizer>();
    fail("unsupported pre_tokenizer type '" + type + "'");
}

// ---- decoders ------------------------------------------------------------------------------------------------------
// Tokens flow through the chain as byte strings; ill-formed UTF-8 is replaced only at the very end, so that byte
// tokens of one character can arrive in separate pieces (ByteFallback, ByteLevel) and streaming can cut anywhere.

struct DecodeStep {
    virtual ~DecodeStep() = default;
    // `sequence` is false for token_bytes(): leave out effects that only make sense at the start of a text.
    virtual void run(std::vector<std::string>& tokens, bool sequence) const = 0;

    virtual bool fuses() const { return false; }
};

struct ByteLevelDecode : DecodeStep {
    void run(std::vector<std::string>& tokens, bool) const override {
        std::string out;
        for (const auto& t : tokens) {
            std::string bytes;
            bool        all_mapped = true;
            for (size_t p = 0; p < t.size();) {
                int b = unicode::byte_level_decode(unicode::utf8_next(t, p));
                if (b < 0) {
                    all_mapped = false;
                    break;
                }
                bytes += static_cast<char>(b);
            }
            out += all_mapped ? bytes : t; // like HF: a token with a foreign character is kept verbatim
        }
        tokens.assign(1, std::move(out));
    }
    bool fuses() const override { return true; }
};

struct ReplaceDecode : DecodeStep {
    Pattern     pattern;
    std::string content;

    void run(std::vector<std::string>& tokens, bool) const override {
        for (auto& t : tokens) {
            if (pattern.regex && unicode::utf8_invalid_offset(t) != npos)
                continue; // PCRE2 needs valid UTF-8
            t = pattern.replace_all(t, content);
        }
    }
};

struct ByteFallbackDecode : DecodeStep {
    static int byte_of(std::string_view t) {
        if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>')
            return -1;
        auto hex = [](char c) {
            if (c >= '0' && c <= '9')
                return c - '0';
            if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
            if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
            return -1;
        };
        int hi = hex(t[3]), lo = hex(t[4]);
        return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
    }
    void run(std::vector<std::string>& tokens, bool) const override {
        std::vector<std::string> out;
        out.reserve(tokens.size());
        std::string bytes;
        bool        pending = false;
        for (auto& t : tokens) {
            int b = byte_of(t);
            if (b >= 0) {
                bytes += static_cast<char>(b);
                pending = true;
                continue;
            }
            if (pending)
                out.push_back(std::move(bytes)), bytes.clear(), pending = false;
            out.push_back(std::move(t));
        }
        if (pending)
            out.push_back(std::move(bytes));
        tokens = std::move(out);
    }
};

struct FuseDecode : DecodeStep {
    void run(std::vector<std::string>& tokens, bool) const override {
        std::string all;
        for (const auto& t : tokens)
            all += t;
        tokens.assign(1, std::move(all));
    }
    bool fuses() const override { return true; }
};

struct StripDecode : DecodeStep {
    std::string content;
    size_t      start = 0, stop = 0;
    bool        after_fuse = false; // then it acts on the whole text, which a single token is not

    void run(std::vector<std::string>& tokens, bool sequence) const override {
        if (after_fuse && !sequence)
            return;
        const size_t n = content.size();
        for (auto& t : tokens) {
            size_t b = 0, e = t.size();
            for (size_t i = 0; i < start && b + n <= e && t.compare(b, n, content) == 0; ++i)
                b += n;
            for (size_t i = 0; i < stop && e >= b + n && t.compare(e - n, n, content) == 0; ++i)
                e -= n;
            t = t.substr(b, e - b);
        }
    }
};

struct MetaspaceDecode : DecodeStep {
    std::string   replacement = "\xE2\x96\x81";
    PrependScheme scheme      = PrependScheme::Always;

    void run(std::vector<std::string>& tokens, bool sequence) const override {
        for (size_t i = 0; i < tokens.size(); ++i) {
            // HF drops every replacement char of the first token when a prefix space was added at encode time.
            bool        drop = sequence && i == 0 && scheme != PrependScheme::Never;
            std::string out;
            const auto& t = tokens[i];
            for (size_t p = 0; p < t.size();) {
                if (t.compare(p, replacement.size(), replacement) == 0) {
                    if (!drop)
                        out += ' ';
                    p += replacement.size();
                } else {
                    out += t[p++];
                }
            }
            tokens[i] = std::move(out);
        }
    }
};

struct BpeSuffixDecode : DecodeStep { // "BPEDecoder": end-of-word suffix -> space
    std::string suffix;

    void run(std::vector<std::string>& tokens, bool sequence) const override {
        for (size_t i = 0; i < tokens.size(); ++i) {
            std::string_view with = (sequence && i + 1 == tokens.size()) ? "" : " ";
            std::string&     t    = tokens[i];
            std::string      out;
            for (size_t p = 0; p < t.size();) {
                if (!suffix.empty() && t.compare(p, suffix.size(), suffix) == 0) {
                    out += with;
                    p += suffix.size();
                } else {
                    out += t[p++];
                }
            }
            t = std::move(out);
        }
    }
};

void make_decoder(const json& cfg, std::vector<std::unique_ptr<DecodeStep>>& chain) {
    if (cfg.is_null())
        return;
    std::string type = type_of(cfg, "decoder");

    bool fused = std::any_of(chain.begin(), chain.end(), [](const auto& s) { return s->fuses(); });
    if (type == "Sequence") {
        const json& list = member(cfg, "decoders", "Sequence decoder");
        if (!list.is_array())
            fail("Sequence decoder: \"decoders\" is not an array");
        for (const auto& d : list)
            make_decoder(d, chain);
    } else if (type == "ByteLevel") {
        chain.push_back(std::make_unique<ByteLevelDecode>());
    } else if (type == "Replace") {
        auto r     = std::make_unique<ReplaceDecode>();
        r->pattern = Pattern::parse(member(cfg, "pattern", "Replace decoder"), "Replace decoder");
        r->content = get_string(cfg, "content", "Replace decoder");
        chain.push_back(std::move(r));
    } else if (type == "ByteFallback") {
        chain.push_back(std::make_unique<ByteFallbackDecode>());
    } else if (type == "Fuse") {
        chain.push_back(std::make_unique<FuseDecode>());
    } else if (type == "Strip") {
        auto s        = std::make_unique<StripDecode>();
        s->content    = get_string(cfg, "content", "Strip decoder");
        s->start      = get_or<size_t>(cfg, "start", 0);
        s->stop       = get_or<size_t>(cfg, "stop", 0);
        s->after_fuse = fused;
        if (s->content.empty())
            fail("Strip decoder: empty content");
        chain.push_back(std::move(s));
    } else if (type == "Metaspace") {
        auto m         = std::make_unique<MetaspaceDecode>();
        m->replacement = get_or<std::string>(cfg, "replacement", m->replacement);
        m->scheme      = parse_prepend_scheme(cfg);
        chain.push_back(std::move(m));
    } else if (type == "BPEDecoder") {
        auto b    = std::make_unique<BpeSuffixDecode>();
        b->suffix = get_or<std::string>(cfg, "suffix", "</w>");
        chain.push_back(std::move(b));
    } else {
        fail("unsupported decoder type '" + type + "'");
    }
}

// ---- post-processors -----------------------------------------------------------------------------------------------

struct PostProcessor {
    virtual ~PostProcessor()                                                = default;
    virtual void process(std::vector<int32_t>& ids, bool add_special) const = 0;
};

struct TemplatePostProcessor : PostProcessor {
    // Flattened "single" template: special-token ids, with the sequence marked by an empty entry.
    std::vector<std::vector<int32_t>> items;

    void process(std::vector<int32_t>& ids, bool add_special) const override {
        std::vector<int32_t> out;
        out.reserve(ids.size() + 4);
        for (const auto& item : items) {
            if (item.empty())
                out.insert(out.end(), ids.begin(), ids.end());
            else if (add_special)
                out.insert(out.end(), item.begin(), item.end());
        }
        ids = std::move(out);
    }
};

struct SequencePostProcessor : PostProcessor {
    std::vector<std::unique_ptr<PostProcessor>> steps;

    void process(std::vector<int32_t>& ids, bool add_special) const override {
        for (const auto& s : steps)
            s->process(ids, add_special);
    }
};

std::unique_ptr<PostProcessor> make_post_processor(const json& cfg) {
    if (cfg.is_null())
        return nullptr;
    std::string type = type_of(cfg, "post_processor");
    if (type == "ByteLevel")
        return nullptr; // only adjusts offsets
    if (type == "Sequence") {
        auto        seq  = std::make_unique<SequencePostProcessor>();
        const json& list = member(cfg, "processors", "Sequence post_processor");
        if (!list.is_array())
            fail("Sequence post_processor: \"processors\" is not an array");
        for (const auto& p : list)
            if (auto step = make_post_processor(p))
                seq->steps.push_back(std::move(step));
        return seq;
    }
    if (type == "TemplateProcessing") {
        auto        t           = std::make_unique<TemplatePostProcessor>();
        const json& specials    = cfg.contains("special_tokens") ? cfg["special_tokens"] : json::object();
        auto        special_ids = [&](const std::string& name) {
            if (!specials.is_object() || !specials.contains(name))
                fail("TemplateProcessing: special token '" + name + "' is not in \"special_tokens\"");
            const json&          ids = member(specials[name], "ids", "TemplateProcessing special token '" + name + "'");
            std::vector<int32_t> out;
            if (!ids.is_array())
                fail("TemplateProcessing: ids of '" + name + "' is not an array");
            for (const auto& i : ids)
                out.push_back(i.get<int32_t>());
            if (out.empty())
                fail("TemplateProcessing: special token '" + name + "' has no ids");
            return out;
        };
        const json& single = member(cfg, "single", "TemplateProcessing");
        if (single.is_string()) { // "<s> $A" shorthand
            std::istringstream ss(single.get<std::string>());
            for (std::string w; ss >> w;) {
                std::string name = w.substr(0, w.find(':'));
                if (name == "$" || name == "$A" || name == "$0")
                    t->items.emplace_back();
                else if (name == "$B" || name == "$1")
                    continue;
                else
                    t->items.push_back(special_ids(name));
            }
        } else if (single.is_array()) {
            for (const auto& item : single) {
                if (item.contains("Sequence")) {
                    if (get_or<std::string>(item["Sequence"], "id", "A") == "A")
                        t->items.emplace_back();
                } else if (item.contains("SpecialToken")) {
                    t->items.push_back(special_ids(get_string(item["SpecialToken"], "id", "TemplateProcessing item")));
                } else {
                    fail("TemplateProcessing: unknown template item " + item.dump());
                }
            }
        } else {
            fail("TemplateProcessing: \"single\" must be a list");
        }
        return t;
    }
    if (type == "RobertaProcessing" || type == "BertProcessing") {
        auto pair_id = [&](const char* key) {
            const json& p = member(cfg, key, type);
            if (!p.is_array() || p.size() != 2)
                fail(type + ": \"" + key + "\" must be [token, id]");
            return std::vector<int32_t>{p[1].get<int32_t>()};
        };
        auto t = std::make_unique<TemplatePostProcessor>();
        t->items.push_back(pair_id("cls"));
        t->items.emplace_back();
        t->items.push_back(pair_id("sep"));
        return t;
    }
    fail("unsupported post_processor type '" + type + "'");
}

// ---- BPE model -----------------------------------------------------------------------------------------------------

struct BpeModel {
    StringMap<int32_t>                                        vocab;
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges; // (left, right) -> (rank, merged id)
    int32_t                                                   unk_id = -1;
    bool                     fuse_unk = false, byte_fallback = false, ignore_merges = false;
    std::string              continuing_prefix, end_of_word_suffix;
    std::array<int32_t, 256> byte_ids{}; // <0xXX> tokens, -1 where absent

    static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

    int32_t find(std::string_view s) const {
        auto it = vocab.find(s);
        return it == vocab.end() ? -1 : it->second;
    }

    // Splits a word into initial symbols (characters, byte tokens or <unk>), then applies merges by rank,
    // leftmost first on ties, like HF Word::merge_all.
    void tokenize(std::string_view w, std::vector<int32_t>& out) const {
        if (w.empty())
            return;
        if (ignore_merges) {
            if (int32_t id = find(w); id >= 0) {
                out.push_back(id);
                return;
            }
        }
        std::vector<int32_t> syms;
        syms.reserve(w.size());
        bool        pending_unk = false;
        std::string buf;
        for (size_t p = 0; p < w.size();) {
            size_t q = p;
            unicode::utf8_next(w, q);
            std::string_view ch    = w.substr(p, q - p);
            bool             first = p == 0, last = q == w.size();
            int32_t          id;
            if (continuing_prefix.empty() && end_of_word_suffix.empty()) {
                id = find(ch);
            } else {
                buf.clear();
                if (!first)
                    buf += continuing_prefix;
                buf += ch;
                if (last)
                    buf += end_of_word_suffix;
                id = find(buf);
                ch = buf;
            }
            p = q;
            if (id >= 0) {
                if (pending_unk)
                    syms.push_back(unk_id), pending_unk = false;
                syms.push_back(id);
                continue;
            }
            if (byte_fallback && std::all_of(ch.begin(), ch.end(), [&](char c) { return byte_ids[uint8_t(c)] >= 0; })) {
                if (pending_unk)
                    syms.push_back(unk_id), pending_unk = false;
                for (char c : ch)
                    syms.push_back(byte_ids[uint8_t(c)]);
                continue;
            }
            if (unk_id < 0)
                continue; // no unk token: HF drops the character
            if (pending_unk && !fuse_unk)
                syms.push_back(unk_id);
            pending_unk = true;
        }
        if (pending_unk)
            syms.push_back(unk_id);

        size_t n = syms.size();
        if (n > 1) {
            std::vector<int32_t> prev(n), next(n);
            for (size_t i = 0; i < n; ++i) {
                prev[i] = static_cast<int32_t>(i) - 1;
                next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
            }
            struct Cand {
                int32_t rank, pos, new_id;
                bool    operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
            };
            std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
            auto                                                         push = [&](int32_t pos) {
                int32_t nx = next[pos];
                if (nx < 0)
                    return;
                auto it = merges.find(key(syms[pos], syms[nx]));
                if (it != merges.end())
                    heap.push({it->second.first, pos, it->second.second});
            };
            for (size_t i = 0; i + 1 < n; ++i)
                push(static_cast<int32_t>(i));
            while (!heap.empty()) {
                Cand c = heap.top();
                heap.pop();
                if (syms[c.pos] < 0)
                    continue; // merged into its left neighbour
                int32_t nx = next[c.pos];
                if (nx < 0)
                    continue;
                auto it = merges.find(key(syms[c.pos], syms[nx]));
                if (it == merges.end() || it->second.second != c.new_id)
                    continue; // stale
                syms[c.pos] = c.new_id;
                syms[nx]    = -1;
                next[c.pos] = next[nx];
                if (next[nx] >= 0)
                    prev[next[nx]] = c.pos;
                if (prev[c.pos] >= 0)
                    push(prev[c.pos]);
                push(c.pos);
            }
        }
        for (int32_t s : syms)
            if (s >= 0)
                out.push_back(s);
    }
};

struct AddedToken {
    int32_t     id = -1;
    std::string content;
    bool        single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Leftmost-longest matcher over added-token contents (HF uses Aho-Corasick with LeftmostLongest).
class TokenTrie {
  public:
    void add(const std::string& s, int32_t token_index) {
        if (s.empty())
            return;
        if (nodes_.empty())
            nodes_.emplace_back();
        size_t n = 0;
        for (unsigned char c : s) {
            auto& ch = nodes_[n].children;
            auto  it = std::find_if(ch.begin(), ch.end(), [&](const auto& e) { return e.first == c; });
            if (it == ch.end()) {
                nodes_.emplace_back();
                nodes_[n].children.emplace_back(c, static_cast<int32_t>(nodes_.size() - 1));
                n = nodes_.size() - 1;
            } else {
                n = static_cast<size_t>(it->second);
            }
        }
        nodes_[n].token                          = token_index;
        first_[static_cast<unsigned char>(s[0])] = true;
    }
    bool empty() const { return nodes_.empty(); }
    // Longest token starting at `pos`: (token index, length) or (-1, 0).
    std::pair<int32_t, size_t> match_at(std::string_view s, size_t pos) const {
        if (!first_[static_cast<unsigned char>(s[pos])])
            return {-1, 0};
        std::pair<int32_t, size_t> best{-1, 0};
        size_t                     n = 0;
        for (size_t i = pos; i < s.size(); ++i) {
            const auto& ch = nodes_[n].children;
            auto it = std::find_if(ch.begin(), ch.end(), [&](const auto& e) { return e.first == (unsigned char)s[i]; });
            if (it == ch.end())
                break;
            n = static_cast<size_t>(it->second);
            if (nodes_[n].token >= 0)
                best = {nodes_[n].token, i + 1 - pos};
        }
        return best;
    }

  private:
    struct Node {
        std::vector<std::pair<unsigned char, int32_t>> children;
        int32_t                                        token = -1;
    };
    std::vector<Node>     nodes_;
    std::array<bool, 256> first_{};
};

// A run of text: either an added token (token >= 0) or text still to be tokenized.
struct Segment {
    size_t  begin, end;
    int32_t token; // index into added tokens, or -1
};

size_t leading_space_end(std::string_view s, size_t from) {
    while (from < s.size()) {
        size_t q = from;
        if (!is_whitespace(unicode::utf8_next(s, q)))
            break;
        from = q;
    }
    return from;
}
size_t trailing_space_begin(std::string_view s, size_t lo, size_t hi) {
    while (hi > lo) {
        size_t p = hi - 1;
        while (p > lo && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80)
            --p;
        size_t q = p;
        if (!is_whitespace(unicode::utf8_next(s, q)))
            break;
        hi = p;
    }
    return hi;
}

} // namespace

// ---- Tokenizer -----------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
    BpeModel                                 model;
    std::vector<AddedToken>                  added;
    StringMap<int32_t>                       added_by_content; // content -> index into `added`
    TokenTrie                                raw_trie, normalized_trie;
    std::unique_ptr<Normalizer>              normalizer;
    std::unique_ptr<PreTokenizer>            pre_tokenizer;
    std::unique_ptr<PostProcessor>           post_processor;
    std::vector<std::unique_ptr<DecodeStep>> decoder;
    std::vector<std::string>                 id_to_token; // vocab then added tokens; "" for holes
    std::vector<uint8_t>                     id_known, id_special;

    static constexpr size_t                 kMaxCachedWord = 256;
    static constexpr size_t                 kMaxCacheSize  = 1 << 16;
    mutable std::mutex                      cache_mutex;
    mutable StringMap<std::vector<int32_t>> cache;

    void bpe_word(const std::string& w, std::vector<int32_t>& out) const {
        if (w.size() < kMaxCachedWord) {
            std::lock_guard lock(cache_mutex);
            auto            it = cache.find(w);
            if (it != cache.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        size_t first = out.size();
        model.tokenize(w, out);
        if (w.size() < kMaxCachedWord) {
            std::lock_guard lock(cache_mutex);
            if (cache.size() >= kMaxCacheSize)
                cache.clear(); // crude bound; repopulates quickly
            cache.emplace(w, std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(first), out.end()));
        }
    }

    // Splits `s` on added tokens (HF AddedVocabulary::find_matches): single_word, lstrip and rstrip honoured.
    std::vector<Segment> split_added(std::string_view s, const TokenTrie& trie) const {
        std::vector<Segment> segs;
        if (trie.empty()) {
            segs.push_back({0, s.size(), -1});
            return segs;
        }
        size_t start_offset = 0;
        for (size_t pos = 0; pos < s.size();) {
            auto [tok, len] = trie.match_at(s, pos);
            if (tok < 0) {
                ++pos;
                continue;
            }
            const AddedToken& at    = added[static_cast<size_t>(tok)];
            size_t            start = pos, stop = pos + len;
            if (at.single_word) {
                bool   start_ok = start == 0 || !is_word_char(last_char(s.substr(0, start)));
                size_t q        = stop;
                bool   stop_ok  = stop == s.size() || !is_word_char(unicode::utf8_next(s, q));
                if (!start_ok || !stop_ok) {
                    pos = stop; // HF iterates non-overlapping matches, so a rejected one still consumes its text
                    continue;
                }
            }
            if (at.lstrip)
                start = std::max(trailing_space_begin(s, 0, start), start_offset);
            if (at.rstrip)
                stop = leading_space_end(s, stop);
            if (start_offset < start)
                segs.push_back({start_offset, start, -1});
            segs.push_back({start, stop, tok});
            start_offset = stop;
            pos          = stop;
        }
        if (start_offset < s.size())
            segs.push_back({start_offset, s.size(), -1});
        return segs;
    }

    void encode_text(std::string_view text, std::vector<int32_t>& ids) const {
        std::vector<Piece> pieces;
        for (const Segment& seg : split_added(text, raw_trie)) {
            if (seg.token >= 0) {
                ids.push_back(added[static_cast<size_t>(seg.token)].id);
                continue;
            }
            std::string norm(text.substr(seg.begin, seg.end - seg.begin));
            if (normalizer)
                normalizer->normalize(norm);
            for (const Segment& sub : split_added(norm, normalized_trie)) {
                if (sub.token >= 0) {
                    ids.push_back(added[static_cast<size_t>(sub.token)].id);
                    continue;
                }
                if (sub.end <= sub.begin)
                    continue;
                pieces.clear();
                pieces.push_back({norm.substr(sub.begin, sub.end - sub.begin), seg.begin == 0 && sub.begin == 0});
                if (pre_tokenizer)
                    pre_tokenizer->apply(pieces);
                for (const Piece& p : pieces)
                    bpe_word(p.text, ids);
            }
        }
    }

    const std::string* token_of(int32_t id) const {
        if (id < 0 || static_cast<size_t>(id) >= id_to_token.size() || !id_known[static_cast<size_t>(id)])
            return nullptr;
        return &id_to_token[static_cast<size_t>(id)];
    }

    std::string run_decoder(std::vector<std::string> tokens, bool sequence) const {
        if (decoder.empty()) { // HF joins with spaces when there is no decoder
            std::string out;
            for (size_t i = 0; i < tokens.size(); ++i)
                out += (i ? " " : "") + tokens[i];
            return out;
        }
        for (const auto& step : decoder)
            step->run(tokens, sequence);
        std::string out;
        for (const auto& t : tokens)
            out += t;
        return out;
    }
};

namespace {

std::shared_ptr<Tokenizer::Impl> build(const json& root) {
    auto impl = std::make_shared<Tokenizer::Impl>();
    if (!root.is_object())
        fail("top level is not a JSON object");

    const json& m    = member(root, "model", "top level");
    std::string type = m.is_object() && m.contains("type") ? type_of(m, "model") : "BPE";
    if (type != "BPE")
        fail("unsupported model type '" + type + "'");
    BpeModel& bpe = impl->model;

    const json& vocab = member(m, "vocab", "model");
    if (!vocab.is_object())
        fail("model.vocab is not an object");
    int32_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > INT32_MAX)
            fail("model.vocab[\"" + it.key() + "\"] is not a valid id");
        int32_t id = it.value().get<int32_t>();
        bpe.vocab.emplace(it.key(), id);
        max_id = std::max(max_id, id);
    }

    bpe.continuing_prefix  = get_or<std::string>(m, "continuing_subword_prefix", "");
    bpe.end_of_word_suffix = get_or<std::string>(m, "end_of_word_suffix", "");
    bpe.fuse_unk           = get_or(m, "fuse_unk", false);
    bpe.byte_fallback      = get_or(m, "byte_fallback", false);
    bpe.ignore_merges      = get_or(m, "ignore_merges", false);
    if (auto unk = get_or<std::string>(m, "unk_token", ""); !unk.empty()) {
        bpe.unk_id = bpe.find(unk);
        if (bpe.unk_id < 0)
            fail("model.unk_token '" + unk + "' is not in the vocab");
    }
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", b);
        bpe.byte_ids[static_cast<size_t>(b)] = bpe.find(name);
    }

    const json& merges = member(m, "merges", "model");
    if (!merges.is_array())
        fail("model.merges is not an array");
    bpe.merges.reserve(merges.size());
    std::string new_token;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const json& e = merges[rank];
        std::string a, b;
        if (e.is_string()) { // "a b"
            const std::string& s  = e.get_ref<const std::string&>();
            size_t             sp = s.find(' ');
            if (sp == npos || s.find(' ', sp + 1) != npos)
                fail("model.merges[" + std::to_string(rank) + "] is not \"a b\"");
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) { // ["a", "b"]
            a = e[0].get<std::string>();
            b = e[1].get<std::string>();
        } else {
            fail("model.merges[" + std::to_string(rank) + "] is neither \"a b\" nor [\"a\", \"b\"]");
        }
        int32_t ia = bpe.find(a), ib = bpe.find(b);
        if (ia < 0 || ib < 0)
            fail("model.merges[" + std::to_string(rank) + "] uses token '" + (ia < 0 ? a : b) +
                 "' that is not in the vocab");
        // The merged token drops the right part's continuing-subword prefix, as in HF.
        size_t plen  = bpe.continuing_prefix.size();
        new_token    = a + (plen && b.compare(0, plen, bpe.continuing_prefix) == 0 ? b.substr(plen) : b);
        int32_t inew = bpe.find(new_token);
        if (inew < 0)
            fail("model.merges[" + std::to_string(rank) + "] produces '" + new_token + "' that is not in the vocab");
        bpe.merges.try_emplace(BpeModel::key(ia, ib), static_cast<int32_t>(rank), inew); // first (lowest) rank wins
    }

    impl->normalizer     = make_normalizer(root.value("normalizer", json()));
    impl->pre_tokenizer  = make_pre_tokenizer(root.value("pre_tokenizer", json()));
    impl->post_processor = make_post_processor(root.value("post_processor", json()));
    make_decoder(root.value("decoder", json()), impl->decoder);

    const json& added = root.value("added_tokens", json::array());
    if (!added.is_array())
        fail("added_tokens is not an array");
    for (const auto& t : added) {
        AddedToken at;
        if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || t["id"].get<int64_t>() < 0)
            fail("added_tokens entry without a valid id: " + t.dump());
        at.id                              = t["id"].get<int32_t>();
        at.content                         = get_string(t, "content", "added token");
        at.special                         = get_or(t, "special", false);
        at.single_word                     = get_or(t, "single_word", false);
        at.lstrip                          = get_or(t, "lstrip", false);
        at.rstrip                          = get_or(t, "rstrip", false);
        at.normalized                      = get_or(t, "normalized", !at.special);
        max_id                             = std::max(max_id, at.id);
        auto index                         = static_cast<int32_t>(impl->added.size());
        impl->added_by_content[at.content] = index;
        if (at.normalized) { // matched after normalization, against the normalized content (as HF does)
            std::string n = at.content;
            if (impl->normalizer)
                impl->normalizer->normalize(n);
            impl->normalized_trie.add(n, index);
        } else {
            impl->raw_trie.add(at.content, index);
        }
        impl->added.push_back(std::move(at));
    }

    size_t n = static_cast<size_t>(max_id + 1);
    impl->id_to_token.assign(n, std::string());
    impl->id_known.assign(n, 0);
    impl->id_special.assign(n, 0);
    for (const auto& [tok, id] : bpe.vocab) {
        impl->id_to_token[static_cast<size_t>(id)] = tok;
        impl->id_known[static_cast<size_t>(id)]    = 1;
    }
    for (const auto& at : impl->added) {
        impl->id_to_token[static_cast<size_t>(at.id)] = at.content;
        impl->id_known[static_cast<size_t>(at.id)]    = 1;
        impl->id_special[static_cast<size_t>(at.id)]  = at.special;
    }
    return impl;
}

} // namespace

Tokenizer Tokenizer::from_string(std::string_view json_text, const std::string& origin) {
    try {
        json root = json::parse(json_text);
        return Tokenizer(build(root));
    } catch (const ConfigError& e) {
        throw FormatError(origin + ": " + e.what());
    } catch (const json::exception& e) {
        throw FormatError(origin + ": invalid tokenizer JSON: " + e.what());
    }
}

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f)
        throw NotFoundError(path.string() + ": cannot open tokenizer file");
    std::ostringstream ss;
    ss << f.rdbuf();
    return from_string(ss.str(), path.string());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
    if (size_t bad = unicode::utf8_invalid_offset(text); bad != npos)
        throw InputError("invalid UTF-8 at byte " + std::to_string(bad));
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    impl_->encode_text(text, ids);
    if (impl_->post_processor)
        impl_->post_processor->process(ids, add_special_tokens);
    return ids;
}

std::string Tokenizer::decode_raw(std::span<const int32_t> ids, bool skip_special_tokens) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
        const std::string* t = impl_->token_of(id);
        if (!t)
            continue; // HF skips ids it does not know
        if (skip_special_tokens && impl_->id_special[static_cast<size_t>(id)])
            continue;
        tokens.push_back(*t);
    }
    return impl_->run_decoder(std::move(tokens), true);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
    return unicode::utf8_sanitize(decode_raw(ids, skip_special_tokens));
}

std::string Tokenizer::token_bytes(int32_t id) const {
    const std::string* t = impl_->token_of(id);
    if (!t)
        throw InputError("unknown token id " + std::to_string(id));
    return impl_->run_decoder({*t}, false);
}

int32_t Tokenizer::token_id(std::string_view token) const {
    if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end())
        return impl_->added[static_cast<size_t>(it->second)].id;
    return impl_->model.find(token);
}

std::string Tokenizer::token_string(int32_t id) const {
    const std::string* t = impl_->token_of(id);
    if (!t)
        throw InputError("unknown token id " + std::to_string(id));
    return *t;
}

size_t Tokenizer::vocab_size() const {
    return impl_->id_to_token.size();
}

bool Tokenizer::is_special(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < impl_->id_special.size() && impl_->id_special[static_cast<size_t>(id)];
}

// ---- StreamingDecoder ----------------------------------------------------------------------------------------------

StreamingDecoder::StreamingDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string StreamingDecoder::push(int32_t id) {
    if (skip_special_ && tok_.is_special(id))
        return {};
    window_.push_back(id);
    std::string raw = tok_.decode_raw(window_, false);
    if (raw.size() < done_)
        done_ = raw.size(); // only with decoders whose output is not prefix-stable
    size_t      cut = done_ + unicode::utf8_complete_prefix(std::string_view(raw).substr(done_));
    std::string out = unicode::utf8_sanitize(std::string_view(raw).substr(done_, cut - done_));
    if (cut == raw.size()) {
        // Everything is out: keep the last token as context so the next window decodes as a continuation.
        window_.assign(1, id);
        done_ = tok_.decode_raw(window_, false).size();
    } else {
        done_ = cut;
    }
    return out;
}

std::string StreamingDecoder::flush() {
    if (window_.empty())
        return {};
    std::string raw = tok_.decode_raw(window_, false);
    std::string out = done_ < raw.size() ? unicode::utf8_sanitize(std::string_view(raw).substr(done_)) : std::string();
    window_.erase(window_.begin(), window_.end() - 1);
    done_ = tok_.decode_raw(window_, false).size();
    return out;
}

} // namespace moebius
