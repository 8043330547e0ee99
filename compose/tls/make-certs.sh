#!/bin/sh
# A private CA, the NATS servers' certificate and the services' client certificate (mTLS), for compose.
# Usage: compose/tls/make-certs.sh [OUT_DIR] [EXTRA_SAN ...]   (`make certs` writes compose/certs/)
# Existing files are kept: delete OUT_DIR to rotate. Keys are mode 0600 (git-ignored directory).
set -eu
out=${1:-compose/certs}
[ $# -gt 0 ] && shift
days=${CERT_DAYS:-825}
mkdir -p "$out"
umask 077
# The compose nodes' names, and loopback for the ports published on the host.
sans="DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1"
for extra in "$@"; do
  case "$extra" in *[!0-9.]*) sans="$sans,DNS:$extra" ;; *) sans="$sans,IP:$extra" ;; esac
done
if [ ! -f "$out/ca.pem" ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=swarm-ca" \
    -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
fi
issue() {  # issue NAME CN EXTENSIONS
  [ -f "$out/$1.pem" ] && return 0
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$2" -keyout "$out/$1-key.pem" -out "$out/$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$out/$1.ext"
  openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
    -days "$days" -extfile "$out/$1.ext" -out "$out/$1.pem" 2>/dev/null
  rm -f "$out/$1.csr" "$out/$1.ext"
}
issue server nats "subjectAltName=$sans
extendedKeyUsage=serverAuth"
issue client swarm-client "extendedKeyUsage=clientAuth"
# Readable by the containers' (non-root) users; the CA key is not: only this script signs.
chmod 0644 "$out"/*.pem
chmod 0600 "$out/ca-key.pem"
echo "certificates in $out: ca.pem, server.pem/server-key.pem, client.pem/client-key.pem"
