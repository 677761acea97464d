"""Whether smaller target trees pay on this machine: ar and ouroboros at several `max_target_nodes`,
prompt by prompt (one runtime per setting, each with its own speed gate; ar runs on the first), then
each setting's median, min, max and aggregate speed-up over ar.

    python benchmarks/tree_size.py humaneval-even 12 out.json 8,6,3 [--curve]

On a 2-core EPYC the target's batch curve has a cliff: 7 tokens cost 4.2 one-token steps, 8 cost
7.1 (`--curve` prints it, k = 1..9, 12, 16, 7 interleaved repeats), so trees of 6 nodes or fewer
sit on its cheap side. A "*" marks a text that differs from ar's (bench's tie check tells ties).
"""
import sys, statistics, json
from ouroboros_lite.bench import shipped_prompts, load_prompts, run_method, PROMPT_SETS
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.drafters.ouroboros import OuroborosParams
args = [a for a in sys.argv[1:] if a != "--curve"]
if len(args) != 4 or args[0] not in PROMPT_SETS or not args[1].isdigit() \
        or not all(n.isdigit() and int(n) > 0 for n in args[3].split(",")):
    sys.exit(f"usage: python benchmarks/tree_size.py {{{','.join(PROMPT_SETS)}}} LIMIT OUT.json N1,N2,... [--curve]")
pset, limit, out = args[0], int(args[1]), args[2]
tgt, drf = "qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"
if "--curve" in sys.argv:
    from ouroboros_lite.costs import measure_points
    from ouroboros_lite.tune import MEASURE_PROMPT
    with Runtime(tgt, None, method="ar", options=RuntimeOptions(threads=2)) as rt:
        points = measure_points(rt.verifier, rt.tokenize_prompt(MEASURE_PROMPT, chat=True),
                                sizes=(*range(1, 10), 12, 16), repeats=7)
    for k, p in points.items():
        print(f"target k={k:2d} {p.median * 1e3:7.1f} ms {p.median / points[1].median:5.2f} steps, spread {p.spread:.0%}")
settings = [int(x) for x in args[3].split(",")]
prompts = load_prompts(shipped_prompts(pset), limit); chat = PROMPT_SETS[pset][1]
rts = {n: Runtime(tgt, drf, method="ar", options=RuntimeOptions(threads=2, ouroboros=OuroborosParams(max_target_nodes=n))) for n in settings}
base = rts[settings[0]]
enc = [base.tokenize_prompt(p, chat=chat) for _, p in prompts]
for rt in rts.values(): run_method(rt, enc[0], "ar", 8)
rows = []
for i, tok in enumerate(enc):
    g0, l0 = run_method(base, tok, "ar", 128)
    ar = len(g0) / l0.generation_seconds
    row = {"i": i, "cat": prompts[i][0], "ar": ar, "tokens": len(g0)}
    for n in settings:
        g, l = run_method(rts[n], tok, "ouroboros", 128)
        row[n] = (len(g) / l.generation_seconds) / ar
        row[f"same{n}"] = g == g0
        row[f"fwd{n}"] = len(g) / max(1, l.spec.target_forwards)
    rows.append(row)
    print(i, row["cat"][:10], len(tok), len(g0), f"ar {ar:.2f}", " ".join(f"n{n} {row[n]:.2f}x{'' if row[f'same{n}'] else '*'}" for n in settings), flush=True)
json.dump(rows, open(out, "w"))
for n in settings:
    v = [r[n] for r in rows]
    agg = sum(r["tokens"] / r["ar"] for r in rows) / sum(r["tokens"] / (r["ar"] * r[n]) for r in rows)
    print(f"n{n}: median {statistics.median(v):.3f} min {min(v):.2f} max {max(v):.2f} agg {agg:.3f}")
