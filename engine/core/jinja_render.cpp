// Tree-walking renderer of the Jinja2 subset. Scoping follows jinja2: a for loop body gets a fresh scope each
// iteration (assignments do not leak out of the loop), "if" has no scope, macros see the template's top level,
// and namespace() objects are the way to carry state out of a loop.
#include "engine/core/jinja_render.h"

#include "engine/core/jinja_builtins.h"

#include <algorithm>

namespace moebius::jinja {

namespace {

struct Frame {
    std::vector<std::pair<std::string, Value>> vars;
    Frame*                                     parent = nullptr;

    Value* find(std::string_view name) {
        for (auto& [k, v] : vars)
            if (k == name)
                return &v;
        return nullptr;
    }
    void set(const std::string& name, Value v) {
        if (Value* slot = find(name))
            *slot = std::move(v);
        else
            vars.emplace_back(name, std::move(v));
    }
};

enum class Flow { Normal, Break, Continue };

class Interp {
  public:
    explicit Interp(const nlohmann::ordered_json& ctx) {
        if (!ctx.is_null() && !ctx.is_object())
            throw RenderError{"the template context must be a JSON object"};
        if (ctx.is_object())
            for (const auto& [k, v] : ctx.items())
                root_.set(k, from_json(v));
        top_.parent = &root_;
        frame_      = &top_;
        globals_.set("range", Value::function("range", global_range));
        globals_.set("dict", Value::function("dict", global_dict));
        globals_.set("strftime_now", Value::function("strftime_now", global_strftime_now));
        globals_.set("raise_exception", Value::function("raise_exception", [](CallArgs& a) -> Value {
                         throw RaisedError{a.positional.empty() ? std::string() : to_str(a.positional[0])};
                     }));
        globals_.set("namespace", Value::function("namespace", [this](CallArgs& a) { return make_namespace(a); }));
    }

    ~Interp() {
        // Namespaces may reference each other (ns.self = ns) or form long chains; emptying them one by one frees
        // everything without deep recursion.
        for (auto& ns : namespaces_) {
            auto attrs = std::move(ns->attrs);
            ns->attrs.clear();
        }
    }

    std::string run(const Body& body) {
        std::string out;
        out_ = &out;
        render_body(body);
        return out;
    }

    int line() const { return line_; }

  private:
    Frame                     root_, top_, globals_;
    Frame*                    frame_ = nullptr;
    std::string*              out_   = nullptr;
    std::vector<NamespacePtr> namespaces_;
    uint64_t                  steps_      = 0;
    int                       call_depth_ = 0;
    int                       line_       = 0;

    void tick() {
        if (++steps_ > k_max_render_steps)
            throw RenderError{"template exceeded " + std::to_string(k_max_render_steps) + " steps"};
    }

    void emit(std::string_view s) {
        if (out_->size() + s.size() > k_max_string_bytes)
            throw RenderError{"output larger than " + std::to_string(k_max_string_bytes >> 20) + " MiB"};
        out_->append(s);
    }

    void emit_value(const Value& v) {
        if (v.is_string()) {
            emit(v.as_string());
        } else {
            std::string s;
            append_str(s, v);
            emit(s);
        }
    }

    Value make_namespace(CallArgs& a) {
        Value init = global_dict(a);
        auto  ns   = std::make_shared<NamespaceObj>();
        ns->attrs  = init.as_dict().items;
        namespaces_.push_back(ns);
        return Value(ns);
    }

    Value lookup(const std::string& name) {
        for (Frame* f = frame_; f; f = f->parent)
            if (Value* v = f->find(name))
                return *v;
        if (Value* v = globals_.find(name))
            return *v;
        return Value::undefined("'" + name + "' is undefined");
    }

    // ---- statements -------------------------------------------------------------------------------------------

    Flow render_body(const Body& body) {
        for (const auto& n : body) {
            Flow f = render_node(*n);
            if (f != Flow::Normal)
                return f;
        }
        return Flow::Normal;
    }

    std::string capture(const Body& body) {
        std::string  buf;
        std::string* saved = out_;
        out_               = &buf;
        render_body(body);
        out_ = saved;
        return buf;
    }

    Value apply_filters(const std::vector<FilterCall>& chain, Value v) {
        for (const auto& fc : chain) {
            CallArgs a;
            for (const auto& e : fc.args)
                a.positional.push_back(eval(*e));
            for (const auto& [k, e] : fc.kwargs)
                a.keyword.emplace_back(k, eval(*e));
            line_ = fc.line;
            v     = apply_filter(fc.name, v, a);
        }
        return v;
    }

    Flow render_node(const Node& n) {
        tick();
        line_ = n.line;
        switch (n.kind) {
        case NodeKind::Text:
            emit(n.text);
            break;
        case NodeKind::Output:
            emit_value(eval(*n.expr));
            break;
        case NodeKind::If:
            for (const auto& [cond, body] : n.branches)
                if (eval(*cond).truthy())
                    return render_body(body);
            return render_body(n.else_body);
        case NodeKind::For:
            return render_for(n);
        case NodeKind::Set:
            assign(n.target, eval(*n.expr));
            break;
        case NodeKind::SetBlock:
            assign(n.target, apply_filters(n.filters, Value(capture(n.body))));
            break;
        case NodeKind::FilterBlock:
            emit_value(apply_filters(n.filters, Value(capture(n.body))));
            break;
        case NodeKind::Macro:
            frame_->set(n.text, make_macro(n));
            break;
        case NodeKind::CallBlock:
            emit_value(call_with_caller(n));
            break;
        case NodeKind::With: {
            Frame f;
            f.parent = frame_;
            for (const auto& [name, e] : n.assigns)
                f.set(name, eval(*e)); // values see the outer scope
            Frame* saved = frame_;
            frame_       = &f;
            Flow flow    = render_body(n.body);
            frame_       = saved;
            return flow;
        }
        case NodeKind::Break:
            return Flow::Break;
        case NodeKind::Continue:
            return Flow::Continue;
        }
        return Flow::Normal;
    }

    void bind_target(Frame& f, const Target& t, const Value& v) {
        if (!t.is_tuple && t.names.size() == 1) {
            f.set(t.names[0], v);
            return;
        }
        std::vector<Value> parts = iterate(v);
        if (parts.size() != t.names.size()) {
            if (parts.size() > t.names.size())
                throw RenderError{"too many values to unpack (expected " + std::to_string(t.names.size()) + ")"};
            throw RenderError{"not enough values to unpack (expected " + std::to_string(t.names.size()) + ", got " +
                              std::to_string(parts.size()) + ")"};
        }
        for (size_t i = 0; i < parts.size(); ++i)
            f.set(t.names[i], parts[i]);
    }

    void assign(const Target& t, Value v) {
        if (!t.attr.empty()) {
            Value ns = lookup(t.names[0]);
            if (!ns.is_namespace())
                throw RenderError{"cannot assign attribute on non-namespace object '" + t.names[0] + "'"};
            ns.as_namespace().set(t.attr, std::move(v));
            return;
        }
        bind_target(*frame_, t, v);
    }

    Value make_loop(size_t i, const std::vector<Value>& items) {
        const size_t n    = items.size();
        auto         loop = std::make_shared<NamespaceObj>();
        auto&        a    = loop->attrs;
        a.emplace_back("index", Value(int64_t(i + 1)));
        a.emplace_back("index0", Value(int64_t(i)));
        a.emplace_back("revindex", Value(int64_t(n - i)));
        a.emplace_back("revindex0", Value(int64_t(n - i - 1)));
        a.emplace_back("first", Value(i == 0));
        a.emplace_back("last", Value(i + 1 == n));
        a.emplace_back("length", Value(int64_t(n)));
        a.emplace_back("depth", Value(int64_t(1)));
        a.emplace_back("depth0", Value(int64_t(0)));
        a.emplace_back("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
        a.emplace_back("nextitem", i + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
        a.emplace_back("cycle", Value::function("cycle", [i](CallArgs& args) -> Value {
                           if (args.positional.empty())
                               throw RenderError{"no items for cycling given"};
                           return args.positional[i % args.positional.size()];
                       }));
        return Value(NamespacePtr(std::move(loop)));
    }

    Flow render_for(const Node& n) {
        std::vector<Value> items = iterate(eval(*n.expr));
        Frame*             outer = frame_;
        if (n.cond) { // loop filter: sees the loop variable, not "loop"
            std::vector<Value> kept;
            for (auto& item : items) {
                tick();
                Frame f;
                f.parent = outer;
                bind_target(f, n.target, item);
                frame_    = &f;
                bool keep = eval(*n.cond).truthy();
                frame_    = outer;
                if (keep)
                    kept.push_back(std::move(item));
            }
            items = std::move(kept);
        }
        if (items.empty())
            return render_body(n.else_body);
        Frame f; // a fresh scope per iteration; reusing the frame saves an allocation per iteration
        f.parent = outer;
        for (size_t i = 0; i < items.size(); ++i) {
            tick();
            f.vars.clear();
            bind_target(f, n.target, items[i]);
            if (n.uses_loop)
                f.set("loop", make_loop(i, items));
            frame_    = &f;
            Flow flow = render_body(n.body);
            frame_    = outer;
            if (flow == Flow::Break)
                break;
        }
        return Flow::Normal;
    }

    // ---- macros -----------------------------------------------------------------------------------------------

    struct DepthGuard {
        int& d;
        explicit DepthGuard(int& depth) : d(depth) {
            if (++d > k_max_call_depth)
                throw RenderError{"maximum macro recursion depth (" + std::to_string(k_max_call_depth) + ") exceeded"};
        }
        ~DepthGuard() { --d; }
    };

    // Binds call arguments to a macro's (or caller's) parameters in a new frame and renders its body.
    Value invoke(const Node& def, const Body& body, CallArgs& a, Frame* parent, const Value* caller) {
        DepthGuard guard(call_depth_);
        tick();
        Frame f;
        f.parent = parent;
        std::vector<Value> varargs;
        for (size_t i = 0; i < a.positional.size(); ++i) {
            if (i < def.params.size())
                f.set(def.params[i], a.positional[i]);
            else
                varargs.push_back(a.positional[i]);
        }
        std::vector<std::pair<std::string, Value>> extra;
        for (auto& [k, v] : a.keyword) {
            if (k == "caller" && caller == nullptr) { // {% call %} passes the block as caller=...
                f.set("caller", v);
                continue;
            }
            auto it = std::find(def.params.begin(), def.params.end(), k);
            if (it == def.params.end()) {
                extra.emplace_back(k, v);
                continue;
            }
            if (size_t(it - def.params.begin()) < a.positional.size())
                throw RenderError{"macro '" + def.text + "' got multiple values for argument '" + k + "'"};
            f.set(k, v);
        }
        Frame* saved = frame_;
        frame_       = &f;
        for (size_t i = 0; i < def.params.size(); ++i) {
            if (f.find(def.params[i]))
                continue;
            f.set(def.params[i], def.defaults[i]
                                     ? eval(*def.defaults[i])
                                     : Value::undefined("parameter '" + def.params[i] + "' was not provided"));
        }
        f.set("varargs", Value::list(std::move(varargs), true));
        f.set("kwargs", Value::dict(std::move(extra)));
        if (caller)
            f.set("caller", *caller);
        std::string out = capture(body);
        frame_          = saved;
        return Value(std::move(out));
    }

    Value make_macro(const Node& n) {
        return Value::function(n.text, [this, &n](CallArgs& a) { return invoke(n, n.body, a, &top_, nullptr); });
    }

    Value call_with_caller(const Node& n) {
        const Expr& call  = *n.expr;
        Frame*      scope = frame_;
        // caller() renders in this block's scope, which ends with the block: a caller kept in a namespace and
        // called later must fail rather than touch a dead frame.
        auto  alive  = std::make_shared<bool>(true);
        Value caller = Value::function("caller", [this, &n, scope, alive](CallArgs& a) {
            if (!*alive)
                throw RenderError{"caller() used outside of its call block"};
            return invoke(n, n.body, a, scope, nullptr);
        });
        struct Expire {
            std::shared_ptr<bool> flag;
            ~Expire() { *flag = false; }
        } expire{alive};
        Value    callee = eval(*call.args[0]);
        CallArgs a      = eval_args(call, 1);
        a.keyword.emplace_back("caller", caller);
        return call_value(callee, a);
    }

    // ---- expressions ------------------------------------------------------------------------------------------

    CallArgs eval_args(const Expr& e, size_t first) {
        CallArgs a;
        for (size_t i = first; i < e.args.size(); ++i)
            a.positional.push_back(eval(*e.args[i]));
        for (const auto& [k, v] : e.kwargs)
            a.keyword.emplace_back(k, eval(*v));
        return a;
    }

    Value call_value(const Value& callee, CallArgs& a) {
        if (callee.is_undefined())
            fail_undefined(callee);
        if (!callee.is_callable())
            throw RenderError{"'" + callee.type_name() + "' object is not callable"};
        tick();
        return callee.as_callable().fn(a);
    }

    bool compare(const std::string& op, const Value& a, const Value& b) {
        if (op == "==")
            return values_equal(a, b);
        if (op == "!=")
            return !values_equal(a, b);
        if (op == "<")
            return value_less(a, b);
        if (op == ">")
            return value_less(b, a);
        if (op == "<=")
            return value_less(a, b) || values_equal(a, b);
        if (op == ">=")
            return value_less(b, a) || values_equal(a, b);
        if (op == "in")
            return contains(b, a);
        return !contains(b, a); // notin
    }

    Value eval(const Expr& e) {
        line_ = e.line;
        switch (e.kind) {
        case ExprKind::Literal:
            return e.literal;
        case ExprKind::Name:
            return lookup(e.name);
        case ExprKind::List:
        case ExprKind::Tuple: {
            std::vector<Value> items;
            items.reserve(e.args.size());
            for (const auto& a : e.args)
                items.push_back(eval(*a));
            return Value::list(std::move(items), e.kind == ExprKind::Tuple);
        }
        case ExprKind::Dict: {
            std::vector<std::pair<std::string, Value>> items;
            for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
                Value k = eval(*e.args[i]);
                if (!k.is_string())
                    throw RenderError{"dict literal keys must be strings, not " + k.type_name()};
                Value v = eval(*e.args[i + 1]);
                auto  it =
                    std::find_if(items.begin(), items.end(), [&](const auto& kv) { return kv.first == k.as_string(); });
                if (it != items.end())
                    it->second = std::move(v);
                else
                    items.emplace_back(k.as_string(), std::move(v));
            }
            return Value::dict(std::move(items));
        }
        case ExprKind::GetAttr: {
            Value obj = eval(*e.args[0]);
            line_     = e.line;
            return get_attr(obj, e.name);
        }
        case ExprKind::GetItem: {
            Value obj = eval(*e.args[0]);
            Value key = eval(*e.args[1]);
            line_     = e.line;
            return get_item(obj, key);
        }
        case ExprKind::Slice: {
            Value obj = eval(*e.args[0]);
            Value bounds[3];
            for (int k = 0; k < 3; ++k)
                bounds[k] = e.args[k + 1] ? eval(*e.args[k + 1]) : Value::none();
            line_ = e.line;
            return get_slice(obj, bounds[0], bounds[1], bounds[2]);
        }
        case ExprKind::Call: {
            Value    callee = eval(*e.args[0]);
            CallArgs a      = eval_args(e, 1);
            line_           = e.line;
            return call_value(callee, a);
        }
        case ExprKind::Filter: {
            Value    v = eval(*e.args[0]);
            CallArgs a = eval_args(e, 1);
            line_      = e.line;
            return apply_filter(e.name, v, a);
        }
        case ExprKind::Test: {
            Value    v = eval(*e.args[0]);
            CallArgs a = eval_args(e, 1);
            line_      = e.line;
            return Value(apply_test(e.name, v, a) != e.negated);
        }
        case ExprKind::Unary: {
            Value v = eval(*e.args[0]);
            line_   = e.line;
            if (e.name == "not")
                return Value(!v.truthy());
            if (e.name == "-")
                return unary_minus(v);
            if (v.is_undefined())
                fail_undefined(v);
            if (!v.is_number())
                throw RenderError{"bad operand type for unary +: '" + v.type_name() + "'"};
            return v.is_bool() ? Value(v.as_int()) : v;
        }
        case ExprKind::Binary: {
            Value l = eval(*e.args[0]);
            if (e.name == "and")
                return l.truthy() ? eval(*e.args[1]) : l;
            if (e.name == "or")
                return l.truthy() ? l : eval(*e.args[1]);
            Value r = eval(*e.args[1]);
            line_   = e.line;
            return binary_op(e.name, l, r);
        }
        case ExprKind::Compare: {
            Value left = eval(*e.args[0]);
            for (size_t k = 0; k < e.ops.size(); ++k) {
                Value right = eval(*e.args[k + 1]);
                line_       = e.line;
                if (!compare(e.ops[k], left, right))
                    return Value(false);
                left = std::move(right);
            }
            return Value(true);
        }
        case ExprKind::Cond:
            if (eval(*e.args[0]).truthy())
                return eval(*e.args[1]);
            return e.args[2] ? eval(*e.args[2]) : Value::undefined("the condition was false and there is no else");
        }
        return Value();
    }
};

} // namespace

std::string render_template(const Body& body, const nlohmann::ordered_json& context) {
    int line = 0;
    try {
        Interp interp(context);
        try {
            return interp.run(body);
        } catch (...) {
            line = interp.line();
            throw;
        }
    } catch (const RaisedError& e) {
        throw RenderFailure{e.message, line, true};
    } catch (const RenderError& e) {
        throw RenderFailure{e.message, line, false};
    }
}

} // namespace moebius::jinja
