"""What /healthz and /readyz answer (gateway/ops/http.py serves them).

- `/readyz`: 200 while the gateway can do its work now: both broker connections up and the export
  pipeline running; 503 otherwise (take it out of rotation, alert).
- `/healthz`: 200 unless the gateway needs a restart or a person: the pipeline's threads died, or the
  broker has been unreachable for more than `--unhealthy-after` seconds (default 60; a short
  outage is retried, logged, and is not a reason to restart). 503 with `problem` saying which.

Both answer JSON: status, mqtt_connected, mqtt_unreachable_s, the last connection error, and the
pipeline's figures.
"""

from __future__ import annotations

from collections.abc import Callable


class Checks:
    def __init__(self, pipeline, intake, unhealthy_after_s: float, figures: Callable[[], dict]) -> None:
        self.pipeline = pipeline
        self.intake = intake
        self.unhealthy_after_s = unhealthy_after_s
        self.figures = figures

    def details(self) -> dict:
        out = {"mqtt_connected": self.intake.connected, "mqtt_unreachable_s": round(self.intake.unreachable_s(), 1)}
        error = self.intake.last_error()
        if error and not self.intake.connected:
            out["mqtt_error"] = error
        out.update(self.figures())
        return out

    def health(self) -> tuple[bool, dict]:
        details = self.details()
        if not self.pipeline.healthy():
            details["problem"] = "the export pipeline stopped"
        elif details["mqtt_unreachable_s"] > self.unhealthy_after_s:
            details["problem"] = "the broker has been unreachable for %.0f s (limit %g s)" % (
                details["mqtt_unreachable_s"], self.unhealthy_after_s)
        return "problem" not in details, details

    def ready(self) -> tuple[bool, dict]:
        details = self.details()
        if not self.pipeline.healthy():
            details["problem"] = "the export pipeline stopped"
        elif not details["mqtt_connected"]:
            details["problem"] = "not connected to the broker"
        return "problem" not in details, details
