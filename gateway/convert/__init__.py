"""Stage 3, convert: resolved batches -> OTLP (otlpwire writes the bytes, otlp is the reference built
with opentelemetry-proto), one metric convention (conventions), device events as OTLP logs (events),
the Prometheus remote-write messages (prompb)."""
