#pragma once
// Look and feel: Fusion style with a dark or light palette following the desktop's preference, so the painted
// charts (which use palette roles) stay readable in both.
class QApplication;

namespace moebius::studio {

// MOEBIUS_STUDIO_THEME=dark|light overrides; otherwise GTK_THEME ("…:dark"), GNOME's color-scheme setting, or the
// platform palette's own window colour decide.
bool prefersDarkTheme();
void applyStudioStyle(QApplication& app);

} // namespace moebius::studio
