"""Helpers shared by test files (a test file never imports another test file):

- `gateway`: real births and batches built with the agent's encoder, the gateway core's callbacks
  (`Acks`, `Receipts`), a fast retry policy, device data published over MQTT;
- `otlp_http`: a scripted OTLP/HTTP receiver (status and headers per request);
- `agent`: an agent with a command handler and keys, nothing persisted;
- `ebpf`: objects the kernel's verifier refuses;
- `firmware`: `python -m firmware build` as the tests run it;
- `prometheus`: a real Prometheus with the remote-write receiver.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
