#pragma once
// Value-level operations of the Jinja2 subset: operators, attribute and item access, Python str/dict/list methods,
// filters, tests and global functions. Internal to chat_template.cpp and jinja_render.cpp.
#include "engine/core/jinja_value.h"

#include <string>
#include <vector>

namespace moebius::jinja {

// Size caps: a template cannot build strings or lists large enough to exhaust memory.
inline constexpr size_t  k_max_string_bytes = size_t(64) << 20;
inline constexpr size_t  k_max_list_items   = size_t(4) << 20;
inline constexpr int64_t k_max_range        = 100000; // jinja2.sandbox.MAX_RANGE

// raise_exception(message) from a template.
struct RaisedError {
    std::string message;
};

void check_string_size(size_t bytes);
void check_list_size(size_t items);

[[noreturn]] void fail_undefined(const Value& v); // UndefinedError for an operation on an undefined value

// obj.name and obj[key] with jinja2's sandboxed lookup rules (missing attributes and keys give Undefined).
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// Python operators: + - * / // % ** ~ and the "in" test.
Value binary_op(const std::string& op, const Value& a, const Value& b);
Value unary_minus(const Value& v);
bool  contains(const Value& container, const Value& item);

// Items of an iterable for "for" loops and filters: list items, dict keys, string characters.
std::vector<Value> iterate(const Value& v);

bool  has_filter(const std::string& name);
Value apply_filter(const std::string& name, const Value& v, CallArgs& args);
bool  has_test(const std::string& name);
bool  apply_test(const std::string& name, const Value& v, CallArgs& args);

// Global functions other than namespace() (which the renderer owns).
Value global_range(CallArgs& args);
Value global_dict(CallArgs& args);
Value global_strftime_now(CallArgs& args);

// ---- shared helpers (jinja_ops.cpp, jinja_strings.cpp) ----------------------------------------------------------

const std::string& need_string(const Value& v, const char* what); // TypeError unless a string
int64_t            need_int(const Value& v, const char* what);    // TypeError unless an int or bool
std::string        soft_str(const Value& v);                      // str(v), "" for Undefined
Value              call_dict_method(const Value& self, const std::string& method, CallArgs& args);

// Python str operations on UTF-8 code points.
char32_t                 map_case(char32_t c, int mode); // 0 lower, 1 upper, 2 title
bool                     is_cased(char32_t c);
bool                     is_alpha(char32_t c);
bool                     is_digit_cp(char32_t c);
bool                     all_chars(const std::string& s, bool (*pred)(char32_t)); // non-empty and pred for all
std::string              case_map(const std::string& s, int mode);
std::string              py_title(const std::string& s);                 // str.title()
std::string              py_capitalize(const std::string& s);            // str.capitalize()
std::string              jinja_title(const std::string& s);              // the title filter
bool                     py_case_test(const std::string& s, bool upper); // str.isupper() / islower()
std::string              py_strip(const std::string& s, const Value& chars, bool left, bool right);
std::vector<std::string> py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right);
std::vector<std::string> py_splitlines(const std::string& s, bool keepends);
std::string py_replace(const std::string& s, const std::string& old, const std::string& rep, int64_t count);
int64_t     cp_index(const std::string& s, size_t byte_pos);                    // byte offset -> code point index
bool        match_affix(const std::string& s, const Value& affix, bool prefix); // startswith/endswith
std::string pad_center(const std::string& s, int64_t width, const std::string& fill, int align);
Value       str_list(std::vector<std::string> parts);
std::string percent_format(const std::string& fmt, const Value& args); // fmt % args

// Argument binding in Python style: positional index or keyword name.
const Value* find_arg(const CallArgs& args, size_t pos, const char* name);
Value        arg_or(const CallArgs& args, size_t pos, const char* name, Value dflt);
void         check_args(const CallArgs& args, size_t max_positional, std::initializer_list<const char*> names,
                        const std::string& what);

} // namespace moebius::jinja
