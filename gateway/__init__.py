"""gateway: the cloud side. MQTT in, strict decode, OTLP out."""

__version__ = "0.1.0"
