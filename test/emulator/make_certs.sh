#!/bin/sh
# Create throwaway TLS material for the KMS emulator tests.
#
#   make_certs.sh OUTDIR
#
# Produces in OUTDIR (all PEM, keys unencrypted, never use outside tests):
#   ca.pem / ca.key                  trusted test CA
#   server.pem / server.key          SAN IP:127.0.0.1, DNS:localhost, signed by ca
#   expired.pem / expired.key        same SANs, signed by ca, validity 2020-01-01..2020-01-02
#   wronghost.pem / wronghost.key    SAN DNS:wrong.example.com only, signed by ca
#   untrusted-ca.pem / untrusted-ca.key   a second CA nobody trusts
#   untrusted.pem / untrusted.key    SAN IP:127.0.0.1, DNS:localhost, signed by untrusted-ca
#   selfsigned.pem / selfsigned.key  self-signed leaf, SAN IP:127.0.0.1, DNS:localhost
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
umask 077

GOOD_SAN="subjectAltName=IP:127.0.0.1,DNS:localhost"
LEAF_EXT="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer"

newkey() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }

make_ca() { # name cn
    newkey "$OUT/$1.key"
    openssl req -x509 -new -key "$OUT/$1.key" -sha256 -days 3650 -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$OUT/$1.pem"
}

make_leaf() { # name cn san ca [startdate enddate]
    name=$1 cn=$2 san=$3 ca=$4
    newkey "$OUT/$name.key"
    openssl req -new -key "$OUT/$name.key" -subj "/CN=$cn" -out "$WORK/$name.csr"
    printf '%s\n%s\n' "$LEAF_EXT" "$san" > "$WORK/$name.ext"
    if [ $# -ge 6 ]; then
        # openssl x509 cannot back-date, use a minimal 'openssl ca' setup.
        mkdir -p "$WORK/ca-$name/new"
        : > "$WORK/ca-$name/index.txt"
        echo 1000 > "$WORK/ca-$name/serial"
        cat > "$WORK/ca-$name/ca.cnf" <<CNF
[ ca ]
default_ca = tca
[ tca ]
dir = $WORK/ca-$name
database = \$dir/index.txt
new_certs_dir = \$dir/new
serial = \$dir/serial
default_md = sha256
policy = pol
unique_subject = no
copy_extensions = none
[ pol ]
commonName = supplied
[ ext ]
$LEAF_EXT
$san
CNF
        openssl ca -batch -notext -config "$WORK/ca-$name/ca.cnf" -extensions ext \
            -cert "$OUT/$ca.pem" -keyfile "$OUT/$ca.key" \
            -startdate "$5" -enddate "$6" \
            -in "$WORK/$name.csr" -out "$OUT/$name.pem" 2>/dev/null
    else
        openssl x509 -req -in "$WORK/$name.csr" -CA "$OUT/$ca.pem" -CAkey "$OUT/$ca.key" \
            -CAcreateserial -CAserial "$WORK/$ca.srl" -sha256 -days 825 \
            -extfile "$WORK/$name.ext" -out "$OUT/$name.pem" 2>/dev/null
    fi
}

make_ca ca "kms_pg test CA"
make_ca untrusted-ca "kms_pg UNTRUSTED test CA"
make_leaf server localhost "$GOOD_SAN" ca
make_leaf expired localhost "$GOOD_SAN" ca 20200101000000Z 20200102000000Z
make_leaf wronghost wrong.example.com "subjectAltName=DNS:wrong.example.com" ca
make_leaf untrusted localhost "$GOOD_SAN" untrusted-ca

newkey "$OUT/selfsigned.key"
openssl req -x509 -new -key "$OUT/selfsigned.key" -sha256 -days 825 -subj "/CN=localhost" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "$GOOD_SAN" \
    -addext "extendedKeyUsage=serverAuth" \
    -out "$OUT/selfsigned.pem"

chmod 600 "$OUT"/*.key
chmod 644 "$OUT"/*.pem
echo "certificates written to $OUT" >&2
