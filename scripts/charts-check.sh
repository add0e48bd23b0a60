#!/usr/bin/env bash
# Checks the Helm charts (issue 6): `helm lint --strict` and `helm template` of charts/portico and charts/testapp
# for every value set in charts/testapp/ci (the Ingress and the HTTPRoute flavours, ...), then `portico validate`
# of each rendered testapp: Portico must load what the chart renders, with no error.
#
#   scripts/charts-check.sh                 helm (built once, cached: scripts/kube-testenv.sh) + cargo
#   scripts/charts-check.sh --server DIR    also apply the renders to the test API server of DIR
#                                           (scripts/kube-testenv.sh up DIR): schemas, CEL rules, PodSecurity
#                                           "restricted" enforced on the pods, and the ClusterRole's permissions
#
# Rendered manifests are kept in $PORTICO_CHARTS_OUT (default target/charts-check).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SERVER_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --server) SERVER_DIR="${2:?--server DIR}"; shift 2 ;;
    *) echo "usage: $0 [--server DIR]" >&2; exit 2 ;;
  esac
done

start=$SECONDS
OUT="${PORTICO_CHARTS_OUT:-$ROOT/target/charts-check}"
rm -rf "$OUT"; mkdir -p "$OUT"
TESTENV=scripts/kube-testenv.sh
# Capabilities as on the pinned Kubernetes (helm's default is an old v1.20).
KUBE_VERSION="$("$TESTENV" versions | awk '$1 == "kubernetes" {print $2}')"
helm() {
  case "$1" in
    lint|template) local cmd="$1"; shift; "$TESTENV" helm "$cmd" --kube-version "$KUBE_VERSION" "$@" ;;
    *) "$TESTENV" helm "$@" ;;
  esac
}
step() { echo "== $*"; }
fail() { echo "charts-check: $*" >&2; exit 1; }

step "helm ($("$TESTENV" versions | awk '$1 == "helm" {print $2}'))"
helm version --short

step "the vendored Gateway API CRDs match the pinned module"
"$TESTENV" check-vendored-crds

# --- charts/portico ----------------------------------------------------------------------------------------------
# Value sets: the defaults, and everything on (CRDs, issuing, managed Services, NetworkPolicy).
PORTICO_ALL=(--set gatewayAPI.installCRDs=true --set controller.issueCertificates=true
  --set controller.manageGatewayServices=true --set networkPolicy.enabled=true
  --set 'networkPolicy.adminFromNamespaces={monitoring}' --set controller.defaultIngressClass=portico)
step "helm lint charts/portico"
helm lint --strict charts/portico
helm lint --strict charts/portico "${PORTICO_ALL[@]}"
step "helm template charts/portico"
helm template portico charts/portico -n portico-system >"$OUT/portico-default.yaml"
helm template portico charts/portico -n portico-system "${PORTICO_ALL[@]}" \
  --api-versions gateway.networking.k8s.io/v1/GatewayClass >"$OUT/portico-all.yaml"
# What the defaults must and must not grant or run.
grep -q -- '- --kubernetes' "$OUT/portico-default.yaml" || fail "portico: the Deployment does not run --kubernetes"
grep -q 'readOnlyRootFilesystem: true' "$OUT/portico-default.yaml" || fail "portico: root filesystem not read-only"
grep -q 'secrets' <(sed -n '/^kind: ClusterRole$/,/^---/p' "$OUT/portico-default.yaml" | grep -B2 -A1 'create') \
  && fail "portico: the default ClusterRole may write Secrets"
grep -q '^kind: CustomResourceDefinition' "$OUT/portico-default.yaml" && fail "portico: Gateway API CRDs rendered by default"
[ "$(grep -c '^kind: CustomResourceDefinition' "$OUT/portico-all.yaml")" -eq 8 ] \
  || fail "portico: gatewayAPI.installCRDs=true should render the 8 Gateway API CRDs"
grep -q 'helm.sh/resource-policy: keep' "$OUT/portico-all.yaml" || fail "portico: CRDs must be kept on uninstall"
grep -q '^kind: GatewayClass' "$OUT/portico-all.yaml" || fail "portico: no GatewayClass with the Gateway API present"

# --- charts/testapp ----------------------------------------------------------------------------------------------
# Each value set in ci/, plus the test API server's on top of each flavour.
declare -A SETS=()
for values in charts/testapp/ci/*-values.yaml; do
  name="$(basename "$values" -values.yaml)"
  [ "$name" = testenv ] && continue
  SETS[$name]="-f $values"
  SETS[$name+testenv]="-f $values -f charts/testapp/ci/testenv-values.yaml"
done
if [ -z "${SETS[ingress]:-}" ] || [ -z "${SETS[httproute]:-}" ]; then
  fail "charts/testapp/ci needs ingress-values.yaml and httproute-values.yaml"
fi

step "helm lint charts/testapp"
helm lint --strict charts/testapp
for values in charts/testapp/ci/*-values.yaml; do helm lint --strict charts/testapp -f "$values"; done

step "helm template charts/testapp (${!SETS[*]})"
for name in "${!SETS[@]}"; do
  # shellcheck disable=SC2086 # SETS holds flags
  helm template app01 charts/testapp -n dev ${SETS[$name]} >"$OUT/testapp-$name.yaml"
done
grep -q '^kind: Ingress$' "$OUT/testapp-ingress.yaml" || fail "testapp ingress: no Ingress"
grep -q '^kind: HTTPRoute$' "$OUT/testapp-ingress.yaml" && fail "testapp ingress: an HTTPRoute"
grep -q '^kind: HTTPRoute$' "$OUT/testapp-httproute.yaml" || fail "testapp httproute: no HTTPRoute"
grep -q '^kind: Ingress$' "$OUT/testapp-httproute.yaml" && fail "testapp httproute: an Ingress"

step "portico validate of each rendered testapp"
cargo build -q -p portico
for name in $(printf '%s\n' "${!SETS[@]}" | sort); do
  render="$OUT/testapp-$name.yaml"
  # The render alone must load with no error.
  if ! cargo run -q -p portico -- validate --config "$render" --default-namespace dev >"$OUT/validate-$name.txt" 2>&1; then
    cat "$OUT/validate-$name.txt" >&2
    fail "portico validate rejected testapp-$name.yaml"
  fi
  # With the platform's objects next to it (Namespace, ClusterIssuer and its CA, the avi-lb classes pointed at
  # Portico), as on the team's cluster, Portico must also take the render on: every route and Ingress served.
  if ! cargo run -q -p portico -- validate --config "$render" --config examples/article/common \
      --config examples/article/httproute/gatewayclass.yaml --config examples/article/ingress/ingressclass.yaml \
      --default-namespace dev >"$OUT/validate-$name-platform.txt" 2>&1; then
    cat "$OUT/validate-$name-platform.txt" >&2
    fail "portico validate rejected testapp-$name.yaml with the platform's objects"
  fi
  statuses="$OUT/validate-$name-platform.txt"
  grep -q '^Certificate/dev/.*Ready=True' "$statuses" || fail "testapp-$name: the Certificate is not Ready"
  if grep -q '^kind: Ingress$' "$render"; then
    grep -q '^Ingress/dev/.*: served' "$statuses" || fail "testapp-$name: the Ingress is not served"
  fi
  # With an address (the testenv values) the Gateway is programmed and the route accepted; without one the
  # Gateway waits for an address (AddressNotAssigned), as on a cluster before its LoadBalancer Service has one.
  if grep -q '^kind: HTTPRoute$' "$render" && grep -q 'type: IPAddress' "$render"; then
    grep -q '^HTTPRoute/dev/.*Accepted=True' "$statuses" || fail "testapp-$name: the HTTPRoute is not accepted"
    grep -q '^Gateway/dev/.*Programmed=True' "$statuses" || fail "testapp-$name: the Gateway is not programmed"
  fi
  echo "   $name: $(tail -1 "$OUT/validate-$name.txt")"
done

# --- against a real API server (optional) -------------------------------------------------------------------------
if [ -n "$SERVER_DIR" ]; then
  SERVER_DIR="$(cd "$SERVER_DIR" && pwd)"
  export KUBECONFIG="$SERVER_DIR/admin.kubeconfig"
  k() { "$TESTENV" kubectl --request-timeout=30s "$@"; }
  k get --raw /readyz >/dev/null || fail "no API server at $SERVER_DIR (scripts/kube-testenv.sh up $SERVER_DIR)"
  PNS=charts-check-portico TNS=charts-check-testapp
  step "apply to the API server of $SERVER_DIR (namespaces $PNS, $TNS: PodSecurity restricted enforced)"
  # A test API server runs no namespace controller (a deleted namespace would stay Terminating): the namespaces are
  # applied, not re-created, and kept.
  for ns in "$PNS" "$TNS"; do
    k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
    k label --overwrite namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
      pod-security.kubernetes.io/enforce-version=latest >/dev/null
  done
  helm template portico charts/portico -n "$PNS" --set gatewayClass.name=charts-check \
    --set ingressClass.name=charts-check --api-versions gateway.networking.k8s.io/v1/GatewayClass \
    >"$OUT/server-portico.yaml"
  k apply --server-side --field-manager=charts-check -f "$OUT/server-portico.yaml" >/dev/null
  for name in ingress httproute; do
    helm template app01 charts/testapp -n "$TNS" -f "charts/testapp/ci/$name-values.yaml" \
      --set "nameOverride=$name" >"$OUT/server-testapp-$name.yaml"
    k apply --server-side --field-manager=charts-check -f "$OUT/server-testapp-$name.yaml" >/dev/null
  done
  # No controller-manager: Deployments make no pods. Create a pod from each pod template, so that PodSecurity
  # admission (enforced, not just warned) judges the charts' security contexts.
  step "PodSecurity restricted: a pod from each Deployment's template"
  for ns in "$PNS" "$TNS"; do
    k -n "$ns" get deployments -o json | jq -c '.items[] | {apiVersion: "v1", kind: "Pod",
        metadata: {name: (.metadata.name + "-pss"), namespace: .metadata.namespace, labels: {"charts-check": "pss"}},
        spec: .spec.template.spec}' | while read -r pod; do
      echo "$pod" | k apply --dry-run=server -f - >/dev/null || fail "PodSecurity restricted rejected a pod of $ns"
      echo "   $(echo "$pod" | jq -r .metadata.name): admitted"
    done
  done
  step "the ClusterRole's permissions (as the chart's ServiceAccount)"
  as=(--as "system:serviceaccount:$PNS:portico")
  for r in namespaces services secrets configmaps endpointslices.discovery.k8s.io ingresses.networking.k8s.io \
      ingressclasses.networking.k8s.io gatewayclasses.gateway.networking.k8s.io gateways.gateway.networking.k8s.io \
      httproutes.gateway.networking.k8s.io grpcroutes.gateway.networking.k8s.io tlsroutes.gateway.networking.k8s.io \
      referencegrants.gateway.networking.k8s.io backendtlspolicies.gateway.networking.k8s.io \
      hostrules.ako.vmware.com httprules.ako.vmware.com healthmonitors.ako.vmware.com \
      backendpolicies.portico.dev certificates.cert-manager.io issuers.cert-manager.io \
      clusterissuers.cert-manager.io; do
    for verb in list watch; do
      [ "$(k auth can-i "${as[@]}" "$verb" "$r" -A)" = yes ] || fail "the ServiceAccount cannot $verb $r"
    done
  done
  for r in gateways httproutes gatewayclasses; do
    [ "$(k auth can-i "${as[@]}" patch "$r.gateway.networking.k8s.io" --subresource=status -A)" = yes ] \
      || fail "the ServiceAccount cannot patch $r/status"
  done
  [ "$(k auth can-i "${as[@]}" patch ingresses.networking.k8s.io --subresource=status -A)" = yes ] \
    || fail "the ServiceAccount cannot patch ingresses/status"
  [ "$(k auth can-i "${as[@]}" update leases.coordination.k8s.io -n "$PNS")" = yes ] \
    || fail "the ServiceAccount cannot update its Lease"
  for denied in "create secrets -A" "update secrets -n dev" "patch httproutes.gateway.networking.k8s.io -A" \
      "delete services -A" "update leases.coordination.k8s.io -n kube-system" "create pods -A" \
      "patch certificates.cert-manager.io --subresource=status -A"; do
    # shellcheck disable=SC2086 # $denied is a verb, a resource and flags
    [ "$(k auth can-i "${as[@]}" $denied 2>/dev/null || true)" = no ] || fail "the ServiceAccount may $denied"
  done
  echo "   reads all 21 kinds, patches statuses and its Lease; may not write Secrets, routes, Services or pods"
fi

echo "charts-check: ok in $((SECONDS - start)) s (renders in ${OUT#"$ROOT"/})"
