"""Streaming chat load on an OpenAI-compatible server: CONCURRENCY clients, each sending
streamed chat requests back to back for DURATION seconds. Prints one JSON line: aggregate
generated tok/s, time to first token and inter-token latency (p50/p99, ms), requests, errors,
503s, and streams that ended without a token ("empty"). Standard library only (threads and http.client), so it measures any server alike.

usage: python3 chat_load.py HOST:PORT MODEL CONCURRENCY DURATION_S MAX_TOKENS
"""
import http.client
import json
import sys
import threading
import time

host, model, conc, duration, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
hostname, port = host.split(":")
questions = ["Tell me about the sea.", "Write a short poem about trees.", "Explain how rain forms.",
             "Describe a busy market.", "What makes a good friend?", "Tell me a story about a fox."]
lock = threading.Lock()
ttft, itl, tokens, done, errors, shed, empty = [], [], [0], [0], [0], [0], [0]
stop_at = time.monotonic() + duration


def one(i, n):
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7, "seed": n,
                       "messages": [{"role": "user", "content": questions[(i + n) % len(questions)]}]})
    c = http.client.HTTPConnection(hostname, int(port), timeout=120)
    t0 = time.monotonic()
    # no-cache: measure generation, not wedge's completion cache (other servers ignore it)
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", "cache-control": "no-cache"})
    r = c.getresponse()
    if r.status != 200:
        r.read()
        with lock:
            (shed if r.status == 503 else errors)[0] += 1
        return
    first, last, count, gaps = None, None, 0, []
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            with lock:
                errors[0] += 1
            return
        for ch in chunk.get("choices", []):
            if ch.get("delta", {}).get("content"):
                now = time.monotonic()
                if first is None:
                    first = now - t0
                else:
                    gaps.append(now - last)
                last = now
                count += 1
    c.close()
    with lock:
        if first is not None:
            ttft.append(first)
        itl.extend(gaps)
        tokens[0] += count
        done[0] += 1
        empty[0] += count == 0


def client(i):
    n = 0
    while time.monotonic() < stop_at:
        try:
            one(i, n)
        except Exception:  # a refused or broken connection counts as an error
            with lock:
                errors[0] += 1
        n += 1


t0 = time.monotonic()
threads = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.monotonic() - t0


def pct(v, p):
    v = sorted(v)
    return round(1e3 * v[min(len(v) - 1, int(p / 100 * len(v)))], 1) if v else None


print(json.dumps({"concurrency": conc, "tok_s": round(tokens[0] / wall, 1), "requests": done[0], "errors": errors[0],
                  "shed_503": shed[0], "empty": empty[0], "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99),
                  "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99)}))
