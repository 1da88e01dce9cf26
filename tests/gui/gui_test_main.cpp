// GoogleTest main for the GUI tests: a QApplication on the offscreen platform, settings in a throwaway folder.
#include <QApplication>
#include <QSettings>
#include <QTemporaryDir>

#include <gtest/gtest.h>

// Under LeakSanitizer: allocations that system libraries loaded by Qt's platform plugins keep for the life of the
// process (font and D-Bus caches, the Vulkan ICD's LLVM) are not leaks of ours. Ignored in builds without LSan.
extern "C" const char* __lsan_default_suppressions() {
    return "leak:libfontconfig.so\n"
           "leak:libdbus-1.so\n"
           "leak:libglib-2.0.so\n"
           "leak:libvulkan_lvp.so\n"
           "leak:libLLVM-15.so\n";
}

int main(int argc, char** argv) {
    qputenv("QT_QPA_PLATFORM", qgetenv("QT_QPA_PLATFORM").isEmpty() ? QByteArray("offscreen") : qgetenv("QT_QPA_PLATFORM"));
    ::testing::InitGoogleTest(&argc, argv);
    // Test discovery at build time only lists names: no QApplication, no platform plugin.
    if (::testing::GTEST_FLAG(list_tests)) return RUN_ALL_TESTS();
    QApplication app(argc, argv);
    QApplication::setOrganizationName("MoebiusTest");
    QApplication::setApplicationName("moebius-studio-test");
    QTemporaryDir settings;
    QSettings::setDefaultFormat(QSettings::IniFormat);
    QSettings::setPath(QSettings::IniFormat, QSettings::UserScope, settings.path());
    return RUN_ALL_TESTS();
}
