#!/usr/bin/env bash
# Generate test CAs, a server certificate and client certificates for edge-telemetry.
#   deploy/mosquitto/gen-certs.sh OUT_DIR [DEVICE ...]
# The fleet CA (ca.crt) signs the server and every DEVICE given (the devices' listener, 8883); the
# service CA (service-ca.crt) signs edge-gateway-1, edge-gateway-2 and edge-operator (the services'
# listener, 8884). The CN of each client certificate is its MQTT identity (see mosquitto.conf). For
# production, keep the CA keys offline and issue device certificates from your provisioning system.
set -euo pipefail
out=${1:?usage: gen-certs.sh OUT_DIR [DEVICE ...]}
shift
mkdir -p "$out"
cd "$out"
days=825

for ca in ca service-ca; do
  if [ ! -e $ca.key ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout $ca.key -out $ca.crt -days $days \
      -subj "/CN=edge-telemetry test $ca" 2>/dev/null
  fi
done

ca=ca
issue() {  # issue NAME [SUBJECT_ALT_NAMES], signed by $ca
  local name=$1 san=${2:-}
  [ -e "$name.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  if [ -n "$san" ]; then
    printf 'subjectAltName=%s\n' "$san" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA $ca.crt -CAkey $ca.key -CAcreateserial -out "$name.crt" \
      -days $days -extfile "$name.ext" 2>/dev/null
    rm -f "$name.ext"
  else
    openssl x509 -req -in "$name.csr" -CA $ca.crt -CAkey $ca.key -CAcreateserial -out "$name.crt" \
      -days $days 2>/dev/null
  fi
  rm -f "$name.csr"
  chmod 600 "$name.key"
}

issue server "DNS:localhost,IP:127.0.0.1"
for device in "$@"; do
  issue "$device"
done
ca=service-ca
for service in edge-gateway-1 edge-gateway-2 edge-operator; do
  issue "$service"
done
echo "certificates in $out: ca.crt server.crt $* (fleet CA); service-ca.crt edge-gateway-1 edge-gateway-2 edge-operator (service CA)"
