#pragma once
// Model pane: open a checkpoint folder (button, drag and drop, recent list in the File menu) and read its summary.
#include <QWidget>

class QFormLayout;
class QLabel;
class QListWidget;
class QTableWidget;

namespace moebius::studio {

class ModelLibrary;

class ModelPane : public QWidget {
    Q_OBJECT
public:
    explicit ModelPane(ModelLibrary* library, QWidget* parent = nullptr);

    // The summary value shown for a field ("family", "layers", "experts", "top-k", ...), for tests.
    QString field(const QString& name) const;

signals:
    void openRequested(); // the "Open checkpoint…" button

private:
    void showCurrent();
    void setField(const QString& name, const QString& value);

    ModelLibrary* library_;
    QListWidget*  list_;
    QFormLayout*  form_;
    QLabel*       title_;
    QTableWidget* estimates_;
};

} // namespace moebius::studio
