#pragma once
// Values of the Jinja2 subset used by chat templates (chat_template.h). They follow Python semantics because
// Hugging Face renders templates with Python jinja2: ints and floats are distinct, str() of True is "True",
// lists print as Python reprs, and an undefined variable is a value of its own that renders as "".
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace moebius::jinja {

class Value;

// Raised while rendering; the renderer adds the template origin and line.
struct RenderError {
    std::string message;
};

// Nesting limit of lists/dicts, so that printing, comparing and destroying values never recurses deeply.
inline constexpr uint32_t k_max_value_depth = 512;

struct ListObj {
    std::vector<Value> items;
    bool               is_tuple = false; // only changes how it prints: (1, 2) instead of [1, 2]
    uint32_t           depth    = 1;
};

struct DictObj {
    std::vector<std::pair<std::string, Value>> items; // insertion order, like a Python dict
    uint32_t                                   depth = 1;
    const Value*                               find(std::string_view key) const;
};

// namespace() objects are the only mutable values ({% set ns.x = ... %}).
struct NamespaceObj {
    std::vector<std::pair<std::string, Value>> attrs;
    Value*                                     find(std::string_view key);
    void                                       set(const std::string& key, Value v);
};

struct CallArgs {
    std::vector<Value>                         positional;
    std::vector<std::pair<std::string, Value>> keyword;
};

struct CallableObj {
    std::string                     name;
    std::function<Value(CallArgs&)> fn;
};

struct UndefinedTag {
    std::shared_ptr<const std::string> hint; // why it is undefined, for error messages
};
struct NoneTag {};

using ListPtr      = std::shared_ptr<const ListObj>;
using DictPtr      = std::shared_ptr<const DictObj>;
using NamespacePtr = std::shared_ptr<NamespaceObj>;
using CallablePtr  = std::shared_ptr<const CallableObj>;

class Value {
  public:
    enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };

    Value() = default; // undefined
    Value(bool b) : v_(b) {}
    Value(int v) : v_(int64_t(v)) {}
    Value(int64_t v) : v_(v) {}
    Value(double v) : v_(v) {}
    Value(std::string s) : v_(std::move(s)) {}
    Value(const char* s) : v_(std::string(s)) {}
    Value(ListPtr p) : v_(std::move(p)) {}
    Value(DictPtr p) : v_(std::move(p)) {}
    Value(NamespacePtr p) : v_(std::move(p)) {}
    Value(CallablePtr p) : v_(std::move(p)) {}

    static Value undefined(std::string hint);
    static Value none() { return Value(NoneTag{}); }
    static Value list(std::vector<Value> items, bool is_tuple = false); // throws RenderError when nested too deep
    static Value dict(std::vector<std::pair<std::string, Value>> items);
    static Value function(std::string name, std::function<Value(CallArgs&)> fn);

    Kind kind() const { return Kind(v_.index()); }
    bool is_undefined() const { return kind() == Kind::Undefined; }
    bool is_none() const { return kind() == Kind::None; }
    bool is_bool() const { return kind() == Kind::Bool; }
    bool is_int() const { return kind() == Kind::Int; }
    bool is_float() const { return kind() == Kind::Float; }
    bool is_number() const { return is_int() || is_float() || is_bool(); } // Python: bool is an int
    bool is_string() const { return kind() == Kind::String; }
    bool is_list() const { return kind() == Kind::List; }
    bool is_dict() const { return kind() == Kind::Dict; }
    bool is_namespace() const { return kind() == Kind::Namespace; }
    bool is_callable() const { return kind() == Kind::Callable; }

    bool                as_bool() const { return std::get<bool>(v_); }
    int64_t             as_int() const;    // bool or int
    double              as_double() const; // any number
    const std::string&  as_string() const { return std::get<std::string>(v_); }
    const ListObj&      as_list() const { return *std::get<ListPtr>(v_); }
    const DictObj&      as_dict() const { return *std::get<DictPtr>(v_); }
    NamespaceObj&       as_namespace() const { return *std::get<NamespacePtr>(v_); }
    const CallableObj&  as_callable() const { return *std::get<CallablePtr>(v_); }
    const ListPtr&      list_ptr() const { return std::get<ListPtr>(v_); }
    const DictPtr&      dict_ptr() const { return std::get<DictPtr>(v_); }
    const NamespacePtr& namespace_ptr() const { return std::get<NamespacePtr>(v_); }
    const std::string&  undefined_hint() const;

    uint32_t    depth() const; // nesting depth of lists/dicts (scalars: 0)
    bool        truthy() const;
    std::string type_name() const; // Python type name, for error messages

  private:
    explicit Value(NoneTag t) : v_(t) {}
    explicit Value(UndefinedTag t) : v_(std::move(t)) {}
    std::variant<UndefinedTag, NoneTag, bool, int64_t, double, std::string, ListPtr, DictPtr, NamespacePtr, CallablePtr>
        v_;
};

// Python str(): what {{ value }} prints. Undefined prints as "".
std::string to_str(const Value& v);
void        append_str(std::string& out, const Value& v);
// Python repr(), used for items inside printed lists and dicts.
std::string to_repr(const Value& v);
std::string python_float_repr(double d);

// Python ==, and <  (throws RenderError for unorderable types, like Python's TypeError).
bool values_equal(const Value& a, const Value& b);
bool value_less(const Value& a, const Value& b);

// json.dumps(value, ensure_ascii=False, indent=indent, separators=..., sort_keys=...) as transformers' tojson does.
struct JsonStyle {
    std::string indent; // used when has_indent
    bool        has_indent = false;
    std::string item_separator; // ", " or "," by default (depends on indent)
    std::string key_separator = ": ";
    bool        sort_keys     = false;
};
std::string to_json(const Value& v, const JsonStyle& style);

// Context conversion. JSON deeper than k_max_value_depth throws RenderError.
Value from_json(const nlohmann::ordered_json& j);

// UTF-8 helpers. Invalid bytes map to U+DC80..U+DCFF and back (Python's surrogateescape), so nothing is lost.
std::u32string utf8_decode(std::string_view s);
std::string    utf8_encode(std::u32string_view s);
void           utf8_append(std::string& out, char32_t c);
size_t         utf8_length(std::string_view s);
bool           is_python_space(char32_t c); // str.isspace()
bool           is_ascii(std::string_view s);

} // namespace moebius::jinja
