// Chat templates: golden renderings of the real templates of the supported MoE families (expected values from
// @huggingface/jinja or Python jinja2, see tests/data/templates/README.md), error reporting, tokenizer_config.json
// parsing, and limits that keep hostile templates and inputs from crashing the process.
#include "engine/core/chat_template.h"
#include "engine/core/error.h"
#include "test_util.h"

#include <fstream>
#include <gtest/gtest.h>
#include <map>

using namespace moebius;
using json = nlohmann::ordered_json;

namespace {

std::filesystem::path templates_dir() {
    return test::data_dir() / "templates";
}

const json& golden() {
    static const json g = [] {
        std::ifstream f(templates_dir() / "golden.json", std::ios::binary);
        return f ? json::parse(f) : json::object();
    }();
    return g;
}

std::vector<std::string> golden_case_names() {
    std::vector<std::string> names;
    if (golden().contains("cases"))
        for (const auto& c : golden()["cases"])
            names.push_back(c["name"].get<std::string>());
    return names;
}

const json& golden_case(const std::string& name) {
    for (const auto& c : golden()["cases"])
        if (c["name"] == name)
            return c;
    throw std::runtime_error("no golden case " + name);
}

// Shows control characters so that a failing comparison is readable.
std::string visible(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '\n')
            out += "\\n\n";
        else if (c == '\t')
            out += "\\t";
        else
            out.push_back(c);
    }
    return out;
}

std::string render(const std::string& src, const json& ctx = json::object()) {
    return ChatTemplate(src, "test").render(ctx);
}

// The message of the InputError thrown by f, or "" when nothing was thrown.
template <class F> std::string input_error(F&& f) {
    try {
        f();
    } catch (const InputError& e) {
        return e.what();
    }
    return "";
}

void write_file(const std::filesystem::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text;
}

} // namespace

// ---- golden renderings ----------------------------------------------------------------------------------------------

class GoldenTemplate : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTemplate, RendersByteForByte) {
    const json& c      = golden_case(GetParam());
    std::string origin = c.contains("template") ? c["template"].get<std::string>() : "feature";
    std::string source = c.contains("template") ? test::read_text(templates_dir() / c["template"].get<std::string>())
                                                : c["source"].get<std::string>();
    ASSERT_FALSE(source.empty());
    ChatTemplate tpl(source, origin);
    if (c.contains("error")) {
        // raise_exception(message) → InputError("<origin>: <message>")
        EXPECT_EQ(input_error([&] { tpl.render(c["context"]); }), origin + ": " + c["error"].get<std::string>());
        return;
    }
    std::string got, expected = c["expected"].get<std::string>();
    ASSERT_NO_THROW(got = tpl.render(c["context"]));
    EXPECT_EQ(got, expected) << "got:\n" << visible(got) << "\nexpected:\n" << visible(expected);
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenTemplate, ::testing::ValuesIn(golden_case_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                             std::string n = info.param;
                             for (char& ch : n)
                                 if (!std::isalnum(static_cast<unsigned char>(ch)))
                                     ch = '_';
                             return n;
                         });

TEST(ChatTemplateGolden, CoversEveryTemplateFamily) {
    // A missing or truncated golden.json must fail loudly rather than run zero cases.
    std::map<std::string, int> per_template;
    for (const auto& c : golden()["cases"])
        if (c.contains("template"))
            per_template[c["template"].get<std::string>()]++;
    for (const char* f : {"qwen1.5-moe-a2.7b-chat.jinja", "qwen3-30b-a3b.jinja", "mixtral-8x7b-instruct-v0.1.jinja",
                          "mixtral-8x7b-instruct-v0.1-2023.jinja", "deepseek-moe-16b-chat.jinja",
                          "olmoe-1b-7b-0924-instruct.jinja", "tiny-qwen2moe.jinja"})
        EXPECT_GE(per_template[f], 6) << f;
    EXPECT_GE(golden_case_names().size(), 90u);
}

// ---- tokenizer_config.json ------------------------------------------------------------------------------------------

TEST(TokenizerConfig, BundledModel) {
    auto cfg = TokenizerConfig::load(test::bundled_model());
    ASSERT_TRUE(cfg.chat_template.has_value());
    EXPECT_EQ(*cfg.chat_template, test::read_text(templates_dir() / "tiny-qwen2moe.jinja"));
    EXPECT_FALSE(cfg.bos_token.has_value()); // "bos_token": null
    EXPECT_EQ(cfg.eos_token.value_or(""), "<|im_end|>");
    EXPECT_EQ(cfg.pad_token.value_or(""), "<|endoftext|>");
    EXPECT_FALSE(cfg.add_bos_token);
    EXPECT_FALSE(cfg.add_eos_token);
}

TEST(TokenizerConfig, ApplyChatTemplateToBundledModelMatchesGolden) {
    auto                     cfg = TokenizerConfig::load(test::bundled_model());
    ChatTemplate             tpl(*cfg.chat_template, "tiny-qwen2moe");
    const json&              c = golden_case("tiny-qwen2moe/multiturn-gen");
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["context"]["messages"])
        msgs.push_back({m["role"], m["content"]});
    EXPECT_EQ(apply_chat_template(tpl, cfg, msgs, true), c["expected"].get<std::string>());
}

TEST(TokenizerConfig, ApplyChatTemplatePassesTokensAndExtras) {
    TokenizerConfig cfg;
    cfg.bos_token = "<s>";
    cfg.eos_token = "</s>";
    ChatTemplate tpl("{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ add_generation_prompt }}|{{ messages|length }}"
                     "|{% for m in messages %}{{ m.role }}:{{ m.content }}{% endfor %}|{{ enable_thinking }}"
                     "|{{ bos_token is defined }}",
                     "t");
    EXPECT_EQ(apply_chat_template(tpl, cfg, {{"user", "hi"}}, false, {{"enable_thinking", false}}),
              "<s>|</s>||False|1|user:hi|False|True");
    EXPECT_EQ(apply_chat_template(tpl, TokenizerConfig{}, {}, true), "|||True|0|||False");
    EXPECT_NE(input_error([&] { apply_chat_template(tpl, cfg, {}, true, json::array()); }), "");
}

TEST(TokenizerConfig, ListFormAndTokenObjects) {
    auto dir = test::scratch_dir("tokcfg-list");
    write_file(dir / "tokenizer_config.json", R"({
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
        "eos_token": "</s>", "pad_token": null, "add_bos_token": true, "add_eos_token": false})");
    auto cfg = TokenizerConfig::load(dir);
    EXPECT_EQ(cfg.chat_template.value_or(""), "D");
    EXPECT_EQ(cfg.named_chat_templates.at("tool_use"), "T");
    EXPECT_EQ(cfg.bos_token.value_or(""), "<s>");
    EXPECT_EQ(cfg.eos_token.value_or(""), "</s>");
    EXPECT_FALSE(cfg.pad_token.has_value());
    EXPECT_TRUE(cfg.add_bos_token);
    std::filesystem::remove_all(dir);
}

TEST(TokenizerConfig, ListWithoutDefaultHasNoTemplate) {
    auto dir = test::scratch_dir("tokcfg-nodefault");
    write_file(dir / "tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "R"}]})");
    auto cfg = TokenizerConfig::load(dir);
    EXPECT_FALSE(cfg.chat_template.has_value());
    EXPECT_EQ(cfg.named_chat_templates.size(), 1u);
    std::filesystem::remove_all(dir);
}

TEST(TokenizerConfig, JinjaFileTakesPrecedence) {
    auto dir = test::scratch_dir("tokcfg-jinja");
    write_file(dir / "tokenizer_config.json", R"({"chat_template": "from json", "eos_token": "</s>"})");
    write_file(dir / "chat_template.jinja", "from file {{ eos_token }}\n");
    auto cfg = TokenizerConfig::load(dir);
    EXPECT_EQ(cfg.chat_template.value_or(""), "from file {{ eos_token }}\n");
    EXPECT_EQ(apply_chat_template(ChatTemplate(*cfg.chat_template), cfg, {}, false), "from file </s>");
    std::filesystem::remove(dir / "tokenizer_config.json");
    EXPECT_EQ(TokenizerConfig::load(dir).chat_template.value_or(""), "from file {{ eos_token }}\n");
    std::filesystem::remove_all(dir);
}

TEST(TokenizerConfig, MissingFileGivesEmptyConfig) {
    auto dir = test::scratch_dir("tokcfg-missing");
    auto cfg = TokenizerConfig::load(dir);
    EXPECT_FALSE(cfg.chat_template || cfg.bos_token || cfg.eos_token || cfg.pad_token);
    EXPECT_FALSE(cfg.add_bos_token || cfg.add_eos_token);
    EXPECT_FALSE(TokenizerConfig::load(dir / "does-not-exist").chat_template.has_value());
    std::filesystem::remove_all(dir);
}

TEST(TokenizerConfig, MalformedFilesAreFormatErrorsNamingTheFile) {
    auto dir  = test::scratch_dir("tokcfg-bad");
    auto file = dir / "tokenizer_config.json";
    for (const char* text : {"{\"chat_template\": \"x\",", "[1, 2]", "{\"chat_template\": 5}",
                             "{\"chat_template\": [{\"name\": \"default\"}]}", "{\"bos_token\": 1}",
                             "{\"eos_token\": {\"content\": 2}}", "{\"add_bos_token\": \"yes\"}", "\xff\xfe{}"}) {
        SCOPED_TRACE(text);
        write_file(file, text);
        try {
            TokenizerConfig::load(dir);
            ADD_FAILURE() << "no FormatError";
        } catch (const FormatError& e) {
            EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
        }
    }
    std::filesystem::remove_all(dir);
}

// ---- errors ---------------------------------------------------------------------------------------------------------

TEST(ChatTemplateErrors, SyntaxErrorsNameOriginAndLine) {
    struct Case {
        const char* source;
        const char* expect; // origin + position prefix
        const char* detail;
    };
    const Case cases[] = {
        {"a\n{% for x in y %}\nbody", "bad.jinja: line 3, column 5: ", "'for' block opened at line 2"},
        {"{% if x %}{% for y in z %}{% endif %}", "bad.jinja: line 1, column 30: ", "unknown tag 'endif'"},
        {"ok\n\n  {% frobnicate %}", "bad.jinja: line 3, column 6: ", "unknown tag 'frobnicate'"},
        {"{{ 1 + }}", "bad.jinja: line 1, column 8: ", "expected"},
        {"line1\n{{ messages[0 }}", "bad.jinja: line 2, column 15: ", "unexpected '}'"},
        {"{{ x ", "bad.jinja: line 1, column 1: ", "missing '}}'"},
        {"{% set %}", "bad.jinja: line 1, column 8: ", "expected a name"},
        {"{{ 'unterminated }}", "bad.jinja: line 1, column 4: ", "unterminated string"},
        {"{# never closed", "bad.jinja: line 1, column 1: ", "comment"},
        {"{% break %}", "bad.jinja: line 1, column 4: ", "outside of a loop"},
        {"{% include 'x' %}", "bad.jinja: line 1, column 4: ", "not supported"},
        {"{{ a is b is c }}", "bad.jinja: line 1, column 11: ", "chain"},
        {"{{ x $ y }}", "bad.jinja: line 1, column 6: ", "unexpected character '$'"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.source);
        std::string msg = input_error([&] { ChatTemplate(c.source, "bad.jinja"); });
        EXPECT_EQ(msg.rfind(c.expect, 0), 0u) << msg;
        EXPECT_NE(msg.find(c.detail), std::string::npos) << msg;
    }
}

TEST(ChatTemplateErrors, RaiseExceptionCarriesTheTemplateMessage) {
    ChatTemplate tpl(test::read_text(templates_dir() / "mixtral-8x7b-instruct-v0.1.jinja"), "mixtral");
    json         ctx = {{"messages", {{{"role", "user"}, {"content", "a"}}, {{"role", "user"}, {"content", "b"}}}},
                        {"bos_token", "<s>"},
                        {"eos_token", "</s>"}};
    EXPECT_EQ(input_error([&] { tpl.render(ctx); }),
              "mixtral: After the optional system message, conversation roles must alternate "
              "user/assistant/user/assistant/...");
}

TEST(ChatTemplateErrors, RuntimeErrorsNameOriginAndLine) {
    struct Case {
        const char* source;
        const char* expect;
    };
    const Case cases[] = {
        {"ok\n{{ x|nope }}", "rt: line 2: no filter named 'nope'"},
        {"{{ 'a' + 1 }}", "rt: line 1: can only concatenate str (not \"int\") to str"},
        {"\n\n{{ missing.attr }}", "rt: line 3: 'missing' is undefined"},
        {"{{ d.a.b }}", "rt: line 1: 'dict object' has no attribute 'a'"},
        {"{{ 1 / 0 }}", "rt: line 1: division by zero"},
        {"{{ x is frob }}", "rt: line 1: no test named 'frob'"},
        {"{% for a, b in [[1, 2, 3]] %}{% endfor %}", "rt: line 1: too many values to unpack (expected 2)"},
        {"{{ 'a' < 1 }}", "rt: line 1: '<' not supported between instances of 'str' and 'int'"},
        {"{{ none.startswith('x') }}", "rt: line 1: 'None' has no attribute 'startswith'"},
        {"{% set d.x = 1 %}", "rt: line 1: cannot assign attribute on non-namespace object 'd'"},
        {"{{ [].append(1) }}", "rt: line 1: access to attribute 'append' of 'list' object is unsafe"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.source);
        EXPECT_EQ(input_error([&] { ChatTemplate(c.source, "rt").render(json{{"d", json::object()}}); }), c.expect);
    }
    EXPECT_NE(input_error([&] { ChatTemplate("x").render(json::array()); }), "");
}

// ---- semantics documented by jinja2 that the golden cases do not pin down
// ----------------------------------------------

TEST(ChatTemplateSemantics, PythonValueFormatting) {
    EXPECT_EQ(render("{{ 1e16 }} {{ 1e15 }} {{ 0.00001 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ -7 // 2 }} {{ -7 % 3 }}"),
              "1e+16 1000000000000000.0 1e-05 0.30000000000000004 2.5 -4 2");
    EXPECT_EQ(render("{{ x }}", {{"x", json::parse("[1.0, 2, \"q'\", {\"k\": null}]")}}),
              "[1.0, 2, \"q'\", {'k': None}]");
    EXPECT_EQ(render("{{ (1,) }} {{ (1, 'a') }} {{ {'a': (1, 2)}|tojson }}"), "(1,) (1, 'a') {\"a\": [1, 2]}");
    EXPECT_EQ(render("{{ x|tojson }}", {{"x", json::parse("[1.0, 1e100, -0.5]")}}), "[1.0, 1e+100, -0.5]");
    EXPECT_EQ(render("{{ 'é\\u2028\\x01'|tojson }} {{ 'é'|tojson(ensure_ascii=true) }} {{ '🙂'|tojson(true) }}"),
              "\"é\u2028\\u0001\" \"\\u00e9\" \"\\ud83d\\ude42\"");
    EXPECT_EQ(render("{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }} {{ [1, 2]|tojson(separators=(',', ':')) }}"),
              "{\"a\": 2, \"b\": 1} [1,2]");
    EXPECT_EQ(render("{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(0, 'ceil') }}"),
              "2.0 4.0 2.67 3.0");
}

TEST(ChatTemplateSemantics, UndefinedBehavesLikeJinja2Default) {
    EXPECT_EQ(render("[{{ u }}][{{ u|length }}][{{ u|default('d') }}][{{ 'x' in u }}][{{ u == v }}][{% for i in u "
                     "%}x{% endfor %}]"),
              "[][0][d][False][True][]");
    EXPECT_EQ(render("{{ u ~ 'a' }}|{{ u is iterable }}|{{ (u or 'alt') }}|{{ u|string }}|{{ u|list }}"),
              "a|True|alt||[]");
    EXPECT_NE(input_error([&] { render("{{ u + 1 }}"); }), "");
    EXPECT_NE(input_error([&] { render("{{ u[0] }}"); }), "");
    EXPECT_NE(input_error([&] { render("{{ u() }}"); }), "");
}

TEST(ChatTemplateSemantics, MethodsShadowDictKeysOnlyForAttributeAccess) {
    json ctx = {{"d", {{"items", "key"}, {"content", "c"}}}};
    EXPECT_EQ(render("{{ d['items'] }}|{{ d.content }}|{{ d.items()|length }}", ctx), "key|c|2");
}

TEST(ChatTemplateSemantics, Utf8IsHandledByCodePoint) {
    json ctx = {{"s", "aé世🙂"}};
    EXPECT_EQ(render("{{ s|length }} {{ s[1] }} {{ s[-1] }} {{ s[1:3] }} {{ s|reverse }} {{ s|upper }}", ctx),
              "4 é 🙂 é世 🙂世éa AÉ世🙂");
    // Invalid UTF-8 in the input passes through unchanged.
    std::string bad = "a\xff\xfe b";
    EXPECT_EQ(render("{{ s }}|{{ s|length }}|{{ s.strip() }}", {{"s", bad}}), bad + "|5|" + bad);
}

TEST(ChatTemplateSemantics, CopiesShareTheParsedTemplate) {
    ChatTemplate a("{{ x }}!", "a");
    ChatTemplate b = a;
    EXPECT_EQ(b.render({{"x", 1}}), "1!");
    EXPECT_EQ(b.origin(), "a");
    EXPECT_EQ(b.source(), "{{ x }}!");
}

// ---- hostile templates and inputs fail with InputError instead of crashing
// -----------------------------------------------

TEST(ChatTemplateLimits, DeepNestingInTemplates) {
    auto repeat = [](const std::string& s, int n) {
        std::string out;
        for (int i = 0; i < n; ++i)
            out += s;
        return out;
    };
    const std::string cases[] = {
        "{{ " + repeat("(", 20000) + "1" + repeat(")", 20000) + " }}",
        "{{ " + repeat("[", 20000) + repeat("]", 20000) + " }}",
        "{{ 1" + repeat(" + 1", 20000) + " }}",
        "{{ x" + repeat(".a", 20000) + " }}",
        "{{ x" + repeat("|trim", 20000) + " }}",
        "{{ " + repeat("not ", 20000) + "x }}",
        "{{ " + repeat("-", 20000) + "1 }}",
        "{{ 1" + repeat(" if x else 1", 20000) + " }}",
        repeat("{% if true %}", 20000) + repeat("{% endif %}", 20000),
        repeat("{% for x in y %}", 20000),
    };
    for (const auto& src : cases) {
        std::string msg = input_error([&] { ChatTemplate(src, "deep"); });
        EXPECT_NE(msg.find("deep: line 1"), std::string::npos) << msg.substr(0, 200);
    }
    // Moderate nesting is fine.
    EXPECT_EQ(render("{{ " + repeat("(", 60) + "1" + repeat(")", 60) + " }}"), "1");
    EXPECT_EQ(render(repeat("{% if true %}", 100) + "x" + repeat("{% endif %}", 100)), "x");
}

TEST(ChatTemplateLimits, DeepInputs) {
    // 100000 nested arrays: nlohmann parses them iteratively; converting them must not recurse that deep.
    std::string deep = std::string(100000, '[') + std::string(100000, ']');
    json        ctx  = {{"x", json::parse(deep)}};
    EXPECT_NE(input_error([&] { render("{{ x|length }}", ctx); }).find("nested deeper"), std::string::npos);
    // A template that builds nesting itself.
    EXPECT_NE(input_error([&] {
                  render(
                      "{% set ns = namespace(v=[]) %}{% for i in range(100000) %}{% set ns.v = [ns.v] %}{% endfor %}");
              }).find("nested deeper"),
              std::string::npos);
    // Namespaces referring to each other are freed without deep recursion.
    EXPECT_EQ(
        render("{% set ns = namespace(prev=none) %}{% for i in range(100000) %}{% set n = namespace(prev=ns.prev) %}"
               "{% set ns.prev = n %}{% endfor %}{% set ns.self = ns %}ok"),
        "ok");
}

TEST(ChatTemplateLimits, HugeWork) {
    EXPECT_NE(input_error([&] { render("{{ range(1000000)|length }}"); }).find("range too big"), std::string::npos);
    EXPECT_NE(input_error([&] { render("{{ 'x' * 1000000000 }}"); }).find("larger than"), std::string::npos);
    EXPECT_NE(input_error([&] { render("{{ [1, 2] * 1000000000 }}"); }).find("longer than"), std::string::npos);
    EXPECT_NE(input_error([&] {
                  render("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                         "{% endfor %}");
              }).find("larger than"),
              std::string::npos);
    json big = {{"s", std::string(10000, 'x')}};
    EXPECT_NE(
        input_error([&] { render("{% for i in range(100000) %}{{ s }}{% endfor %}", big); }).find("output larger"),
        std::string::npos);
    EXPECT_NE(input_error([&] {
                  render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
              }).find("steps"),
              std::string::npos);
    EXPECT_NE(input_error([&] { render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"); }).find("recursion"),
              std::string::npos);
    EXPECT_NE(input_error([&] { render("{{ 9223372036854775807 + 1 }}"); }).find("overflow"), std::string::npos);
    EXPECT_NE(input_error([&] { render("{{ '%d' % 1e300 }}"); }), "");
    EXPECT_NE(input_error([&] { render("{{ 'x'.center(9223372036854775807) }}"); }).find("larger than"),
              std::string::npos);
    // A caller() kept past its call block must not reach the block's dead scope.
    EXPECT_NE(input_error([&] {
                  render("{% set ns = namespace() %}{% macro keep() %}{% set ns.c = caller %}{% endmacro %}"
                         "{% call keep() %}x{% endcall %}{{ ns.c() }}");
              }).find("outside of its call block"),
              std::string::npos);
    EXPECT_NE(input_error([&] { ChatTemplate("{{ 99999999999999999999 }}"); }).find("too large"), std::string::npos);
}

TEST(ChatTemplateLimits, LongConversationsRender) {
    // The real Qwen3 template over a long conversation stays well inside the limits.
    ChatTemplate tpl(test::read_text(templates_dir() / "qwen3-30b-a3b.jinja"), "qwen3");
    json         msgs = json::array();
    for (int i = 0; i < 5000; ++i)
        msgs.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", "message " + std::to_string(i)}});
    std::string out = tpl.render({{"messages", msgs}, {"add_generation_prompt", true}});
    EXPECT_EQ(out.rfind("<|im_start|>user\nmessage 0<|im_end|>\n", 0), 0u);
    EXPECT_NE(out.find("message 4999"), std::string::npos);
}
