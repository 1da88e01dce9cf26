#pragma once
// MoBiE's cross-expert joint decomposition (CEJD, methods.md §1.3 step B; storage in engine/cpu/cejd_linear.h):
// the routed experts of one layer and one kind share a rank-r basis B, each expert keeps an 8-bit coefficient factor
// C_e, and only the residual R_e = W_e − low-rank part is binarized.
//
// The basis is chosen for the layer objective, with the Hessian in the loop (a plain joint SVD of the weights spreads
// the binarization error into the directions the inputs use, DESIGN.md §5):
//  - input side (gate/up, W = R + C·B, B (r, in)): minimise Σ_e ‖D_e^½ (W_e − C_e B) X‖² over a shared row space B,
//    X the layer's FFN input (every routed expert sees it), D_e the per-output-row weights (GLAS, or 1). With
//    H = X Xᵀ/N: u = top-r eigenvectors of Σ_e H^½ W_eᵀ D_e W_e H^½, B = uᵀ H^-½.
//  - output side (down, W = R + B·C, B (out, r)): minimise Σ_e ‖M^½ (W_e − B C_e) X_e‖² over a shared column space,
//    M (out, out) an SPD metric on the output (GLAS row weights and NGES's router term): ũ = top-r eigenvectors of
//    M^½ (Σ_e W_e H_e W_eᵀ) M^½, B = M^-½ ũ.
// Coefficients are the least-squares fit for the given (8-bit) basis, once before binarization (so the residual is
// what the low rank misses) and again after it ("refit": C absorbs what the binarized residual got wrong inside the
// low-rank subspace):
//  - input side:  C_e = (W_e − R̂_e) H_e B̂ᵀ (B̂ H_e B̂ᵀ)⁻¹   (any row weights give the same minimiser)
//  - output side: C_e = (B̂ᵀ M B̂)⁻¹ B̂ᵀ M (W_e − R̂_e)      (any input Hessian gives the same minimiser)
#include <cstdint>
#include <vector>

namespace moebius::quant {

// W: routed experts' weights (out, in) f32 row-major, all the same shape. H (in, in) f64 per-token input second
// moment. row_weight: per expert (out) or empty. Returns B (rank, in) f32.
std::vector<float> cejd_input_basis(const std::vector<const float*>& W, int out, int in, const std::vector<double>& H,
                                    const std::vector<std::vector<float>>& row_weight, int rank);

// W: (out, in) per expert; H: per expert (in, in) per-token second moment of its inputs; M (out, out) SPD metric or
// empty (identity). Returns B (out, rank) f32.
std::vector<float> cejd_output_basis(const std::vector<const float*>& W, int out, int in,
                                     const std::vector<const std::vector<double>*>& H, const std::vector<double>& M,
                                     int rank);

// Least-squares coefficients (see above). A (out, in) = W_e − R̂_e (or W_e before binarization); B as returned above
// (after 8-bit rounding). Input side: returns C (out, rank) with H_e (in, in). Output side: C (rank, in) with M
// (out, out) or empty (identity).
std::vector<float> cejd_input_coef(const float* A, int out, int in, const std::vector<float>& B, int rank,
                                   const std::vector<double>& H);
std::vector<float> cejd_output_coef(const float* A, int out, int in, const std::vector<float>& B, int rank,
                                    const std::vector<double>& M);

} // namespace moebius::quant
