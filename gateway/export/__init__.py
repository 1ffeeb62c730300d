"""Stage 4, export: the bounded queue to the exporter threads (pipeline), the exporters and their
retries (exporter), Prometheus remote write (promwrite), several backends as one (fanout), and which
ones `edge-gateway run` uses (configure)."""
