#pragma once
// One chat turn on the CPU engine, in plain C++: the model's own chat template renders the conversation, the reply
// streams through a callback as UTF-8-complete pieces. Also the backend list the chat pane offers.
#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/core/chat_template.h"
#include "engine/core/generation_config.h"
#include "engine/core/progress.h"
#include "engine/core/tokenizer.h"
#include "engine/cpu/generate.h"

namespace moebius::studio {

// A model resident on a GPU (the Vulkan runner), behind an interface so this header needs no Vulkan.
class GpuChatRunner {
public:
    virtual ~GpuChatRunner() = default;
    virtual GenerateResult generate(std::span<const int32_t> prompt, const GenerateOptions& opt,
                                    const std::function<bool(int32_t)>& on_token) = 0;
};

struct ChatModel {
    std::filesystem::path         dir;
    std::string                   backend;  // what was asked for: "cpu" or "vulkan:<device index>"
    std::string                   device;   // what runs it: "CPU" or the Vulkan device's name
    std::string                   fallback; // why the CPU runs although a GPU was asked for (empty otherwise)
    std::shared_ptr<GpuChatRunner> gpu;     // null: the CPU engine
    std::shared_ptr<const Model>  model;
    std::shared_ptr<Tokenizer>    tok;
    TokenizerConfig               tcfg;
    GenerationConfig              gen;
    std::optional<ChatTemplate>   tpl; // none: the conversation is sent as plain text
    int                           n_ctx = 0;

    // backend "vulkan:<index>" uploads the model to that device; when it cannot (no device, too large, a format
    // the kernels lack) the CPU engine is used and `fallback` says why.
    static std::shared_ptr<ChatModel> load(const std::filesystem::path& dir, const std::string& backend = "cpu",
                                           const ProgressFn& progress = {});
};

struct ChatTurnOptions {
    SamplingParams sampling;
    int            max_tokens = 256;
};

struct ChatTurnResult {
    std::string    reply;
    GenerateResult gen;
    int            context_used = 0; // prompt + reply tokens
};

// Renders messages (+ the generation prompt), generates, and calls on_piece with each new piece of text; on_piece
// returning false stops (stop_reason "cancelled"; the partial reply is returned).
ChatTurnResult run_chat_turn(const ChatModel& cm, const std::vector<ChatMessage>& messages, const ChatTurnOptions& opt,
                             const std::function<bool(const std::string&)>& on_piece);

// Compute backends the chat can run on. CPU is always usable; a Vulkan device is listed with `usable` false and the
// reason when generation cannot run on it, so the pane can show why it falls back to the CPU.
struct Backend {
    std::string key;    // for ChatModel::load: "cpu", "vulkan:0"
    std::string name;   // "CPU", "Vulkan: llvmpipe (LLVM 15.0.6, 256 bits)"
    std::string kind;   // "cpu" | "vulkan"
    bool        usable = false;
    std::string reason; // why not usable (or empty)
    bool        hardware = false; // a real GPU (not a software rasteriser such as lavapipe)
};
std::vector<Backend> available_backends();

} // namespace moebius::studio
