# Desktop integration and CPack packages (DEB, TGZ). `cpack` in a configured build directory writes
# moebius-<version>-Linux.{deb,tar.gz}; the DEB's dependencies come from dpkg-shlibdeps.
if(MOEBIUS_BUILD_APP)
  install(FILES ${CMAKE_CURRENT_LIST_DIR}/moebius-studio.desktop DESTINATION share/applications)
  install(FILES ${CMAKE_CURRENT_LIST_DIR}/moebius-studio.svg DESTINATION share/icons/hicolor/scalable/apps)
  install(FILES ${CMAKE_CURRENT_LIST_DIR}/io.github.moebius.Studio.metainfo.xml DESTINATION share/metainfo)
endif()
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/LICENSE DESTINATION share/doc/moebius RENAME copyright)

set(CPACK_PACKAGE_NAME "moebius")
set(CPACK_PACKAGE_VENDOR "Moebius contributors")
set(CPACK_PACKAGE_CONTACT "Moebius contributors <moebius@users.noreply.github.com>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Quantize, inspect and chat with Mixture-of-Experts LLMs (CLI and Qt 6 Studio)")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_RESOURCE_FILE_LICENSE ${CMAKE_CURRENT_SOURCE_DIR}/LICENSE)
set(CPACK_GENERATOR "DEB;TGZ")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "science")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# The Studio's SVG window icon is drawn by Qt's SVG image plugin; without it the window just has no icon.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libqt6svg6")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "Post-training compression of Mixture-of-Experts language models.\n"
    "The moebius command and the Moebius Studio workbench: expert utilisation, MoE-aware quantization\n"
    "(RTN, GPTQ, AGQ, GPTVQ, BiLLM, ARB), routing comparison and local chat. Ships a tiny demo model.")
# The TGZ unpacks anywhere: binaries find share/moebius next to bin/ (engine/core/resources.cpp).
set(CPACK_ARCHIVE_COMPONENT_INSTALL OFF)
include(CPack)
