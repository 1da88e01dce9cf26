// Filters, tests and global functions of the Jinja2 subset (jinja2's builtins plus transformers' tojson).
#include "engine/core/jinja_builtins.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unordered_map>

namespace moebius::jinja {

// ---- filters ------------------------------------------------------------------------------------------------------

namespace {

using FilterFn = Value (*)(const Value&, CallArgs&);

// Dotted attribute paths as used by map(attribute=...), sort(attribute=...): "a.b" or "items.0".
Value get_path(const Value& v, const Value& path) {
    if (path.is_int())
        return get_item(v, path);
    Value       cur   = v;
    std::string p     = need_string(path, "attribute");
    size_t      start = 0;
    for (;;) {
        size_t      dot  = p.find('.', start);
        std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        bool num = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
        cur = num ? get_item(cur, Value(int64_t(std::strtoll(part.c_str(), nullptr, 10)))) : get_item(cur, Value(part));
        if (dot == std::string::npos)
            return cur;
        start = dot + 1;
    }
}

// sorted(reverse=...) takes only an int or bool.
bool reverse_flag(const Value& v) {
    if (!v.is_bool() && !v.is_int())
        throw RenderError{"'" + v.type_name() + "' object cannot be interpreted as an integer"};
    return v.truthy();
}

Value fold_case(const Value& v, bool case_sensitive) {
    if (!case_sensitive && v.is_string())
        return Value(case_map(v.as_string(), 0));
    return v;
}

int64_t py_len(const Value& v) {
    switch (v.kind()) {
    case Value::Kind::Undefined:
        return 0;
    case Value::Kind::String:
        return int64_t(utf8_length(v.as_string()));
    case Value::Kind::List:
        return int64_t(v.as_list().items.size());
    case Value::Kind::Dict:
        return int64_t(v.as_dict().items.size());
    default:
        throw RenderError{"object of type '" + v.type_name() + "' has no len()"};
    }
}

std::string html_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
        case '&':
            out += "&amp;";
            break;
        case '<':
            out += "&lt;";
            break;
        case '>':
            out += "&gt;";
            break;
        case '"':
            out += "&#34;";
            break;
        case '\'':
            out += "&#39;";
            break;
        default:
            out.push_back(c);
        }
    }
    return out;
}

bool parse_py_int(std::string s, int base, int64_t& out) {
    // int(str, base): surrounding whitespace, sign, optional prefix, single underscores between digits
    std::u32string u = utf8_decode(s);
    size_t         b = 0, e = u.size();
    while (b < e && is_python_space(u[b]))
        ++b;
    while (e > b && is_python_space(u[e - 1]))
        --e;
    s          = utf8_encode(std::u32string_view(u).substr(b, e - b));
    size_t i   = 0;
    bool   neg = false;
    if (i < s.size() && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if (i + 1 < s.size() && s[i] == '0') {
        char p = char(s[i + 1] | 0x20);
        if ((p == 'x' && base == 16) || (p == 'o' && base == 8) || (p == 'b' && base == 2))
            i += 2;
    }
    if (i >= s.size())
        return false;
    uint64_t v       = 0;
    bool     prev_us = true;
    for (; i < s.size(); ++i) {
        char c = s[i];
        if (c == '_') {
            if (prev_us)
                return false;
            prev_us = true;
            continue;
        }
        int d = c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'z' ? (c | 0x20) - 'a' + 10 : 99;
        if (d >= base)
            return false;
        v = v * uint64_t(base) + uint64_t(d);
        if (v > uint64_t(INT64_MAX))
            return false;
        prev_us = false;
    }
    if (prev_us)
        return false;
    out = neg ? -int64_t(v) : int64_t(v);
    return true;
}

bool parse_py_float(const std::string& s, double& out) {
    std::string t = py_strip(s, Value::none(), true, true);
    if (t.empty())
        return false;
    std::string clean;
    for (size_t i = 0; i < t.size(); ++i) {
        if (t[i] == '_') {
            if (i == 0 || i + 1 >= t.size() || !std::isdigit((unsigned char)t[i - 1]) ||
                !std::isdigit((unsigned char)t[i + 1]))
                return false;
            continue;
        }
        clean.push_back(t[i]);
    }
    std::string lower = case_map(clean, 0);
    size_t      sign  = lower[0] == '-' || lower[0] == '+' ? 1 : 0;
    std::string body  = lower.substr(sign);
    if (body == "inf" || body == "infinity" || body == "nan") {
        out = body == "nan" ? NAN : INFINITY;
        if (lower[0] == '-')
            out = -out;
        return true;
    }
    for (char c : body)
        if (!std::strchr("0123456789.e+-", c) || c == 0)
            return false;
    char* end = nullptr;
    out       = std::strtod(clean.c_str(), &end);
    return end && *end == 0;
}

Value f_abs(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "abs");
    if (v.is_float())
        return Value(std::fabs(v.as_double()));
    if (v.is_int() || v.is_bool()) {
        if (v.as_int() == INT64_MIN)
            throw RenderError{"integer overflow"};
        return Value(std::abs(v.as_int()));
    }
    if (v.is_undefined())
        fail_undefined(v);
    throw RenderError{"bad operand type for abs(): '" + v.type_name() + "'"};
}

Value f_attr(const Value& v, CallArgs& a) {
    check_args(a, 1, {}, "attr");
    if (!find_arg(a, 0, nullptr))
        throw RenderError{"attr() requires an attribute name"};
    return get_attr(v, need_string(arg_or(a, 0, nullptr, Value()), "attribute name"));
}

Value f_capitalize(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "capitalize");
    return Value(py_capitalize(soft_str(v)));
}

Value f_center(const Value& v, CallArgs& a) {
    check_args(a, 1, {"width"}, "center");
    return Value(pad_center(soft_str(v), need_int(arg_or(a, 0, "width", Value(int64_t(80))), "width"), " ", 0));
}

Value f_default(const Value& v, CallArgs& a) {
    check_args(a, 2, {"default_value", "boolean"}, "default");
    bool boolean = arg_or(a, 1, "boolean", Value(false)).truthy();
    if (v.is_undefined() || (boolean && !v.truthy()))
        return arg_or(a, 0, "default_value", Value(""));
    return v;
}

Value f_dictsort(const Value& v, CallArgs& a) {
    check_args(a, 3, {"case_sensitive", "by", "reverse"}, "dictsort");
    if (!v.is_dict())
        throw RenderError{"dictsort requires a mapping"};
    bool        cs  = arg_or(a, 0, "case_sensitive", Value(false)).truthy();
    std::string by  = need_string(arg_or(a, 1, "by", Value("key")), "by");
    bool        rev = reverse_flag(arg_or(a, 2, "reverse", Value(false)));
    if (by != "key" && by != "value")
        throw RenderError{"You can only sort by either \"key\" or \"value\""};
    std::vector<std::pair<std::string, Value>> items = v.as_dict().items;
    int                                        pos   = by == "key" ? 0 : 1;
    std::stable_sort(items.begin(), items.end(), [&](const auto& x, const auto& y) {
        Value kx = fold_case(pos ? x.second : Value(x.first), cs), ky = fold_case(pos ? y.second : Value(y.first), cs);
        return rev ? value_less(ky, kx) : value_less(kx, ky);
    });
    std::vector<Value> out;
    for (auto& [k, val] : items)
        out.push_back(Value::list({Value(k), val}, true));
    return Value::list(std::move(out));
}

Value f_escape(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "escape");
    return Value(html_escape(soft_str(v)));
}

Value f_first(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "first");
    if (v.is_list() && !v.as_list().items.empty())
        return v.as_list().items.front();
    if (v.is_list() || v.is_undefined())
        return Value::undefined("No first item, sequence was empty.");
    std::vector<Value> items = iterate(v);
    if (items.empty())
        return Value::undefined("No first item, sequence was empty.");
    return items.front();
}

Value f_last(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "last");
    if (v.is_list() && !v.as_list().items.empty())
        return v.as_list().items.back();
    if (v.is_list() || v.is_undefined())
        return Value::undefined("No last item, sequence was empty.");
    std::vector<Value> items = iterate(v);
    if (items.empty())
        return Value::undefined("No last item, sequence was empty.");
    return items.back();
}

Value f_float(const Value& v, CallArgs& a) {
    check_args(a, 1, {"default"}, "float");
    if (v.is_number())
        return Value(v.as_double());
    double d;
    if (v.is_string() && parse_py_float(v.as_string(), d))
        return Value(d);
    return arg_or(a, 0, "default", Value(0.0));
}

Value f_format(const Value& v, CallArgs& a) {
    if (!a.keyword.empty() && !a.positional.empty())
        throw RenderError{"can't handle positional and keyword arguments at the same time"};
    if (!a.keyword.empty())
        return Value(percent_format(soft_str(v), Value::dict(a.keyword)));
    return Value(percent_format(soft_str(v), Value::list(a.positional, true)));
}

Value f_indent(const Value& v, CallArgs& a) {
    check_args(a, 3, {"width", "first", "blank"}, "indent");
    Value       w = arg_or(a, 0, "width", Value(int64_t(4)));
    std::string indent =
        w.is_string() ? w.as_string()
                      : std::string(size_t(std::max<int64_t>(0, std::min<int64_t>(need_int(w, "width"), 1000))), ' ');
    bool                     first = arg_or(a, 1, "first", Value(false)).truthy();
    bool                     blank = arg_or(a, 2, "blank", Value(false)).truthy();
    std::string              s     = soft_str(v) + "\n";
    std::vector<std::string> lines = py_splitlines(s, false);
    std::string              out;
    for (size_t i = 0; i < lines.size(); ++i) {
        if (i) {
            out += "\n";
            if (blank || !lines[i].empty())
                out += indent;
        }
        out += lines[i];
        check_string_size(out.size());
    }
    if (first)
        out = indent + out;
    return Value(std::move(out));
}

Value f_int(const Value& v, CallArgs& a) {
    check_args(a, 2, {"default", "base"}, "int");
    Value   dflt = arg_or(a, 0, "default", Value(int64_t(0)));
    int64_t base = need_int(arg_or(a, 1, "base", Value(int64_t(10))), "base");
    if (v.is_int() || v.is_bool())
        return Value(v.as_int());
    if (v.is_float()) {
        double d = v.as_double();
        if (!std::isfinite(d) || std::fabs(d) >= 9.2e18)
            return dflt;
        return Value(int64_t(d));
    }
    if (v.is_string()) {
        int64_t i;
        if (base >= 2 && base <= 36 && parse_py_int(v.as_string(), int(base), i))
            return Value(i);
        double d;
        if (parse_py_float(v.as_string(), d) && std::isfinite(d) && std::fabs(d) < 9.2e18)
            return Value(int64_t(d));
    }
    return dflt;
}

Value f_items(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "items");
    if (v.is_undefined())
        return Value::list({});
    if (!v.is_dict())
        throw RenderError{"Can only get item pairs from a mapping."};
    CallArgs none;
    return call_dict_method(v, "items", none);
}

Value f_join(const Value& v, CallArgs& a) {
    check_args(a, 2, {"d", "attribute"}, "join");
    std::string  sep  = soft_str(arg_or(a, 0, "d", Value("")));
    const Value* attr = find_arg(a, 1, "attribute");
    std::string  out;
    bool         first = true;
    for (const auto& item : iterate(v)) {
        if (!first)
            out += sep;
        first = false;
        append_str(out, attr && !attr->is_none() ? get_path(item, *attr) : item);
        check_string_size(out.size());
    }
    return Value(std::move(out));
}

Value f_length(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "length");
    return Value(py_len(v));
}

Value f_list(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "list");
    return Value::list(iterate(v));
}

Value f_lower(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "lower");
    return Value(case_map(soft_str(v), 0));
}

Value f_upper(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "upper");
    return Value(case_map(soft_str(v), 1));
}

Value f_map(const Value& v, CallArgs& a) {
    std::vector<Value> out;
    if (const Value* attr = find_arg(a, size_t(-1), "attribute")) {
        Value dflt = arg_or(a, size_t(-1), "default", Value());
        for (const auto& item : iterate(v)) {
            Value r = get_path(item, *attr);
            out.push_back(r.is_undefined() && find_arg(a, size_t(-1), "default") ? dflt : r);
        }
        return Value::list(std::move(out));
    }
    std::vector<Value> items = iterate(v);
    if (items.empty()) // jinja2 checks the arguments only when there is an item to map
        return Value::list({});
    if (a.positional.empty())
        throw RenderError{"map requires a filter name or an attribute"};
    std::string name = need_string(a.positional[0], "filter name");
    CallArgs    rest;
    rest.positional.assign(a.positional.begin() + 1, a.positional.end());
    rest.keyword = a.keyword;
    for (const auto& item : items) {
        CallArgs copy = rest;
        out.push_back(apply_filter(name, item, copy));
    }
    return Value::list(std::move(out));
}

Value minmax(const Value& v, CallArgs& a, bool want_max) {
    check_args(a, 2, {"case_sensitive", "attribute"}, want_max ? "max" : "min");
    bool               cs    = arg_or(a, 0, "case_sensitive", Value(false)).truthy();
    const Value*       attr  = find_arg(a, 1, "attribute");
    std::vector<Value> items = iterate(v);
    if (items.empty())
        return Value::undefined("No aggregated item, sequence was empty.");
    auto   key  = [&](const Value& x) { return fold_case(attr && !attr->is_none() ? get_path(x, *attr) : x, cs); };
    size_t best = 0;
    for (size_t i = 1; i < items.size(); ++i) {
        bool better =
            want_max ? value_less(key(items[best]), key(items[i])) : value_less(key(items[i]), key(items[best]));
        if (better)
            best = i;
    }
    return items[best];
}
Value f_max(const Value& v, CallArgs& a) {
    return minmax(v, a, true);
}
Value f_min(const Value& v, CallArgs& a) {
    return minmax(v, a, false);
}

Value f_pprint(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "pprint");
    return Value(to_repr(v));
}

Value f_replace(const Value& v, CallArgs& a) {
    check_args(a, 3, {"old", "new", "count"}, "replace");
    if (!find_arg(a, 0, "old") || !find_arg(a, 1, "new"))
        throw RenderError{"replace() requires the arguments old and new"};
    Value count = arg_or(a, 2, "count", Value::none());
    return Value(py_replace(soft_str(v), soft_str(arg_or(a, 0, "old", Value())), soft_str(arg_or(a, 1, "new", Value())),
                            count.is_none() ? -1 : need_int(count, "count")));
}

Value f_reverse(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "reverse");
    if (v.is_string()) {
        std::u32string u = utf8_decode(v.as_string());
        std::reverse(u.begin(), u.end());
        return Value(utf8_encode(u));
    }
    std::vector<Value> items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
}

Value f_round(const Value& v, CallArgs& a) {
    check_args(a, 2, {"precision", "method"}, "round");
    int64_t     prec   = need_int(arg_or(a, 0, "precision", Value(int64_t(0))), "precision");
    std::string method = need_string(arg_or(a, 1, "method", Value("common")), "method");
    if (!v.is_number()) {
        if (v.is_undefined())
            fail_undefined(v);
        throw RenderError{"round() requires a number, not " + v.type_name()};
    }
    double x = v.as_double();
    if (method == "ceil" || method == "floor") {
        double m = std::pow(10.0, double(prec));
        return Value((method == "ceil" ? std::ceil(x * m) : std::floor(x * m)) / m);
    }
    if (method != "common")
        throw RenderError{"method must be common, ceil or floor"};
    if (!std::isfinite(x))
        return Value(x);
    // Python's round(): correctly rounded, ties to even. printf rounds the exact binary value the same way.
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", int(std::clamp<int64_t>(prec, 0, 300)), x);
    double r = std::strtod(buf, nullptr);
    if (prec < 0) {
        double m = std::pow(10.0, double(-prec));
        r        = std::nearbyint(x / m) * m;
    }
    return Value(r);
}

Value f_safe(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "safe");
    return v;
}

Value select_impl(const Value& v, CallArgs& a, bool want, bool by_attr) {
    std::vector<Value> out;
    size_t             first_test_arg = by_attr ? 1 : 0;
    Value              attr           = by_attr ? arg_or(a, 0, nullptr, Value()) : Value();
    if (by_attr && attr.is_undefined())
        throw RenderError{"selectattr/rejectattr need an attribute name"};
    std::string test;
    CallArgs    test_args;
    if (a.positional.size() > first_test_arg) {
        test = need_string(a.positional[first_test_arg], "test name");
        test_args.positional.assign(a.positional.begin() + std::ptrdiff_t(first_test_arg) + 1, a.positional.end());
        test_args.keyword = a.keyword;
    }
    for (const auto& item : iterate(v)) {
        Value subject = by_attr ? get_path(item, attr) : item;
        bool  ok;
        if (test.empty()) {
            ok = subject.truthy();
        } else {
            CallArgs copy = test_args;
            ok            = apply_test(test, subject, copy);
        }
        if (ok == want)
            out.push_back(item);
    }
    return Value::list(std::move(out));
}
Value f_select(const Value& v, CallArgs& a) {
    return select_impl(v, a, true, false);
}
Value f_reject(const Value& v, CallArgs& a) {
    return select_impl(v, a, false, false);
}
Value f_selectattr(const Value& v, CallArgs& a) {
    return select_impl(v, a, true, true);
}
Value f_rejectattr(const Value& v, CallArgs& a) {
    return select_impl(v, a, false, true);
}

Value f_sort(const Value& v, CallArgs& a) {
    check_args(a, 3, {"reverse", "case_sensitive", "attribute"}, "sort");
    bool                                  rev   = reverse_flag(arg_or(a, 0, "reverse", Value(false)));
    bool                                  cs    = arg_or(a, 1, "case_sensitive", Value(false)).truthy();
    const Value*                          attr  = find_arg(a, 2, "attribute");
    std::vector<Value>                    items = iterate(v);
    std::vector<std::pair<Value, size_t>> keyed;
    for (size_t i = 0; i < items.size(); ++i)
        keyed.emplace_back(fold_case(attr && !attr->is_none() ? get_path(items[i], *attr) : items[i], cs), i);
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
        return rev ? value_less(y.first, x.first) : value_less(x.first, y.first);
    });
    std::vector<Value> out;
    for (const auto& k : keyed)
        out.push_back(items[k.second]);
    return Value::list(std::move(out));
}

Value f_string(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "string");
    return Value(soft_str(v));
}

Value f_sum(const Value& v, CallArgs& a) {
    check_args(a, 2, {"attribute", "start"}, "sum");
    const Value* attr  = find_arg(a, 0, "attribute");
    Value        total = arg_or(a, 1, "start", Value(int64_t(0)));
    for (const auto& item : iterate(v))
        total = binary_op("+", total, attr && !attr->is_none() ? get_path(item, *attr) : item);
    return total;
}

Value f_title(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "title");
    return Value(jinja_title(soft_str(v)));
}

Value f_tojson(const Value& v, CallArgs& a) {
    // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) = json.dumps(...)
    check_args(a, 4, {"ensure_ascii", "indent", "separators", "sort_keys"}, "tojson");
    bool      ensure_ascii = arg_or(a, 0, "ensure_ascii", Value(false)).truthy();
    Value     indent       = arg_or(a, 1, "indent", Value::none());
    Value     seps         = arg_or(a, 2, "separators", Value::none());
    JsonStyle st;
    st.sort_keys = arg_or(a, 3, "sort_keys", Value(false)).truthy();
    if (indent.is_string()) {
        st.has_indent = true;
        st.indent     = indent.as_string();
    } else if (!indent.is_none() && !indent.is_undefined()) {
        st.has_indent = true;
        st.indent     = std::string(size_t(std::clamp<int64_t>(need_int(indent, "indent"), 0, 1000)), ' ');
    }
    st.item_separator = st.has_indent ? "," : ", ";
    if (!seps.is_none() && !seps.is_undefined()) {
        if (!seps.is_list() || seps.as_list().items.size() != 2)
            throw RenderError{"separators must be a pair of strings"};
        st.item_separator = need_string(seps.as_list().items[0], "separator");
        st.key_separator  = need_string(seps.as_list().items[1], "separator");
    }
    std::string json = to_json(v, st);
    check_string_size(json.size());
    if (!ensure_ascii || is_ascii(json))
        return Value(std::move(json));
    std::string out;
    for (char32_t c : utf8_decode(json)) {
        if (c < 0x80) {
            out.push_back(char(c));
            continue;
        }
        char buf[16];
        if (c >= 0x10000) {
            char32_t x = c - 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", unsigned(0xD800 + (x >> 10)),
                          unsigned(0xDC00 + (x & 0x3FF)));
        } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
        }
        out += buf;
    }
    return Value(std::move(out));
}

Value f_trim(const Value& v, CallArgs& a) {
    check_args(a, 1, {"chars"}, "trim");
    return Value(py_strip(soft_str(v), arg_or(a, 0, "chars", Value::none()), true, true));
}

Value f_truncate(const Value& v, CallArgs& a) {
    check_args(a, 4, {"length", "killwords", "end", "leeway"}, "truncate");
    std::u32string s        = utf8_decode(soft_str(v));
    int64_t        length   = need_int(arg_or(a, 0, "length", Value(int64_t(255))), "length");
    bool           kill     = arg_or(a, 1, "killwords", Value(false)).truthy();
    std::u32string end      = utf8_decode(soft_str(arg_or(a, 2, "end", Value("..."))));
    Value          leeway_v = arg_or(a, 3, "leeway", Value::none());
    int64_t        leeway   = leeway_v.is_none() ? 5 : need_int(leeway_v, "leeway");
    if (int64_t(s.size()) <= length + leeway)
        return Value(utf8_encode(s));
    int64_t        keep = std::max<int64_t>(0, length - int64_t(end.size()));
    std::u32string head = s.substr(0, size_t(keep));
    if (!kill) {
        size_t sp = head.rfind(U' ');
        if (sp != std::u32string::npos)
            head = head.substr(0, sp);
    }
    return Value(utf8_encode(head + end));
}

Value f_unique(const Value& v, CallArgs& a) {
    check_args(a, 2, {"case_sensitive", "attribute"}, "unique");
    bool               cs   = arg_or(a, 0, "case_sensitive", Value(false)).truthy();
    const Value*       attr = find_arg(a, 1, "attribute");
    std::vector<Value> seen, out;
    for (const auto& item : iterate(v)) {
        Value key = fold_case(attr && !attr->is_none() ? get_path(item, *attr) : item, cs);
        if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return values_equal(s, key); }))
            continue;
        seen.push_back(key);
        out.push_back(item);
    }
    return Value::list(std::move(out));
}

Value f_wordcount(const Value& v, CallArgs& a) {
    check_args(a, 0, {}, "wordcount");
    int64_t n       = 0;
    bool    in_word = false;
    for (char32_t c : utf8_decode(soft_str(v))) {
        bool w = c == '_' || is_alpha(c) || is_digit_cp(c);
        if (w && !in_word)
            ++n;
        in_word = w;
    }
    return Value(n);
}

const std::unordered_map<std::string, FilterFn>& filters() {
    static const std::unordered_map<std::string, FilterFn> table = {
        {"abs", f_abs},
        {"attr", f_attr},
        {"capitalize", f_capitalize},
        {"center", f_center},
        {"count", f_length},
        {"d", f_default},
        {"default", f_default},
        {"dictsort", f_dictsort},
        {"e", f_escape},
        {"escape", f_escape},
        {"first", f_first},
        {"float", f_float},
        {"forceescape", f_escape},
        {"format", f_format},
        {"indent", f_indent},
        {"int", f_int},
        {"items", f_items},
        {"join", f_join},
        {"last", f_last},
        {"length", f_length},
        {"list", f_list},
        {"lower", f_lower},
        {"map", f_map},
        {"max", f_max},
        {"min", f_min},
        {"pprint", f_pprint},
        {"reject", f_reject},
        {"rejectattr", f_rejectattr},
        {"replace", f_replace},
        {"reverse", f_reverse},
        {"round", f_round},
        {"safe", f_safe},
        {"select", f_select},
        {"selectattr", f_selectattr},
        {"sort", f_sort},
        {"string", f_string},
        {"sum", f_sum},
        {"title", f_title},
        {"tojson", f_tojson},
        {"trim", f_trim},
        {"truncate", f_truncate},
        {"unique", f_unique},
        {"upper", f_upper},
        {"wordcount", f_wordcount},
    };
    return table;
}

// ---- tests --------------------------------------------------------------------------------------------------------

bool compare_test(const std::string& name, const Value& v, CallArgs& a) {
    check_args(a, 1, {}, name);
    Value other = arg_or(a, 0, nullptr, Value());
    if (name == "eq" || name == "equalto" || name == "==")
        return values_equal(v, other);
    if (name == "ne" || name == "!=")
        return !values_equal(v, other);
    if (name == "lt" || name == "lessthan" || name == "<")
        return value_less(v, other);
    if (name == "le" || name == "<=")
        return !value_less(other, v);
    if (name == "gt" || name == "greaterthan" || name == ">")
        return value_less(other, v);
    return !value_less(v, other); // ge, >=
}

bool is_compare_test(const std::string& n) {
    static const char* names[] = {"eq", "equalto", "==", "ne",          "!=", "lt", "lessthan", "<",
                                  "le", "<=",      "gt", "greaterthan", ">",  "ge", ">="};
    for (const char* x : names)
        if (n == x)
            return true;
    return false;
}

bool is_simple_test(const std::string& n) {
    static const char* names[] = {"defined",  "undefined",   "none",   "boolean", "true",    "false",
                                  "integer",  "float",       "number", "string",  "mapping", "iterable",
                                  "sequence", "callable",    "lower",  "upper",   "odd",     "even",
                                  "escaped",  "divisibleby", "in",     "sameas",  "filter",  "test"};
    for (const char* x : names)
        if (n == x)
            return true;
    return false;
}

} // namespace

bool has_filter(const std::string& name) {
    return filters().count(name) != 0;
}

Value apply_filter(const std::string& name, const Value& v, CallArgs& args) {
    auto it = filters().find(name);
    if (it == filters().end())
        throw RenderError{"no filter named '" + name + "'"};
    return it->second(v, args);
}

bool has_test(const std::string& name) {
    return is_simple_test(name) || is_compare_test(name);
}

bool apply_test(const std::string& name, const Value& v, CallArgs& a) {
    using K = Value::Kind;
    if (is_compare_test(name))
        return compare_test(name, v, a);
    if (name == "filter" || name == "test") { // 'upper' is filter
        check_args(a, 0, {}, name);
        return v.is_string() && (name == "filter" ? has_filter(v.as_string()) : has_test(v.as_string()));
    }
    if (name == "divisibleby" || name == "in" || name == "sameas") {
        check_args(a, 1, {}, name);
        const Value* arg = find_arg(a, 0, nullptr);
        if (!arg)
            throw RenderError{"test '" + name + "' takes one argument"};
        if (name == "divisibleby") {
            Value r = binary_op("%", v, *arg);
            return values_equal(r, Value(int64_t(0)));
        }
        if (name == "in")
            return contains(*arg, v);
        // sameas: identity for containers, equality of kind and value for scalars
        if (v.kind() != arg->kind())
            return false;
        if (v.is_list())
            return v.list_ptr() == arg->list_ptr();
        if (v.is_dict())
            return v.dict_ptr() == arg->dict_ptr();
        return values_equal(v, *arg);
    }
    check_args(a, 0, {}, name);
    if (name == "defined")
        return !v.is_undefined();
    if (name == "undefined")
        return v.is_undefined();
    if (name == "none")
        return v.is_none();
    if (name == "boolean")
        return v.is_bool();
    if (name == "true")
        return v.is_bool() && v.as_bool();
    if (name == "false")
        return v.is_bool() && !v.as_bool();
    if (name == "integer")
        return v.is_int();
    if (name == "float")
        return v.is_float();
    if (name == "number")
        return v.is_number();
    if (name == "string")
        return v.is_string();
    if (name == "mapping")
        return v.is_dict();
    if (name == "iterable")
        return v.kind() == K::Undefined || v.is_string() || v.is_list() || v.is_dict();
    if (name == "sequence")
        return v.kind() == K::Undefined || v.is_string() || v.is_list() || v.is_dict();
    if (name == "callable")
        return v.is_callable();
    if (name == "lower")
        return py_case_test(soft_str(v), false);
    if (name == "upper")
        return py_case_test(soft_str(v), true);
    if (name == "escaped")
        return false;
    if (name == "odd" || name == "even") {
        int64_t n = need_int(v, "value");
        return (n % 2 != 0) == (name == "odd");
    }
    throw RenderError{"no test named '" + name + "'"};
}

// ---- globals ------------------------------------------------------------------------------------------------------

Value global_range(CallArgs& a) {
    if (!a.keyword.empty())
        throw RenderError{"range() takes no keyword arguments"};
    if (a.positional.empty() || a.positional.size() > 3)
        throw RenderError{"range expected 1 to 3 arguments"};
    int64_t start = 0, stop, step = 1;
    if (a.positional.size() == 1) {
        stop = need_int(a.positional[0], "range argument");
    } else {
        start = need_int(a.positional[0], "range argument");
        stop  = need_int(a.positional[1], "range argument");
        if (a.positional.size() == 3)
            step = need_int(a.positional[2], "range argument");
    }
    if (step == 0)
        throw RenderError{"range() arg 3 must not be zero"};
    // Length without overflow: the sandbox refuses more than k_max_range items.
    __int128 len = 0;
    if (step > 0 && start < stop)
        len = ((__int128)stop - start + step - 1) / step;
    if (step < 0 && start > stop)
        len = ((__int128)start - stop - step - 1) / (-(__int128)step);
    if (len > k_max_range)
        throw RenderError{"range too big: the sandbox blocks ranges longer than " + std::to_string(k_max_range)};
    std::vector<Value> out;
    out.reserve(size_t(len));
    for (int64_t i = 0; i < int64_t(len); ++i)
        out.emplace_back(start + i * step);
    return Value::list(std::move(out));
}

Value global_dict(CallArgs& a) {
    std::vector<std::pair<std::string, Value>> items;
    if (a.positional.size() > 1)
        throw RenderError{"dict expected at most 1 argument"};
    if (!a.positional.empty()) {
        const Value& src = a.positional[0];
        if (src.is_dict()) {
            items = src.as_dict().items;
        } else {
            for (const auto& pair : iterate(src)) {
                if (!pair.is_list() || pair.as_list().items.size() != 2)
                    throw RenderError{"dictionary update sequence element has wrong length"};
                items.emplace_back(need_string(pair.as_list().items[0], "dict key"), pair.as_list().items[1]);
            }
        }
    }
    for (auto& [k, v] : a.keyword) {
        auto it = std::find_if(items.begin(), items.end(), [&](const auto& kv) { return kv.first == k; });
        if (it != items.end())
            it->second = v;
        else
            items.emplace_back(k, v);
    }
    return Value::dict(std::move(items));
}

Value global_strftime_now(CallArgs& a) {
    check_args(a, 1, {}, "strftime_now");
    std::string fmt = need_string(arg_or(a, 0, nullptr, Value()), "format");
    std::time_t now = std::time(nullptr);
    std::tm     tm{};
    localtime_r(&now, &tm);
    std::string buf(256, '\0');
    for (int tries = 0; tries < 8; ++tries) {
        size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
        if (n > 0 || fmt.empty())
            return Value(buf.substr(0, n));
        buf.resize(buf.size() * 4);
    }
    return Value("");
}

} // namespace moebius::jinja
