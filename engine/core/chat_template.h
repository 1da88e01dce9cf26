#pragma once
// Chat templates: the Jinja2 subset used by the chat_template strings of Hugging Face models, rendered the way
// transformers' apply_chat_template renders them (jinja2 ImmutableSandboxedEnvironment with trim_blocks=True,
// lstrip_blocks=True, keep_trailing_newline=False, loop controls, raise_exception(), strftime_now() and a tojson
// filter that is json.dumps(ensure_ascii=False)). Values behave as in Python: str(True) is "True", lists print as
// Python reprs, undefined names render as "" (jinja2's default Undefined), "'a' + 1" is an error.
//
// Supported: {{ }}, {% %}, {# #}, "-"/"+" whitespace control, raw; if/elif/else, for (loop.* , else, filters
// "for x in xs if c", tuple unpacking, break/continue), set (also namespace attributes and {% set %}...{% endset %}),
// macro, call, filter, with, generation; the usual operators, ternaries, literals, slices, str/dict/list methods,
// jinja2's builtin filters and tests. Not supported: extends/include/import/block, recursive loops, *args in calls.
// Deeply nested or huge templates and inputs fail with InputError instead of exhausting the stack or memory.
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace moebius {

struct ChatMessage {
    std::string role;
    std::string content;
};

class ChatTemplate {
  public:
    // Parses the template; throws InputError("<origin>: line L, column C: <problem>") on a syntax error.
    explicit ChatTemplate(std::string source, std::string origin = "chat_template");

    // Renders with an arbitrary JSON context (messages, add_generation_prompt, bos_token, eos_token, tools,
    // enable_thinking, ...). Throws InputError("<origin>: <message>") for raise_exception(message), and
    // InputError("<origin>: line L: <problem>") for other render errors (unknown filter, type errors, limits).
    std::string render(const nlohmann::ordered_json& context) const;

    const std::string& source() const { return source_; }
    const std::string& origin() const { return origin_; }

  private:
    struct Parsed;
    std::string                   source_, origin_;
    std::shared_ptr<const Parsed> parsed_; // immutable: copies share it, render() may run concurrently
};

// Everything the tokenizer_config.json of a model says about chat and special tokens.
struct TokenizerConfig {
    std::optional<std::string>
        chat_template; // string form; for the list-of-{name,template} form, the one named "default"
    std::map<std::string, std::string> named_chat_templates; // the list form, by name (e.g. "default", "tool_use")
    std::optional<std::string>         bos_token, eos_token,
        pad_token; // accepts both plain strings and {"content": ...} objects
    bool add_bos_token = false, add_eos_token = false;

    // Reads <dir>/tokenizer_config.json (and <dir>/chat_template.jinja if present, which takes precedence).
    // Missing file → empty config; malformed → FormatError naming the file.
    static TokenizerConfig load(const std::filesystem::path& model_dir);
};

// Convenience: messages + add_generation_prompt + bos/eos/pad tokens from the config (+ extra keys merged into the
// context, overriding). Tokens the config leaves null are left undefined, as transformers does.
std::string apply_chat_template(const ChatTemplate& tpl, const TokenizerConfig& cfg,
                                const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                const nlohmann::ordered_json& extra = {});

} // namespace moebius
