#!/bin/sh
# Users and permissions on a RabbitMQ cluster for edge-telemetry (run once, on any node).
# The ACL of deploy/mosquitto/acl, in RabbitMQ's terms: routing keys are the MQTT topics with "."
# for "/" (edge/pi-0001/data is edge.pi-0001.data on amq.topic).
#
#   GATEWAY_PASSWORD=... ./users.sh gateway edge-gateway-1
#   ./users.sh device pi-0001            # a device that logs in with its certificate (CN = pi-0001)
set -eu
kind=$1 name=$2
case "$kind" in
gateway)
  rabbitmqctl add_user "$name" "${GATEWAY_PASSWORD:?set GATEWAY_PASSWORD}"
  # its queues (edge.data, edge.meta.<client id>), reading them, publishing receipts to amq.topic
  rabbitmqctl set_permissions -p / "$name" '^edge\.(data|meta\..*)$' '^(amq\.topic|edge\..*)$' '^(amq\.topic|edge\..*)$'
  # the only topics a gateway writes are receipts; it reads every device's output and other receipts
  rabbitmqctl set_topic_permissions -p / "$name" amq.topic '^edge\.[^.]+\.delivery$' '^edge\..*$'
  ;;
device)
  # certificate login: the user exists without a password; the MQTT plugin's own queue per connection
  rabbitmqctl add_user "$name" "$(head -c 24 /dev/urandom | base64)"
  rabbitmqctl clear_password "$name"
  rabbitmqctl set_permissions -p / "$name" '^mqtt-subscription-.*$' '^(amq\.topic|mqtt-subscription-.*)$' '^(amq\.topic|mqtt-subscription-.*)$'
  # writes its own birth, data, state and command acks; reads its commands, receipts and the fleet's
  # commands. Never a receipt: it would make the device forget data.
  rabbitmqctl set_topic_permissions -p / "$name" amq.topic \
    "^edge\\.$name\\.(birth|data|state|ack)\$" "^edge\\.($name\\.(cmd|delivery)|_fleet\\.cmd)\$"
  ;;
*)
  echo "usage: $0 gateway|device NAME" >&2
  exit 2
  ;;
esac
