"""Stage 1, ingest: messages in from the broker (MQTT, or AMQP from a RabbitMQ cluster), handed to
the `Gateway` core (gateway/app.py), acknowledged when it says so."""
