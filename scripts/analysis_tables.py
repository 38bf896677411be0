#!/usr/bin/env python3
"""Tables of ANALYSIS.md from the logs of the runs made by scripts/analysis.sh (runs/an_*).

Every number comes from the run folders: train.jsonl (losses, tokens/s), routing.jsonl (loads,
MaxVio, router entropy per MoE layer per step), events.jsonl (collapse), domains.jsonl
(validation-split routing per domain), time.txt (wall seconds). Standard library only.
usage: analysis_tables.py RUNS_DIR > tables.md
"""
import json, math, os, statistics, sys


def jsonl(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut off by a crash
    return rows


def maxvio(load):
    tot = sum(load)
    if tot <= 0:
        return float("nan")
    mean = tot / len(load)
    return (max(load) - mean) / mean


def summarize(run_dir):
    r = {"name": os.path.basename(run_dir)[3:]}
    train = jsonl(os.path.join(run_dir, "train.jsonl"))
    steps = [x for x in train if "loss" in x and x.get("loss") is not None]
    vals = [x for x in train if "val_loss" in x and x.get("val_loss") is not None]
    r["steps"] = steps[-1]["step"] if steps else 0
    r["val"] = vals[-1]["val_loss"] if vals else float("nan")
    tps = [x["tokens_per_s"] for x in steps if x.get("tokens_per_s")]
    r["tok_s"] = statistics.median(tps) if tps else float("nan")
    rout = jsonl(os.path.join(run_dir, "routing.jsonl"))
    if rout:
        n_layers = len(rout[0]["layers"])
        batch_vio = [statistics.mean(l["maxvio"] for l in x["layers"] if l.get("maxvio") is not None) for x in rout]
        r["maxvio_mean"] = statistics.mean(batch_vio)
        r["maxvio_max"] = max(max(l["maxvio"] for l in x["layers"] if l.get("maxvio") is not None) for x in rout)
        # global MaxVio: loads summed over all steps, per layer, then the mean over layers
        g = []
        for li in range(n_layers):
            tot = [0.0] * len(rout[0]["layers"][li]["load"])
            for x in rout:
                for e, v in enumerate(x["layers"][li]["load"]):
                    tot[e] += v
            g.append(maxvio(tot))
        r["maxvio_global"] = statistics.mean(g)
        last = rout[-min(100, len(rout)):]
        ents = [min(l["entropy"] for l in x["layers"] if l.get("entropy") is not None) for x in last]
        r["min_entropy"] = statistics.mean(ents)
        r["entropy_uniform"] = rout[0]["layers"][0].get("entropy_uniform", float("nan"))
    doms = jsonl(os.path.join(run_dir, "domains.jsonl"))
    if doms:
        d = doms[-1]
        v = []
        for layer in d["layers"]:
            load = [sum(col) for col in zip(*layer["counts"])]
            v.append(maxvio(load))
        r["maxvio_val"] = statistics.mean(v)
    ev = jsonl(os.path.join(run_dir, "events.jsonl"))
    col = [e for e in ev if e.get("type") == "collapse"]
    r["collapsed"] = ", ".join("L%d@%d(e%d)" % (e["layer"], e["step"], e["expert"]) for e in col) or "none"
    t = os.path.join(run_dir, "time.txt")
    r["time"] = int(open(t).read().strip()) if os.path.exists(t) else float("nan")
    return r


def fmt(x, nd=3):
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return ("%%.%df" % nd) % x


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "runs"
    runs = sorted(d for d in os.listdir(root) if d.startswith("an_") and os.path.isdir(os.path.join(root, d)))
    rows = [summarize(os.path.join(root, d)) for d in runs]
    rows = [r for r in rows if r["steps"] > 0]
    print("| run | steps | val loss | MaxVio batch mean | MaxVio batch max | MaxVio global | MaxVio val split "
          "| min router entropy (ln E) | collapsed | tokens/s | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        print("| %s | %d | %s | %s | %s | %s | %s | %s (%s) | %s | %s | %s |" % (
            r["name"], r["steps"], fmt(r["val"], 4), fmt(r.get("maxvio_mean")), fmt(r.get("maxvio_max")),
            fmt(r.get("maxvio_global")), fmt(r.get("maxvio_val")), fmt(r.get("min_entropy")),
            fmt(r.get("entropy_uniform")), r["collapsed"], fmt(r["tok_s"], 0), fmt(r["time"], 0)))
    # seed spread of the balancing comparison
    print()
    print("| balancing | val loss seed 1 | val loss seed 2 | spread |")
    print("| --- | ---: | ---: | ---: |")
    by = {r["name"]: r for r in rows}
    for b in ["bal_none", "bal_aux1e-2", "bal_bias_g1e-3", "bal_bias_seqaux"]:
        a, c = by.get(b), by.get(b + "_s2")
        if a and c:
            print("| %s | %s | %s | %s |" % (b[4:], fmt(a["val"], 4), fmt(c["val"], 4), fmt(abs(a["val"] - c["val"]), 4)))


if __name__ == "__main__":
    main()
