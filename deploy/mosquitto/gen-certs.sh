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

# X.509 v3 extensions: a CA may only sign certificates; the server certificate serves TLS only
# (serverAuth) and every client certificate is good for client authentication only (clientAuth),
# so a device's certificate and key cannot impersonate the broker, nor the broker's a client.
for ca in ca service-ca; do
  if [ ! -e $ca.key ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout $ca.key -out $ca.crt -days $days \
      -subj "/CN=edge-telemetry test $ca" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 600 $ca.key
  fi
done

ca=ca
issue() {  # issue NAME serverAuth|clientAuth [SUBJECT_ALT_NAMES], signed by $ca
  local name=$1 usage=$2 san=${3:-}
  [ -e "$name.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA $ca.crt -CAkey $ca.key -CAcreateserial -out "$name.crt" \
    -days $days -extfile "$name.ext" 2>/dev/null
  rm -f "$name.ext" "$name.csr"
  chmod 600 "$name.key"
}

issue server serverAuth "DNS:localhost,IP:127.0.0.1"
for device in "$@"; do
  issue "$device" clientAuth
done
ca=service-ca
for service in edge-gateway-1 edge-gateway-2 edge-operator; do
  issue "$service" clientAuth
done
echo "certificates in $out: ca.crt server.crt $* (fleet CA); service-ca.crt edge-gateway-1 edge-gateway-2 edge-operator (service CA)"
