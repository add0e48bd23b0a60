#!/usr/bin/env bash
# Regenerates the TEST-ONLY PKI of the Portico "article" example (see README.md in this folder).
# These keys are published in the repository: never use them for anything but tests.
#
#   examples/article/tls/make.sh            # regenerate tls/*, then refresh the two manifests that embed PEM
#   TLS_ONLY=1 examples/article/tls/make.sh # regenerate tls/* only
#
# Every key is ECDSA P-256 in PKCS#8 PEM; every certificate is valid for 3650 days from now and gets a
# random 128-bit serial. The commands are the same on every run; the keys, serials and signatures are
# fresh random values each time, so the output is equivalent, not byte-identical.
#
# Hierarchy (mirrors the team's: offline root -> subordinate "TanzuSub01" -> leaves):
#   root-ca      "Portico Example Root CA"             self-signed, CA:TRUE, keyCertSign+cRLSign
#   sub-ca       "Portico Example Sub CA TanzuSub01"   signed by root-ca, CA:TRUE pathlen:0
#   app01        app01-lab.avi.aclab.uk (+ application01.aclab.uk), serverAuth, signed by sub-ca
#   backend      testapp.dev.svc: the test application's HTTPS port, serverAuth, signed by sub-ca
#   other-ca     "Portico Example Other CA (untrusted)" self-signed, unrelated to root-ca (negative tests)
#   other-backend  localhost / 127.0.0.1, serverAuth, signed by other-ca (negative tests)
set -euo pipefail

DAYS=3650
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ARTICLE="$(dirname "$HERE")"
cd "$HERE"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
umask 077

# ---- extension profiles ------------------------------------------------------------------------
cat > "$WORK/x509.cnf" <<'CNF'
[ req ]
distinguished_name = req_dn
prompt             = no
[ req_dn ]
CN = unused (the -subj option sets the subject)

[ v3_root_ca ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ v3_sub_ca ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_app01 ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:app01-lab.avi.aclab.uk, DNS:application01.aclab.uk
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_backend ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, DNS:app01-aclab-nginx-root-svc.dev.svc, DNS:app01-aclab-nginx-pink-svc.dev.svc, DNS:app01-aclab-nginx-blue-svc.dev.svc, DNS:app01-aclab-nginx-green-svc.dev.svc, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_other_backend ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
CNF

serial() { echo "0x$(openssl rand -hex 16)"; }

# ECDSA P-256, PKCS#8 PEM ("BEGIN PRIVATE KEY")
genkey() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve -out "$1.key"
  chmod 600 "$1.key"
}

# self-signed CA: genkey NAME, then req -x509
self_signed_ca() { # name subject extension-section
  genkey "$1"
  openssl req -x509 -new -config "$WORK/x509.cnf" -extensions "$3" -key "$1.key" -subj "$2" \
    -sha256 -days "$DAYS" -set_serial "$(serial)" -out "$1.crt"
}

# certificate signed by a CA: genkey NAME, CSR, x509 -req
signed_by() { # name subject extension-section ca-name
  genkey "$1"
  openssl req -new -config "$WORK/x509.cnf" -key "$1.key" -subj "$2" -out "$WORK/$1.csr"
  openssl x509 -req -in "$WORK/$1.csr" -CA "$4.crt" -CAkey "$4.key" -set_serial "$(serial)" \
    -sha256 -days "$DAYS" -extfile "$WORK/x509.cnf" -extensions "$3" -out "$1.crt"
}

rm -f root-ca.* sub-ca.* app01.* app01-chain.crt backend.* backend-chain.crt other-ca.* other-backend.* ./*.srl

self_signed_ca root-ca       "/CN=Portico Example Root CA"               v3_root_ca
signed_by      sub-ca        "/CN=Portico Example Sub CA TanzuSub01"     v3_sub_ca        root-ca
signed_by      app01         "/CN=app01-lab.avi.aclab.uk"                v3_app01         sub-ca
signed_by      backend       "/CN=testapp.dev.svc"                       v3_backend       sub-ca
self_signed_ca other-ca      "/CN=Portico Example Other CA (untrusted)"  v3_root_ca
signed_by      other-backend "/CN=other-backend.localhost"               v3_other_backend other-ca

cat app01.crt   sub-ca.crt > app01-chain.crt
cat backend.crt sub-ca.crt > backend-chain.crt
chmod 644 ./*.crt

# ---- checks --------------------------------------------------------------------------------------
openssl verify -CAfile root-ca.crt -untrusted sub-ca.crt app01.crt
openssl verify -CAfile root-ca.crt -untrusted sub-ca.crt backend.crt
openssl verify -CAfile other-ca.crt other-backend.crt
if openssl verify -CAfile root-ca.crt -untrusted sub-ca.crt other-backend.crt >/dev/null 2>&1; then
  echo "other-backend.crt must NOT verify against root-ca.crt" >&2; exit 1
fi
if openssl verify -CAfile other-ca.crt -untrusted sub-ca.crt backend.crt >/dev/null 2>&1; then
  echo "backend.crt must NOT verify against other-ca.crt" >&2; exit 1
fi
for n in root-ca sub-ca app01 backend other-ca other-backend; do  # each key matches its certificate
  [ "$(openssl pkey -in "$n.key" -pubout)" = "$(openssl x509 -in "$n.crt" -noout -pubkey)" ] \
    || { echo "$n.key does not match $n.crt" >&2; exit 1; }
done

[ "${TLS_ONLY:-0}" = 1 ] && exit 0

# ---- refresh the manifests that embed this material ----------------------------------------------
indent() { sed "s/^/$1/" "$2"; }

umask 022
{
  cat <<'YAML'
# TEST MATERIAL ONLY: the key below is published in the Portico repository; never use it outside tests.
# Generated by examples/article/tls/make.sh (regenerate with it; it rewrites this file).
# tls.crt = app01.crt + sub-ca.crt (leaf first), tls.key = app01.key, ca.crt = root-ca.crt.
# On a cluster cert-manager writes this Secret from Certificate app01-aclab-nginx-cert (ClusterIssuer
# tanzu-sub01-clusterissuer); standalone mode reads it from this file.
apiVersion: v1
kind: Secret
metadata:
  name: app01-aclab-nginx-tls-secret
  namespace: dev
type: kubernetes.io/tls
stringData:
  tls.crt: |
YAML
  indent '    ' app01-chain.crt
  echo '  tls.key: |'
  indent '    ' app01.key
  echo '  ca.crt: |'
  indent '    ' root-ca.crt
} > "$ARTICLE/common/tls-secret.yaml"

# Replace the PEM block under "destinationCA: |" in both flavours' rules.yaml with the current root-ca.crt.
for RULES in "$ARTICLE/ingress/rules.yaml" "$ARTICLE/httproute/rules.yaml"; do
if [ -f "$RULES" ]; then
  awk -v ca="$HERE/root-ca.crt" '
    skipping && (/^[[:space:]]*$/ || match($0, /^ */) && RLENGTH > keyind) { next }
    { skipping = 0 }
    /^[[:space:]]*destinationCA:[[:space:]]*\|[[:space:]]*$/ {
      print
      match($0, /^ */); keyind = RLENGTH
      pad = sprintf("%" (keyind + 2) "s", "")
      while ((getline line < ca) > 0) print pad line
      close(ca)
      skipping = 1
      next
    }
    { print }
  ' "$RULES" > "$WORK/rules.yaml"
  cat "$WORK/rules.yaml" > "$RULES"
fi
done
# The team's ClusterIssuer (common/clusterissuer.yaml) signs with the sub CA: its Secret, as `portico ca secret`
# writes it (namespace cert-manager, the cluster resource namespace).
{
  echo '# CA issuer key pair for the example sub CA (test material; regenerate with tls/make.sh).'
  echo 'apiVersion: v1'
  echo 'kind: Secret'
  echo 'type: kubernetes.io/tls'
  echo 'metadata:'
  echo '  name: tanzu-sub01-tls-secret'
  echo '  namespace: cert-manager'
  echo 'data:'
  echo "  tls.crt: $(base64 -w0 sub-ca.crt)"
  echo "  tls.key: $(base64 -w0 sub-ca.key)"
  echo "  ca.crt: $(base64 -w0 root-ca.crt)"
} > "$ARTICLE/common/issuer-secret.yaml"
chmod 600 "$ARTICLE/common/issuer-secret.yaml"
echo "regenerated $HERE and refreshed common/tls-secret.yaml, common/issuer-secret.yaml and the flavours' rules.yaml"
