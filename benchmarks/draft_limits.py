"""How far a draft model can take speculative decoding on this machine, and what would not help.

    python benchmarks/draft_limits.py --limit 13 -n 128

Four measurements on the model pair (by default the test pair: F32 target, Q4_1 draft):

1. Agreement: the target's greedy outputs (`ar`) are fed to both models; at each position, does
   the draft's argmax equal the target's? Also split by the draft's top probability: if the
   draft were right mostly when confident, stopping the draft at low confidence would save
   draft steps. (With a draft that is the target quantized, it is right even when unsure.)
2. The output layer's share of one decode step, for both models: one token decoded with its
   logits and without. Trimming the draft's vocabulary (FR-Spec) can save at most that share.
3. How much of the target's text a draft head restricted to the first V token ids would cover
   (BPE ids are in merge order, roughly by frequency): the acceptance such a trim would cost.
4. The chain-SD ceiling from the measured agreement and step costs: the best chain length g and
   its speed-up over ar, T(1) * E(g) / (g * d + T(g + 1)) with E(g) = (1 - p^(g+1)) / (1 - p)
   tokens per target forward, for the real draft cost d and for a draft that costs nothing.
   The same ceiling for a draft head trimmed to the first V ids: the draft step loses that part of
   the output layer's share, and acceptance drops to p * (coverage of V). It assumes i.i.d.
   acceptance and no loop overhead, so it is an upper bound. Whatever beats the ceiling has to come
   from tokens the draft model does not decode.
"""

from __future__ import annotations

import argparse
import sys
import time

import llama_cpp
import numpy as np

from ouroboros_lite.backend import Context
from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.costs import CostProfile, measure_curve
from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.tree import TokenTree
from ouroboros_lite.verify import TreeVerifier

CONFIDENCE_BUCKETS = (0.0, 0.3, 0.5, 0.7, 0.9, 0.97, 1.01)
VOCAB_PREFIXES = (4096, 8192, 16384, 32768)


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


def chain_ceiling(p: float, draft_ms: float, target_ms: dict[int, float], max_length: int = 16):
    """(best chain length, speed-up over ar) for i.i.d. acceptance p."""
    cost = CostProfile(source="measured", target=target_ms).target_step
    best = max(range(1, max_length + 1),
               key=lambda g: (1 - p ** (g + 1)) / (1 - p) / (g * draft_ms + cost(g + 1)))
    tokens = (1 - p ** (best + 1)) / (1 - p)
    return best, cost(1) * tokens / (best * draft_ms + cost(best + 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="smollm2-135m-instruct-f32")
    parser.add_argument("--draft", default="smollm2-135m-instruct-q4_1")
    parser.add_argument("--limit", type=int, default=13)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()

    with Runtime(args.target, args.draft, options=RuntimeOptions(threads=args.threads)) as runtime:
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
        curve = measure_curve(target, prefix, sizes=(1, 2, 4, 8, 12, 16), repeats=9)
        target_curve = {k: 1e3 * seconds for k, seconds in curve.items()}
        draft_ms = 1e3 * measure_curve(draft, prefix, sizes=(1,), repeats=15)[1]
        n_vocab = runtime.draft.n_vocab
        draft.close()
        draft_context.close()

    match, confidence = np.concatenate(match), np.concatenate(confidence)
    p = float(match.mean())
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
    print(f"4. step costs: draft {draft_ms:.1f} ms; target " +
          ", ".join(f"{k}: {t:.1f}" for k, t in sorted(target_curve.items())) + " ms per batch of k")
    for label, cost in (("this draft", draft_ms), ("a draft that costs nothing", 0.0)):
        length, speedup = chain_ceiling(p, cost, target_curve)
        print(f"   chain-SD ceiling with {label}: {speedup:.2f}x ar (chain of {length})")
    with_logits, without = heads["draft"]
    for v in VOCAB_PREFIXES:
        trimmed_ms = draft_ms * (1 - (1 - without / with_logits) * (1 - v / n_vocab))
        length, speedup = chain_ceiling(p * (tokens < v).mean(), trimmed_ms, target_curve)
        print(f"   ... with the draft head trimmed to V={v}: step {trimmed_ms:.1f} ms, {speedup:.2f}x ar")


if __name__ == "__main__":
    try:
        main()
    except OuroborosError as exc:
        sys.exit(f"error: {exc}")
