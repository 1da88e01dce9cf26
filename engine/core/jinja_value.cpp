#include "engine/core/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <utf8proc.h>

namespace moebius::jinja {

// ---- containers -------------------------------------------------------------------------------------------------

const Value* DictObj::find(std::string_view key) const {
    for (const auto& [k, v] : items)
        if (k == key)
            return &v;
    return nullptr;
}

Value* NamespaceObj::find(std::string_view key) {
    for (auto& [k, v] : attrs)
        if (k == key)
            return &v;
    return nullptr;
}

void NamespaceObj::set(const std::string& key, Value v) {
    if (Value* slot = find(key))
        *slot = std::move(v);
    else
        attrs.emplace_back(key, std::move(v));
}

Value Value::undefined(std::string hint) {
    return Value(UndefinedTag{hint.empty() ? nullptr : std::make_shared<const std::string>(std::move(hint))});
}

static void check_depth(uint32_t depth) {
    if (depth > k_max_value_depth)
        throw RenderError{"value nested deeper than " + std::to_string(k_max_value_depth) + " levels"};
}

Value Value::list(std::vector<Value> items, bool is_tuple) {
    auto     obj   = std::make_shared<ListObj>();
    uint32_t depth = 0;
    for (const auto& v : items)
        depth = std::max(depth, v.depth());
    check_depth(depth + 1);
    obj->items    = std::move(items);
    obj->is_tuple = is_tuple;
    obj->depth    = depth + 1;
    return Value(ListPtr(std::move(obj)));
}

Value Value::dict(std::vector<std::pair<std::string, Value>> items) {
    auto     obj   = std::make_shared<DictObj>();
    uint32_t depth = 0;
    for (const auto& kv : items)
        depth = std::max(depth, kv.second.depth());
    check_depth(depth + 1);
    obj->items = std::move(items);
    obj->depth = depth + 1;
    return Value(DictPtr(std::move(obj)));
}

Value Value::function(std::string name, std::function<Value(CallArgs&)> fn) {
    return Value(CallablePtr(std::make_shared<const CallableObj>(CallableObj{std::move(name), std::move(fn)})));
}

int64_t Value::as_int() const {
    return is_bool() ? int64_t(as_bool()) : std::get<int64_t>(v_);
}

double Value::as_double() const {
    if (is_float())
        return std::get<double>(v_);
    return double(as_int());
}

const std::string& Value::undefined_hint() const {
    static const std::string empty;
    const auto&              h = std::get<UndefinedTag>(v_).hint;
    return h ? *h : empty;
}

uint32_t Value::depth() const {
    if (is_list())
        return as_list().depth;
    if (is_dict())
        return as_dict().depth;
    return 0;
}

bool Value::truthy() const {
    switch (kind()) {
    case Kind::Undefined:
    case Kind::None:
        return false;
    case Kind::Bool:
        return as_bool();
    case Kind::Int:
        return as_int() != 0;
    case Kind::Float:
        return as_double() != 0.0;
    case Kind::String:
        return !as_string().empty();
    case Kind::List:
        return !as_list().items.empty();
    case Kind::Dict:
        return !as_dict().items.empty();
    case Kind::Namespace:
    case Kind::Callable:
        return true;
    }
    return false;
}

std::string Value::type_name() const {
    switch (kind()) {
    case Kind::Undefined:
        return "Undefined";
    case Kind::None:
        return "NoneType";
    case Kind::Bool:
        return "bool";
    case Kind::Int:
        return "int";
    case Kind::Float:
        return "float";
    case Kind::String:
        return "str";
    case Kind::List:
        return as_list().is_tuple ? "tuple" : "list";
    case Kind::Dict:
        return "dict";
    case Kind::Namespace:
        return "Namespace";
    case Kind::Callable:
        return "function";
    }
    return "object";
}

// ---- UTF-8 ------------------------------------------------------------------------------------------------------

bool is_ascii(std::string_view s) {
    for (unsigned char c : s)
        if (c >= 0x80)
            return false;
    return true;
}

std::u32string utf8_decode(std::string_view s) {
    std::u32string out;
    out.reserve(s.size());
    size_t i = 0, n = s.size();
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            out.push_back(c);
            ++i;
            continue;
        }
        int      len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
        char32_t cp  = len == 4 ? c & 0x07 : len == 3 ? c & 0x0F : c & 0x1F;
        bool     ok  = len != 0 && c <= 0xF4 && i + len <= n;
        for (int k = 1; ok && k < len; ++k) {
            unsigned char cc = s[i + k];
            if ((cc & 0xC0) != 0x80)
                ok = false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        // Reject overlong forms, surrogates and out-of-range values, as a strict UTF-8 decoder does.
        if (ok) {
            static const char32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
            if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                ok = false;
        }
        if (ok) {
            out.push_back(cp);
            i += len;
        } else {
            out.push_back(0xDC00 + c); // surrogateescape: keeps the byte
            ++i;
        }
    }
    return out;
}

void utf8_append(std::string& out, char32_t c) {
    if (c < 0x80) {
        out.push_back(char(c));
    } else if (c >= 0xDC80 && c <= 0xDCFF) {
        out.push_back(char(c - 0xDC00)); // an escaped invalid byte
    } else if (c < 0x800) {
        out.push_back(char(0xC0 | (c >> 6)));
        out.push_back(char(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
        out.push_back(char(0xE0 | (c >> 12)));
        out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(char(0x80 | (c & 0x3F)));
    } else {
        out.push_back(char(0xF0 | (c >> 18)));
        out.push_back(char(0x80 | ((c >> 12) & 0x3F)));
        out.push_back(char(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(char(0x80 | (c & 0x3F)));
    }
}

std::string utf8_encode(std::u32string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char32_t c : s)
        utf8_append(out, c);
    return out;
}

size_t utf8_length(std::string_view s) {
    return is_ascii(s) ? s.size() : utf8_decode(s).size();
}

bool is_python_space(char32_t c) {
    switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
        return true;
    default:
        return c >= 0x2000 && c <= 0x200A;
    }
}

// ---- str() and repr() -------------------------------------------------------------------------------------------

std::string python_float_repr(double d) {
    if (std::isnan(d))
        return "nan";
    if (std::isinf(d))
        return d < 0 ? "-inf" : "inf";
    if (d == 0)
        return std::signbit(d) ? "-0.0" : "0.0";
    // Shortest round-trip digits, then Python's layout rule: exponent form when the decimal point would sit
    // more than 16 places right of the first digit or 4 or more zeros would lead.
    char             buf[64];
    auto             res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
    std::string_view sci(buf, res.ptr - buf);
    bool             neg = sci[0] == '-';
    if (neg)
        sci.remove_prefix(1);
    size_t      e_pos = sci.find('e');
    std::string digits;
    for (char c : sci.substr(0, e_pos))
        if (c != '.')
            digits.push_back(c);
    int exp10 = 0;
    std::from_chars(sci.data() + e_pos + 1 + (sci[e_pos + 1] == '+'), sci.data() + sci.size(), exp10);
    int         decpt = exp10 + 1; // value = 0.DIGITS * 10^decpt
    std::string out   = neg ? "-" : "";
    if (decpt > 16 || decpt < -3) {
        out += digits[0];
        if (digits.size() > 1)
            out += "." + digits.substr(1);
        char e[16];
        std::snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
        out += e;
    } else if (decpt <= 0) {
        out += "0." + std::string(size_t(-decpt), '0') + digits;
    } else if (size_t(decpt) >= digits.size()) {
        out += digits + std::string(decpt - digits.size(), '0') + ".0";
    } else {
        out += digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
    return out;
}

static bool is_printable(char32_t c) {
    if (c == ' ')
        return true;
    if (c < 0x20 || c == 0x7F)
        return false;
    if (c < 0x7F)
        return true;
    if (c >= 0xD800 && c <= 0xDFFF)
        return false;
    switch (utf8proc_category(utf8proc_int32_t(c))) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
        return false;
    default:
        return true;
    }
}

static void append_string_repr(std::string& out, const std::string& s) {
    bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
    char quote = has_single && !has_double ? '"' : '\'';
    out.push_back(quote);
    for (char32_t c : utf8_decode(s)) {
        char buf[16];
        if (c == char32_t(quote) || c == '\\') {
            out.push_back('\\');
            out.push_back(char(c));
        } else if (c == '\t') {
            out += "\\t";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (is_printable(c)) {
            utf8_append(out, c);
        } else {
            if (c < 0x100)
                std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
            else if (c < 0x10000)
                std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
            else
                std::snprintf(buf, sizeof buf, "\\U%08x", unsigned(c));
            out += buf;
        }
    }
    out.push_back(quote);
}

static void append_repr(std::string& out, const Value& v);

static void append_container(std::string& out, const Value& v) {
    if (v.is_list()) {
        const auto& l = v.as_list();
        out.push_back(l.is_tuple ? '(' : '[');
        for (size_t i = 0; i < l.items.size(); ++i) {
            if (i)
                out += ", ";
            append_repr(out, l.items[i]);
        }
        if (l.is_tuple && l.items.size() == 1)
            out.push_back(',');
        out.push_back(l.is_tuple ? ')' : ']');
    } else {
        const auto& items = v.is_dict() ? v.as_dict().items : v.as_namespace().attrs;
        out.push_back('{');
        for (size_t i = 0; i < items.size(); ++i) {
            if (i)
                out += ", ";
            append_string_repr(out, items[i].first);
            out += ": ";
            // Namespaces print one level only: they can contain themselves.
            if (v.is_namespace() && (items[i].second.is_namespace()))
                out += "<Namespace>";
            else
                append_repr(out, items[i].second);
        }
        out.push_back('}');
    }
}

static void append_repr(std::string& out, const Value& v) {
    switch (v.kind()) {
    case Value::Kind::Undefined:
        out += "Undefined";
        break;
    case Value::Kind::String:
        append_string_repr(out, v.as_string());
        break;
    default:
        append_str(out, v);
        break;
    }
}

void append_str(std::string& out, const Value& v) {
    switch (v.kind()) {
    case Value::Kind::Undefined:
        break;
    case Value::Kind::None:
        out += "None";
        break;
    case Value::Kind::Bool:
        out += v.as_bool() ? "True" : "False";
        break;
    case Value::Kind::Int:
        out += std::to_string(v.as_int());
        break;
    case Value::Kind::Float:
        out += python_float_repr(v.as_double());
        break;
    case Value::Kind::String:
        out += v.as_string();
        break;
    case Value::Kind::List:
    case Value::Kind::Dict:
        append_container(out, v);
        break;
    case Value::Kind::Namespace:
        out += "<Namespace ";
        append_container(out, v);
        out += ">";
        break;
    case Value::Kind::Callable:
        out += "<function " + v.as_callable().name + ">";
        break;
    }
}

std::string to_str(const Value& v) {
    if (v.is_string())
        return v.as_string();
    std::string out;
    append_str(out, v);
    return out;
}

std::string to_repr(const Value& v) {
    std::string out;
    append_repr(out, v);
    return out;
}

// ---- comparisons ------------------------------------------------------------------------------------------------

bool values_equal(const Value& a, const Value& b) {
    using K = Value::Kind;
    if (a.is_number() && b.is_number()) {
        if (a.is_float() || b.is_float())
            return a.as_double() == b.as_double();
        return a.as_int() == b.as_int();
    }
    if (a.kind() != b.kind())
        return false;
    switch (a.kind()) {
    case K::Undefined:
    case K::None:
        return true;
    case K::String:
        return a.as_string() == b.as_string();
    case K::List: {
        const auto &x = a.as_list(), &y = b.as_list();
        if (x.is_tuple != y.is_tuple || x.items.size() != y.items.size())
            return false;
        for (size_t i = 0; i < x.items.size(); ++i)
            if (!values_equal(x.items[i], y.items[i]))
                return false;
        return true;
    }
    case K::Dict: {
        const auto &x = a.as_dict(), &y = b.as_dict();
        if (x.items.size() != y.items.size())
            return false;
        for (const auto& [k, v] : x.items) {
            const Value* other = y.find(k);
            if (!other || !values_equal(v, *other))
                return false;
        }
        return true;
    }
    case K::Namespace:
        return a.namespace_ptr() == b.namespace_ptr();
    case K::Callable:
        return &a.as_callable() == &b.as_callable();
    default:
        return false;
    }
}

bool value_less(const Value& a, const Value& b) {
    if (a.is_undefined() || b.is_undefined()) {
        const std::string& hint = (a.is_undefined() ? a : b).undefined_hint();
        throw RenderError{hint.empty() ? "undefined value" : hint};
    }
    if (a.is_number() && b.is_number()) {
        if (a.is_float() || b.is_float())
            return a.as_double() < b.as_double();
        return a.as_int() < b.as_int();
    }
    if (a.is_string() && b.is_string())
        return a.as_string() < b.as_string(); // UTF-8 byte order = code point order
    if (a.is_list() && b.is_list()) {
        const auto &x = a.as_list().items, &y = b.as_list().items;
        for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
            if (values_equal(x[i], y[i]))
                continue;
            return value_less(x[i], y[i]);
        }
        return x.size() < y.size();
    }
    throw RenderError{"'<' not supported between instances of '" + a.type_name() + "' and '" + b.type_name() + "'"};
}

// ---- JSON -------------------------------------------------------------------------------------------------------

static void append_json_string(std::string& out, const std::string& s) {
    out.push_back('"');
    for (unsigned char c : s) {
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        case '\b':
            out += "\\b";
            break;
        case '\f':
            out += "\\f";
            break;
        default:
            if (c < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out.push_back(char(c)); // ensure_ascii=False: UTF-8 passes through
            }
        }
    }
    out.push_back('"');
}

static void append_json(std::string& out, const Value& v, const JsonStyle& st, int level) {
    auto newline = [&](int lvl) {
        out.push_back('\n');
        for (int i = 0; i < lvl; ++i)
            out += st.indent;
    };
    switch (v.kind()) {
    case Value::Kind::None:
        out += "null";
        return;
    case Value::Kind::Bool:
        out += v.as_bool() ? "true" : "false";
        return;
    case Value::Kind::Int:
        out += std::to_string(v.as_int());
        return;
    case Value::Kind::Float: {
        double d = v.as_double();
        if (std::isnan(d))
            out += "NaN";
        else if (std::isinf(d))
            out += d < 0 ? "-Infinity" : "Infinity";
        else
            out += python_float_repr(d);
        return;
    }
    case Value::Kind::String:
        append_json_string(out, v.as_string());
        return;
    case Value::Kind::List: {
        const auto& items = v.as_list().items;
        if (items.empty()) {
            out += "[]";
            return;
        }
        out.push_back('[');
        for (size_t i = 0; i < items.size(); ++i) {
            if (i)
                out += st.item_separator;
            if (st.has_indent)
                newline(level + 1);
            append_json(out, items[i], st, level + 1);
        }
        if (st.has_indent)
            newline(level);
        out.push_back(']');
        return;
    }
    case Value::Kind::Dict: {
        const auto& items = v.as_dict().items;
        if (items.empty()) {
            out += "{}";
            return;
        }
        std::vector<const std::pair<std::string, Value>*> order;
        for (const auto& kv : items)
            order.push_back(&kv);
        if (st.sort_keys)
            std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->first < b->first; });
        out.push_back('{');
        for (size_t i = 0; i < order.size(); ++i) {
            if (i)
                out += st.item_separator;
            if (st.has_indent)
                newline(level + 1);
            append_json_string(out, order[i]->first);
            out += st.key_separator;
            append_json(out, order[i]->second, st, level + 1);
        }
        if (st.has_indent)
            newline(level);
        out.push_back('}');
        return;
    }
    default:
        throw RenderError{"Object of type " + v.type_name() + " is not JSON serializable"};
    }
}

std::string to_json(const Value& v, const JsonStyle& style) {
    std::string out;
    append_json(out, v, style, 0);
    return out;
}

static Value from_json_at(const nlohmann::ordered_json& j, uint32_t depth) {
    using T = nlohmann::ordered_json::value_t;
    switch (j.type()) {
    case T::null:
    case T::discarded:
        return Value::none();
    case T::boolean:
        return Value(j.get<bool>());
    case T::number_integer:
        return Value(j.get<int64_t>());
    case T::number_unsigned: {
        uint64_t u = j.get<uint64_t>();
        if (u <= uint64_t(INT64_MAX))
            return Value(int64_t(u));
        return Value(double(u)); // beyond int64: Python would keep an exact int
    }
    case T::number_float:
        return Value(j.get<double>());
    case T::string:
        return Value(j.get<std::string>());
    case T::binary:
        throw RenderError{"binary JSON values are not supported"};
    case T::array: {
        check_depth(depth + 1);
        std::vector<Value> items;
        items.reserve(j.size());
        for (const auto& e : j)
            items.push_back(from_json_at(e, depth + 1));
        return Value::list(std::move(items));
    }
    case T::object: {
        check_depth(depth + 1);
        std::vector<std::pair<std::string, Value>> items;
        items.reserve(j.size());
        for (const auto& [k, e] : j.items())
            items.emplace_back(k, from_json_at(e, depth + 1));
        return Value::dict(std::move(items));
    }
    }
    return Value::none();
}

Value from_json(const nlohmann::ordered_json& j) {
    return from_json_at(j, 0);
}

} // namespace moebius::jinja
