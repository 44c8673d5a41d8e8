"""A long served run over the deep models, sampling the server's resident memory.

    predictd serve --models MODELS --http-addr 127.0.0.1:8000 &
    python3 benches/deep/long_run.py PID 8000 [SECONDS] [CALLERS]

MODELS is a repository holding the bench's models under their names (resnet18, resnet50,
mobilenet_v2, bert, bert_int8; `benches/deep/make_models.py` makes them into
`target/deep-models`). CALLERS threads (default 4) call KServe v2 REST for SECONDS (default
600), each call a random model at a random batch of 1, 2 or 4 (128 tokens for the encoders);
every 30 s it prints the server's VmRSS and the calls answered and failed. The standard
library only: it runs on any Python 3.
"""

import json
import random
import sys
import threading
import time
import urllib.request

MODELS = ["bert", "bert_int8", "resnet18", "resnet50", "mobilenet_v2"]
BATCHES = (1, 2, 4)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return None


def body(model, batch):
    if model.startswith("bert"):
        n = batch * 128
        ids = [(i * 7919 + 101) % 30000 for i in range(n)]
        return {
            "inputs": [
                {"name": "input_ids", "datatype": "INT64", "shape": [batch, 128], "data": ids},
                {"name": "attention_mask", "datatype": "INT64", "shape": [batch, 128], "data": [1] * n},
            ]
        }
    n = batch * 3 * 224 * 224
    pixels = [((i * 7919) % 2000) / 1000 - 1 for i in range(n)]
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [batch, 3, 224, 224], "data": pixels}]}


def main():
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 600
    callers = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    base = f"http://127.0.0.1:{port}/v2/models"
    bodies = {(m, b): json.dumps(body(m, b)).encode() for m in MODELS for b in BATCHES}
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    stop = time.time() + seconds

    def call(seed):
        pick = random.Random(seed)
        while time.time() < stop:
            model, batch = pick.choice(MODELS), pick.choice(BATCHES)
            request = urllib.request.Request(
                f"{base}/{model}/infer",
                data=bodies[(model, batch)],
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as reply:
                    reply.read()
                outcome = "ok"
            except Exception as error:  # a refused or failed call counts, and the run goes on
                print(f"{model} b{batch}: {error}", file=sys.stderr, flush=True)
                outcome = "failed"
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    start = time.time()
    print(f"t=0s rss={rss_mib(pid)} MiB", flush=True)
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(30)
        print(f"t={time.time() - start:.0f}s rss={rss_mib(pid)} MiB calls={counts}", flush=True)


if __name__ == "__main__":
    main()
