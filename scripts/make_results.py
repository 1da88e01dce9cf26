#!/usr/bin/env python3
"""Regenerates docs/RESULTS.md: every quantization method on the bundled model, measured with the CLI.

    python3 scripts/make_results.py [--moebius build/moebius] [--work /tmp/moebius-results] [--threads 2]
                                    [--only NAME,NAME] [--out docs/RESULTS.md]

For each configuration: `moebius quantize ... --json` (storage-exact and nominal bits, wall time, peak RSS), then on
the quantized checkpoint `moebius ppl` (test text, seqlen 256), `moebius tasks` (kjv-cloze, acc / acc_norm) and
`moebius routing-diff FP QMODEL` (top-k set change rate, top-1 flips, router KL on the test text). Calibration: 32
random windows of 256 tokens from the train chapters (seed 0) for GPTQ-style methods; the same token count generated
by EBSS (MoEQuant's expert-balanced self-sampling, seed 0) for AGQ + EBSS. Raw JSON goes to docs/results.json.
Nothing here is tuned to the outcome: the options are the methods' defaults.
"""
import argparse
import datetime
import fcntl
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES, SEQLEN = 32, 256

# name, quantize arguments (None: the FP model), calibration ("random" | "ebss" | None), note
CONFIGS = [
    ("FP (bf16 source, f32 compute)", None, None),
    ("RTN 4-bit g128", ["--method", "rtn", "--bits", "4"], None),
    ("RTN 3-bit g128", ["--method", "rtn", "--bits", "3"], None),
    ("RTN 2-bit g128", ["--method", "rtn", "--bits", "2"], None),
    ("GPTQ 4-bit g128", ["--method", "gptq", "--bits", "4"], "random"),
    ("GPTQ 3-bit g128", ["--method", "gptq", "--bits", "3"], "random"),
    ("GPTQ 2-bit g128", ["--method", "gptq", "--bits", "2"], "random"),
    ("AGQ + EBSS 4-bit g128", ["--method", "agq", "--bits", "4"], "ebss"),
    ("AGQ + EBSS 3-bit g128", ["--method", "agq", "--bits", "3"], "ebss"),
    ("AGQ + EBSS 2-bit g128", ["--method", "agq", "--bits", "2"], "ebss"),
    ("AGQ 3-bit g128, random windows", ["--method", "agq", "--bits", "3"], "random"),
    ("GPTQ 3-bit g128, EBSS set", ["--method", "gptq", "--bits", "3"], "ebss"),
    ("GPTVQ 2-bit (D=2)", ["--method", "gptvq", "--bits", "2", "--vq-dim", "2"], "random"),
    ("GPTVQ 3-bit (D=2)", ["--method", "gptvq", "--bits", "3", "--vq-dim", "2"], "random"),
    # GPTVQ's codebook update after the sweep (codes fixed; least-squares steps, each kept only when it helps).
    ("GPTVQ 2-bit (D=2), codebook refinement (5 steps)",
     ["--method", "gptvq", "--bits", "2", "--vq-dim", "2", "--vq-refine", "5"], "random"),
    # GPTVQ's codebook quantization: int8 centroids, one f16 scale per codebook; the default group halves (2048
    # weights at 2 bits), so the codebooks still cost 1/8 bit and there are twice as many.
    ("GPTVQ 2-bit (D=2), 8-bit codebooks", ["--method", "gptvq", "--bits", "2", "--vq-dim", "2", "--codebook-bits", "8"],
     "random"),
    ("GPTVQ 3-bit (D=2), 8-bit codebooks", ["--method", "gptvq", "--bits", "3", "--vq-dim", "2", "--codebook-bits", "8"],
     "random"),
    # KBVQ-MoE: IDRE (rank 1 at 2 bits, 2 at 3 bits: the largest that keeps within GPTVQ's storage, decided on a train
    # slice), the routed experts' residuals VQ-coded with one codebook per layer and kind shared by the experts (D = 4
    # at 2 bits, 2 at 3 bits: the automatic choice), and BCOS. Each ablation removes one component.
    ("KBVQ 2-bit (r=1, shared D=4 codebooks)", ["--method", "kbvq", "--bits", "2", "--rank", "1"], "random"),
    ("KBVQ 2-bit without IDRE", ["--method", "kbvq", "--bits", "2", "--no-idre"], "random"),
    ("KBVQ 2-bit without BCOS", ["--method", "kbvq", "--bits", "2", "--rank", "1", "--no-bcos"], "random"),
    ("KBVQ 2-bit without shared codebooks (own D=2)",
     ["--method", "kbvq", "--bits", "2", "--rank", "1", "--no-shared-codebooks"], "random"),
    # 8-bit codebooks for the per-matrix codebooks (attention, shared expert; the experts' shared ones stay f16).
    ("KBVQ 2-bit (r=1), 8-bit codebooks", ["--method", "kbvq", "--bits", "2", "--rank", "1", "--codebook-bits", "8"],
     "random"),
    ("KBVQ 3-bit (r=2, shared D=2 codebooks)", ["--method", "kbvq", "--bits", "3", "--rank", "2"], "random"),
    ("KBVQ 3-bit without IDRE", ["--method", "kbvq", "--bits", "3", "--no-idre"], "random"),
    ("KBVQ 3-bit without BCOS", ["--method", "kbvq", "--bits", "3", "--rank", "2", "--no-bcos"], "random"),
    ("KBVQ 3-bit without shared codebooks (own D=2)",
     ["--method", "kbvq", "--bits", "3", "--rank", "2", "--no-shared-codebooks"], "random"),
    ("KBVQ 3-bit (r=2), 8-bit codebooks", ["--method", "kbvq", "--bits", "3", "--rank", "2", "--codebook-bits", "8"],
     "random"),
    # MoBiE's FP-stream targets (`--fp-target`: the linears outside the routed experts fitted to the FP model's
    # outputs on the FP stream) given alike to GPTQ, GPTVQ and KBVQ.
    ("GPTQ 2-bit g128 with FP-stream targets", ["--method", "gptq", "--bits", "2", "--fp-target"], "random"),
    ("GPTVQ 2-bit (D=2) with FP-stream targets", ["--method", "gptvq", "--bits", "2", "--vq-dim", "2", "--fp-target"],
     "random"),
    ("KBVQ 2-bit (r=1) with FP-stream targets", ["--method", "kbvq", "--bits", "2", "--rank", "1", "--fp-target"],
     "random"),
    ("GPTQ 3-bit g128 with FP-stream targets", ["--method", "gptq", "--bits", "3", "--fp-target"], "random"),
    ("GPTVQ 3-bit (D=2) with FP-stream targets", ["--method", "gptvq", "--bits", "3", "--vq-dim", "2", "--fp-target"],
     "random"),
    ("KBVQ 3-bit (r=2) with FP-stream targets", ["--method", "kbvq", "--bits", "3", "--rank", "2", "--fp-target"],
     "random"),
    ("RTN 1-bit (sign, μ and α per 128 columns)", ["--method", "rtn", "--bits", "1"], None),
    ("BiLLM", ["--method", "billm"], "random"),
    ("ARB-X", ["--method", "arb-x"], "random"),
    ("ARB-RC", ["--method", "arb-rc"], "random"),
    # MoBiE's FP-stream targets on its baseline core: what they give without CEJD, GLAS and NGES.
    ("ARB-RC with FP-stream targets", ["--method", "arb-rc", "--fp-target"], "random"),
    # MoBiE: ARB-RC's binarizer core; routed experts get CEJD (rank 16, residual without salient columns), GLAS
    # and NGES; the other linears are fitted to FP-stream targets. Each ablation removes one component (the refit is
    # CEJD's coefficient update after binarization).
    ("MoBiE", ["--method", "mobie"], "random"),
    ("MoBiE without CEJD", ["--method", "mobie", "--no-cejd"], "random"),
    ("MoBiE without CEJD's refit", ["--method", "mobie", "--no-refit"], "random"),
    ("MoBiE without GLAS", ["--method", "mobie", "--no-glas"], "random"),
    ("MoBiE without NGES", ["--method", "mobie", "--no-nges"], "random"),
    ("MoBiE without FP-stream targets", ["--method", "mobie", "--no-fp-target"], "random"),
]


def run(cmd, log):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    log.write("$ " + " ".join(cmd) + f"\n# {time.time() - t0:.1f} s, exit {p.returncode}\n{p.stderr[-2000:]}\n")
    log.flush()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout)


def slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:48]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moebius", default=os.path.join(ROOT, "build", "moebius"))
    ap.add_argument("--work", default="/tmp/moebius-results")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--only", default="", help="comma-separated slugs of configurations to run (default: all)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    a = ap.parse_args()
    mb, th = a.moebius, ["--threads", a.threads]
    model = os.path.join(ROOT, "resources", "models", "tiny-qwen2moe")
    train = os.path.join(ROOT, "resources", "corpus", "train.txt")
    os.makedirs(a.work, exist_ok=True)
    log = open(os.path.join(a.work, "log.txt"), "a")
    only = set(filter(None, a.only.split(",")))
    raw_path = os.path.join(ROOT, "docs", "results.json")
    results = {}
    if only and os.path.exists(raw_path):
        with open(raw_path) as f:
            results = json.load(f).get("rows", {})

    calib = {"random": ["--calib", train, "--samples", str(SAMPLES), "--seqlen", str(SEQLEN), "--seed", "0"]}
    need_ebss = any(c == "ebss" for n, _, c in CONFIGS if not only or slug(n) in only)
    if need_ebss:
        ebss_dir = os.path.join(a.work, "ebss")
        set_file = os.path.join(ebss_dir, "calibration.jsonl")
        if not os.path.exists(set_file):
            t0 = time.time()
            run([mb, "calibrate", model, "--ebss", "--samples", str(SAMPLES), "--seqlen", str(SEQLEN), "--seed", "0",
                 "--out", ebss_dir, "--force", "--json"] + th, log)
            print(f"EBSS set: {time.time() - t0:.0f} s", file=sys.stderr)
        calib["ebss"] = ["--calib", set_file]

    for name, qargs, cal in CONFIGS:
        if only and slug(name) not in only:
            continue
        print(f"== {name}", file=sys.stderr)
        row = {"name": name}
        path = model
        if qargs is not None:
            path = os.path.join(a.work, slug(name))
            q = run([mb, "quantize", model] + qargs + calib.get(cal, []) + ["--out", path, "--force", "--json"] + th, log)
            row.update({k: q[k] for k in ("bits_per_weight", "nominal_bits", "model_bits_per_param", "bytes",
                                          "quantize_seconds", "seconds", "peak_rss_mib", "calibration_tokens")})
            row["undercalibrated_experts"] = len(q["undercalibrated_experts"])
            if "moe_output_bias" in q:  # KBVQ's BCOS: per-layer MoE output bias before / after (held-out fold)
                row["moe_output_bias"] = q["moe_output_bias"]
            row["calibration"] = cal or "none"
            d = run([mb, "routing-diff", model, path, "--json"] + th, log)
            row.update({"shift_rate": d["shift_rate"], "top1_flip_rate": d["top1_flip_rate"], "router_kl": d["router_kl"]})
        row["ppl"] = run([mb, "ppl", path, "--seqlen", str(SEQLEN), "--json"] + th, log)["ppl"]
        t = run([mb, "tasks", path, "--json"] + th, log)
        row.update({"acc": t["acc"], "acc_norm": t["acc_norm"], "tasks_n": t["n"]})
        results[slug(name)] = row
        print(json.dumps(row), file=sys.stderr)

    machine = f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})"
    # Two `--only` runs may overlap (one per method family): re-read the file under a lock and replace just the rows
    # this run measured, so neither loses the other's.
    with open(raw_path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if only and os.path.exists(raw_path):
            with open(raw_path) as f:
                fresh = json.load(f).get("rows", {})
            fresh.update({k: v for k, v in results.items() if k in only})
            results = fresh
        with open(raw_path + ".tmp", "w") as f:
            json.dump({"date": datetime.date.today().isoformat(), "machine": machine, "rows": results}, f, indent=1)
        os.replace(raw_path + ".tmp", raw_path)
    fp = results.get(slug(CONFIGS[0][0]), {}).get("ppl")

    lines = [
        "# Results on the bundled model",
        "",
        "Generated by `python3 scripts/make_results.py` (do not edit by hand; raw numbers in `docs/results.json`).",
        f"Date {datetime.date.today().isoformat()}, machine {machine}, `--threads {a.threads}`.",
        "",
        "Model: `resources/models/tiny-qwen2moe` (Qwen2-MoE layout, 4 layers, 16 experts top-4 + a shared expert,",
        "hidden 256, 19 MB bf16). Test perplexity: `resources/corpus/test.txt` (held-out chapters, 52,812 tokens),",
        "non-overlapping windows of 256. kjv-cloze: 300 four-way verse completions (chance 0.25), lm-eval-harness",
        "scoring. Routing shift: fraction of (token, layer) pairs whose top-4 expert set differs from the FP model's on",
        "the test text; top-1 flips and mean router KL likewise. Calibration: 32 × 256 tokens (random windows of the",
        "train chapters, or an EBSS self-generated set of the same size). Quantized: every linear except the routers",
        "and the shared-expert gate (embeddings, lm_head and norms stay bf16). Bits: storage-exact over the quantized",
        "linears (every byte of codes, signs, bitmaps, scales, means, zeros ÷ weights replaced) and the nominal figure",
        "the papers quote (code bits without side data; binary methods: 1 + the fraction of salient columns).",
        "",
        "| method | test ppl | × FP | kjv acc | acc_norm | routing shift | top-1 flip | router KL | bits (exact) | bits (nominal) | time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, qargs, cal in CONFIGS:
        r = results.get(slug(name))
        if not r:
            continue
        ratio = f"{r['ppl'] / fp:.4f}" if fp else "–"
        if qargs is None:
            lines.append(f"| {name} | {r['ppl']:.3f} | 1 | {r['acc']:.3f} | {r['acc_norm']:.3f} | 0 | 0 | 0 | 16 | 16 | – |")
        else:
            lines.append(
                f"| {name} | {r['ppl']:.3f} | {ratio} | {r['acc']:.3f} | {r['acc_norm']:.3f} | {r['shift_rate']:.4f} | "
                f"{r['top1_flip_rate']:.4f} | {r['router_kl']:.5f} | {r['bits_per_weight']:.3f} | "
                f"{r['nominal_bits']:.3f} | {r['quantize_seconds']:.1f} s |")
    lines += ["", "Time is the quantization itself (calibration capture + method), not loading or writing."]
    notes = os.path.join(ROOT, "docs", "RESULTS.notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += ["", f.read().rstrip()]
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, a.out)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
