#pragma once
// A painted bar chart (signed values allowed, zero line drawn) with hover values. Used for per-layer imbalance,
// routing shift, load change and the live reconstruction error of a quantization run.
#include <QString>
#include <QStringList>
#include <QWidget>

#include <vector>

namespace moebius::studio {

class BarChart : public QWidget {
    Q_OBJECT
public:
    explicit BarChart(const QString& title = {}, QWidget* parent = nullptr);

    void setTitle(const QString& t) { title_ = t; update(); }
    void setBars(const QStringList& labels, std::vector<double> values);
    void setBar(int index, double value); // for live updates; grows the chart as needed
    void clear() { setBars({}, {}); }

    int           count() const { return (int)values_.size(); }
    double        value(int i) const { return values_[(size_t)i]; }
    const QString& title() const { return title_; }
    QSize         sizeHint() const override { return {400, 180}; }

protected:
    void paintEvent(QPaintEvent*) override;
    void mouseMoveEvent(QMouseEvent*) override;

private:
    QRect plotArea() const;

    QString             title_;
    QStringList         labels_;
    std::vector<double> values_;
};

} // namespace moebius::studio
