"""A real Prometheus (Debian's 2.42) for tests, on a free loopback port, with the remote-write receiver.

`start_prometheus(tmp_path, scrape=[...], rules=None) -> Prometheus` returns once it answers
/-/ready; `.write_url`, `.query(expr)` (the instant-query API, raising on a PromQL error) and
`.stop()`. Storage in tmp_path; the out-of-order window of deploy/prometheus/prometheus.yml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from testbed.mosquitto import free_port, stop

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


class PromQLError(Exception):
    pass


class Prometheus:
    def __init__(self, proc: subprocess.Popen, port: int, log: str) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = "http://127.0.0.1:%d" % port
        self.write_url = self.url + "/api/v1/write"

    def api(self, path: str, **params: str) -> dict:
        url = "%s/api/v1/%s?%s" % (self.url, path, urllib.parse.urlencode(params))
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.load(answer)["data"]
        except urllib.error.HTTPError as exc:
            raise PromQLError("%s: %s" % (params, exc.read().decode()[:300])) from None

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = "%.3f" % at
        return self.api("query", **params)["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop(self.proc, 10)


def start_prometheus(tmp_path, scrape: list[str] = (), rules: str | None = None) -> Prometheus:
    port = free_port()
    data = os.path.join(str(tmp_path), "prometheus-%d" % port)
    os.makedirs(data, exist_ok=True)
    lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s",
             "storage:", "  tsdb:", "    out_of_order_time_window: 2h"]
    if rules:
        lines += ["rule_files:", "  - %s" % rules]
    if scrape:
        lines += ["scrape_configs:", "  - job_name: edge-gateway", "    static_configs:",
                  "      - targets: [%s]" % ", ".join(scrape)]
    config = os.path.join(data, "prometheus.yml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    log = os.path.join(str(tmp_path), "prometheus-%d.log" % port)
    with open(log, "ab") as out:
        proc = subprocess.Popen([PROMETHEUS, "--config.file=" + config, "--storage.tsdb.path=" + data,
                                 "--web.listen-address=127.0.0.1:%d" % port, "--web.enable-remote-write-receiver"],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("prometheus exited with %s, see %s" % (proc.returncode, log))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % port, timeout=1) as answer:
                if answer.status == 200:
                    return Prometheus(proc, port, log)
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("prometheus did not start on port %d, see %s" % (port, log))
