// Operators, attribute and item access and the Python str/dict/list methods of the Jinja2 subset, with the
// semantics of Python jinja2's ImmutableSandboxedEnvironment as configured by transformers (see chat_template.h).
#include "engine/core/jinja_builtins.h"

#include <algorithm>
#include <cmath>

namespace moebius::jinja {

void check_string_size(size_t bytes) {
    if (bytes > k_max_string_bytes)
        throw RenderError{"string result larger than " + std::to_string(k_max_string_bytes >> 20) + " MiB"};
}

void check_list_size(size_t items) {
    if (items > k_max_list_items)
        throw RenderError{"list result longer than " + std::to_string(k_max_list_items) + " items"};
}

void fail_undefined(const Value& v) {
    const std::string& hint = v.undefined_hint();
    throw RenderError{hint.empty() ? "undefined value" : hint};
}

static Value no_attribute(const Value& obj, const std::string& name) {
    // jinja2's wording: 'dict object' has no attribute 'x' / 'None' has no attribute 'x'
    std::string what = obj.is_none() ? "None" : obj.type_name() + " object";
    return Value::undefined("'" + what + "' has no attribute '" + name + "'");
}

// ---- argument binding ---------------------------------------------------------------------------------------------

const Value* find_arg(const CallArgs& args, size_t pos, const char* name) {
    if (pos < args.positional.size())
        return &args.positional[pos];
    if (name)
        for (const auto& [k, v] : args.keyword)
            if (k == name)
                return &v;
    return nullptr;
}

Value arg_or(const CallArgs& args, size_t pos, const char* name, Value dflt) {
    const Value* v = find_arg(args, pos, name);
    return v ? *v : std::move(dflt);
}

void check_args(const CallArgs& args, size_t max_positional, std::initializer_list<const char*> names,
                const std::string& what) {
    if (args.positional.size() > max_positional)
        throw RenderError{what + "() takes at most " + std::to_string(max_positional) + " positional argument(s)"};
    for (const auto& [k, v] : args.keyword) {
        bool   known = false;
        size_t idx   = 0;
        for (const char* n : names) {
            if (k == n) {
                known = true;
                if (idx < args.positional.size())
                    throw RenderError{what + "() got multiple values for '" + k + "'"};
            }
            ++idx;
        }
        if (!known)
            throw RenderError{what + "() got an unexpected keyword argument '" + k + "'"};
    }
}

const std::string& need_string(const Value& v, const char* what) {
    if (v.is_undefined())
        fail_undefined(v);
    if (!v.is_string())
        throw RenderError{std::string(what) + " must be a string, not " + v.type_name()};
    return v.as_string();
}

int64_t need_int(const Value& v, const char* what) {
    if (v.is_undefined())
        fail_undefined(v);
    if (!v.is_int() && !v.is_bool())
        throw RenderError{std::string(what) + " must be an integer, not " + v.type_name()};
    return v.as_int();
}

std::string soft_str(const Value& v) {
    return to_str(v);
}

// ---- Python numeric operators -------------------------------------------------------------------------------------

static void need_operand(const Value& v) {
    if (v.is_undefined())
        fail_undefined(v);
}

[[noreturn]] static void bad_operands(const std::string& op, const Value& a, const Value& b) {
    throw RenderError{"unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() +
                      "'"};
}

static Value int_result(bool overflow, int64_t r) {
    if (overflow)
        throw RenderError{"integer overflow"};
    return Value(r);
}

static void py_float_divmod(double vx, double wx, double& floordiv, double& mod) {
    // CPython float_divmod
    mod        = std::fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod != 0) {
        if ((wx < 0) != (mod < 0)) {
            mod += wx;
            div -= 1.0;
        }
    } else {
        mod = std::copysign(0.0, wx);
    }
    if (div != 0) {
        floordiv = std::floor(div);
        if (div - floordiv > 0.5)
            floordiv += 1.0;
    } else {
        floordiv = std::copysign(0.0, vx / wx);
    }
}

static Value repeat(const Value& seq, int64_t n) {
    if (n < 0)
        n = 0;
    if (seq.is_string()) {
        const std::string& s = seq.as_string();
        if (!s.empty() && uint64_t(n) > k_max_string_bytes / s.size())
            check_string_size(k_max_string_bytes + 1);
        std::string out;
        out.reserve(s.size() * size_t(n));
        for (int64_t i = 0; i < n; ++i)
            out += s;
        return Value(std::move(out));
    }
    const auto& items = seq.as_list().items;
    if (!items.empty() && uint64_t(n) > k_max_list_items / items.size())
        check_list_size(k_max_list_items + 1);
    std::vector<Value> out;
    for (int64_t i = 0; i < n; ++i)
        out.insert(out.end(), items.begin(), items.end());
    return Value::list(std::move(out), seq.as_list().is_tuple);
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
        if (a.is_string() && b.is_string()) { // check the size before building the result
            check_string_size(a.as_string().size() + b.as_string().size());
            return Value(a.as_string() + b.as_string());
        }
        std::string s = to_str(a);
        append_str(s, b);
        check_string_size(s.size());
        return Value(std::move(s));
    }
    need_operand(a);
    need_operand(b);
    const bool nums = a.is_number() && b.is_number();
    const bool flt  = nums && (a.is_float() || b.is_float());
    if (op == "+") {
        if (nums) {
            if (flt)
                return Value(a.as_double() + b.as_double());
            int64_t r  = 0;
            bool    ov = __builtin_add_overflow(a.as_int(), b.as_int(), &r);
            return int_result(ov, r);
        }
        if (a.is_string() && b.is_string()) {
            check_string_size(a.as_string().size() + b.as_string().size());
            return Value(a.as_string() + b.as_string());
        }
        if (a.is_list() && b.is_list() && a.as_list().is_tuple == b.as_list().is_tuple) {
            check_list_size(a.as_list().items.size() + b.as_list().items.size());
            std::vector<Value> items = a.as_list().items;
            items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
            return Value::list(std::move(items), a.as_list().is_tuple);
        }
        if (a.is_string())
            throw RenderError{"can only concatenate str (not \"" + b.type_name() + "\") to str"};
        if (a.is_list())
            throw RenderError{"can only concatenate " + a.type_name() + " (not \"" + b.type_name() + "\") to " +
                              a.type_name()};
        bad_operands(op, a, b);
    }
    if (op == "-") {
        if (!nums)
            bad_operands(op, a, b);
        if (flt)
            return Value(a.as_double() - b.as_double());
        int64_t r  = 0;
        bool    ov = __builtin_sub_overflow(a.as_int(), b.as_int(), &r);
        return int_result(ov, r);
    }
    if (op == "*") {
        if (nums) {
            if (flt)
                return Value(a.as_double() * b.as_double());
            int64_t r  = 0;
            bool    ov = __builtin_mul_overflow(a.as_int(), b.as_int(), &r);
            return int_result(ov, r);
        }
        if ((a.is_string() || a.is_list()) && (b.is_int() || b.is_bool()))
            return repeat(a, b.as_int());
        if ((b.is_string() || b.is_list()) && (a.is_int() || a.is_bool()))
            return repeat(b, a.as_int());
        bad_operands(op, a, b);
    }
    if (op == "/") {
        if (!nums)
            bad_operands(op, a, b);
        if (b.as_double() == 0)
            throw RenderError{"division by zero"};
        return Value(a.as_double() / b.as_double());
    }
    if (op == "//" || op == "%") {
        if (op == "%" && a.is_string())
            return Value(percent_format(a.as_string(), b));
        if (!nums)
            bad_operands(op, a, b);
        if (flt) {
            if (b.as_double() == 0)
                throw RenderError{"float division by zero"};
            double fd, md;
            py_float_divmod(a.as_double(), b.as_double(), fd, md);
            return Value(op == "//" ? fd : md);
        }
        int64_t x = a.as_int(), y = b.as_int();
        if (y == 0)
            throw RenderError{"integer division or modulo by zero"};
        if (x == INT64_MIN && y == -1) {
            if (op == "%")
                return Value(int64_t(0));
            throw RenderError{"integer overflow"};
        }
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
            q -= 1;
            r += y;
        }
        return Value(op == "//" ? q : r);
    }
    if (op == "**") {
        if (!nums)
            bad_operands(op, a, b);
        if (!flt && b.as_int() >= 0) {
            int64_t base = a.as_int(), e = b.as_int(), r = 1;
            while (e > 0) {
                if (e & 1)
                    if (__builtin_mul_overflow(r, base, &r))
                        throw RenderError{"integer overflow"};
                e >>= 1;
                if (e && __builtin_mul_overflow(base, base, &base))
                    throw RenderError{"integer overflow"};
            }
            return Value(r);
        }
        if (a.as_double() == 0 && b.as_double() < 0)
            throw RenderError{"0.0 cannot be raised to a negative power"};
        return Value(std::pow(a.as_double(), b.as_double()));
    }
    throw RenderError{"unknown operator '" + op + "'"};
}

Value unary_minus(const Value& v) {
    need_operand(v);
    if (v.is_float())
        return Value(-v.as_double());
    if (v.is_int() || v.is_bool()) {
        if (v.as_int() == INT64_MIN)
            throw RenderError{"integer overflow"};
        return Value(-v.as_int());
    }
    throw RenderError{"bad operand type for unary -: '" + v.type_name() + "'"};
}

bool contains(const Value& c, const Value& item) {
    switch (c.kind()) {
    case Value::Kind::String:
        if (item.is_undefined())
            fail_undefined(item);
        if (!item.is_string())
            throw RenderError{"'in <string>' requires string as left operand, not " + item.type_name()};
        return c.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::List:
        for (const auto& v : c.as_list().items)
            if (values_equal(v, item))
                return true;
        return false;
    case Value::Kind::Dict:
        return item.is_string() && c.as_dict().find(item.as_string()) != nullptr;
    case Value::Kind::Undefined:
        return false; // iterating an Undefined yields nothing
    default:
        throw RenderError{"argument of type '" + c.type_name() + "' is not iterable"};
    }
}

std::vector<Value> iterate(const Value& v) {
    switch (v.kind()) {
    case Value::Kind::Undefined:
        return {};
    case Value::Kind::List:
        return v.as_list().items;
    case Value::Kind::Dict: {
        std::vector<Value> keys;
        keys.reserve(v.as_dict().items.size());
        for (const auto& kv : v.as_dict().items)
            keys.emplace_back(kv.first);
        return keys;
    }
    case Value::Kind::String: {
        std::vector<Value> chars;
        if (is_ascii(v.as_string())) {
            for (char c : v.as_string())
                chars.emplace_back(std::string(1, c));
        } else {
            for (char32_t c : utf8_decode(v.as_string())) {
                std::string s;
                utf8_append(s, c);
                chars.emplace_back(std::move(s));
            }
        }
        return chars;
    }
    default:
        throw RenderError{"'" + v.type_name() + "' object is not iterable"};
    }
}

// ---- methods ------------------------------------------------------------------------------------------------------

static bool is_str_method(const std::string& n) {
    static const char* names[] = {
        "strip",   "lstrip",  "rstrip",    "split",      "rsplit",       "splitlines",   "startswith", "endswith",
        "replace", "upper",   "lower",     "title",      "capitalize",   "casefold",     "swapcase",   "find",
        "rfind",   "index",   "rindex",    "count",      "join",         "isdigit",      "isnumeric",  "isdecimal",
        "isalpha", "isalnum", "isspace",   "isupper",    "islower",      "istitle",      "center",     "ljust",
        "rjust",   "zfill",   "partition", "rpartition", "removeprefix", "removesuffix", "format",     "encode"};
    for (const char* m : names)
        if (n == m)
            return true;
    return false;
}

static bool is_dict_method(const std::string& n) {
    static const char* names[] = {"get",     "items",  "keys",       "values", "copy",    "pop",
                                  "popitem", "update", "setdefault", "clear",  "fromkeys"};
    for (const char* m : names)
        if (n == m)
            return true;
    return false;
}

static bool is_list_method(const std::string& n) {
    static const char* names[] = {"index", "count",  "copy",    "append", "extend", "insert",
                                  "pop",   "remove", "reverse", "sort",   "clear"};
    for (const char* m : names)
        if (n == m)
            return true;
    return false;
}

static Value call_str_method(const std::string& s, const std::string& m, CallArgs& a) {
    auto what = "str." + m;
    if (m == "strip" || m == "lstrip" || m == "rstrip") {
        check_args(a, 1, {}, what);
        return Value(py_strip(s, arg_or(a, 0, nullptr, Value::none()), m != "rstrip", m != "lstrip"));
    }
    if (m == "split" || m == "rsplit") {
        check_args(a, 2, {"sep", "maxsplit"}, what);
        int64_t maxsplit = need_int(arg_or(a, 1, "maxsplit", Value(int64_t(-1))), "maxsplit");
        return str_list(py_split(s, arg_or(a, 0, "sep", Value::none()), maxsplit, m == "rsplit"));
    }
    if (m == "splitlines") {
        check_args(a, 1, {"keepends"}, what);
        return str_list(py_splitlines(s, arg_or(a, 0, "keepends", Value(false)).truthy()));
    }
    if (m == "startswith" || m == "endswith") {
        check_args(a, 1, {}, what);
        const Value* affix = find_arg(a, 0, nullptr);
        if (!affix)
            throw RenderError{what + "() takes at least 1 argument"};
        return Value(match_affix(s, *affix, m == "startswith"));
    }
    if (m == "replace") {
        check_args(a, 3, {"count"}, what);
        if (a.positional.size() < 2)
            throw RenderError{"str.replace() takes at least 2 arguments"};
        return Value(py_replace(s, need_string(a.positional[0], "old"), need_string(a.positional[1], "new"),
                                need_int(arg_or(a, 2, "count", Value(int64_t(-1))), "count")));
    }
    if (m == "upper" || m == "lower" || m == "casefold") {
        check_args(a, 0, {}, what);
        return Value(case_map(s, m == "upper" ? 1 : 0));
    }
    if (m == "swapcase") {
        check_args(a, 0, {}, what);
        std::string out;
        for (char32_t c : utf8_decode(s)) {
            char32_t lo = map_case(c, 0);
            utf8_append(out, lo != c ? lo : map_case(c, 1));
        }
        return Value(std::move(out));
    }
    if (m == "title")
        return Value(py_title(s));
    if (m == "capitalize")
        return Value(py_capitalize(s));
    if (m == "find" || m == "rfind" || m == "index" || m == "rindex" || m == "count") {
        check_args(a, 1, {}, what);
        std::string sub = need_string(arg_or(a, 0, nullptr, Value()), "substring");
        if (m == "count") {
            if (sub.empty())
                return Value(int64_t(utf8_length(s) + 1));
            int64_t n = 0;
            for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size()))
                ++n;
            return Value(n);
        }
        size_t p = m[0] == 'r' ? s.rfind(sub) : s.find(sub);
        if (p == std::string::npos) {
            if (m == "index" || m == "rindex")
                throw RenderError{"substring not found"};
            return Value(int64_t(-1));
        }
        return Value(cp_index(s, p));
    }
    if (m == "join") {
        check_args(a, 1, {}, what);
        std::string out;
        bool        first = true;
        for (const auto& v : iterate(arg_or(a, 0, nullptr, Value()))) {
            if (!first)
                out += s;
            first = false;
            out += need_string(v, "sequence item");
            check_string_size(out.size());
        }
        return Value(std::move(out));
    }
    if (m == "isdigit" || m == "isnumeric" || m == "isdecimal")
        return Value(all_chars(s, is_digit_cp));
    if (m == "isalpha")
        return Value(all_chars(s, is_alpha));
    if (m == "isalnum")
        return Value(all_chars(s, [](char32_t c) { return is_alpha(c) || is_digit_cp(c); }));
    if (m == "isspace")
        return Value(all_chars(s, is_python_space));
    if (m == "isupper")
        return Value(py_case_test(s, true));
    if (m == "islower")
        return Value(py_case_test(s, false));
    if (m == "istitle") {
        auto u = utf8_decode(s);
        return Value(py_title(s) == s && std::any_of(u.begin(), u.end(), is_cased));
    }
    if (m == "center" || m == "ljust" || m == "rjust") {
        check_args(a, 2, {}, what);
        std::string fill = need_string(arg_or(a, 1, nullptr, Value(" ")), "fill character");
        if (utf8_length(fill) != 1)
            throw RenderError{"the fill character must be exactly one character long"};
        return Value(pad_center(s, need_int(arg_or(a, 0, nullptr, Value()), "width"), fill,
                                m == "center"  ? 0
                                : m == "ljust" ? -1
                                               : 1));
    }
    if (m == "zfill") {
        int64_t width = need_int(arg_or(a, 0, nullptr, Value()), "width");
        int64_t len   = int64_t(utf8_length(s));
        if (width <= len)
            return Value(s);
        check_string_size(size_t(width));
        size_t sign = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
        return Value(s.substr(0, sign) + std::string(size_t(width - len), '0') + s.substr(sign));
    }
    if (m == "partition" || m == "rpartition") {
        std::string sep = need_string(arg_or(a, 0, nullptr, Value()), "separator");
        if (sep.empty())
            throw RenderError{"empty separator"};
        size_t             p = m == "partition" ? s.find(sep) : s.rfind(sep);
        std::vector<Value> parts;
        if (p == std::string::npos)
            parts = m == "partition" ? std::vector<Value>{Value(s), Value(""), Value("")}
                                     : std::vector<Value>{Value(""), Value(""), Value(s)};
        else
            parts = {Value(s.substr(0, p)), Value(sep), Value(s.substr(p + sep.size()))};
        return Value::list(std::move(parts), true);
    }
    if (m == "removeprefix" || m == "removesuffix") {
        std::string x = need_string(arg_or(a, 0, nullptr, Value()), "affix");
        if (m == "removeprefix")
            return Value(s.compare(0, x.size(), x) == 0 ? s.substr(x.size()) : s);
        bool ends = x.size() <= s.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
        return Value(ends ? s.substr(0, s.size() - x.size()) : s);
    }
    throw RenderError{"str." + m + "() is not supported"};
}

Value call_dict_method(const Value& self, const std::string& m, CallArgs& a) {
    const DictObj& d = self.as_dict();
    if (m == "get") {
        check_args(a, 2, {}, "dict.get");
        const Value* key = find_arg(a, 0, nullptr);
        if (!key)
            throw RenderError{"dict.get() takes at least 1 argument"};
        const Value* v = key->is_string() ? d.find(key->as_string()) : nullptr;
        return v ? *v : arg_or(a, 1, nullptr, Value::none());
    }
    if (m == "items" || m == "keys" || m == "values") {
        check_args(a, 0, {}, "dict." + m);
        std::vector<Value> out;
        out.reserve(d.items.size());
        for (const auto& [k, v] : d.items) {
            if (m == "keys")
                out.emplace_back(k);
            else if (m == "values")
                out.push_back(v);
            else
                out.push_back(Value::list({Value(k), v}, true));
        }
        return Value::list(std::move(out));
    }
    if (m == "copy")
        return self;
    throw RenderError{"access to attribute '" + m + "' of 'dict' object is unsafe"};
}

static Value call_list_method(const Value& self, const std::string& m, CallArgs& a) {
    const auto& items = self.as_list().items;
    if (m == "index" || m == "count") {
        check_args(a, 1, {}, "list." + m);
        Value   x = arg_or(a, 0, nullptr, Value());
        int64_t n = 0;
        for (size_t i = 0; i < items.size(); ++i) {
            if (!values_equal(items[i], x))
                continue;
            if (m == "index")
                return Value(int64_t(i));
            ++n;
        }
        if (m == "index")
            throw RenderError{"value is not in list"};
        return Value(n);
    }
    if (m == "copy")
        return self;
    throw RenderError{"access to attribute '" + m + "' of '" + self.type_name() + "' object is unsafe"};
}

static Value bound_method(const Value& self, const std::string& name) {
    return Value::function(name, [self, name](CallArgs& a) -> Value {
        if (self.is_string())
            return call_str_method(self.as_string(), name, a);
        if (self.is_dict())
            return call_dict_method(self, name, a);
        return call_list_method(self, name, a);
    });
}

// ---- attribute and item access ------------------------------------------------------------------------------------

Value get_attr(const Value& obj, const std::string& name) {
    switch (obj.kind()) {
    case Value::Kind::Undefined:
        fail_undefined(obj);
    case Value::Kind::Dict: {
        // Python getattr first: dict methods shadow keys of the same name, as in jinja2.
        if (is_dict_method(name))
            return bound_method(obj, name);
        const Value* v = obj.as_dict().find(name);
        return v ? *v : no_attribute(obj, name);
    }
    case Value::Kind::Namespace: {
        Value* v = obj.as_namespace().find(name);
        return v ? *v : no_attribute(obj, name);
    }
    case Value::Kind::String:
        if (is_str_method(name))
            return bound_method(obj, name);
        return no_attribute(obj, name);
    case Value::Kind::List:
        if (is_list_method(name))
            return bound_method(obj, name);
        return no_attribute(obj, name);
    default:
        return no_attribute(obj, name);
    }
}

Value get_item(const Value& obj, const Value& key) {
    if (key.is_undefined())
        fail_undefined(key);
    switch (obj.kind()) {
    case Value::Kind::Undefined:
        fail_undefined(obj);
    case Value::Kind::Dict:
        if (key.is_string()) {
            const Value* v = obj.as_dict().find(key.as_string());
            if (v)
                return *v;
            return get_attr(obj, key.as_string()); // falls back to methods, then Undefined
        }
        return Value::undefined("'dict object' has no element " + to_repr(key));
    case Value::Kind::Namespace:
        if (key.is_string())
            return get_attr(obj, key.as_string());
        return Value::undefined("'Namespace object' has no element " + to_repr(key));
    case Value::Kind::List:
    case Value::Kind::String: {
        if (key.is_string())
            return get_attr(obj, key.as_string());
        if (!key.is_int() && !key.is_bool())
            return Value::undefined("'" + obj.type_name() + " object' has no element " + to_repr(key));
        int64_t idx = key.as_int();
        if (obj.is_list()) {
            const auto& items = obj.as_list().items;
            int64_t     n     = int64_t(items.size());
            if (idx < 0)
                idx += n;
            if (idx < 0 || idx >= n)
                return Value::undefined("'list object' has no element " + std::to_string(key.as_int()));
            return items[size_t(idx)];
        }
        const std::string& s = obj.as_string();
        if (is_ascii(s)) {
            int64_t n = int64_t(s.size());
            if (idx < 0)
                idx += n;
            if (idx < 0 || idx >= n)
                return Value::undefined("'str object' has no element " + std::to_string(key.as_int()));
            return Value(std::string(1, s[size_t(idx)]));
        }
        std::u32string u = utf8_decode(s);
        int64_t        n = int64_t(u.size());
        if (idx < 0)
            idx += n;
        if (idx < 0 || idx >= n)
            return Value::undefined("'str object' has no element " + std::to_string(key.as_int()));
        std::string out;
        utf8_append(out, u[size_t(idx)]);
        return Value(std::move(out));
    }
    default:
        return Value::undefined("'" + obj.type_name() + " object' has no element " + to_repr(key));
    }
}

Value get_slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
    if (obj.is_undefined())
        fail_undefined(obj);
    auto bound = [](const Value& v, const char* what, bool& given) -> int64_t {
        given = !(v.is_none() || v.is_undefined());
        if (!given)
            return 0;
        if (!v.is_int() && !v.is_bool())
            throw RenderError{std::string("slice ") + what + " must be an integer or None"};
        return v.as_int();
    };
    bool    has_start, has_stop, has_step;
    int64_t start = bound(start_v, "start", has_start), stop = bound(stop_v, "stop", has_stop);
    int64_t step = bound(step_v, "step", has_step);
    if (!has_step)
        step = 1;
    if (step == 0)
        throw RenderError{"slice step cannot be zero"};
    if (!obj.is_list() && !obj.is_string())
        return Value::undefined("'" + obj.type_name() + " object' has no element slice");
    std::u32string     u;
    const std::string* s     = obj.is_string() ? &obj.as_string() : nullptr;
    bool               ascii = s && is_ascii(*s);
    if (s && !ascii)
        u = utf8_decode(*s);
    int64_t len = s ? int64_t(ascii ? s->size() : u.size()) : int64_t(obj.as_list().items.size());
    // CPython PySlice_AdjustIndices
    auto adjust = [&](int64_t v, bool given, int64_t dflt) {
        if (!given)
            return dflt;
        if (v < 0) {
            v += len;
            if (v < 0)
                v = step < 0 ? -1 : 0;
        } else if (v >= len) {
            v = step < 0 ? len - 1 : len;
        }
        return v;
    };
    start = adjust(start, has_start, step < 0 ? len - 1 : 0);
    stop  = adjust(stop, has_stop, step < 0 ? -1 : len);
    std::vector<int64_t> idx;
    if (step > 0)
        for (int64_t i = start; i < stop; i += step)
            idx.push_back(i);
    else
        for (int64_t i = start; i > stop; i += step)
            idx.push_back(i);
    if (s) {
        std::string out;
        for (int64_t i : idx) {
            if (ascii)
                out.push_back((*s)[size_t(i)]);
            else
                utf8_append(out, u[size_t(i)]);
        }
        return Value(std::move(out));
    }
    std::vector<Value> out;
    out.reserve(idx.size());
    for (int64_t i : idx)
        out.push_back(obj.as_list().items[size_t(i)]);
    return Value::list(std::move(out), obj.as_list().is_tuple);
}

} // namespace moebius::jinja
