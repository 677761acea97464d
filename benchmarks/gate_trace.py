"""Which arms the speed gate ran, prompt by prompt: ar and ouroboros interleaved as bench runs them,
one shared gate, and per prompt the tokens, the speed-up (generation seconds, as bench counts them)
and every cycle's arm, tree size, tokens emitted, seconds and whether it was a retry.

    python benchmarks/gate_trace.py spec-bench 26 trace.json [qwen|test]

It wraps AdaptiveDrafter.propose/observe with timers; the JSON keeps each prompt's cycles.
"""
import sys, time, json
from collections import Counter
from ouroboros_lite.bench import shipped_prompts, load_prompts, run_method, PROMPT_SETS
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.drafters.adaptive import AdaptiveDrafter

pset = sys.argv[1]; limit = int(sys.argv[2]); out = sys.argv[3]
pairs = sys.argv[4] if len(sys.argv) > 4 else "qwen"
log = []
orig_p, orig_o = AdaptiveDrafter.propose, AdaptiveDrafter.observe
def propose(self, history, budget):
    t = time.perf_counter(); tree = orig_p(self, history, budget)
    self._t = (t, self._pending[0], len(tree), self._retrying is not None); return tree
def observe(self, outcome):
    orig_o(self, outcome); t, arm, n, retry = self._t
    log.append((arm, n, len(outcome.tokens), round(time.perf_counter() - t, 4), retry))
AdaptiveDrafter.propose, AdaptiveDrafter.observe = propose, observe
if pairs == "qwen":
    tgt, drf = "qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"
else:
    tgt, drf = "smollm2-135m-instruct-f32", "smollm2-135m-instruct-q4_1"
prompts = load_prompts(shipped_prompts(pset), limit)
chat = PROMPT_SETS[pset][1]
rows = []
with Runtime(tgt, drf, method="ar", options=RuntimeOptions(threads=2)) as rt:
    enc = [rt.tokenize_prompt(p, chat=chat) for _, p in prompts]
    run_method(rt, enc[0], "ar", 8)
    for i, tok in enumerate(enc):
        r = {"i": i, "cat": prompts[i][0], "prompt_tokens": len(tok)}
        for m in ("ar", "ouroboros"):
            log.clear()
            g, last = run_method(rt, tok, m, 128)
            r[m] = {"tokens": len(g), "gen_s": last.generation_seconds, "prompt_s": last.prompt_seconds}
            if m == "ouroboros":
                r["cycles"] = list(log)
        r["speedup"] = (r["ouroboros"]["tokens"] / r["ouroboros"]["gen_s"]) / (r["ar"]["tokens"] / r["ar"]["gen_s"])
        arms = Counter(c[0] for c in r["cycles"] if c[0] != "plain")
        retries = sum(c[4] for c in r["cycles"])
        print(f"{i:2d} {r['cat'][:12]:12s} ptok {len(tok):4d} gen {r['ar']['tokens']:3d} ar {r['ar']['gen_s']:6.2f}s ouro {r['ouroboros']['gen_s']:6.2f}s  {r['speedup']:.2f}x  arms {dict(arms)} retries {retries}", flush=True)
        rows.append(r)
json.dump(rows, open(out, "w"))
import statistics
s = [r["speedup"] for r in rows]
print("median", statistics.median(s), "min", min(s), "agg", sum(r["ar"]["gen_s"] for r in rows)/sum(r["ouroboros"]["gen_s"] for r in rows))
