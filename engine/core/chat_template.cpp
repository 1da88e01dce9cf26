#include "engine/core/chat_template.h"

#include "engine/core/error.h"
#include "engine/core/jinja_ast.h"
#include "engine/core/jinja_render.h"

#include <fstream>
#include <sstream>

namespace moebius {

struct ChatTemplate::Parsed {
    jinja::Body body;
};

ChatTemplate::ChatTemplate(std::string source, std::string origin)
    : source_(std::move(source)), origin_(std::move(origin)) {
    try {
        auto p  = std::make_shared<Parsed>();
        p->body = jinja::parse_template(source_);
        parsed_ = std::move(p);
    } catch (const jinja::SyntaxError& e) {
        std::string where = "line " + std::to_string(e.line);
        if (e.col > 0)
            where += ", column " + std::to_string(e.col);
        throw InputError(origin_ + ": " + where + ": " + e.message);
    }
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
    try {
        return jinja::render_template(parsed_->body, context);
    } catch (const jinja::RenderFailure& e) {
        if (e.raised)
            throw InputError(origin_ + ": " + e.message);
        throw InputError(origin_ + ": line " + std::to_string(e.line) + ": " + e.message);
    }
}

namespace {

std::string read_file(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    if (!f)
        throw FormatError(p.string() + ": cannot be read");
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad())
        throw FormatError(p.string() + ": read error");
    return ss.str();
}

// bos_token etc.: a string, an AddedToken object {"content": ...}, or null.
std::optional<std::string> special_token(const nlohmann::ordered_json& j, const char* key,
                                         const std::filesystem::path& file) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null())
        return std::nullopt;
    if (it->is_string())
        return it->get<std::string>();
    if (it->is_object()) {
        auto c = it->find("content");
        if (c != it->end() && c->is_string())
            return c->get<std::string>();
    }
    throw FormatError(file.string() + ": '" + key + "' must be a string or an object with a string 'content'");
}

bool flag(const nlohmann::ordered_json& j, const char* key, const std::filesystem::path& file) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null())
        return false;
    if (!it->is_boolean())
        throw FormatError(file.string() + ": '" + key + "' must be true or false");
    return it->get<bool>();
}

} // namespace

TokenizerConfig TokenizerConfig::load(const std::filesystem::path& model_dir) {
    TokenizerConfig cfg;
    std::error_code ec;
    const auto      file = model_dir / "tokenizer_config.json";
    if (std::filesystem::exists(file, ec)) {
        nlohmann::ordered_json j;
        try {
            j = nlohmann::ordered_json::parse(read_file(file));
        } catch (const nlohmann::json::exception& e) {
            throw FormatError(file.string() + ": malformed JSON: " + e.what());
        }
        if (!j.is_object())
            throw FormatError(file.string() + ": the top level must be a JSON object");
        if (auto it = j.find("chat_template"); it != j.end() && !it->is_null()) {
            if (it->is_string()) {
                cfg.chat_template = it->get<std::string>();
            } else if (it->is_array()) {
                // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
                for (const auto& t : *it) {
                    auto name = t.is_object() ? t.find("name") : t.end();
                    auto tpl  = t.is_object() ? t.find("template") : t.end();
                    if (!t.is_object() || name == t.end() || tpl == t.end() || !name->is_string() || !tpl->is_string())
                        throw FormatError(file.string() + ": 'chat_template' list entries must be {\"name\": string, "
                                                          "\"template\": string}");
                    cfg.named_chat_templates[name->get<std::string>()] = tpl->get<std::string>();
                }
                if (auto d = cfg.named_chat_templates.find("default"); d != cfg.named_chat_templates.end())
                    cfg.chat_template = d->second;
            } else {
                throw FormatError(file.string() + ": 'chat_template' must be a string or a list of named templates");
            }
        }
        cfg.bos_token     = special_token(j, "bos_token", file);
        cfg.eos_token     = special_token(j, "eos_token", file);
        cfg.pad_token     = special_token(j, "pad_token", file);
        cfg.add_bos_token = flag(j, "add_bos_token", file);
        cfg.add_eos_token = flag(j, "add_eos_token", file);
    }
    const auto jinja_file = model_dir / "chat_template.jinja";
    if (std::filesystem::exists(jinja_file, ec))
        cfg.chat_template = read_file(jinja_file);
    return cfg;
}

std::string apply_chat_template(const ChatTemplate& tpl, const TokenizerConfig& cfg,
                                const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                const nlohmann::ordered_json& extra) {
    if (!extra.is_null() && !extra.is_object())
        throw InputError(tpl.origin() + ": extra template variables must be a JSON object");
    nlohmann::ordered_json ctx  = nlohmann::ordered_json::object();
    auto&                  msgs = ctx["messages"] = nlohmann::ordered_json::array();
    for (const auto& m : messages)
        msgs.push_back({{"role", m.role}, {"content", m.content}});
    ctx["add_generation_prompt"] = add_generation_prompt;
    if (cfg.bos_token)
        ctx["bos_token"] = *cfg.bos_token;
    if (cfg.eos_token)
        ctx["eos_token"] = *cfg.eos_token;
    if (cfg.pad_token)
        ctx["pad_token"] = *cfg.pad_token;
    if (extra.is_object())
        for (const auto& [k, v] : extra.items())
            ctx[k] = v;
    return tpl.render(ctx);
}

} // namespace moebius
