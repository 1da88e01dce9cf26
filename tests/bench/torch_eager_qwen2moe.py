#!/usr/bin/python3
"""PyTorch eager baseline for bench_cpu: a Qwen2-MoE forward written the way transformers' eager
modeling_qwen2_moe.py (v4.40) writes it, on float32 weights read straight from the safetensors shards.

    /usr/bin/python3 tests/bench/torch_eager_qwen2moe.py MODEL [--prompt 256] [--decode 64] [--threads T]
        [--repeat 3] [--warmup 1] [--json] [--check-ref REF.json] [--check-cli path/to/moebius] [--check-n 8]

Needs only torch (Debian python3-torch 1.13); no transformers. Weights are bf16/f16/f32 safetensors; everything is
converted to float32 (the same precision the Moebius CPU engine computes in).

Before timing, the forward is checked against Moebius (max |dlogit| <= 2e-3 * max|logit|, the golden test's
tolerance): --check-ref compares with a reference JSON {input_ids, logits} (tests/data/reference/*.forward.json);
--check-cli runs `moebius forward MODEL --ids ... --json` on the first --check-n prompt ids and compares. The script
exits 1 if a check fails.

The prompt is the same LCG id sequence as bench_cpu.cpp: x <- (1103515245 x + 12345) mod 2^31, id = x mod vocab,
x0 = 42. Prefill = one forward of the prompt into a fresh KV cache (last-token logits); decode = N greedy steps of one
token each through the cache. Reported: best/median tokens/s over R timed runs, load time, peak RSS (ru_maxrss).
"""
import argparse
import json
import math
import mmap
import os
import resource
import struct
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="nn.functional.sigmoid is deprecated")
from torch import nn

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


# ---- checkpoint reading -------------------------------------------------------------------------------------------
def read_safetensors(path, want):
    """Yields (name, float32 tensor) for the tensors of one file that are in `want`."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "The given buffer is not writable": we copy right away
            for name, info in header.items():
                if name == "__metadata__" or name not in want:
                    continue
                dt = DTYPES[info["dtype"]]
                b, e = info["data_offsets"]
                count = (e - b) // torch.tensor([], dtype=dt).element_size()
                t = torch.frombuffer(mm, dtype=dt, count=count, offset=base + b)
                yield name, t.to(torch.float32).reshape(info["shape"]).clone()
                del t
    finally:
        mm.close()


def load_state_dict(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            weight_map = json.load(f)["weight_map"]
    else:
        weight_map = None
    files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
    sd = {}
    for fn in files:
        want = {k for k, v in weight_map.items() if v == fn} if weight_map else _AllNames()
        for name, t in read_safetensors(os.path.join(model_dir, fn), want):
            sd[name] = t
    return sd


class _AllNames:
    def __contains__(self, _):
        return True


# ---- the model, after transformers/models/qwen2_moe/modeling_qwen2_moe.py (eager paths) ------------------------------
class Qwen2MoeRMSNorm(nn.Module):
    def __init__(self, weight, eps):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class Linear(nn.Module):
    """nn.Linear without the random initialisation (the weights come from the checkpoint); same F.linear call."""

    def __init__(self, weight, bias=None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Qwen2MoeRotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings, base):
        super().__init__()
        self.dim = dim
        self.base = base
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._set_cos_sin_cache(max_position_embeddings)

    def _set_cos_sin_cache(self, seq_len):
        self.max_seq_len_cached = seq_len
        t = torch.arange(self.max_seq_len_cached, dtype=torch.int64).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, x, seq_len):
        if seq_len > self.max_seq_len_cached:
            self._set_cos_sin_cache(seq_len)
        return self.cos_cached[:seq_len].to(dtype=x.dtype), self.sin_cached[:seq_len].to(dtype=x.dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids, unsqueeze_dim=1):
    cos = cos[position_ids].unsqueeze(unsqueeze_dim)
    sin = sin[position_ids].unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class Qwen2MoeMLP(nn.Module):
    def __init__(self, sd, p):
        super().__init__()
        self.gate_proj = Linear(sd.pop(p + "gate_proj.weight"))
        self.up_proj = Linear(sd.pop(p + "up_proj.weight"))
        self.down_proj = Linear(sd.pop(p + "down_proj.weight"))
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class KVCache:
    """DynamicCache: per layer, keys/values (bsz, kv_heads, seq, head_dim) concatenated along seq."""

    def __init__(self, n_layer):
        self.key_cache = [None] * n_layer
        self.value_cache = [None] * n_layer

    def get_seq_length(self):
        return 0 if self.key_cache[0] is None else self.key_cache[0].shape[-2]

    def update(self, key_states, value_states, layer_idx):
        if self.key_cache[layer_idx] is None:
            self.key_cache[layer_idx] = key_states
            self.value_cache[layer_idx] = value_states
        else:
            self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key_states], dim=-2)
            self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value_states], dim=-2)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]


class Qwen2MoeAttention(nn.Module):
    def __init__(self, cfg, sd, p, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = cfg["hidden_size"]
        self.num_heads = cfg["num_attention_heads"]
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = cfg.get("num_key_value_heads", self.num_heads)
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        a = p + "self_attn."
        self.q_proj = Linear(sd.pop(a + "q_proj.weight"), sd.pop(a + "q_proj.bias"))
        self.k_proj = Linear(sd.pop(a + "k_proj.weight"), sd.pop(a + "k_proj.bias"))
        self.v_proj = Linear(sd.pop(a + "v_proj.weight"), sd.pop(a + "v_proj.bias"))
        self.o_proj = Linear(sd.pop(a + "o_proj.weight"))
        self.rotary_emb = Qwen2MoeRotaryEmbedding(
            self.head_dim, cfg.get("max_position_embeddings", 2048), cfg.get("rope_theta", 10000.0)
        )

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)

        query_states = query_states.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = key_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value_states = value_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)

        kv_seq_len = key_states.shape[-2] + past_key_value.get_seq_length()
        cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin, position_ids)
        key_states, value_states = past_key_value.update(key_states, value_states, self.layer_idx)

        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)

        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        attn_weights = attn_weights + attention_mask
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)

        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
        return self.o_proj(attn_output)


class Qwen2MoeSparseMoeBlock(nn.Module):
    def __init__(self, cfg, sd, p):
        super().__init__()
        self.num_experts = cfg["num_experts"]
        self.top_k = cfg["num_experts_per_tok"]
        self.norm_topk_prob = cfg.get("norm_topk_prob", False)
        self.gate = Linear(sd.pop(p + "mlp.gate.weight"))
        self.experts = nn.ModuleList(
            [Qwen2MoeMLP(sd, p + "mlp.experts.%d." % e) for e in range(self.num_experts)]
        )
        self.shared_expert = Qwen2MoeMLP(sd, p + "mlp.shared_expert.")
        self.shared_expert_gate = Linear(sd.pop(p + "mlp.shared_expert_gate.weight"))

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)

        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.norm_topk_prob:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)

        final_hidden_states = torch.zeros(
            (batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype, device=hidden_states.device
        )
        expert_mask = torch.nn.functional.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)

        for expert_idx in range(self.num_experts):
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx])
            if top_x.shape[0] == 0:
                continue
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current_hidden_states = expert_layer(current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))

        shared_expert_output = self.shared_expert(hidden_states)
        shared_expert_output = F.sigmoid(self.shared_expert_gate(hidden_states)) * shared_expert_output
        final_hidden_states = final_hidden_states + shared_expert_output

        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return final_hidden_states, router_logits, selected_experts


class Qwen2MoeDecoderLayer(nn.Module):
    def __init__(self, cfg, sd, layer_idx):
        super().__init__()
        p = "model.layers.%d." % layer_idx
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.self_attn = Qwen2MoeAttention(cfg, sd, p, layer_idx)
        mlp_only = cfg.get("mlp_only_layers", [])
        step = cfg.get("decoder_sparse_step", 1)
        if layer_idx not in mlp_only and cfg["num_experts"] > 0 and (layer_idx + 1) % step == 0:
            self.mlp = Qwen2MoeSparseMoeBlock(cfg, sd, p)
        else:
            self.mlp = Qwen2MoeMLP(sd, p + "mlp.")
        self.input_layernorm = Qwen2MoeRMSNorm(sd.pop(p + "input_layernorm.weight"), eps)
        self.post_attention_layernorm = Qwen2MoeRMSNorm(sd.pop(p + "post_attention_layernorm.weight"), eps)

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value, routes):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states, attention_mask, position_ids, past_key_value)
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        if isinstance(hidden_states, tuple):
            hidden_states, _router_logits, selected = hidden_states
            routes.append(selected)
        return residual + hidden_states


class Qwen2MoeForCausalLM(nn.Module):
    def __init__(self, cfg, sd):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding.from_pretrained(sd.pop("model.embed_tokens.weight"), freeze=True)
        self.layers = nn.ModuleList([Qwen2MoeDecoderLayer(cfg, sd, i) for i in range(cfg["num_hidden_layers"])])
        self.norm = Qwen2MoeRMSNorm(sd.pop("model.norm.weight"), cfg.get("rms_norm_eps", 1e-6))
        if cfg.get("tie_word_embeddings", False):
            self.lm_head = Linear(self.embed_tokens.weight)
        else:
            self.lm_head = Linear(sd.pop("lm_head.weight"))
        if sd:
            raise ValueError("unused tensors: %s" % sorted(sd)[:5])

    def forward(self, input_ids, past_key_values, logits_all=False, routes=None):
        routes = [] if routes is None else routes
        bsz, q_len = input_ids.shape
        past = past_key_values.get_seq_length()
        position_ids = torch.arange(past, past + q_len, dtype=torch.long).unsqueeze(0)
        hidden_states = self.embed_tokens(input_ids)
        # 4-D causal mask (bsz, 1, q_len, past + q_len): min where key position > query position.
        dtype = hidden_states.dtype
        mask = torch.full((q_len, past + q_len), torch.finfo(dtype).min, dtype=dtype)
        mask = torch.triu(mask, diagonal=past + 1)[None, None, :, :].expand(bsz, 1, -1, -1)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, position_ids, past_key_values, routes)
        hidden_states = self.norm(hidden_states)
        if not logits_all:
            hidden_states = hidden_states[:, -1:, :]
        return self.lm_head(hidden_states).float()


# ---- benchmark ----------------------------------------------------------------------------------------------------
def prompt_ids(n, vocab):
    ids, x = [], 42
    for _ in range(n):
        x = (1103515245 * x + 12345) % 2147483648
        ids.append(x % vocab)
    return ids


def compare(name, ours, ref):
    ours, ref = ours.float(), torch.tensor(ref, dtype=torch.float32)
    if ours.shape != ref.shape:
        print("check %s: shape %s vs %s" % (name, tuple(ours.shape), tuple(ref.shape)), file=sys.stderr)
        return False
    max_abs = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    ok = diff <= 2e-3 * max_abs
    print("check %s: max |dlogit| %.3g, max |logit| %.3g, ratio %.2e -> %s"
          % (name, diff, max_abs, diff / max_abs, "ok" if ok else "FAIL"), file=sys.stderr)
    return ok


def full_logits(model, ids):
    cache = KVCache(len(model.layers))
    routes = []
    logits = model(torch.tensor([ids]), cache, logits_all=True, routes=routes)[0]
    return logits, routes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check-ref", help="reference JSON with input_ids and logits")
    ap.add_argument("--check-cli", help="path of the moebius executable: compare with `moebius forward --json`")
    ap.add_argument("--check-n", type=int, default=8, help="prompt ids used by --check-cli")
    ap.add_argument("--check-only", action="store_true", help="run the checks, skip timing")
    args = ap.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    t0 = time.perf_counter()
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "qwen2_moe":
        sys.exit("torch_eager_qwen2moe.py: only qwen2_moe checkpoints (got %r)" % cfg.get("model_type"))
    sd = load_state_dict(args.model)
    model = Qwen2MoeForCausalLM(cfg, sd).eval()
    del sd
    load_s = time.perf_counter() - t0
    vocab = cfg["vocab_size"]

    with torch.inference_mode():
        ok = True
        if args.check_ref:
            with open(args.check_ref) as f:
                ref = json.load(f)
            logits, routes = full_logits(model, ref["input_ids"])
            ok &= compare(os.path.basename(args.check_ref), logits, ref["logits"])
            if "topk_experts" in ref:
                same = all(
                    sorted(routes[l][t].tolist()) == ref["topk_experts"][l][t]
                    for l in range(len(routes)) for t in range(len(ref["input_ids"]))
                )
                print("check %s: top-k experts %s" % (os.path.basename(args.check_ref),
                                                       "identical" if same else "DIFFER"), file=sys.stderr)
                ok &= same
        if args.check_cli:
            ids = prompt_ids(args.check_n, vocab)
            cmd = [args.check_cli, "forward", args.model, "--ids", ",".join(map(str, ids)), "--json"]
            if args.threads > 0:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            ref = json.loads(out)
            logits, routes = full_logits(model, ids)
            ok &= compare("moebius forward (%d ids)" % len(ids), logits, ref["logits"])
            same = all(sorted(routes[l][t].tolist()) == ref["topk_experts"][l][t]
                       for l in range(len(routes)) for t in range(len(ids)))
            print("check moebius forward: top-k experts %s" % ("identical" if same else "DIFFER"), file=sys.stderr)
            ok &= same
            del ref, out
        if not ok:
            sys.exit("torch_eager_qwen2moe.py: the PyTorch forward disagrees with Moebius; not timing")
        if args.check_only:
            return

        prompt = torch.tensor([prompt_ids(args.prompt, vocab)])
        prefill_tps, decode_tps, generated = [], [], []
        for r in range(args.warmup + args.repeat):
            cache = KVCache(len(model.layers))
            t0 = time.perf_counter()
            logits = model(prompt, cache)
            prefill_s = time.perf_counter() - t0

            gen = []
            t1 = time.perf_counter()
            for _ in range(args.decode):
                tok = int(torch.argmax(logits[0, -1]))
                gen.append(tok)
                logits = model(torch.tensor([[tok]]), cache)
            decode_s = time.perf_counter() - t1
            if r < args.warmup:
                continue
            prefill_tps.append(args.prompt / prefill_s)
            if args.decode > 0:
                decode_tps.append(args.decode / decode_s)
            generated = gen

    def median(v):
        v = sorted(v)
        n = len(v)
        return 0.0 if n == 0 else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res = {
        "engine": "torch-eager",
        "torch": torch.__version__,
        "model": os.path.abspath(args.model),
        "model_type": cfg["model_type"],
        "n_layer": cfg["num_hidden_layers"],
        "threads": threads,
        "prompt_tokens": args.prompt,
        "decode_tokens": args.decode,
        "repeat": args.repeat,
        "load_s": load_s,
        "prefill_tok_s_best": max(prefill_tps),
        "prefill_tok_s_median": median(prefill_tps),
        "decode_tok_s_best": max(decode_tps) if decode_tps else 0.0,
        "decode_tok_s_median": median(decode_tps),
        "prefill_tok_s_all": prefill_tps,
        "decode_tok_s_all": decode_tps,
        "peak_rss_mib": rss,
        "first_generated_ids": generated[:8],
    }
    if args.json:
        print(json.dumps(res))
    else:
        print("model    %s (%s, %d layers)" % (args.model, cfg["model_type"], cfg["num_hidden_layers"]))
        print("threads  %d   prompt %d   decode %d   repeat %d (+%d warm-up)"
              % (threads, args.prompt, args.decode, args.repeat, args.warmup))
        print("load     %.3f s" % load_s)
        print("%-8s %14s %14s" % ("", "best tok/s", "median tok/s"))
        print("%-8s %14.2f %14.2f" % ("prefill", res["prefill_tok_s_best"], res["prefill_tok_s_median"]))
        if args.decode > 0:
            print("%-8s %14.2f %14.2f" % ("decode", res["decode_tok_s_best"], res["decode_tok_s_median"]))
        print("peak RSS %.1f MiB" % rss)


if __name__ == "__main__":
    main()
