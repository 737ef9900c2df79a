#!/usr/bin/env bash
# Secrets for the secured Compose stack (secured.yml): a throwaway CA, Kafka's certificate for
# the host names `kafka` and `localhost` in a PKCS12 keystore, the SASL password, and an env
# file with the passwords Compose interpolates. Run once; nothing of it belongs in git.
#   deploy/compose/make-secrets.sh [DIR]      (default: deploy/compose/secrets)
set -euo pipefail
DIR="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets}"
command -v openssl >/dev/null || { echo "make-secrets: openssl not found" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"
[ ! -f ca.pem ] || { echo "make-secrets: $DIR already holds secrets (delete it to renew)" >&2; exit 1; }
rand() { head -c 18 /dev/urandom | base64 | tr -d '/+=\n'; }
{
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 365 \
    -subj "/CN=streamwise-compose-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -newkey rsa:2048 -nodes -keyout kafka-key.pem -out kafka.csr -subj "/CN=kafka"
  printf 'subjectAltName=DNS:kafka,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >kafka.ext
  openssl x509 -req -in kafka.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out kafka.pem \
    -days 365 -extfile kafka.ext
  rand >keystore-password
  openssl pkcs12 -export -in kafka.pem -inkey kafka-key.pem -certfile ca.pem -name kafka \
    -out kafka.p12 -passout file:keystore-password
} >make-secrets.log 2>&1 || { tail -n 20 make-secrets.log >&2; exit 1; }
rand >sasl-password
rm -f kafka.csr kafka.ext ca.srl
printf 'KAFKA_KEYSTORE_PASSWORD=%s\nSTREAMWISE_SASL_PASSWORD=%s\n' \
  "$(cat keystore-password)" "$(cat sasl-password)" >secrets.env
# The containers run as other users (Kafka 1000, the worker 10001) and read these as bind
# mounts: readable, in a folder only you can list.
chmod 700 "$DIR"
chmod 600 ca-key.pem kafka-key.pem secrets.env keystore-password make-secrets.log
chmod 644 ca.pem kafka.pem kafka.p12 sasl-password
echo "$DIR"
