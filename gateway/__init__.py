"""gateway: the cloud side. MQTT in, strict decode, OTLP out."""
