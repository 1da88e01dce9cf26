#pragma once
// CPU kernels of the backward pass, f32 (reductions that feed a normalisation in double). Row-major buffers, shapes
// as (rows, cols). Work is split into chunks whose size does not depend on the thread count, and every output element
// is summed by one thread in a fixed order, so results are deterministic. Inside an enclosing OpenMP region the
// kernels run single-threaded (how experts run concurrently).
#include <cstdint>

namespace moebius::cpu {

// c (n, m) = a (n, k) · b (k, m), or += when accumulate. With b = W (out, in): ∂ℓ/∂X = ∂ℓ/∂Z · W.
void matmul_nn(const float* a, int n, int k, const float* b, int m, float* c, bool accumulate);
// c (k, m) += aᵀ · b, a (n, k), b (n, m). With a = ∂ℓ/∂Z, b = X: ∂ℓ/∂W (out, in) += ∂ℓ/∂Zᵀ · X.
void matmul_tn_acc(const float* a, int n, int k, const float* b, int m, float* c);
// acc (d) += Σ_t x[t] over the n rows of x (n, d): bias gradients.
void colsum_acc(const float* x, int n, int d, float* acc);

// Backward of cpu::rmsnorm over n rows of width d: dx (n, d) = (or += when accumulate) ∂ℓ/∂x given dy = ∂ℓ/∂y;
// dw (d) += ∂ℓ/∂w when not null. x is the norm's input. dx must not alias x or dy.
void rmsnorm_backward(const float* x, int n, int d, const float* w, float eps, const float* dy, float* dx,
                      bool accumulate, float* dw);
// Backward of cpu::rope (its transpose: the rotation by the negated angle), in place on the gradient.
void rope_backward(float* dx, int n, int n_heads, int head_dim, int stride, const int32_t* pos, const float* inv_freq);
// Backward of h = silu(g) ⊙ u over count elements: dg = dh ⊙ u ⊙ silu'(g), du = dh ⊙ silu(g).
void silu_mul_backward(const float* g, const float* u, const float* dh, int64_t count, float* dg, float* du);
// Cross-entropy of one row of logits (V) against `target`: returns log Σ_v exp(l_v) − l_target (f64 sum of f32
// exponentials) and overwrites the logits with scale · (softmax(l) − onehot(target)), the loss's gradient times scale.
double cross_entropy_backward(float* logits, int V, int target, float scale);

// Backward of causal softmax attention over n tokens at positions 0..n-1 with GQA (q-head h reads kv-head
// h / (n_head / n_head_kv)) and scale 1/sqrt(head_dim). q (n, n_head·hd), k and v (n, n_head_kv·hd) as the scores and
// values saw them (after norms and RoPE), o (n, n_head·hd) the attention output, d_o = ∂ℓ/∂o. Writes dq, dk, dv
// (same shapes). Probabilities are recomputed from the scores with the forward's blocked GEMMs and softmax (a
// 32 × n block of them at a time, no n² buffer).
void attention_backward(const float* q, const float* k, const float* v, const float* o, const float* d_o, int n,
                        int n_head, int n_head_kv, int head_dim, float* dq, float* dk, float* dv);
// The same with scalar loops (one pass per query row for dq, one per key row for dk and dv): the reference the
// blocked version is checked against.
void attention_backward_reference(const float* q, const float* k, const float* v, const float* o, const float* d_o,
                                  int n, int n_head, int n_head_kv, int head_dim, float* dq, float* dk, float* dv);

} // namespace moebius::cpu
