"""What the gateway's subcommands share on the command line: the help format, the broker flags and
the connection they describe, and the one-line failure. Imported by gateway/cli.py (`run`) and the
operator's subcommands in gateway/ops, which therefore never import the CLI module itself."""

from __future__ import annotations

import argparse
import os
import sys

from edge_wire.paho import readable_secret, tls_context, url_credentials
from gateway.ingest.mqtt import BrokerConfig, parse_broker

PASSWORD_ENV = "EDGE_GATEWAY_MQTT_PASSWORD"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default (when it has one worth showing and its text does not say it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS, [], "")
                or not action.option_strings or isinstance(action, argparse._VersionAction)):
            return text
        return text + " (default: %(default)s)"


def fail(command: str, problem: object, code: int = 2) -> int:
    """A command-line tool's failure: one line naming what is wrong, and its exit status."""
    print("%s: %s" % (command, problem), file=sys.stderr)
    return code


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """The MQTT connection flags, shared by every subcommand that talks to the broker."""
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default="mqtt://localhost:1883", help="mqtt://host:port or mqtts://host:port")
    group.add_argument("--topic-prefix", default="edge", help="topic prefix")
    group.add_argument("--client-id", help="MQTT client id (default: one of our own, unique per process; "
                       "`run` keeps it in --state-dir)")
    group.add_argument("--ca", metavar="FILE", help="CA certificate file (enables TLS)")
    group.add_argument("--cert", metavar="FILE", help="client certificate file")
    group.add_argument("--key", metavar="FILE", help="client private key file")
    group.add_argument("--username", help="MQTT user name")
    group.add_argument("--password", help="MQTT password (visible to other users in ps: prefer --password-file "
                       "or $%s)" % PASSWORD_ENV)
    group.add_argument("--password-file", metavar="FILE", help="read the MQTT password from FILE's first line")


def broker_config(args: argparse.Namespace, client_id: str) -> BrokerConfig:
    """The connection the flags describe; ValueError naming the flag (and file) that cannot be used."""
    host, port, tls = parse_broker(args.broker)
    user, url_password = url_credentials(args.broker)
    password = readable_secret(args.password or os.environ.get(PASSWORD_ENV), args.password_file, "--password-file")
    context = None
    if tls or args.ca or args.cert:
        context = tls_context(args.ca, args.cert, args.key)
    return BrokerConfig(host=host, port=port, tls=tls, ca=args.ca, cert=args.cert, key=args.key,
                        username=args.username if args.username is not None else user,
                        password=password if password is not None else url_password,
                        client_id=args.client_id or client_id, tls_context=context)


def broker_url(config: BrokerConfig) -> str:
    """The broker as a URL fit for a log line: scheme, host and port (never credentials)."""
    return "%s://%s:%d" % ("mqtts" if config.tls else "mqtt", config.host, config.port)
