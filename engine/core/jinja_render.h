#pragma once
// Renders a parsed template (jinja_ast.h) against a JSON context. Internal to chat_template.cpp.
#include "engine/core/jinja_ast.h"

#include <nlohmann/json.hpp>
#include <string>

namespace moebius::jinja {

// Why rendering stopped: a template error at a line, or raise_exception(message) (raised = true).
struct RenderFailure {
    std::string message;
    int         line   = 0;
    bool        raised = false;
};

// Render-time work limits; a template that exceeds them fails instead of hanging or exhausting memory.
inline constexpr uint64_t k_max_render_steps = 5'000'000; // statements executed, loop iterations and calls
inline constexpr int      k_max_call_depth   = 100;       // nested macro calls

// Throws RenderFailure.
std::string render_template(const Body& body, const nlohmann::ordered_json& context);

} // namespace moebius::jinja
