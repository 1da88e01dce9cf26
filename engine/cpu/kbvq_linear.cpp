#include "engine/cpu/kbvq_linear.h"

#include "engine/core/dtype.h"
#include "engine/core/error.h"
#include "engine/cpu/row_decoded_forward.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace moebius {

namespace {

bool f16_exact(float v) { return f16_to_f32(f32_to_f16(v)) == v; }

std::vector<uint16_t> to_f16(const std::vector<float>& v) {
    std::vector<uint16_t> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = f32_to_f16(v[i]);
    return r;
}

} // namespace

void KbvqLinear::quantize_coef(const std::vector<double>& C, int rank, int in, std::vector<int8_t>& q,
                               std::vector<uint16_t>& scales) {
    q.assign((size_t)rank * in, 0);
    scales.assign(rank, 0);
    for (int k = 0; k < rank; ++k) {
        double m = 0;
        for (int j = 0; j < in; ++j) m = std::max(m, std::abs(C[(size_t)k * in + j]));
        const uint16_t s16 = f32_to_f16((float)(m / 127));
        const double   s   = f16_to_f32(s16);
        scales[k]          = s > 0 && std::isfinite(s) ? s16 : 0;
        if (!(s > 0 && std::isfinite(s))) continue;
        for (int j = 0; j < in; ++j)
            q[(size_t)k * in + j] = (int8_t)std::lround(std::clamp(C[(size_t)k * in + j] / s, -127.0, 127.0));
    }
}

KbvqLinear::KbvqLinear(int in_features, int out_features, KbvqPacked p, std::shared_ptr<const KbvqShared> shared)
    : Linear(in_features, out_features), p_(std::move(p)), vq_(in_features, out_features, p_.vq) {
    init(std::move(shared));
}

KbvqLinear::KbvqLinear(const VqWeights& residual, KbvqPacked p, std::shared_ptr<const KbvqShared> shared)
    : Linear(residual.in, residual.out), p_(std::move(p)), vq_(residual) {
    init(std::move(shared));
}

void KbvqLinear::init(std::shared_ptr<const KbvqShared> shared) {
    p_.vq = {}; // the residual keeps its own copy
    if (p_.rank < 0 || p_.rank > std::min(in_, out_))
        throw FormatError("kbvq linear: rank " + std::to_string(p_.rank) + " outside 0..min(out, in)");
    if (p_.coef.size() != (size_t)p_.rank * in_ || p_.coef_scales.size() != (size_t)p_.rank)
        throw FormatError("kbvq linear: coefficient arrays (" + std::to_string(p_.coef.size()) + ", " +
                          std::to_string(p_.coef_scales.size()) + " scales) do not match rank " +
                          std::to_string(p_.rank) + " × in " + std::to_string(in_));
    coef_.resize(p_.coef.size());
    for (int k = 0; k < p_.rank; ++k) {
        const float s = f16_to_f32(p_.coef_scales[k]);
        if (!std::isfinite(s)) throw FormatError("kbvq linear: coefficient scale " + std::to_string(k) + " is not finite");
        for (int j = 0; j < in_; ++j) coef_[(size_t)k * in_ + j] = s * (float)p_.coef[(size_t)k * in_ + j];
    }
    set_shared(std::move(shared));
}

void KbvqLinear::set_shared(std::shared_ptr<const KbvqShared> s) {
    if (!s) throw FormatError("kbvq linear: missing shared arrays");
    if (s->rank != p_.rank || s->basis.size() != (size_t)out_ * p_.rank || s->gamma.size() != (size_t)out_ ||
        (!s->beta.empty() && s->beta.size() != (size_t)out_))
        throw FormatError("kbvq linear: shared arrays (basis " + std::to_string(s->basis.size()) + ", gamma " +
                          std::to_string(s->gamma.size()) + ", beta " + std::to_string(s->beta.size()) +
                          ") do not match out " + std::to_string(out_) + " × rank " + std::to_string(p_.rank));
    for (const auto* v : {&s->basis, &s->gamma, &s->beta})
        for (float x : *v)
            if (!std::isfinite(x) || !f16_exact(x))
                throw FormatError("kbvq linear: shared value " + std::to_string(x) + " is not a finite f16 value");
    if (!s->codebooks.empty()) {
        // Shared codebooks are the residual's own: the reader fills the residual from them, the quantizer fits the
        // residual with them; anything else is an inconsistent group.
        if (s->codebooks != vq_.codebooks())
            throw FormatError("kbvq linear: the group's shared codebooks (" + std::to_string(s->codebooks.size()) +
                              " values) differ from the residual's (" + std::to_string(vq_.codebooks().size()) + ")");
        if (vq_.codebook_bits() != 16) throw FormatError("kbvq linear: shared codebooks are stored in f16, not 8 bits");
    }
    shared_  = std::move(s);
    basis16_ = to_f16(shared_->basis);
    // γ = 1 everywhere (gate/up, or BCOS off) is not stored: a reader takes a missing γ as ones.
    const bool unit_gamma = std::all_of(shared_->gamma.begin(), shared_->gamma.end(), [](float g) { return g == 1.0f; });
    gamma16_              = unit_gamma ? std::vector<uint16_t>{} : to_f16(shared_->gamma);
    beta16_  = to_f16(shared_->beta);
}

void KbvqLinear::decode_row(int o, float* dst) const {
    vq_.decode_row(o, dst);
    const int    r = p_.rank;
    const float* b = shared_->basis.data() + (size_t)o * r;
    // Rank-r update in a fixed order (k outer), then γ: dequantize() and forward() see the same floats.
    for (int k = 0; k < r; ++k) {
        const float  bk = b[k];
        const float* c  = coef_.data() + (size_t)k * in_;
        for (int j = 0; j < in_; ++j) dst[j] += bk * c[j];
    }
    const float g = shared_->gamma[o];
    if (g != 1.0f)
        for (int j = 0; j < in_; ++j) dst[j] *= g;
}

std::vector<float> KbvqLinear::dequantize() const {
    std::vector<float> w((size_t)out_ * in_); // (out, in)
    for (int o = 0; o < out_; ++o) decode_row(o, w.data() + (int64_t)o * in_);
    return w;
}

void KbvqLinear::forward(const float* x, int n, float* y) const {
    cpu::row_decoded_forward(x, n, in_, out_, y, [this](int o, float* dst) { decode_row(o, dst); });
    if (!shared_->beta.empty())
        for (int t = 0; t < n; ++t)
            for (int o = 0; o < out_; ++o) y[(int64_t)t * out_ + o] += shared_->beta[o];
}

size_t KbvqLinear::storage_bytes() const {
    size_t b = vq_.storage_bytes() + p_.coef.size() + 2 * p_.coef_scales.size();
    // Shared codebooks (the residual's own, f16) are stored once, with the owner.
    const size_t cb = shared_codebooks() ? vq_.codebooks_f16().size() : 0;
    b -= 2 * cb;
    if (p_.is_owner) b += 2 * (basis16_.size() + gamma16_.size() + beta16_.size() + cb);
    return b;
}

std::vector<PackedTensor> KbvqLinear::packed_tensors() const {
    auto bytes = [](const auto& v) { return std::span<const uint8_t>((const uint8_t*)v.data(), v.size() * sizeof(v[0])); };
    std::vector<PackedTensor> t = vq_.packed_tensors();
    if (shared_codebooks())
        t.erase(std::remove_if(t.begin(), t.end(), [](const PackedTensor& x) { return x.suffix == ".vq_codebooks"; }),
                t.end());
    t.push_back({".kbvq_coef", DType::I8, {p_.rank, in_}, bytes(p_.coef)});
    t.push_back({".kbvq_coef_scales", DType::F16, {p_.rank}, bytes(p_.coef_scales)});
    if (p_.is_owner) {
        t.push_back({".kbvq_basis", DType::F16, {out_, p_.rank}, bytes(basis16_)});
        if (!gamma16_.empty()) t.push_back({".kbvq_gamma", DType::F16, {out_}, bytes(gamma16_)});
        if (!beta16_.empty()) t.push_back({".kbvq_beta", DType::F16, {out_}, bytes(beta16_)});
        if (shared_codebooks())
            t.push_back({".kbvq_codebooks", DType::F16, {vq_.n_codebooks(), vq_.k(), vq_.dim()}, bytes(vq_.codebooks_f16())});
    }
    return t;
}

nlohmann::ordered_json KbvqLinear::packed_config() const {
    nlohmann::ordered_json j = vq_.packed_config();
    j["format"]              = "kbvq";
    j["rank"]                = p_.rank;
    j["shared"]              = p_.owner;
    j["bias"]                = !shared_->beta.empty();
    j["gamma"]               = !gamma16_.empty();
    j["shared_codebooks"]    = shared_codebooks();
    return j;
}

} // namespace moebius
