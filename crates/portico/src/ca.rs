//! `portico ca`: the steps a team does by hand with openssl to run a CA issuer, in one tool. Private keys
//! are written with mode 0600 and never printed.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use portico_pki::{CertificateAuthority, KeyAlgorithm, PrivateKey};
use std::path::{Path, PathBuf};

/// `portico ca` subcommands.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Make an offline root CA: writes OUT.crt and OUT.key.
    InitRoot(InitRootArgs),
    /// Make a subordinate CA key and certificate request (CSR) for a root to sign: writes OUT.key and OUT.csr.
    Csr(CsrArgs),
    /// Sign a subordinate CA request with a root you hold: writes the subordinate's certificate.
    Sign(SignArgs),
    /// Write the Secret manifest that a CA ClusterIssuer's `spec.ca.secretName` points at.
    Secret(SecretArgs),
}

#[derive(Args)]
pub struct InitRootArgs {
    /// Subject, e.g. "CN=Example Root CA,O=Example".
    #[arg(long)]
    subject: String,
    /// Validity in days.
    #[arg(long, default_value = "3650")]
    days: u32,
    /// Key: rsa2048, rsa3072, rsa4096, ecdsa256, ecdsa384, ed25519.
    #[arg(long, default_value = "ecdsa384")]
    key: String,
    /// Output path without extension.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct CsrArgs {
    /// Subject, e.g. "CN=TanzuSub01,DC=aclab,DC=uk".
    #[arg(long)]
    subject: String,
    /// Key algorithm (as for init-root).
    #[arg(long, default_value = "rsa4096")]
    key: String,
    /// Add the Microsoft certificate-template extension "SubCA" (what an AD CS root expects).
    #[arg(long)]
    subca_template: bool,
    /// Output path without extension.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct SignArgs {
    /// The request to sign (PEM).
    #[arg(long)]
    csr: PathBuf,
    /// The root's certificate (PEM).
    #[arg(long)]
    ca_cert: PathBuf,
    /// The root's private key (PEM).
    #[arg(long)]
    ca_key: PathBuf,
    /// Validity in days.
    #[arg(long, default_value = "1825")]
    days: u32,
    /// basicConstraints pathLenConstraint of the subordinate (0: it may only issue leaves).
    #[arg(long)]
    path_len: Option<u8>,
    /// Output certificate path.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct SecretArgs {
    /// Secret name (the ClusterIssuer's spec.ca.secretName).
    #[arg(long)]
    name: String,
    /// Namespace (ClusterIssuers read Secrets from the cluster resource namespace, cert-manager by default).
    #[arg(long, default_value = "cert-manager")]
    namespace: String,
    /// The CA's certificate chain (PEM; the subordinate first).
    #[arg(long)]
    cert: PathBuf,
    /// The CA's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The root certificate, stored as ca.crt so issued Secrets carry it.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Output manifest path (mode 0600: it holds the key).
    #[arg(long)]
    out: PathBuf,
}

fn algorithm(name: &str) -> anyhow::Result<KeyAlgorithm> {
    Ok(match name {
        "rsa2048" => KeyAlgorithm::Rsa(2048),
        "rsa3072" => KeyAlgorithm::Rsa(3072),
        "rsa4096" => KeyAlgorithm::Rsa(4096),
        "ecdsa256" => KeyAlgorithm::EcdsaP256,
        "ecdsa384" => KeyAlgorithm::EcdsaP384,
        "ed25519" => KeyAlgorithm::Ed25519,
        other => anyhow::bail!("--key {other:?}: use rsa2048, rsa3072, rsa4096, ecdsa256, ecdsa384 or ed25519"),
    })
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a file; `secret` files get mode 0600 from creation, so the key is never readable by others.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}{}", path.display(), if secret { " (mode 0600)" } else { "" });
    Ok(())
}

fn with_extension(base: &Path, extension: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{extension}"));
    PathBuf::from(name)
}

/// Runs a `portico ca` subcommand.
pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::InitRoot(args) => {
            let (cert, key) = portico_pki::tool::init_root(&args.subject, args.days, algorithm(&args.key)?)?;
            write(&with_extension(&args.out, "key"), key.expose(), true)?;
            write(&with_extension(&args.out, "crt"), &cert, false)
        }
        CaCommand::Csr(args) => {
            let key = PrivateKey::generate(algorithm(&args.key)?)?;
            let request = portico_pki::tool::csr(&args.subject, &key, args.subca_template)?;
            write(&with_extension(&args.out, "key"), key.to_pem().expose(), true)?;
            write(&with_extension(&args.out, "csr"), &request, false)
        }
        CaCommand::Sign(args) => {
            let root =
                CertificateAuthority::from_pem(&read(&args.ca_cert)?, &read(&args.ca_key)?).with_context(|| {
                    format!("{} and {} are not a usable CA", args.ca_cert.display(), args.ca_key.display())
                })?;
            let certificate = portico_pki::tool::sign_subordinate(&root, &read(&args.csr)?, args.days, args.path_len)
                .with_context(|| format!("cannot sign {}", args.csr.display()))?;
            write(&args.out, &certificate, false)
        }
        CaCommand::Secret(args) => {
            let root = match &args.root {
                Some(path) => Some(read(path)?),
                None => None,
            };
            let manifest = portico_pki::tool::issuer_secret_manifest(
                &args.name,
                &args.namespace,
                &read(&args.cert)?,
                &read(&args.key)?,
                root.as_deref(),
            )?;
            write(&args.out, &manifest, true)
        }
    }
}
