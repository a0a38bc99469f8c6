"""llama.cpp (through llama-cpp-python) on a GGUF file, in the workloads of `wedge bench --llm`:
a 128-token prompt (the same text, cycled), then 64 greedy tokens; median of N runs; peak RSS.
Prints one JSON line. Usage: llamacpp_bench.py MODEL.gguf THREADS RUNS"""
import json
import resource
import sys
import time

import numpy as np
from llama_cpp import Llama

TEXT = ("The old lighthouse keeper climbed the winding stairs every evening, counting the steps as "
        "his father had taught him, and at the top he lit the great lamp that guided the fishing boats "
        "home through fog and storm. ")

model, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512, verbose=False)
ids = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
prompt = (ids * (128 // len(ids) + 1))[:128]
pp, tg, ttft = [], [], []
for _ in range(runs):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    dt = time.perf_counter() - t
    pp.append(128 / dt)
    ttft.append(dt * 1e3)
    t = time.perf_counter()
    for _ in range(64):
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    tg.append(64 / (time.perf_counter() - t))
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({
    "engine": "llama.cpp (llama-cpp-python %s)" % __import__("llama_cpp").__version__,
    "threads": threads,
    "prompt_tok_s": med(pp),
    "ttft_ms": med(ttft),
    "decode_tok_s": med(tg),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
