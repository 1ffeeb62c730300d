"""atheris harness: the agent's command parser (CommandHandler.handle with a real Agent).

Input: byte 0 picks the form: 0 -> the rest is the MQTT payload as received; 1 -> the rest is a body
text the harness signs with the device key (so the fuzzer reaches the body checks and the
commands' argument validation); 2 -> the same body, unsigned. Byte 1 picks the topic. `handle`
must never raise and must answer a JSON ack with status ok, or error and a reason label.

    .venv/bin/python fuzz/fuzz_agent_command.py fuzz/corpus/agent_command -max_total_time=60
"""

import binascii
import json
import re
import sys

import atheris

with atheris.instrument_imports():
    import seeds

    from edge_agent import config  # noqa: F401 (instrumented for coverage)
    from edge_agent.commands import handler  # noqa: F401
    from edge_agent.sampling import sampler  # noqa: F401
    from edge_wire.command import hmac_sha256, key_bytes  # noqa: F401 (instrumented for coverage)

LABEL = re.compile(r"^[a-z][a-z_]{2,30}$")
AGENT, HANDLER = seeds.agent()
KEY = key_bytes(seeds.DEVICE_KEY)


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    form, topic, rest = data[0] % 3, seeds.TOPICS[data[1] % len(seeds.TOPICS)], data[2:]
    if form == 0:
        payload = rest
    else:
        text = rest.decode("utf-8", "replace")
        envelope = {"body": text}
        if form == 1:
            envelope["sig"] = binascii.hexlify(hmac_sha256(KEY, text.encode())).decode()
        payload = json.dumps(envelope).encode()
    HANDLER.nonces.clear()  # every input is judged on its own, not as a replay of an earlier one
    ack = json.loads(HANDLER.handle(topic, payload, AGENT))
    if ack["status"] == "error":
        if not LABEL.match(ack["reason"]):
            raise AssertionError("rejection without a proper label: %r" % (ack["reason"],))
    elif ack["status"] != "ok":
        raise AssertionError("ack status %r" % (ack["status"],))


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
