#pragma once
// A painted heatmap: rows × columns of doubles with a colour scale, hover values, wheel zoom and drag pan, and
// optional row/column profiles (row sums on the right, column means underneath). Used for expert utilisation,
// expert→expert transitions and importance maps.
#include <QString>
#include <QStringList>
#include <QWidget>

#include <vector>

namespace moebius::studio {

class HeatmapWidget : public QWidget {
    Q_OBJECT
public:
    explicit HeatmapWidget(QWidget* parent = nullptr);

    // values: rows*cols, row-major. rowName/colName label hover text and axes ("layer", "expert").
    void setData(int rows, int cols, std::vector<double> values, const QString& rowName, const QString& colName,
                 const QString& valueName);
    void setRowLabels(const QStringList& labels) { rowLabels_ = labels; update(); }
    void setDiverging(bool on) { diverging_ = on; update(); } // blue–white–red around 0 (signed values)
    void setProfiles(bool on) { profiles_ = on; update(); }
    void resetView();

    int    rows() const { return rows_; }
    int    cols() const { return cols_; }
    double value(int r, int c) const { return values_[(size_t)r * cols_ + c]; }
    double zoom() const { return zoom_; }
    // The cell under a widget position (false outside the map) and the text shown when hovering it.
    bool    cellAt(QPoint pos, int& r, int& c) const;
    QString hoverText(int r, int c) const;
    QSize   sizeHint() const override { return {560, 300}; }

signals:
    void cellHovered(int row, int col, double value);

protected:
    void paintEvent(QPaintEvent*) override;
    void mouseMoveEvent(QMouseEvent*) override;
    void mousePressEvent(QMouseEvent*) override;
    void mouseReleaseEvent(QMouseEvent*) override;
    void mouseDoubleClickEvent(QMouseEvent*) override;
    void wheelEvent(QWheelEvent*) override;

private:
    QRectF mapRect() const;            // where the whole (zoomed, panned) map is drawn
    QRect  plotArea() const;           // the visible map area (without axes, legend, profiles)
    QColor colour(double v) const;

    int                 rows_ = 0, cols_ = 0;
    std::vector<double> values_;
    double              lo_ = 0, hi_ = 1;
    QString             rowName_, colName_, valueName_;
    QStringList         rowLabels_;
    bool                diverging_ = false, profiles_ = true;
    double              zoom_ = 1.0;
    QPointF             pan_;            // offset of the map inside the plot area, in pixels
    QPoint              dragFrom_;
    bool                dragging_ = false;
};

} // namespace moebius::studio
