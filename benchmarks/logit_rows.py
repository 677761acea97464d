"""What a tree's logits rows cost: ms of one target forward of k tokens with logits on every row (what
tree verification needs), only on the last row (what llama-bench's pp-k and a prompt prefill compute),
and on every other row, medians of 7 interleaved repeats.

    python benchmarks/logit_rows.py [MODEL]   (default: qwen2.5-coder-1.5b-instruct-q4_k_m, 2 threads)
"""
import statistics, sys, time
import llama_cpp
from ouroboros_lite.runtime import Runtime, RuntimeOptions

name = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-coder-1.5b-instruct-q4_k_m"
sizes = (1, 2, 4, 8, 12, 16)
with Runtime(name, None, options=RuntimeOptions(threads=2)) as rt:
    v = rt.verifier
    prefix = rt.tokenize_prompt("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", chat=False)
    v.reset(); v.prefill(prefix)
    ctx = v.context.handle
    mem = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(32, 0, 1)
    modes = ("all", "last", "half")
    times = {(k, m): [] for k in sizes for m in modes}
    for rep in range(8):
        cells = [(k, m) for k in sizes for m in modes]
        for k, m in (cells if rep % 2 else cells[::-1]):
            batch.n_tokens = k
            for i in range(k):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = prefix[-1], len(prefix) + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = (m == "all") or (i == k - 1) or (m == "half" and i % 2 == 0)
            t = time.perf_counter()
            assert llama_cpp.llama_decode(ctx, batch) == 0
            dt = time.perf_counter() - t
            llama_cpp.llama_memory_seq_rm(mem, 0, len(prefix), -1)
            if rep:
                times[(k, m)].append(dt)
    one = statistics.median(times[(1, "all")])
    print(name)
    print("k      " + "".join(f"{k:>8d}" for k in sizes))
    for m in modes:
        print(f"{m:6s} " + "".join(f"{1e3*statistics.median(times[(k, m)]):8.1f}" for k in sizes))
        print(f"  /T1  " + "".join(f"{statistics.median(times[(k, m)])/one:8.2f}" for k in sizes))
