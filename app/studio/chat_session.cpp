#include "app/studio/chat_session.h"

#include <algorithm>

#include "engine/core/error.h"
#ifdef MOEBIUS_HAS_VULKAN
#include "engine/vulkan/device.h"
#if __has_include("engine/vulkan/runner.h")
#include "engine/vulkan/runner.h"
#define MOEBIUS_STUDIO_VULKAN_RUNNER 1
#endif
#endif

namespace moebius::studio {

namespace {
// Chat on a GPU keeps its KV cache on the device; long contexts of real models would not fit, so it is capped.
constexpr int kGpuMaxContext = 4096;

#ifdef MOEBIUS_STUDIO_VULKAN_RUNNER
class VulkanChatRunner : public GpuChatRunner {
public:
    VulkanChatRunner(const std::string& selector, const Model& model, int n_ctx)
        : dev_(selector), runner_(dev_, model, n_ctx) {}
    GenerateResult generate(std::span<const int32_t> prompt, const GenerateOptions& opt,
                            const std::function<bool(int32_t)>& on_token) override {
        return moebius::generate(runner_, prompt, opt, on_token);
    }
    std::string name() const { return dev_.info().name; }

private:
    vk::Device dev_;
    vk::Runner runner_;
};
#endif
} // namespace

std::shared_ptr<ChatModel> ChatModel::load(const std::filesystem::path& dir, const std::string& backend,
                                           const ProgressFn& progress) {
    auto cm     = std::make_shared<ChatModel>();
    cm->dir     = dir;
    cm->backend = backend;
    cm->device  = "CPU";
    cm->tok   = std::make_shared<Tokenizer>(Tokenizer::from_file(dir / "tokenizer.json"));
    cm->tcfg  = TokenizerConfig::load(dir);
    cm->gen   = GenerationConfig::load(dir);
    if (cm->tcfg.chat_template) cm->tpl.emplace(*cm->tcfg.chat_template, (dir / "tokenizer_config.json").string());
    cm->model = Model::load(dir, progress);
    cm->n_ctx = cm->model->spec().max_position > 0 ? cm->model->spec().max_position : 2048;
    if (backend.rfind("vulkan:", 0) == 0) {
#ifdef MOEBIUS_STUDIO_VULKAN_RUNNER
        try {
            const int n_ctx = std::min(cm->n_ctx, kGpuMaxContext);
            auto      gpu   = std::make_shared<VulkanChatRunner>(backend.substr(7), *cm->model, n_ctx);
            cm->device      = "Vulkan: " + gpu->name();
            cm->gpu         = gpu;
            cm->n_ctx       = n_ctx;
        } catch (const std::exception& e) {
            cm->fallback = std::string("the Vulkan device could not run this model (") + e.what() + ")";
        }
#else
        cm->fallback = "this build's Vulkan backend has no model runner";
#endif
    }
    return cm;
}

ChatTurnResult run_chat_turn(const ChatModel& cm, const std::vector<ChatMessage>& messages, const ChatTurnOptions& opt,
                             const std::function<bool(const std::string&)>& on_piece) {
    // Same prompt construction and stop tokens as `moebius generate --chat`.
    std::string text;
    if (cm.tpl) {
        text = apply_chat_template(*cm.tpl, cm.tcfg, messages, true);
    } else {
        for (const auto& m : messages) text += m.role + ": " + m.content + "\n";
        text += "assistant: ";
    }
    std::vector<int32_t> stop = cm.gen.eos_token_ids;
    if (stop.empty()) stop = cm.model->spec().eos_token_ids;
    if (cm.tcfg.eos_token) {
        int32_t id = cm.tok->token_id(*cm.tcfg.eos_token);
        if (id >= 0 && std::find(stop.begin(), stop.end(), id) == stop.end()) stop.push_back(id);
    }
    auto ids = cm.tok->encode(text, true);
    if ((int)ids.size() >= cm.n_ctx)
        throw InputError("the conversation (" + std::to_string(ids.size()) + " tokens) no longer fits the model's context of " +
                         std::to_string(cm.n_ctx) + " tokens; start a new chat");
    GenerateOptions g;
    g.stop_ids   = stop;
    g.sampling   = opt.sampling;
    g.max_tokens = std::min(opt.max_tokens, cm.n_ctx - (int)ids.size());
    g.n_ctx      = std::min(cm.n_ctx, (int)ids.size() + g.max_tokens);
    StreamingDecoder dec(*cm.tok);
    ChatTurnResult   r;
    bool             go = true;
    auto on_token = [&](int32_t t) {
        std::string piece = dec.push(t);
        r.reply += piece;
        if (!piece.empty()) go = on_piece(piece);
        return go;
    };
    r.gen = cm.gpu ? cm.gpu->generate(ids, g, on_token) : generate(*cm.model, ids, g, on_token);
    std::string tail = dec.flush();
    if (!tail.empty()) {
        r.reply += tail;
        on_piece(tail);
    }
    r.context_used = r.gen.prompt_tokens + (int)r.gen.tokens.size();
    return r;
}

std::vector<Backend> available_backends() {
    std::vector<Backend> out{{"cpu", "CPU", "cpu", true, ""}};
#ifdef MOEBIUS_HAS_VULKAN
    try {
        vk::Instance inst;
        for (const auto& d : inst.devices()) {
            Backend b{"vulkan:" + std::to_string(d.index), "Vulkan: " + d.name + " (" + d.type + ")", "vulkan", false, ""};
#ifdef MOEBIUS_STUDIO_VULKAN_RUNNER
            b.usable = true;
#else
            b.reason = "this build's Vulkan backend has operator kernels but no model runner";
#endif
            b.hardware = d.type != "cpu";
            out.push_back(b);
        }
        if (inst.devices().empty()) out.push_back({"", "Vulkan", "vulkan", false, "no Vulkan device was found"});
    } catch (const std::exception& e) {
        out.push_back({"", "Vulkan", "vulkan", false, std::string("Vulkan is unavailable: ") + e.what()});
    }
#else
    out.push_back({"", "Vulkan", "vulkan", false, "this build has no Vulkan backend (libvulkan-dev and glslc were not found)"});
#endif
    return out;
}

} // namespace moebius::studio
