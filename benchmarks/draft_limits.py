"""How far a draft model can take speculative decoding on this machine, and what would not help.

    python benchmarks/draft_limits.py --limit 13 -n 128                # the test pair (F32 target, Q4_1 draft)
    python benchmarks/draft_limits.py --pair qwen --limit 13 -n 128    # the reference pair (Qwen2.5-Coder 1.5B / 0.5B)

(`--pair qwen` is `--target qwen2.5-coder-1.5b-instruct-q4_k_m --draft qwen2.5-coder-0.5b-instruct-q4_k_m`;
`--target/--draft` take any catalog name or .gguf path and override the pair.)
Seven measurements on the model pair:

1. Agreement: the target's greedy outputs (`ar`) are fed to both models; at each position, does
   the draft's argmax equal the target's? Also split by the draft's top probability: if the
   draft were right mostly when confident, stopping the draft at low confidence would save
   draft steps. (With a draft that is the target quantized, it is right even when unsure.)
2. The output layer's share of one decode step, for both models: one token decoded with its
   logits and without. Trimming the draft's vocabulary (FR-Spec) can save at most that share.
3. How much of the target's text a draft head restricted to the first V token ids would cover
   (BPE ids are in merge order, roughly by frequency): the acceptance such a trim would cost.
4. The batch-cost curves of both models: ms of one forward of k tokens (a chain after the first
   prompt), the target at k = 1, 2, 4, 8, 12, 16, 24, 32 and the draft at 1, 2, 4, 8, 16; medians
   of `--repeats` repeats in which every (model, k) is measured once, in alternating order, so that
   drift hits every point alike.
5. The chain-SD ceiling from the measured agreement and step costs: the best chain length g and
   its speed-up over ar, T(1) * E(g) / (g * d + T(g + 1)) with E(g) = (1 - p^(g+1)) / (1 - p)
   tokens per target forward, for the real draft cost d and for a draft that costs nothing.
   The same ceiling for a draft head trimmed to the first V ids: the draft step loses that part of
   the output layer's share, and acceptance drops to p * (coverage of V). It assumes i.i.d.
   acceptance and no loop overhead, so it is an upper bound. Whatever beats the ceiling has to come
   from tokens the draft model does not decode.
6. The oracle ceiling: a free draft that is always right. A forward of k tokens (the root and a
   chain of k - 1 nodes, all accepted) then gives k tokens for T(k), so the best speed-up over ar
   is max over the measured k of T(1) * k / T(k): what this machine's target curve allows at all.
7. Phrase drafting on the draft (Ouroboros): the draft verifies guesses (pool phrases, a Jacobi
   window) in its own cheap batches, so one draft forward of k tokens gives E_a(k) =
   (1 - a^k) / (1 - a) draft tokens where each guess is right with probability a (i.i.d.).
   From the draft curve: the best k and the ms per draft token D(k) / E_a(k) for a few a (a = 1:
   guesses always right, D(k) / k), and the chain-SD ceiling of (5) with that cost per draft token
   in place of D(1). The guess accuracy a is not measured here; the rows say how good the guesses
   must be before phrase drafting beats plain drafting (D(1) per token) on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import llama_cpp
import numpy as np

from ouroboros_lite.backend import Context
from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.costs import CostProfile
from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.tree import TokenTree
from ouroboros_lite.verify import TreeVerifier

CONFIDENCE_BUCKETS = (0.0, 0.3, 0.5, 0.7, 0.9, 0.97, 1.01)
VOCAB_PREFIXES = (4096, 8192, 16384, 32768)
TARGET_SIZES = (1, 2, 4, 8, 12, 16, 24, 32)
DRAFT_SIZES = (1, 2, 4, 8, 16)
GUESS_ACCURACIES = (0.3, 0.5, 0.7, 0.9, 1.0)
PAIRS = {
    "test": ("smollm2-135m-instruct-f32", "smollm2-135m-instruct-q4_1"),
    "qwen": ("qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"),
}


def teacher_forced(verifier: TreeVerifier, prompt: list[int], output: list[int]):
    """The model's argmax and top probability before each token of output, given the true prefix."""
    verifier.reset()
    verifier.prefill(prompt[:-1])
    root, pos, i = prompt[-1], len(prompt) - 1, 0
    argmax, top = [], []
    while i < len(output):
        chunk = output[i:i + verifier.max_nodes + 1]  # the root predicts chunk[0], node j chunk[j + 1]
        predicted = verifier.decode(root, pos, TokenTree.chain(chunk[:-1], "draft"))
        for entry in range(len(chunk)):
            logits = verifier.logits(entry)
            argmax.append(int(predicted[entry]))
            top.append(float(1.0 / np.exp(logits - logits.max()).sum()))
        verifier.commit(len(chunk) - 2)
        root, pos, i = chunk[-1], pos + len(chunk), i + len(chunk)
    return np.array(argmax), np.array(top)


def head_share(verifier: TreeVerifier, prefix: list[int], repeats: int = 40) -> tuple[float, float]:
    """Median ms of one decoded token with its logits and without (the output layer skipped)."""
    verifier.reset()
    verifier.prefill(prefix[:-1])
    context = verifier.context
    memory = llama_cpp.llama_get_memory(context.handle)
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    times = {True: [], False: []}
    try:
        for _ in range(repeats):
            for want_logits in (True, False):
                batch.n_tokens = 1
                batch.token[0], batch.pos[0], batch.n_seq_id[0] = prefix[-1], len(prefix) - 1, 1
                batch.seq_id[0][0], batch.logits[0] = 0, want_logits
                start = time.perf_counter()
                if llama_cpp.llama_decode(context.handle, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                times[want_logits].append(time.perf_counter() - start)
                llama_cpp.llama_memory_seq_rm(memory, 0, len(prefix) - 1, -1)
    finally:
        llama_cpp.llama_batch_free(batch)
    return 1e3 * float(np.median(times[True])), 1e3 * float(np.median(times[False]))


def cost_curves(models: dict[str, tuple[TreeVerifier, tuple[int, ...]]], prefix: list[int],
                repeats: int) -> dict[str, dict[int, float]]:
    """Median ms of one forward of k tokens (the root and a chain of k - 1 nodes) after prefix, per model
    and k. Each repeat measures every (model, k) once, forwards and backwards on alternate repeats."""
    roots = {}
    for name, (verifier, _) in models.items():
        verifier.reset()
        roots[name] = verifier.prefill(prefix)
    cells = [(name, k) for name, (_, sizes) in models.items() for k in sizes]
    times: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    for repeat in range(repeats + 1):  # the first pass warms up and is not kept
        for name, k in cells if repeat % 2 else cells[::-1]:
            verifier, root = models[name][0], roots[name]
            chain = TokenTree.chain([root] * (k - 1), "draft")
            start = time.perf_counter()
            verifier.decode(root, len(prefix), chain)
            elapsed = time.perf_counter() - start
            verifier.discard()  # the KV cache is back to the prefix
            if repeat:
                times[(name, k)].append(elapsed)
    return {name: {k: 1e3 * statistics.median(times[(name, k)]) for k in sizes}
            for name, (_, sizes) in models.items()}


def oracle_ceiling(target_ms: dict[int, float]) -> tuple[int, float]:
    """(best k, speed-up over ar) when every drafted token is right and drafting is free."""
    best = max(target_ms, key=lambda k: k / target_ms[k])
    return best, target_ms[1] * best / target_ms[best]


def guess_tokens(a: float, k: int) -> float:
    """Expected tokens from one forward of k tokens whose k - 1 guesses are each right with probability a
    (i.i.d., stopping at the first wrong one): (1 - a^k) / (1 - a); also E(g) of a chain, k = g + 1."""
    return float(k) if a >= 1 else (1 - a ** k) / (1 - a)


def phrase_drafting(draft_ms: dict[int, float], a: float) -> tuple[int, float]:
    """(best draft batch k, ms per draft token) when the draft verifies guesses of accuracy a."""
    best = min(draft_ms, key=lambda k: draft_ms[k] / guess_tokens(a, k))
    return best, draft_ms[best] / guess_tokens(a, best)


def print_curve(name: str, curve: dict[int, float]) -> None:
    sizes = sorted(curve)
    print(f"   {name:6s} k      " + "".join(f"{k:>7d}" for k in sizes))
    print(f"   {'':6s} ms     " + "".join(f"{curve[k]:7.1f}" for k in sizes))
    print(f"   {'':6s} / k=1  " + "".join(f"{curve[k] / curve[1]:7.2f}" for k in sizes))


def chain_ceiling(p: float, draft_ms: float, target_ms: dict[int, float], max_length: int = 16):
    """(best chain length, speed-up over ar) for i.i.d. acceptance p."""
    cost = CostProfile(source="measured", target=target_ms).target_step
    best = max(range(1, max_length + 1), key=lambda g: guess_tokens(p, g + 1) / (g * draft_ms + cost(g + 1)))
    return best, cost(1) * guess_tokens(p, best + 1) / (best * draft_ms + cost(best + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="test",
                        help="test: SmolLM2 F32 / Q4_1 (default); qwen: Qwen2.5-Coder 1.5B / 0.5B Q4_K_M")
    parser.add_argument("--target", default=None, help="catalog name or .gguf path (overrides --pair)")
    parser.add_argument("--draft", default=None, help="catalog name or .gguf path (overrides --pair)")
    parser.add_argument("--limit", type=int, default=13)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repeats of the cost curves (9)")
    args = parser.parse_args()
    target_name, draft_name = args.target or PAIRS[args.pair][0], args.draft or PAIRS[args.pair][1]

    with Runtime(target_name, draft_name, options=RuntimeOptions(threads=args.threads)) as runtime:
        draft_context = Context(runtime.draft, n_ctx=runtime.context.n_ctx, n_batch=64, n_seq_max=1,
                                threads=args.threads)
        draft = TreeVerifier(draft_context, max_nodes=63, max_paths=1)
        target = runtime.verifier
        prompts = [runtime.tokenize_prompt(text, chat=True) for _, text in load_prompts(default_prompts(), args.limit)]
        match, confidence, outputs = [], [], []
        for prompt in prompts:
            output = [r.token for r in runtime.generate(prompt, max_tokens=args.n, method="ar") if r.token >= 0]
            target_argmax, _ = teacher_forced(target, prompt, output)
            draft_argmax, draft_top = teacher_forced(draft, prompt, output)
            match.append(target_argmax == draft_argmax)
            confidence.append(draft_top)
            outputs.extend(output)
        prefix = prompts[0]
        heads = {"target": head_share(target, prefix), "draft": head_share(draft, prefix)}
        target_sizes = tuple(k for k in TARGET_SIZES if k - 1 <= target.max_nodes)
        curves = cost_curves({"target": (target, target_sizes), "draft": (draft, DRAFT_SIZES)}, prefix, args.repeats)
        target_curve, draft_curve = curves["target"], curves["draft"]
        draft_ms = draft_curve[1]
        n_vocab = runtime.draft.n_vocab
        names = runtime.target.path.name, runtime.draft.path.name
        draft.close()
        draft_context.close()

    match, confidence = np.concatenate(match), np.concatenate(confidence)
    p = float(match.mean())
    print(f"target {names[0]}, draft {names[1]}; {len(prompts)} prompts x {args.n} tokens, {args.threads} threads")
    print(f"1. greedy agreement, teacher-forced on {len(match)} target tokens: {p:.3f}")
    print("   draft top probability  share of tokens  agreement")
    for low, high in zip(CONFIDENCE_BUCKETS, CONFIDENCE_BUCKETS[1:]):
        inside = (confidence >= low) & (confidence < high)
        if inside.any():
            print(f"   [{low:.2f}, {min(high, 1.0):.2f}){'':9s}{inside.mean():>8.1%}{match[inside].mean():>14.1%}")
    print("2. one decoded token, ms: with logits / without (output layer's share)")
    for name, (with_logits, without) in heads.items():
        print(f"   {name:6s} {with_logits:6.1f} / {without:6.1f}  ({1 - without / with_logits:.0%})")
    tokens = np.array(outputs)
    print("3. target tokens inside the first V ids: " +
          ", ".join(f"V={v}: {(tokens < v).mean():.1%}" for v in VOCAB_PREFIXES))
    print(f"4. batch-cost curves, one forward of k tokens (medians of {args.repeats} interleaved repeats); "
          f"c = D(1) / T(1) = {draft_ms / target_curve[1]:.2f}")
    print_curve("target", target_curve)
    print_curve("draft", draft_curve)
    print("5. chain-SD ceilings")
    for label, cost in (("this draft", draft_ms), ("a draft that costs nothing", 0.0)):
        length, speedup = chain_ceiling(p, cost, target_curve)
        print(f"   with {label}: {speedup:.2f}x ar (chain of {length})")
    with_logits, without = heads["draft"]
    for v in VOCAB_PREFIXES:
        trimmed_ms = draft_ms * (1 - (1 - without / with_logits) * (1 - v / n_vocab))
        length, speedup = chain_ceiling(p * (tokens < v).mean(), trimmed_ms, target_curve)
        print(f"   ... with the draft head trimmed to V={v}: step {trimmed_ms:.1f} ms, {speedup:.2f}x ar")
    k, speedup = oracle_ceiling(target_curve)
    print(f"6. oracle ceiling (free draft, always right): {speedup:.2f}x ar at k = {k} tokens per forward")
    print("   k            " + "".join(f"{j:>7d}" for j in sorted(target_curve)))
    print("   T(1) k / T(k)" + "".join(f"{target_curve[1] * j / target_curve[j]:7.2f}" for j in sorted(target_curve)))
    print(f"7. phrase drafting on the draft (guesses verified in its batches), against plain drafting at "
          f"{draft_ms:.1f} ms per draft token")
    print("   guess accuracy a  best k  draft tokens/forward  ms per draft token  chain-SD ceiling")
    for a in GUESS_ACCURACIES:
        k, per_token = phrase_drafting(draft_curve, a)
        length, speedup = chain_ceiling(p, per_token, target_curve)
        print(f"   {a:16.1f} {k:7d} {guess_tokens(a, k):21.2f} {per_token:19.1f} "
              f"{speedup:11.2f}x ar (chain of {length})")


if __name__ == "__main__":
    try:
        main()
    except OuroborosError as exc:
        sys.exit(f"error: {exc}")
