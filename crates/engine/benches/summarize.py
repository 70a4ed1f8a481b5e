#!/usr/bin/env python3
"""Summarizes criterion's results (target/criterion) as the tables of BENCHMARKS.md.

Usage: python3 crates/engine/benches/summarize.py [TARGET_DIR ...]

With several directories (several runs, e.g. with CRITERION_HOME=DIR/criterion), each
benchmark is taken from the run where its fastest sample was; then a last table gives, for the
keyed groups, the ratio tollgate/governor of criterion's medians within each run (both sides
measured in the same process, minutes apart at most) and the median of those ratios.

For every benchmark it prints two figures per decision (or per request):
- `best`: the fastest of criterion's samples (time / iterations). On a shared machine other
  processes only ever add time, so this is the figure least disturbed by them; ratios use it.
- `median`: criterion's median estimate, for comparison.
"""

import json
import statistics
import sys
from pathlib import Path


def load(root):
    results = {}
    for bench in root.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        sample = json.loads((bench.parent / "sample.json").read_text())
        per_iter = [t / n for t, n in zip(sample["times"], sample["iters"])]
        estimates = json.loads((bench.parent / "estimates.json").read_text())
        results[meta["full_id"]] = {
            "best": min(per_iter),
            "median": estimates["median"]["point_estimate"],
            "spread": statistics.pstdev(per_iter) / statistics.mean(per_iter),
        }
    return results


def ns(x):
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def row(cells):
    print("| " + " | ".join(cells) + " |")


def versus(results, group, cases, ours, theirs, title):
    print(f"\n### {title}\n")
    row(["case", f"{ours} best ns", f"{theirs} best ns", f"ratio {ours}/{theirs}",
         f"{ours} median", f"{theirs} median"])
    row(["---"] * 6)
    for case in cases:
        a = results.get(f"{group}/{ours}/{case}")
        b = results.get(f"{group}/{theirs}/{case}")
        if not a or not b:
            continue
        row([case, ns(a["best"]), ns(b["best"]), f"{a['best'] / b['best']:.2f}",
             ns(a["median"]), ns(b["median"])])


def main():
    # Several target directories (several runs): each benchmark's figures come from the run
    # with its fastest sample.
    results = {}
    runs = []
    for target in [Path(t) for t in sys.argv[1:]] or [Path("target")]:
        run = load(target / "criterion")
        if not run:
            sys.exit(f"no criterion results under {target}/criterion")
        runs.append(run)
        for k, v in run.items():
            if k not in results or v["best"] < results[k]["best"]:
                results[k] = v

    versus(results, "gcra_core", ["allow", "deny"], "tollgate", "governor",
           "gcra, one key, pure decision: RateLimit::decide vs governor direct check()")
    versus(results, "gcra_core", ["allow", "deny"], "tollgate_in_place", "governor",
           "gcra, one key, pure decision: Gcra::decide_in_place vs governor direct check()")

    print("\n### gcra, one key, through the engine (vs governor keyed, one key)\n")
    row(["case", "tollgate static", "tollgate dynamic", "governor keyed",
         "ratio static/governor", "ratio dynamic/governor"])
    row(["---"] * 6)
    for case in ["allow", "deny"]:
        s = results.get(f"gcra_engine/tollgate_static/{case}")
        d = results.get(f"gcra_engine/tollgate_dynamic/{case}")
        g = results.get(f"gcra_engine/governor_keyed/{case}")
        if s and d and g:
            row([case, ns(s["best"]), ns(d["best"]), ns(g["best"]),
                 f"{s['best'] / g['best']:.2f}", f"{d['best'] / g['best']:.2f}"])

    cases = [f"{r}/{d}/{t}t" for r in ["allow_idle", "allow_live", "deny"]
             for d in ["uniform", "zipf"] for t in [1, 2]]
    for group, title in [("gcra_keyed_10k", "10 k keys"), ("gcra_keyed_1m", "1 M keys")]:
        versus(results, group, cases, "tollgate", "governor",
               f"gcra, {title} (tollgate dynamic keys vs governor keyed DashMap); "
               "wall time per decision")

    for group, title in [("algorithms_core", "pure core"), ("algorithms_engine", "engine")]:
        print(f"\n### Algorithms, one key, {title}, as a ratio to gcra\n")
        row(["algorithm", "allow best ns", "allow / gcra", "deny best ns", "deny / gcra"])
        row(["---"] * 5)
        base = {p: results.get(f"{group}/gcra/{p}") for p in ["allow", "deny"]}
        for algo in ["gcra", "token_bucket", "fixed_window", "sliding_window"]:
            cells = [algo]
            for p in ["allow", "deny"]:
                r = results.get(f"{group}/{algo}/{p}")
                if r and base[p]:
                    cells += [ns(r["best"]), f"{r['best'] / base[p]['best']:.2f}"]
                else:
                    cells += ["", ""]
            row(cells)

    print("\n### Atomic acquire of several keys (engine, declared gcra keys, all admitted)\n")
    row(["keys", "best ns / request", "best ns / key", "median ns / request"])
    row(["---"] * 4)
    for n in [1, 3, 10]:
        r = results.get(f"acquire_keys/{n}")
        if r:
            row([str(n), ns(r["best"]), ns(r["best"] / n), ns(r["median"])])

    if len(runs) > 1:
        same_run_ratios(runs, cases)

    noisy = sorted((v["spread"], k) for k, v in results.items() if v["spread"] > 0.25)
    if noisy:
        print("\nNoisy (sample spread > 25 %): " + ", ".join(k for _, k in noisy))


def same_run_ratios(runs, cases):
    """Per run, tollgate's median over governor's median; then the median of those ratios."""
    for group, title in [("gcra_keyed_10k", "10 k keys"), ("gcra_keyed_1m", "1 M keys")]:
        print(f"\n### gcra, {title}: ratio of medians tollgate/governor within each run\n")
        row(["case"] + [f"run {i + 1}" for i in range(len(runs))] + ["median of runs"])
        row(["---"] * (len(runs) + 2))
        for case in cases:
            ratios = []
            for run in runs:
                a = run.get(f"{group}/tollgate/{case}")
                b = run.get(f"{group}/governor/{case}")
                ratios.append(a["median"] / b["median"] if a and b else None)
            known = [r for r in ratios if r is not None]
            if not known:
                continue
            row([case] + [f"{r:.2f}" if r is not None else "" for r in ratios]
                + [f"**{statistics.median(known):.2f}**"])


if __name__ == "__main__":
    main()
