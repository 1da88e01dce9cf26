#pragma once
// The Studio's main window: one tab per pane, File menu with a recent-models list, drag and drop of checkpoint
// folders, remembered geometry and settings.
#include <QMainWindow>
#include <QStringList>

class QTabWidget;

namespace moebius::studio {

class ChatPane;
class ComparePane;
class ImportancePane;
class InspectPane;
class ModelLibrary;
class ModelPane;
class QuantizePane;

class MainWindow : public QMainWindow {
    Q_OBJECT
public:
    explicit MainWindow(QWidget* parent = nullptr);

    // Adds the checkpoint and makes it current; an error dialog (and false) when the folder is not a checkpoint.
    bool openModel(const QString& path);

    ModelLibrary*   library() const { return library_; }
    QTabWidget*     tabs() const { return tabs_; }
    ModelPane*      modelPane() const { return modelPane_; }
    InspectPane*    inspectPane() const { return inspectPane_; }
    ImportancePane* importancePane() const { return importancePane_; }
    QuantizePane*   quantizePane() const { return quantizePane_; }
    ComparePane*    comparePane() const { return comparePane_; }
    ChatPane*       chatPane() const { return chatPane_; }
    QStringList     recentModels() const { return recent_; }

protected:
    void closeEvent(QCloseEvent*) override;
    void dragEnterEvent(QDragEnterEvent*) override;
    void dropEvent(QDropEvent*) override;

private:
    void chooseModel();
    void rebuildRecentMenu();
    void saveSettings() const;

    ModelLibrary*   library_;
    QTabWidget*     tabs_;
    ModelPane*      modelPane_;
    InspectPane*    inspectPane_;
    ImportancePane* importancePane_;
    QuantizePane*   quantizePane_;
    ComparePane*    comparePane_;
    ChatPane*       chatPane_;
    QMenu*          recentMenu_ = nullptr;
    QStringList     recent_;
};

} // namespace moebius::studio
