// Python str semantics on UTF-8 (code point indexing, Unicode whitespace and case mapping) and printf-style
// formatting, shared by the str methods and the filters.
#include "engine/core/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <utf8proc.h>

namespace moebius::jinja {

// ---- string helpers (Python str semantics on code points) ---------------------------------------------------------

char32_t map_case(char32_t c, int mode) { // 0 lower, 1 upper, 2 title
    if (c < 0x80) {
        if (mode == 0)
            return c >= 'A' && c <= 'Z' ? c + 32 : c;
        return c >= 'a' && c <= 'z' ? c - 32 : c;
    }
    if (c >= 0xD800 && c <= 0xDFFF)
        return c;
    auto u = utf8proc_int32_t(c);
    return char32_t(mode == 0 ? utf8proc_tolower(u) : mode == 1 ? utf8proc_toupper(u) : utf8proc_totitle(u));
}

bool is_cased(char32_t c) {
    if (c < 0x80)
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (c >= 0xD800 && c <= 0xDFFF)
        return false;
    auto cat = utf8proc_category(utf8proc_int32_t(c));
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}

bool is_alpha(char32_t c) {
    if (c < 0x80)
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (c >= 0xD800 && c <= 0xDFFF)
        return false;
    auto cat = utf8proc_category(utf8proc_int32_t(c));
    return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

bool is_digit_cp(char32_t c) {
    if (c < 0x80)
        return c >= '0' && c <= '9';
    if (c >= 0xD800 && c <= 0xDFFF)
        return false;
    return utf8proc_category(utf8proc_int32_t(c)) == UTF8PROC_CATEGORY_ND;
}

std::string case_map(const std::string& s, int mode) {
    std::string out;
    out.reserve(s.size());
    if (is_ascii(s)) {
        for (char c : s)
            out.push_back(char(map_case(char32_t(c), mode)));
        return out;
    }
    for (char32_t c : utf8_decode(s))
        utf8_append(out, map_case(c, mode));
    return out;
}

std::string py_title(const std::string& s) { // str.title()
    std::string out;
    bool        prev_cased = false;
    for (char32_t c : utf8_decode(s)) {
        utf8_append(out, map_case(c, prev_cased ? 0 : 2));
        prev_cased = is_cased(c);
    }
    return out;
}

std::string py_capitalize(const std::string& s) { // str.capitalize()
    std::u32string u = utf8_decode(s);
    std::string    out;
    for (size_t i = 0; i < u.size(); ++i)
        utf8_append(out, map_case(u[i], i == 0 ? 2 : 0));
    return out;
}

std::string jinja_title(const std::string& s) {
    // jinja2's title filter: split on runs of [-\s({\[<] and capitalise each piece's first character.
    std::u32string u = utf8_decode(s);
    std::string    out;
    bool           at_start = true;
    for (char32_t c : u) {
        bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_python_space(c);
        if (sep) {
            utf8_append(out, c);
            at_start = true;
        } else {
            utf8_append(out, map_case(c, at_start ? 1 : 0));
            at_start = false;
        }
    }
    return out;
}

std::string py_strip(const std::string& s, const Value& chars, bool left, bool right) {
    std::u32string u = utf8_decode(s);
    std::u32string set;
    bool           ws = chars.is_none() || chars.is_undefined();
    if (!ws)
        set = utf8_decode(need_string(chars, "strip chars"));
    auto   strip_it = [&](char32_t c) { return ws ? is_python_space(c) : set.find(c) != std::u32string::npos; };
    size_t b = 0, e = u.size();
    if (left)
        while (b < e && strip_it(u[b]))
            ++b;
    if (right)
        while (e > b && strip_it(u[e - 1]))
            --e;
    if (ws && is_ascii(s))
        return s.substr(b, e - b);
    return utf8_encode(std::u32string_view(u).substr(b, e - b));
}

Value str_list(std::vector<std::string> parts) {
    check_list_size(parts.size());
    std::vector<Value> items;
    items.reserve(parts.size());
    for (auto& p : parts)
        items.emplace_back(std::move(p));
    return Value::list(std::move(items));
}

std::vector<std::string> py_split(const std::string& s, const Value& sep_v, int64_t maxsplit, bool from_right) {
    std::vector<std::string> parts;
    if (sep_v.is_none() || sep_v.is_undefined()) {
        // Runs of whitespace separate; leading/trailing whitespace gives no empty strings.
        std::u32string                         u = utf8_decode(s);
        std::vector<std::pair<size_t, size_t>> words;
        size_t                                 i = 0;
        while (i < u.size()) {
            while (i < u.size() && is_python_space(u[i]))
                ++i;
            if (i >= u.size())
                break;
            size_t j = i;
            while (j < u.size() && !is_python_space(u[j]))
                ++j;
            words.emplace_back(i, j);
            i = j;
        }
        // Past maxsplit the rest of the string is one piece, keeping its inner and outer whitespace (CPython).
        if (maxsplit >= 0 && int64_t(words.size()) > maxsplit) {
            size_t keep = size_t(maxsplit);
            if (!from_right) {
                size_t rest_start = words[keep].first;
                words.resize(keep);
                words.emplace_back(rest_start, u.size());
            } else {
                std::vector<std::pair<size_t, size_t>> w2{{0, words[words.size() - keep - 1].second}};
                w2.insert(w2.end(), words.end() - std::ptrdiff_t(keep), words.end());
                words = std::move(w2);
            }
        }
        for (auto [a, b] : words)
            parts.push_back(utf8_encode(std::u32string_view(u).substr(a, b - a)));
        return parts;
    }
    const std::string& sep = need_string(sep_v, "separator");
    if (sep.empty())
        throw RenderError{"empty separator"};
    if (!from_right) {
        size_t start = 0;
        for (int64_t n = 0; maxsplit < 0 || n < maxsplit; ++n) {
            size_t p = s.find(sep, start);
            if (p == std::string::npos)
                break;
            parts.push_back(s.substr(start, p - start));
            start = p + sep.size();
        }
        parts.push_back(s.substr(start));
    } else {
        size_t end = s.size();
        for (int64_t n = 0; maxsplit < 0 || n < maxsplit; ++n) {
            if (end < sep.size())
                break;
            size_t p = s.rfind(sep, end - sep.size());
            if (p == std::string::npos)
                break;
            parts.push_back(s.substr(p + sep.size(), end - p - sep.size()));
            end = p;
        }
        parts.push_back(s.substr(0, end));
        std::reverse(parts.begin(), parts.end());
    }
    return parts;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
    std::u32string           u = utf8_decode(s);
    std::vector<std::string> lines;
    size_t                   start = 0;
    for (size_t i = 0; i < u.size(); ++i) {
        char32_t c   = u[i];
        bool     brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
                   c == 0x85 || c == 0x2028 || c == 0x2029;
        if (!brk)
            continue;
        size_t eol = i + 1;
        if (c == '\r' && i + 1 < u.size() && u[i + 1] == '\n')
            eol = i + 2;
        lines.push_back(utf8_encode(std::u32string_view(u).substr(start, (keepends ? eol : i) - start)));
        start = eol;
        i     = eol - 1;
    }
    if (start < u.size())
        lines.push_back(utf8_encode(std::u32string_view(u).substr(start)));
    return lines;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count) {
    std::string out;
    if (old.empty()) { // inserts rep between characters and at both ends
        std::u32string u = utf8_decode(s);
        int64_t        n = 0;
        for (char32_t c : u) {
            if (count < 0 || n < count) {
                out += rep;
                ++n;
            }
            utf8_append(out, c);
            check_string_size(out.size());
        }
        if (count < 0 || n < count)
            out += rep;
        return out;
    }
    size_t  start = 0;
    int64_t n     = 0;
    for (;;) {
        size_t p = (count < 0 || n < count) ? s.find(old, start) : std::string::npos;
        if (p == std::string::npos)
            break;
        out.append(s, start, p - start);
        out += rep;
        check_string_size(out.size());
        start = p + old.size();
        ++n;
    }
    out.append(s, start, std::string::npos);
    check_string_size(out.size());
    return out;
}

int64_t cp_index(const std::string& s, size_t byte_pos) {
    return int64_t(utf8_length(s.substr(0, byte_pos)));
}

bool match_affix(const std::string& s, const Value& affix, bool prefix) {
    auto one = [&](const std::string& a) {
        if (a.size() > s.size())
            return false;
        return prefix ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
    };
    if (affix.is_list()) {
        for (const auto& v : affix.as_list().items)
            if (one(need_string(v, prefix ? "startswith argument" : "endswith argument")))
                return true;
        return false;
    }
    return one(need_string(affix, prefix ? "startswith argument" : "endswith argument"));
}

std::string pad_center(const std::string& s, int64_t width, const std::string& fill, int align) {
    // align: 0 center (Python's str.center bias), -1 left (ljust), 1 right (rjust)
    int64_t len = int64_t(utf8_length(s));
    if (width <= len)
        return s;
    if (uint64_t(width) > k_max_string_bytes / std::max<size_t>(fill.size(), 1))
        check_string_size(k_max_string_bytes + 1);
    int64_t marg = width - len, left;
    if (align < 0)
        left = 0;
    else if (align > 0)
        left = marg;
    else
        left = marg / 2 + (marg & width & 1);
    std::string out;
    for (int64_t i = 0; i < left; ++i)
        out += fill;
    out += s;
    for (int64_t i = 0; i < marg - left; ++i)
        out += fill;
    return out;
}

bool all_chars(const std::string& s, bool (*pred)(char32_t)) {
    if (s.empty())
        return false;
    for (char32_t c : utf8_decode(s))
        if (!pred(c))
            return false;
    return true;
}

// islower()/isupper(): at least one cased character and no character of the other case.
bool py_case_test(const std::string& s, bool upper) {
    bool any = false;
    for (char32_t c : utf8_decode(s)) {
        if (!is_cased(c))
            continue;
        bool is_up = map_case(c, 0) != c; // has a lowercase mapping: upper or title case
        bool is_lo = map_case(c, 1) != c;
        if (upper ? is_lo && !is_up : is_up && !is_lo)
            return false;
        if (upper ? is_up : is_lo)
            any = true;
    }
    return any;
}

// ---- printf-style formatting (the % operator on strings and the format filter) --------------------------------

template <class T> static std::string c_format(const std::string& spec, T x) {
    int         n = std::snprintf(nullptr, 0, spec.c_str(), x);
    std::string out(size_t(std::max(n, 0)), '\0');
    std::snprintf(out.data(), out.size() + 1, spec.c_str(), x);
    return out;
}

static std::string format_number(char type, const std::string& flags, int width, int prec, const Value& v) {
    if (!v.is_number())
        throw RenderError{std::string("%") + type + " format: a real number is required, not " + v.type_name()};
    std::string spec = "%" + flags;
    if (width >= 0)
        spec += std::to_string(width);
    if (prec >= 0)
        spec += "." + std::to_string(prec);
    if (type == 'd' || type == 'i' || type == 'x' || type == 'X' || type == 'o') {
        double d = v.as_double();
        if (v.is_float() && !(std::fabs(d) < 9.2e18))
            throw RenderError{"cannot format " + python_float_repr(d) + " as an integer"};
        int64_t n = v.is_float() ? int64_t(d) : v.as_int();
        return c_format(spec + "ll" + (type == 'i' ? 'd' : type), (long long)n);
    }
    return c_format(spec + type, v.as_double());
}

std::string percent_format(const std::string& fmt, const Value& args) {
    std::vector<Value> positional;
    const DictObj*     mapping = nullptr;
    if (args.is_list() && args.as_list().is_tuple)
        positional = args.as_list().items;
    else if (args.is_dict())
        mapping = &args.as_dict();
    else
        positional.push_back(args);
    size_t      next_arg = 0;
    std::string out;
    for (size_t i = 0; i < fmt.size(); ++i) {
        if (fmt[i] != '%') {
            out.push_back(fmt[i]);
            continue;
        }
        if (++i >= fmt.size())
            throw RenderError{"incomplete format"};
        if (fmt[i] == '%') {
            out.push_back('%');
            continue;
        }
        const Value* arg = nullptr;
        if (fmt[i] == '(') {
            size_t close = fmt.find(')', i);
            if (close == std::string::npos || !mapping)
                throw RenderError{"format requires a mapping"};
            arg = mapping->find(fmt.substr(i + 1, close - i - 1));
            if (!arg)
                throw RenderError{"format key '" + fmt.substr(i + 1, close - i - 1) + "' not found"};
            i = close + 1;
        }
        std::string flags;
        while (i < fmt.size() && std::strchr("-+ #0", fmt[i]) && fmt[i])
            flags.push_back(fmt[i++]);
        int width = -1, prec = -1;
        while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9')
            width = std::max(width, 0) * 10 + (fmt[i++] - '0');
        if (i < fmt.size() && fmt[i] == '.') {
            prec = 0;
            ++i;
            while (i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9')
                prec = prec * 10 + (fmt[i++] - '0');
        }
        if (i >= fmt.size())
            throw RenderError{"incomplete format"};
        if (width > 1000 || prec > 1000)
            throw RenderError{"format width too large"};
        if (!arg) {
            if (next_arg >= positional.size())
                throw RenderError{"not enough arguments for format string"};
            arg = &positional[next_arg++];
        }
        char type = fmt[i];
        if (type == 's' || type == 'r') {
            std::string s = type == 's' ? to_str(*arg) : to_repr(*arg);
            if (prec >= 0)
                s = utf8_encode(utf8_decode(s).substr(0, size_t(prec)));
            out += pad_center(s, width, " ", flags.find('-') != std::string::npos ? -1 : 1);
        } else if (std::strchr("dixXoeEfFgG", type) && type) {
            out += format_number(type, flags, width, prec, *arg);
        } else {
            throw RenderError{std::string("unsupported format character '") + type + "'"};
        }
        check_string_size(out.size());
    }
    if (!mapping && next_arg < positional.size())
        throw RenderError{"not all arguments converted during string formatting"};
    return out;
}

} // namespace moebius::jinja
