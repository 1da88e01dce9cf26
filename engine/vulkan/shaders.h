#pragma once
// The compute shaders of shaders/, compiled to SPIR-V by glslc at build time and embedded in the
// library (generated moebius_shaders.cpp, see engine/vulkan/shaders.cmake).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace moebius::vk {

struct EmbeddedShader {
    const char*     name;  // file name without .comp
    const uint32_t* words; // SPIR-V
    size_t          n_words;
};

std::span<const EmbeddedShader> embedded_shaders();
// nullptr when there is no such shader.
const EmbeddedShader* find_shader(std::string_view name);

} // namespace moebius::vk
