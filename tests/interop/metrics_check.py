"""Checks predictd's /metrics with real Prometheus parts: an independent parser
(prometheus_client), promtool, and a Prometheus server that scrapes it and answers PromQL.

Usage: python metrics_check.py HTTP_ADDR METRICS_ADDR WORKDIR
The server serves a repository holding only `linear` (diabetes_linear). This script sends it
7 good and 3 bad requests and checks that every part counts exactly those.
Prints "ok - ..." / "not ok - ...: why" per check; exits 1 if any failed.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from triton_check import RESULTS, check

GOOD, BAD = 7, 3
TRITON_PREFIX = "nv_inference_"


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def infer(http, rows):
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, rows],
                                   "data": [0.1] * rows}]}).encode()
    req = urllib.request.Request(f"http://{http}/v2/models/linear/infer", data=body,
                                 method="POST", headers={"content-type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10).read()
        return 200
    except urllib.error.HTTPError as e:
        return e.code


def families(text):
    from prometheus_client.parser import text_string_to_metric_families
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams, family, sample_name, **labels):
    for s in fams[family].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample_name}{labels}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(prom, promql):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(get(url))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def until(what, fn, seconds=60):
    """Polls FN (an external server's answer) until it is truthy; returns it."""
    deadline = time.monotonic() + seconds
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def main(argv):
    http, metrics_addr, workdir = argv
    prom_addr = f"127.0.0.1:{free_port()}"
    config = f"{workdir}/prometheus.yml"
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: predictd\n    static_configs:\n"
                f"      - targets: ['{http}']\n")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir}/tsdb",
         f"--web.listen-address={prom_addr}"],
        stdout=open(f"{workdir}/prometheus.log", "w"), stderr=subprocess.STDOUT)
    try:
        # The counts must rise after Prometheus has a first sample, so that rate() sees them.
        def first_scrape():
            try:
                return query(prom_addr, 'up{job="predictd"} == 1')
            except OSError:
                return None
        check("prometheus: a real server scrapes predictd's /metrics",
              lambda: until("the first scrape", first_scrape))
        def send():
            statuses = [infer(http, 10) for _ in range(GOOD)] + [infer(http, 9) for _ in range(BAD)]
            assert statuses == [200] * GOOD + [400] * BAD, statuses
        check(f"REST: {GOOD} good requests answered 200, {BAD} with a wrong shape 400", send)

        page = get(f"http://{http}/metrics")
        fams = {}

        def parses():
            fams.update(families(page))
            # The parser names a counter's samples NAME_total, whatever the page says.
            assert value(fams, "nv_inference_request_success",
                         "nv_inference_request_success_total", model="linear", version="1") == GOOD
            assert value(fams, "nv_inference_request_failure",
                         "nv_inference_request_failure_total", model="linear", version="1",
                         reason="OTHER") == BAD
            assert value(fams, "predictd_request_duration_seconds",
                         "predictd_request_duration_seconds_count", model="linear") == GOOD
            inf = value(fams, "predictd_request_duration_seconds",
                        "predictd_request_duration_seconds_bucket", model="linear", le="+Inf")
            assert inf == GOOD, inf
            assert value(fams, "process_resident_memory_bytes",
                         "process_resident_memory_bytes") > 1 << 20
        check(f"prometheus_client parses /metrics: {GOOD} successes, {BAD} failures (OTHER), "
              f"{GOOD} in the duration histogram", parses)

        def same_page_on_its_own_port():
            other = families(get(f"http://{metrics_addr}/metrics"))
            assert value(other, "nv_inference_request_success",
                         "nv_inference_request_success_total", model="linear") == GOOD
        check("--metrics-addr serves the same counters", same_page_on_its_own_port)

        def promtool():
            run = subprocess.run(["promtool", "check", "metrics"], input=page, text=True,
                                 capture_output=True)
            problems = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
            # Exit 3 is lint advice; Triton's names (which its dashboards need) draw some. Any
            # other problem, or a parse error (exit 1), fails.
            assert run.returncode in (0, 3), (run.returncode, problems)
            others = [p for p in problems if not p.startswith(TRITON_PREFIX)]
            assert not others, others
        check("promtool check metrics: no problem outside Triton's fixed names", promtool)

        def counted():
            got = query(prom_addr, 'nv_inference_request_success{model="linear"}')
            return got if got and float(got[0]["value"][1]) == GOOD else None

        def promql():
            until("Prometheus to scrape the counts", counted)
            failures = query(prom_addr, 'sum(nv_inference_request_failure{model="linear"})')
            assert float(failures[0]["value"][1]) == BAD, failures
            rate = query(prom_addr, 'rate(nv_inference_request_success{model="linear"}[1m])')
            assert rate and rate[0]["metric"]["version"] == "1", rate
            assert float(rate[0]["value"][1]) > 0, rate
            p50 = query(prom_addr, "histogram_quantile(0.5, "
                        'rate(predictd_request_duration_seconds_bucket{model="linear"}[1m]))')
            assert p50 and p50[0]["metric"]["model"] == "linear", p50
            assert 0 < float(p50[0]["value"][1]) < 10, p50
        check("PromQL: counts, rate() and histogram_quantile() over the scraped series", promql)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        print("not ok - prometheus and promtool are not installed "
              "(apt-get install prometheus; .ci/run does)")
        sys.exit(1)
    sys.exit(main(sys.argv[1:]))
