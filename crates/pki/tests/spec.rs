//! The cert-manager resources read from manifests as teams write them (the article's fixtures, and an ACME
//! ClusterIssuer), with unknown fields ignored and unsupported issuer types kept by name.

use portico_pki::spec::{Certificate, ClusterIssuer};
use portico_pki::{CertificateRequest, KeyAlgorithm};

const CLUSTER_ISSUER: &str = r#"
# The CA issuer the team uses: a subordinate CA (signed offline by the company's Microsoft root) held in a Secret.
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:
  name: tanzu-sub01-clusterissuer
  namespace: cert-manager
spec:
  ca:
    secretName: tanzu-sub01-tls-secret
"#;

const DEFAULT_INGRESS_CERT: &str = r#"
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: avi-default-ingress-cert
  namespace: avi-system
spec:
  commonName: "*.avi.aclab.uk"
  dnsNames:
    - "*.region01.aclab.uk"
    - "*.region02.aclab.uk"
    - "*.aclab.uk"
  secretName: router-certs-default
  issuerRef:
    name: tanzu-sub01-clusterissuer
    kind: ClusterIssuer
"#;

#[test]
fn the_articles_fixtures_parse() {
    let issuer: ClusterIssuer = serde_saphyr::from_str(CLUSTER_ISSUER).expect("ClusterIssuer");
    assert_eq!(issuer.metadata.name.as_deref(), Some("tanzu-sub01-clusterissuer"));
    let ca = issuer.spec.ca.expect("ca issuer");
    assert_eq!(ca.secret_name, "tanzu-sub01-tls-secret");
    assert!(issuer.spec.acme.is_none() && issuer.spec.other.is_empty());

    let cert: Certificate = serde_saphyr::from_str(DEFAULT_INGRESS_CERT).expect("Certificate");
    assert_eq!(cert.spec.secret_name, "router-certs-default");
    assert_eq!(cert.spec.issuer_ref.kind_or_default(), "ClusterIssuer");
    assert_eq!(cert.spec.issuer_ref.group_or_default(), "cert-manager.io");
    let req = CertificateRequest::from_spec(&cert.spec, None).expect("request");
    assert_eq!(req.common_name.as_deref(), Some("*.avi.aclab.uk"));
    assert_eq!(req.dns_names.len(), 3);
    assert_eq!(req.key_algorithm, KeyAlgorithm::Rsa(2048));
}

#[test]
fn acme_issuers_and_full_certificates_parse_with_unknown_fields_ignored() {
    let issuer: ClusterIssuer = serde_saphyr::from_str(
        r#"
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: letsencrypt}
spec:
  acme:
    server: https://acme-v02.api.letsencrypt.org/directory
    email: ops@aclab.uk
    privateKeySecretRef: {name: letsencrypt-account}
    futureField: ignored
    solvers:
      - http01:
          ingress: {ingressClassName: avi-lb}
      - selector: {dnsZones: [aclab.uk]}
        dns01:
          rfc2136:
            nameserver: 10.0.0.53:53
            tsigKeyName: portico
            tsigAlgorithm: HMACSHA256
            tsigSecretSecretRef: {name: tsig, key: secret}
      - dns01:
          route53: {region: eu-west-2}
"#,
    )
    .expect("ACME ClusterIssuer");
    let acme = issuer.spec.acme.expect("acme");
    assert_eq!(acme.email.as_deref(), Some("ops@aclab.uk"));
    assert_eq!(acme.private_key_secret_ref.name, "letsencrypt-account");
    assert_eq!(acme.solvers.len(), 3);
    assert!(acme.solvers[0].http01.as_ref().and_then(|h| h.ingress.as_ref()).is_some());
    let rfc = acme.solvers[1].dns01.as_ref().and_then(|d| d.rfc2136.as_ref()).expect("rfc2136");
    assert_eq!(rfc.tsig_algorithm.as_deref(), Some("HMACSHA256"));
    assert_eq!(acme.solvers[1].selector.as_ref().map(|s| s.dns_zones.clone()), Some(vec!["aclab.uk".to_string()]));
    let route53 = acme.solvers[2].dns01.as_ref().expect("dns01");
    assert!(route53.other.contains_key("route53"), "unsupported providers are kept by name");

    let self_signed: ClusterIssuer = serde_saphyr::from_str(
        "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: s}\nspec:\n  selfSigned: {}\n",
    )
    .expect("selfSigned");
    assert!(self_signed.spec.other.contains_key("selfSigned"), "reported by name, not silently ignored");

    let cert: Certificate = serde_saphyr::from_str(
        r#"
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: api, namespace: apps}
spec:
  secretName: api-tls
  issuerRef: {name: tanzu-sub01-clusterissuer, kind: ClusterIssuer, group: cert-manager.io}
  commonName: api.aclab.uk
  dnsNames: [api.aclab.uk]
  ipAddresses: [10.0.0.10]
  duration: 2m
  renewBefore: 1m
  isCA: false
  usages: [server auth, digital signature]
  privateKey: {algorithm: ECDSA, size: 384, rotationPolicy: Never, encoding: PKCS8}
  secretTemplate: {labels: {team: web}}
  somethingNew: true
"#,
    )
    .expect("Certificate");
    assert_eq!(cert.spec.is_ca, Some(false));
    let req = CertificateRequest::from_spec(&cert.spec, None).expect("request");
    assert_eq!(req.key_algorithm, KeyAlgorithm::EcdsaP384);
    assert!(req.rotation_never);
    assert_eq!(req.duration.as_secs(), 120);
    assert_eq!(req.renew_before.map(|d| d.as_secs()), Some(60));

    let wrong_type = serde_saphyr::from_str::<Certificate>(
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: x}\nspec:\n  secretName: s\n  issuerRef: {name: i}\n  dnsNames: 5\n",
    );
    assert!(wrong_type.is_err(), "wrong types are errors");
}
