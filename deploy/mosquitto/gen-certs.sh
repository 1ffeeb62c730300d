#!/usr/bin/env bash
# Generate a test CA, a server certificate and client certificates for edge-telemetry.
#   deploy/mosquitto/gen-certs.sh OUT_DIR [DEVICE ...]
# Clients: every DEVICE given, edge-gateway-1, edge-gateway-2 and edge-operator. The CN of each
# client certificate is its MQTT identity (see mosquitto.conf). For production, keep the CA key
# offline and issue device certificates from your provisioning system instead.
set -euo pipefail
out=${1:?usage: gen-certs.sh OUT_DIR [DEVICE ...]}
shift
mkdir -p "$out"
cd "$out"
days=825

# X.509 v3 extensions: the CA may only sign certificates; the server certificate serves TLS only
# (serverAuth) and every client certificate is good for client authentication only (clientAuth),
# so a device's certificate and key cannot impersonate the broker, nor the broker's a client.
if [ ! -e ca.key ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days $days \
    -subj "/CN=edge-telemetry test CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 600 ca.key
fi

issue() {  # issue NAME serverAuth|clientAuth [SUBJECT_ALT_NAMES]
  local name=$1 usage=$2 san=${3:-}
  [ -e "$name.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
    -days $days -extfile "$name.ext" 2>/dev/null
  rm -f "$name.ext" "$name.csr"
  chmod 600 "$name.key"
}

issue server serverAuth "DNS:localhost,IP:127.0.0.1"
for client in "$@" edge-gateway-1 edge-gateway-2 edge-operator; do
  issue "$client" clientAuth
done
echo "certificates in $out: ca.crt server.crt $* edge-gateway-1 edge-gateway-2 edge-operator"
