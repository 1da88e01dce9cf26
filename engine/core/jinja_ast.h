#pragma once
// Tokens and syntax tree of the Jinja2 subset (see chat_template.h). Produced by jinja_lexer.cpp and
// jinja_parser.cpp, walked by jinja_render.cpp.
#include "engine/core/jinja_value.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moebius::jinja {

// A syntax error at a position of the template source (1-based line and column).
struct SyntaxError {
    std::string message;
    int         line = 0, col = 0;
};

// Nesting limits for blocks and expression trees, so that parsing, rendering and freeing the tree never
// overflow the stack (jinja2 fails the same templates with a RecursionError).
inline constexpr int k_max_nesting    = 256;
inline constexpr int k_max_expr_depth = 200;

enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Number, Op, Eof };

struct Token {
    Tok         type = Tok::Eof;
    std::string text;   // data, name, operator, or the decoded string literal
    Value       number; // Tok::Number
    int         line = 0, col = 0;
};

// Splits a template into tokens with jinja2's whitespace rules for trim_blocks=True, lstrip_blocks=True and
// keep_trailing_newline=False. Throws SyntaxError.
std::vector<Token> tokenize(std::string_view source);

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
using Kwargs  = std::vector<std::pair<std::string, ExprPtr>>;

enum class ExprKind {
    Literal, // literal
    Name,    // name
    List,    // args: items
    Tuple,   // args: items
    Dict,    // args: key0, value0, key1, value1, ...
    GetAttr, // args: [object]; name: attribute
    GetItem, // args: [object, key]
    Slice,   // args: [object, start, stop, step], each bound may be null
    Call,    // args: [callee, positional...]; kwargs
    Filter,  // args: [operand, positional...]; kwargs; name: filter
    Test,    // args: [operand, positional...]; kwargs; name: test; negated
    Unary,   // args: [operand]; name: "-", "+" or "not"
    Binary,  // args: [left, right]; name: operator (+ - * / // % ** ~ and or)
    Compare, // args: [first, operand...]; ops: one per operand (== != < <= > >= in notin)
    Cond,    // args: [condition, then, else-or-null]
};

struct Expr {
    ExprKind                 kind = ExprKind::Literal;
    int                      line = 0;
    Value                    literal;
    std::string              name;
    std::vector<ExprPtr>     args;
    Kwargs                   kwargs;
    std::vector<std::string> ops;
    bool                     negated = false;
    int                      depth   = 1; // height of this subtree
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body    = std::vector<NodePtr>;

enum class NodeKind { Text, Output, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, With, Break, Continue };

// Left side of an assignment or loop variable(s): a name, a tuple of names, or namespace attribute ns.attr.
struct Target {
    std::vector<std::string> names;
    bool                     is_tuple = false;
    std::string              attr; // non-empty: assign names[0].attr
};

struct FilterCall {
    std::string          name;
    std::vector<ExprPtr> args;
    Kwargs               kwargs;
    int                  line = 0;
};

struct Node {
    NodeKind                                     kind = NodeKind::Text;
    int                                          line = 0;
    std::string                                  text;     // Text; Macro name
    ExprPtr                                      expr;     // Output, Set value, For iterable, CallBlock call
    ExprPtr                                      cond;     // For: loop filter
    std::vector<std::pair<ExprPtr, Body>>        branches; // If: condition and body of if / elif
    Body                                         body, else_body;
    Target                                       target;   // For, Set, SetBlock
    std::vector<FilterCall>                      filters;  // SetBlock, FilterBlock
    std::vector<std::string>                     params;   // Macro, CallBlock (caller's parameters)
    std::vector<ExprPtr>                         defaults; // aligned with params; null = required
    std::vector<std::pair<std::string, ExprPtr>> assigns;  // With
    bool uses_loop = true; // For: the body mentions "loop" (building the loop object is skipped otherwise)
};

// Parses a whole template. Throws SyntaxError.
Body parse_template(std::string_view source);

} // namespace moebius::jinja
