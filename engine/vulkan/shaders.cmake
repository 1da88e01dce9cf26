# Builds the Vulkan backend: every shaders/*.comp is compiled by glslc to SPIR-V at build time, checked
# with spirv-val when it is installed, and embedded as a uint32 array in a generated C++ source, so the library needs
# no shader files at run time. Included from the top-level CMakeLists.txt when MOEBIUS_VULKAN is ON.
find_program(MOEBIUS_SPIRV_VAL spirv-val)
set(MOEBIUS_SHADER_TARGET_ENV vulkan1.2) # DESIGN.md §8: any Vulkan 1.2 device
# DESIGN.md §2: the GLSL lives in the top-level shaders/, used only by engine/vulkan.
set(MOEBIUS_SHADER_DIR ${CMAKE_CURRENT_SOURCE_DIR}/shaders)
set(MOEBIUS_SHADER_OUT ${CMAKE_CURRENT_BINARY_DIR}/shaders)
file(GLOB MOEBIUS_SHADERS CONFIGURE_DEPENDS ${MOEBIUS_SHADER_DIR}/*.comp)
file(GLOB MOEBIUS_SHADER_INCLUDES CONFIGURE_DEPENDS ${MOEBIUS_SHADER_DIR}/*.glsl)

set(MOEBIUS_SPV_FILES)
foreach(src ${MOEBIUS_SHADERS})
  get_filename_component(name ${src} NAME_WE)
  set(spv ${MOEBIUS_SHADER_OUT}/${name}.spv)
  set(validate)
  if(MOEBIUS_SPIRV_VAL)
    set(validate COMMAND ${MOEBIUS_SPIRV_VAL} --target-env ${MOEBIUS_SHADER_TARGET_ENV} ${spv})
  endif()
  add_custom_command(
    OUTPUT ${spv}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${MOEBIUS_SHADER_OUT}
    # -O stays on for now; kernels.md §7.5 pitfall 5: make it per-shader switchable if a spirv-opt miscompile shows up.
    COMMAND ${Vulkan_GLSLC_EXECUTABLE} --target-env=${MOEBIUS_SHADER_TARGET_ENV} -O -Werror
            -I ${MOEBIUS_SHADER_DIR} -MD -MF ${spv}.d -o ${spv} ${src}
    ${validate}
    DEPENDS ${src} ${MOEBIUS_SHADER_INCLUDES}
    DEPFILE ${spv}.d
    COMMENT "glslc ${name}.comp"
    VERBATIM)
  list(APPEND MOEBIUS_SPV_FILES ${spv})
endforeach()

set(MOEBIUS_SHADERS_CPP ${CMAKE_CURRENT_BINARY_DIR}/moebius_shaders.cpp)
add_custom_command(
  OUTPUT ${MOEBIUS_SHADERS_CPP}
  COMMAND ${CMAKE_COMMAND} -DOUT=${MOEBIUS_SHADERS_CPP} "-DSPV=${MOEBIUS_SPV_FILES}"
          -P ${CMAKE_CURRENT_SOURCE_DIR}/engine/vulkan/embed_spirv.cmake
  DEPENDS ${MOEBIUS_SPV_FILES} ${CMAKE_CURRENT_SOURCE_DIR}/engine/vulkan/embed_spirv.cmake
  COMMENT "Embedding SPIR-V shaders"
  VERBATIM)

file(GLOB MOEBIUS_VULKAN_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/engine/vulkan/*.cpp)
add_library(moebius_vulkan STATIC ${MOEBIUS_VULKAN_SOURCES} ${MOEBIUS_SHADERS_CPP})
# The backend depends on the engine (CPU reference types such as BinaryLinear), never the reverse.
target_link_libraries(moebius_vulkan PUBLIC moebius_engine Vulkan::Vulkan)
target_compile_definitions(moebius_vulkan PUBLIC MOEBIUS_HAS_VULKAN=1)
# `VkXxxInfo info{VK_STRUCTURE_TYPE_...}` (sType set, the rest zero) is the idiomatic Vulkan C initialisation.
target_compile_options(moebius_vulkan PRIVATE -Wno-missing-field-initializers)
