#include "engine/cpu/cejd_linear.h"

#include "engine/core/error.h"

namespace moebius {

CejdLinear::CejdLinear(std::unique_ptr<Linear> residual, std::unique_ptr<Linear> coef,
                       std::shared_ptr<const Linear> basis, bool input_side, std::string owner, bool is_owner)
    : Linear(residual ? residual->in_features() : 0, residual ? residual->out_features() : 0),
      residual_(std::move(residual)), coef_(std::move(coef)), basis_(std::move(basis)), input_side_(input_side),
      is_owner_(is_owner), owner_(std::move(owner)) {
    if (!residual_ || !coef_ || !basis_) throw InputError("cejd: residual, coefficients and basis are all required");
    if (dynamic_cast<const CejdLinear*>(residual_.get())) throw InputError("cejd: the residual cannot itself be cejd");
    auto shape = [](const Linear& l) { return std::to_string(l.out_features()) + "x" + std::to_string(l.in_features()); };
    bool ok;
    if (input_side_) {
        rank_ = basis_->out_features();
        ok    = basis_->in_features() == in_ && coef_->out_features() == out_ && coef_->in_features() == rank_;
    } else {
        rank_ = basis_->in_features();
        ok    = basis_->out_features() == out_ && coef_->in_features() == in_ && coef_->out_features() == rank_;
    }
    if (!ok || rank_ <= 0)
        throw InputError("cejd: " + std::string(input_side_ ? "input" : "output") + "-side shapes do not fit: residual " +
                         shape(*residual_) + ", coefficients " + shape(*coef_) + ", basis " + shape(*basis_));
}

void CejdLinear::forward(const float* x, int n, float* y) const {
    residual_->forward(x, n, y);
    std::vector<float> z((size_t)n * rank_), t((size_t)n * out_); // (n, r), (n, out)
    if (input_side_) {
        basis_->forward(x, n, z.data());
        coef_->forward(z.data(), n, t.data());
    } else {
        coef_->forward(x, n, z.data());
        basis_->forward(z.data(), n, t.data());
    }
    for (size_t i = 0; i < t.size(); ++i) y[i] += t[i];
}

std::vector<float> CejdLinear::dequantize() const {
    std::vector<float>       w = residual_->dequantize(); // (out, in)
    const std::vector<float> c = coef_->dequantize(), b = basis_->dequantize();
    // input side: C (out, r) · B (r, in); output side: B (out, r) · C (r, in). Sums in f64, rounded once.
    const std::vector<float>& L = input_side_ ? c : b;
    const std::vector<float>& R = input_side_ ? b : c;
    std::vector<double>       acc(in_);
    for (int o = 0; o < out_; ++o) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int k = 0; k < rank_; ++k) {
            const double l = L[(size_t)o * rank_ + k];
            if (l == 0) continue;
            const float* r = R.data() + (size_t)k * in_;
            for (int j = 0; j < in_; ++j) acc[j] += l * r[j];
        }
        float* row = w.data() + (size_t)o * in_;
        for (int j = 0; j < in_; ++j) row[j] = (float)(row[j] + acc[j]);
    }
    return w;
}

size_t CejdLinear::storage_bytes() const {
    return residual_->storage_bytes() + coef_->storage_bytes() + (is_owner_ ? basis_->storage_bytes() : 0);
}

std::vector<PackedTensor> CejdLinear::packed_tensors() const {
    std::vector<PackedTensor> all = residual_->packed_tensors();
    auto add = [&](const Linear& l, const std::string& prefix) {
        auto parts = l.packed_tensors();
        if (parts.empty()) throw UnsupportedError("cejd: a " + l.format() + " factor has no packed storage");
        for (auto& p : parts) {
            p.suffix = prefix + p.suffix;
            all.push_back(std::move(p));
        }
    };
    if (all.empty()) throw UnsupportedError("cejd: a " + residual_->format() + " residual has no packed storage");
    add(*coef_, ".cejd_coef");
    if (is_owner_) add(*basis_, ".cejd_basis");
    return all;
}

nlohmann::ordered_json CejdLinear::packed_config() const {
    return {{"format", "cejd"},
            {"side", input_side_ ? "input" : "output"},
            {"rank", rank_},
            {"owner", owner_},
            {"residual", residual_->packed_config()},
            {"coef", coef_->packed_config()},
            {"basis", basis_->packed_config()}};
}

const CejdLinear* shared_basis_group(const std::vector<std::array<std::unique_ptr<Linear>, 3>>& experts, int kind,
                                     bool input_side) {
    const CejdLinear* first = nullptr;
    for (const auto& ex : experts) {
        const auto* c = dynamic_cast<const CejdLinear*>(ex[kind].get());
        if (!c || c->input_side() != input_side || (first && c->owner() != first->owner())) return nullptr;
        if (!first) first = c;
    }
    return first;
}

} // namespace moebius
