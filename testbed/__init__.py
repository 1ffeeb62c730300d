"""Real services on loopback for the tests and the benchmarks: what both start, written once.

- `testbed.mosquitto`: a mosquitto broker on a free port (`start_mosquitto`, `stop`, `free_port`, `wait_for`);
- `testbed.production_broker`: the broker as deploy/mosquitto configures it (TLS, passwords, ACLs);
- `testbed.rabbitmq`: a RabbitMQ cluster of N nodes (MQTT plugin, quorum queue);
- `testbed.otlp_receiver`: an OTLP/HTTP receiver that parses what the gateway exports.

Not installed with the project (pyproject's package list leaves it out): it runs from the checkout,
where tests/ and bench/ find it on sys.path.
"""
