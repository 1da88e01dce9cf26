// Recursive-descent parser of the Jinja2 subset. The grammar and operator precedence follow jinja2/parser.py:
// filters and tests bind tighter than arithmetic ("messages|length - 1"), "**" is left-associative, and a for
// loop's iterable is parsed without the ternary so that "for x in xs if cond" is a loop filter.
#include "engine/core/jinja_ast.h"

#include <algorithm>

namespace moebius::jinja {

namespace {

class Parser {
  public:
    explicit Parser(std::vector<Token> toks) : toks_(std::move(toks)) {}

    Body parse() {
        Body body = subparse({});
        if (cur().type != Tok::Eof)
            fail(cur(), "unexpected tokens after the end of the template");
        return body;
    }

  private:
    struct OpenBlock {
        std::string              tag;
        int                      line;
        std::vector<std::string> expected; // tags that may come next
    };

    std::vector<Token>     toks_;
    size_t                 i_     = 0;
    int                    depth_ = 0;
    int                    loops_ = 0; // enclosing for loops (break / continue are only valid inside one)
    std::vector<OpenBlock> open_;

    struct Guard {
        Parser& p;
        Guard(Parser& parser, const Token& at) : p(parser) {
            if (++p.depth_ > k_max_nesting)
                p.fail(at, "template nested too deeply (more than " + std::to_string(k_max_nesting) + " levels)");
        }
        ~Guard() { --p.depth_; }
    };

    const Token& cur() const { return toks_[i_]; }
    const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
    const Token& next() {
        const Token& t = toks_[i_];
        if (i_ + 1 < toks_.size())
            ++i_;
        return t;
    }

    [[noreturn]] void fail(const Token& t, const std::string& msg) const { throw SyntaxError{msg, t.line, t.col}; }

    static std::string describe(const Token& t) {
        switch (t.type) {
        case Tok::Data:
            return "template data";
        case Tok::VarBegin:
            return "'{{'";
        case Tok::VarEnd:
            return "end of print statement";
        case Tok::BlockBegin:
            return "'{%'";
        case Tok::BlockEnd:
            return "end of statement block";
        case Tok::Name:
            return "'" + t.text + "'";
        case Tok::String:
            return "string literal";
        case Tok::Number:
            return "number";
        case Tok::Op:
            return "'" + t.text + "'";
        case Tok::Eof:
            return "end of template";
        }
        return "token";
    }

    bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
    bool is_name(const char* name) const { return cur().type == Tok::Name && cur().text == name; }
    bool skip_op(const char* op) {
        if (!is_op(op))
            return false;
        next();
        return true;
    }
    bool skip_name(const char* name) {
        if (!is_name(name))
            return false;
        next();
        return true;
    }
    void expect_op(const char* op) {
        if (!skip_op(op))
            fail(cur(), std::string("expected '") + op + "', got " + describe(cur()));
    }
    const Token& expect_name() {
        if (cur().type != Tok::Name)
            fail(cur(), "expected a name, got " + describe(cur()));
        return next();
    }
    void expect_block_end() {
        if (cur().type != Tok::BlockEnd)
            fail(cur(), "expected end of statement block, got " + describe(cur()));
        next();
    }

    ExprPtr make(ExprKind kind, const Token& at) {
        auto e  = std::make_unique<Expr>();
        e->kind = kind;
        e->line = at.line;
        return e;
    }

    // Records the height of a finished node; long operator chains ("a + a + ...") are refused here.
    ExprPtr finish(ExprPtr e) {
        int d = 0;
        for (const auto& a : e->args)
            if (a)
                d = std::max(d, a->depth);
        for (const auto& kv : e->kwargs)
            d = std::max(d, kv.second->depth);
        e->depth = d + 1;
        if (e->depth > k_max_expr_depth)
            throw SyntaxError{
                "expression nested too deeply (more than " + std::to_string(k_max_expr_depth) + " levels)", e->line, 0};
        return e;
    }

    // ---- statements ---------------------------------------------------------------------------------------------

    static std::string join_tags(const std::vector<std::string>& tags) {
        std::string s;
        for (size_t k = 0; k < tags.size(); ++k)
            s += (k ? (k + 1 == tags.size() ? " or '" : ", '") : "'") + tags[k] + "'";
        return s;
    }

    // Parses until one of end_tags opens a block tag; leaves the stream at that tag's name.
    Body subparse(const std::vector<std::string>& end_tags) {
        Body body;
        for (;;) {
            const Token& t = cur();
            if (t.type == Tok::Data) {
                auto n  = std::make_unique<Node>();
                n->kind = NodeKind::Text;
                n->line = t.line;
                n->text = t.text;
                body.push_back(std::move(n));
                next();
            } else if (t.type == Tok::VarBegin) {
                next();
                auto n  = std::make_unique<Node>();
                n->kind = NodeKind::Output;
                n->line = t.line;
                n->expr = parse_tuple(false, true, {}, false);
                if (cur().type != Tok::VarEnd)
                    fail(cur(), "expected end of print statement, got " + describe(cur()));
                next();
                body.push_back(std::move(n));
            } else if (t.type == Tok::BlockBegin) {
                next();
                if (cur().type == Tok::Name &&
                    std::find(end_tags.begin(), end_tags.end(), cur().text) != end_tags.end())
                    return body;
                body.push_back(parse_statement());
            } else if (t.type == Tok::Eof) {
                if (!end_tags.empty()) {
                    const OpenBlock& ob = open_.back();
                    fail(t, "unexpected end of template: expected " + join_tags(ob.expected) + " to close the '" +
                                ob.tag + "' block opened at line " + std::to_string(ob.line));
                }
                return body;
            } else {
                fail(t, "unexpected " + describe(t));
            }
        }
    }

    // Parses the body of a block up to one of its end tags; returns the tag that ended it (consumed).
    Body block_body(const std::string& tag, int line, const std::vector<std::string>& ends, std::string* ended_by) {
        Guard g(*this, cur());
        open_.push_back({tag, line, ends});
        Body body = subparse(ends);
        open_.pop_back();
        if (ended_by)
            *ended_by = cur().text;
        next(); // the end tag's name
        return body;
    }

    NodePtr parse_statement() {
        const Token& t = cur();
        if (t.type != Tok::Name)
            fail(t, "tag name expected, got " + describe(t));
        const std::string& tag = t.text;
        if (tag == "if")
            return parse_if();
        if (tag == "for")
            return parse_for();
        if (tag == "set")
            return parse_set();
        if (tag == "macro")
            return parse_macro();
        if (tag == "call")
            return parse_call_block();
        if (tag == "filter")
            return parse_filter_block();
        if (tag == "with")
            return parse_with(false);
        if (tag == "generation")
            return parse_with(true); // transformers' AssistantTracker: renders its body
        if (tag == "break" || tag == "continue") {
            if (loops_ == 0)
                fail(t, "'" + tag + "' outside of a loop");
            auto n  = std::make_unique<Node>();
            n->kind = tag == "break" ? NodeKind::Break : NodeKind::Continue;
            n->line = t.line;
            next();
            expect_block_end();
            return n;
        }
        static const char* unsupported[] = {"extends", "include", "import", "from", "block", "do", "autoescape"};
        for (const char* u : unsupported)
            if (tag == u)
                fail(t, "the '" + tag + "' tag is not supported in chat templates");
        // Name the block that is still open when the tag is a stray end tag, as jinja2 does.
        for (auto it = open_.rbegin(); it != open_.rend(); ++it) {
            bool known = std::find(it->expected.begin(), it->expected.end(), tag) != it->expected.end();
            if (known || tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif")
                fail(t, "encountered unknown tag '" + tag + "': expected " + join_tags(open_.back().expected) +
                            " to close the '" + open_.back().tag + "' block opened at line " +
                            std::to_string(open_.back().line));
        }
        fail(t, "encountered unknown tag '" + tag + "'");
    }

    NodePtr parse_if() {
        const Token& t = next();
        auto         n = std::make_unique<Node>();
        n->kind        = NodeKind::If;
        n->line        = t.line;
        ExprPtr cond   = parse_tuple(false, false, {}, false);
        expect_block_end();
        for (;;) {
            std::string ended;
            Body        body = block_body("if", t.line, {"elif", "else", "endif"}, &ended);
            n->branches.emplace_back(std::move(cond), std::move(body));
            if (ended == "elif") {
                cond = parse_tuple(false, false, {}, false);
                expect_block_end();
                continue;
            }
            if (ended == "else") {
                expect_block_end();
                n->else_body = block_body("if", t.line, {"endif"}, nullptr);
            }
            expect_block_end();
            return n;
        }
    }

    // Loop variables, "x", "k, v" or "(k, v)"; or a namespace attribute "ns.x" when allowed.
    Target parse_target(bool with_namespace) {
        Target tg;
        if (with_namespace && cur().type == Tok::Name && peek().type == Tok::Op && peek().text == ".") {
            tg.names.push_back(next().text);
            next();
            tg.attr = expect_name().text;
            return tg;
        }
        bool paren = skip_op("(");
        for (;;) {
            tg.names.push_back(expect_name().text);
            if (!skip_op(","))
                break;
            tg.is_tuple = true;
            if (cur().type != Tok::Name)
                break; // trailing comma
        }
        if (paren) {
            expect_op(")");
            tg.is_tuple = true;
        }
        for (const auto& nm : tg.names)
            if (nm == "true" || nm == "false" || nm == "none" || nm == "True" || nm == "False" || nm == "None")
                fail(cur(), "cannot assign to '" + nm + "'");
        return tg;
    }

    NodePtr parse_for() {
        const Token& t = next();
        auto         n = std::make_unique<Node>();
        n->kind        = NodeKind::For;
        n->line        = t.line;
        n->target      = parse_target(false);
        if (!skip_name("in"))
            fail(cur(), "expected 'in', got " + describe(cur()));
        n->expr = parse_tuple(false, false, {"recursive"}, false);
        if (skip_name("if"))
            n->cond = parse_expression(true);
        if (is_name("recursive"))
            fail(cur(), "recursive loops are not supported");
        expect_block_end();
        ++loops_;
        std::string ended;
        n->body = block_body("for", t.line, {"endfor", "else"}, &ended);
        --loops_;
        n->uses_loop = mentions_loop(n->body);
        if (ended == "else") {
            expect_block_end();
            n->else_body = block_body("for", t.line, {"endfor"}, nullptr);
        }
        expect_block_end();
        return n;
    }

    std::vector<FilterCall> parse_filter_chain(bool first_inline) {
        std::vector<FilterCall> chain;
        while (first_inline || is_op("|")) {
            if (!first_inline)
                next();
            first_inline = false;
            FilterCall fc;
            fc.line = cur().line;
            fc.name = expect_name().text;
            while (skip_op("."))
                fc.name += "." + expect_name().text;
            if (is_op("("))
                parse_call_args(fc.args, fc.kwargs);
            chain.push_back(std::move(fc));
        }
        return chain;
    }

    NodePtr parse_set() {
        const Token& t = next();
        auto         n = std::make_unique<Node>();
        n->line        = t.line;
        n->target      = parse_target(true);
        if (skip_op("=")) {
            n->kind = NodeKind::Set;
            n->expr = parse_tuple(false, true, {}, false);
            expect_block_end();
            return n;
        }
        n->kind    = NodeKind::SetBlock;
        n->filters = parse_filter_chain(false);
        expect_block_end();
        n->body = block_body("set", t.line, {"endset"}, nullptr);
        expect_block_end();
        return n;
    }

    void parse_signature(Node& n) {
        expect_op("(");
        while (!is_op(")")) {
            if (!n.params.empty())
                expect_op(",");
            if (is_op(")"))
                break;
            n.params.push_back(expect_name().text);
            if (skip_op("="))
                n.defaults.push_back(parse_expression(true));
            else if (!n.defaults.empty() && n.defaults.back())
                fail(cur(), "non-default argument follows default argument");
            else
                n.defaults.push_back(nullptr);
        }
        next();
    }

    NodePtr parse_macro() {
        const Token& t = next();
        auto         n = std::make_unique<Node>();
        n->kind        = NodeKind::Macro;
        n->line        = t.line;
        n->text        = expect_name().text;
        parse_signature(*n);
        expect_block_end();
        int saved_loops = loops_;
        loops_          = 0;
        n->body         = block_body("macro", t.line, {"endmacro"}, nullptr);
        loops_          = saved_loops;
        expect_block_end();
        return n;
    }

    NodePtr parse_call_block() {
        const Token& t = next();
        auto         n = std::make_unique<Node>();
        n->kind        = NodeKind::CallBlock;
        n->line        = t.line;
        if (is_op("("))
            parse_signature(*n);
        n->expr = parse_expression(true);
        if (n->expr->kind != ExprKind::Call)
            fail(t, "expected a call expression after 'call'");
        expect_block_end();
        int saved_loops = loops_;
        loops_          = 0;
        n->body         = block_body("call", t.line, {"endcall"}, nullptr);
        loops_          = saved_loops;
        expect_block_end();
        return n;
    }

    NodePtr parse_filter_block() {
        const Token& t = next();
        auto         n = std::make_unique<Node>();
        n->kind        = NodeKind::FilterBlock;
        n->line        = t.line;
        n->filters     = parse_filter_chain(true);
        expect_block_end();
        n->body = block_body("filter", t.line, {"endfilter"}, nullptr);
        expect_block_end();
        return n;
    }

    NodePtr parse_with(bool generation) {
        const Token& t = next();
        auto         n = std::make_unique<Node>();
        n->kind        = NodeKind::With;
        n->line        = t.line;
        while (!generation && cur().type != Tok::BlockEnd) {
            if (!n->assigns.empty())
                expect_op(",");
            std::string name = expect_name().text;
            expect_op("=");
            n->assigns.emplace_back(name, parse_expression(true));
        }
        expect_block_end();
        const char* end = generation ? "endgeneration" : "endwith";
        n->body         = block_body(generation ? "generation" : "with", t.line, {end}, nullptr);
        expect_block_end();
        return n;
    }

    static bool mentions_loop(const Expr* e) {
        if (!e)
            return false;
        if (e->kind == ExprKind::Name && e->name == "loop")
            return true;
        for (const auto& a : e->args)
            if (mentions_loop(a.get()))
                return true;
        for (const auto& kv : e->kwargs)
            if (mentions_loop(kv.second.get()))
                return true;
        return false;
    }

    static bool mentions_loop(const Body& body) {
        for (const auto& n : body) {
            if (mentions_loop(n->expr.get()) || mentions_loop(n->cond.get()) || mentions_loop(n->body) ||
                mentions_loop(n->else_body))
                return true;
            for (const auto& [c, b] : n->branches)
                if (mentions_loop(c.get()) || mentions_loop(b))
                    return true;
            for (const auto& fc : n->filters) {
                for (const auto& a : fc.args)
                    if (mentions_loop(a.get()))
                        return true;
                for (const auto& kv : fc.kwargs)
                    if (mentions_loop(kv.second.get()))
                        return true;
            }
            for (const auto& d : n->defaults)
                if (mentions_loop(d.get()))
                    return true;
            for (const auto& kv : n->assigns)
                if (mentions_loop(kv.second.get()))
                    return true;
        }
        return false;
    }

    // ---- expressions --------------------------------------------------------------------------------------------

    bool is_tuple_end(const std::vector<std::string>& extra_end) const {
        if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || cur().type == Tok::Eof)
            return true;
        if (is_op(")"))
            return true;
        return cur().type == Tok::Name && std::find(extra_end.begin(), extra_end.end(), cur().text) != extra_end.end();
    }

    ExprPtr parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra_end,
                        bool explicit_parens) {
        const Token&         start = cur();
        std::vector<ExprPtr> items;
        bool                 is_tuple = false;
        for (;;) {
            if (!items.empty())
                expect_op(",");
            if (is_tuple_end(extra_end))
                break;
            items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
            if (is_op(","))
                is_tuple = true;
            else
                break;
        }
        if (!is_tuple) {
            if (!items.empty())
                return std::move(items[0]);
            if (!explicit_parens)
                fail(cur(), "expected an expression, got " + describe(cur()));
        }
        auto e  = make(ExprKind::Tuple, start);
        e->args = std::move(items);
        return finish(std::move(e));
    }

    ExprPtr parse_expression(bool with_condexpr) {
        Guard g(*this, cur());
        if (!with_condexpr)
            return parse_or();
        ExprPtr expr = parse_or();
        while (is_name("if")) {
            const Token& t    = next();
            ExprPtr      cond = parse_or();
            ExprPtr      other;
            if (skip_name("else"))
                other = parse_expression(true);
            auto c = make(ExprKind::Cond, t);
            c->args.push_back(std::move(cond));
            c->args.push_back(std::move(expr));
            c->args.push_back(std::move(other));
            expr = finish(std::move(c));
        }
        return expr;
    }

    ExprPtr binary(const Token& t, const std::string& op, ExprPtr l, ExprPtr r) {
        auto e  = make(ExprKind::Binary, t);
        e->name = op;
        e->args.push_back(std::move(l));
        e->args.push_back(std::move(r));
        return finish(std::move(e));
    }

    ExprPtr parse_or() {
        ExprPtr left = parse_and();
        while (is_name("or")) {
            const Token& t = next();
            left           = binary(t, "or", std::move(left), parse_and());
        }
        return left;
    }

    ExprPtr parse_and() {
        ExprPtr left = parse_not();
        while (is_name("and")) {
            const Token& t = next();
            left           = binary(t, "and", std::move(left), parse_not());
        }
        return left;
    }

    ExprPtr parse_not() {
        if (is_name("not")) {
            Guard        g(*this, cur());
            const Token& t = next();
            auto         e = make(ExprKind::Unary, t);
            e->name        = "not";
            e->args.push_back(parse_not());
            return finish(std::move(e));
        }
        return parse_compare();
    }

    ExprPtr parse_compare() {
        const Token& start = cur();
        ExprPtr      expr  = parse_math1();
        ExprPtr      cmp;
        for (;;) {
            std::string op;
            if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                          cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
                op = next().text;
            } else if (is_name("in")) {
                next();
                op = "in";
            } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
                next();
                next();
                op = "notin";
            } else {
                break;
            }
            if (!cmp) {
                cmp = make(ExprKind::Compare, start);
                cmp->args.push_back(std::move(expr));
            }
            cmp->ops.push_back(op);
            cmp->args.push_back(parse_math1());
            cmp = finish(std::move(cmp));
        }
        return cmp ? std::move(cmp) : std::move(expr);
    }

    ExprPtr parse_math1() {
        ExprPtr left = parse_concat();
        while (is_op("+") || is_op("-")) {
            const Token& t = next();
            left           = binary(t, t.text, std::move(left), parse_concat());
        }
        return left;
    }

    ExprPtr parse_concat() {
        ExprPtr left = parse_math2();
        while (is_op("~")) {
            const Token& t = next();
            left           = binary(t, "~", std::move(left), parse_math2());
        }
        return left;
    }

    ExprPtr parse_math2() {
        ExprPtr left = parse_pow();
        while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
            const Token& t = next();
            left           = binary(t, t.text, std::move(left), parse_pow());
        }
        return left;
    }

    ExprPtr parse_pow() {
        ExprPtr left = parse_unary(true);
        while (is_op("**")) {
            const Token& t = next();
            left           = binary(t, "**", std::move(left), parse_unary(true));
        }
        return left;
    }

    ExprPtr parse_unary(bool with_filter) {
        Guard   g(*this, cur());
        ExprPtr node;
        if (is_op("-") || is_op("+")) {
            const Token& t = next();
            node           = make(ExprKind::Unary, t);
            node->name     = t.text;
            node->args.push_back(parse_unary(false));
            node = finish(std::move(node));
        } else {
            node = parse_primary();
        }
        node = parse_postfix(std::move(node));
        if (with_filter)
            node = parse_filter_expr(std::move(node));
        return node;
    }

    ExprPtr parse_primary() {
        const Token& t = cur();
        if (t.type == Tok::Name) {
            next();
            auto e = make(ExprKind::Literal, t);
            if (t.text == "true" || t.text == "True")
                e->literal = Value(true);
            else if (t.text == "false" || t.text == "False")
                e->literal = Value(false);
            else if (t.text == "none" || t.text == "None")
                e->literal = Value::none();
            else {
                e->kind = ExprKind::Name;
                e->name = t.text;
            }
            return e;
        }
        if (t.type == Tok::String) {
            std::string s = next().text;
            while (cur().type == Tok::String)
                s += next().text; // adjacent literals concatenate
            auto e     = make(ExprKind::Literal, t);
            e->literal = Value(std::move(s));
            return e;
        }
        if (t.type == Tok::Number) {
            next();
            auto e     = make(ExprKind::Literal, t);
            e->literal = t.number;
            return e;
        }
        if (is_op("(")) {
            next();
            ExprPtr e = parse_tuple(false, true, {}, true);
            expect_op(")");
            return e;
        }
        if (is_op("[")) {
            next();
            auto e = make(ExprKind::List, t);
            while (!is_op("]")) {
                if (!e->args.empty())
                    expect_op(",");
                if (is_op("]"))
                    break;
                e->args.push_back(parse_expression(true));
            }
            next();
            return finish(std::move(e));
        }
        if (is_op("{")) {
            next();
            auto e = make(ExprKind::Dict, t);
            while (!is_op("}")) {
                if (!e->args.empty())
                    expect_op(",");
                if (is_op("}"))
                    break;
                e->args.push_back(parse_expression(true));
                expect_op(":");
                e->args.push_back(parse_expression(true));
            }
            next();
            return finish(std::move(e));
        }
        fail(t, "unexpected " + describe(t));
    }

    ExprPtr parse_postfix(ExprPtr node) {
        for (;;) {
            if (is_op(".") || is_op("["))
                node = parse_subscript(std::move(node));
            else if (is_op("("))
                node = parse_call(std::move(node));
            else
                return node;
        }
    }

    ExprPtr parse_filter_expr(ExprPtr node) {
        for (;;) {
            if (is_op("|"))
                node = parse_filter(std::move(node));
            else if (is_name("is"))
                node = parse_test(std::move(node));
            else if (is_op("("))
                node = parse_call(std::move(node));
            else
                return node;
        }
    }

    ExprPtr parse_subscript(ExprPtr node) {
        const Token& t = next();
        if (t.text == ".") {
            const Token& attr = cur();
            if (attr.type == Tok::Name) {
                next();
                auto e  = make(ExprKind::GetAttr, t);
                e->name = attr.text;
                e->args.push_back(std::move(node));
                return finish(std::move(e));
            }
            if (attr.type == Tok::Number && attr.number.is_int()) {
                next();
                auto e = make(ExprKind::GetItem, t);
                e->args.push_back(std::move(node));
                auto key     = make(ExprKind::Literal, attr);
                key->literal = attr.number;
                e->args.push_back(std::move(key));
                return finish(std::move(e));
            }
            fail(attr, "expected a name or number after '.', got " + describe(attr));
        }
        // [key] or [start:stop:step]
        ExprPtr parts[3];
        bool    is_slice = false;
        if (!is_op(":"))
            parts[0] = parse_expression(true);
        if (skip_op(":")) {
            is_slice = true;
            if (!is_op("]") && !is_op(":"))
                parts[1] = parse_expression(true);
            if (skip_op(":") && !is_op("]"))
                parts[2] = parse_expression(true);
        }
        if (is_op(","))
            fail(cur(), "tuple subscripts are not supported");
        expect_op("]");
        auto e = make(is_slice ? ExprKind::Slice : ExprKind::GetItem, t);
        e->args.push_back(std::move(node));
        if (is_slice)
            for (auto& p : parts)
                e->args.push_back(std::move(p));
        else
            e->args.push_back(std::move(parts[0]));
        return finish(std::move(e));
    }

    void parse_call_args(std::vector<ExprPtr>& args, Kwargs& kwargs) {
        expect_op("(");
        while (!is_op(")")) {
            if (!args.empty() || !kwargs.empty())
                expect_op(",");
            if (is_op(")"))
                break;
            if (is_op("*") || is_op("**"))
                fail(cur(), "*args and **kwargs in calls are not supported");
            if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
                std::string name = next().text;
                next();
                kwargs.emplace_back(std::move(name), parse_expression(true));
            } else {
                if (!kwargs.empty())
                    fail(cur(), "positional argument follows keyword argument");
                args.push_back(parse_expression(true));
            }
        }
        next();
    }

    ExprPtr parse_call(ExprPtr node) {
        auto e = make(ExprKind::Call, cur());
        e->args.push_back(std::move(node));
        std::vector<ExprPtr> args;
        parse_call_args(args, e->kwargs);
        for (auto& a : args)
            e->args.push_back(std::move(a));
        return finish(std::move(e));
    }

    ExprPtr parse_filter(ExprPtr node) {
        const Token& t = cur();
        for (auto& fc : parse_filter_chain(false)) {
            auto e  = make(ExprKind::Filter, t);
            e->line = fc.line;
            e->name = std::move(fc.name);
            e->args.push_back(std::move(node));
            for (auto& a : fc.args)
                e->args.push_back(std::move(a));
            e->kwargs = std::move(fc.kwargs);
            node      = finish(std::move(e));
        }
        return node;
    }

    ExprPtr parse_test(ExprPtr node) {
        const Token& t = next(); // "is"
        auto         e = make(ExprKind::Test, t);
        e->negated     = skip_name("not");
        e->name        = expect_name().text;
        while (skip_op("."))
            e->name += "." + expect_name().text;
        e->args.push_back(std::move(node));
        const Token& c = cur();
        if (is_op("(")) {
            std::vector<ExprPtr> args;
            parse_call_args(args, e->kwargs);
            for (auto& a : args)
                e->args.push_back(std::move(a));
        } else if ((c.type == Tok::Name || c.type == Tok::String || c.type == Tok::Number || is_op("[") ||
                    is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
            if (is_name("is"))
                fail(c, "you cannot chain multiple tests with 'is'");
            e->args.push_back(parse_postfix(parse_primary())); // "x is divisibleby 3"
        }
        return finish(std::move(e));
    }
};

} // namespace

Body parse_template(std::string_view source) {
    return Parser(tokenize(source)).parse();
}

} // namespace moebius::jinja
