//! `raftcron certs init`: a cluster CA and one certificate per node, for clusters whose
//! operators have no PKI of their own (local clusters, tests, a first deployment).
//!
//! A node certificate names `node-<id>` and the node's hosts (DNS names or IPs), may
//! serve and dial (both extended key usages), and is used for the RPC port's mutual TLS
//! and the API's HTTPS alike. Clients (`raftcron worker`, the CLI) trust `ca.pem`. An
//! existing `ca.key` + `ca.pem` in the directory are reused, so running it again with a
//! new node id issues that node's certificate from the same CA; an existing node
//! certificate is never overwritten.
//!
//! This module must never be needed at run time: nodes only read PEM files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CA's subject. Fixed, so that a CA key read back from disk issues certificates
/// whose issuer matches the CA certificate written before.
const CA_NAME: &str = "raftcron cluster CA";

/// One node to issue a certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub id: u64,
    /// DNS names or IP addresses peers and clients reach it by.
    pub hosts: Vec<String>,
}

impl std::str::FromStr for NodeCert {
    type Err = String;

    /// `ID` or `ID=HOST[+HOST...]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, hosts) = match s.split_once('=') {
            Some((id, hosts)) => {
                (id, hosts.split('+').map(str::trim).filter(|h| !h.is_empty()).map(String::from).collect())
            }
            None => (s, Vec::new()),
        };
        let id = id.trim().parse::<u64>().map_err(|_| format!("{s:?}: expected ID or ID=HOST[+HOST...]"))?;
        if id == 0 {
            return Err(format!("{s:?}: node ids start at 1"));
        }
        Ok(NodeCert { id, hosts })
    }
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Issued {
    pub ca_created: bool,
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// Creates (or reuses) the CA in `dir` and issues a certificate for each node, valid for
/// `days`, naming `node-<id>`, the node's own hosts and `common_hosts`.
pub fn init(dir: &Path, nodes: &[NodeCert], common_hosts: &[String], days: u32) -> anyhow::Result<Issued> {
    if nodes.is_empty() {
        bail!("name at least one node (--node ID[=HOST+HOST])");
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_params = ca_params(days)?;
    let mut issued = Issued { ca_created: false, written: Vec::new(), kept: Vec::new() };
    let ca_keypair = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let pem = fs::read_to_string(&ca_key).with_context(|| format!("cannot read {}", ca_key.display()))?;
            KeyPair::from_pem(&pem).with_context(|| format!("{} is not a PEM private key", ca_key.display()))?
        }
        (false, false) => {
            let key = KeyPair::generate()?;
            let cert = ca_params.self_signed(&key)?;
            write_new(&ca_key, &key.serialize_pem(), 0o600)?;
            write_new(&ca_cert, &cert.pem(), 0o644)?;
            issued.ca_created = true;
            issued.written.extend([ca_cert.clone(), ca_key.clone()]);
            key
        }
        _ => bail!("{} holds one of ca.pem and ca.key but not the other", dir.display()),
    };
    let issuer = Issuer::new(ca_params, ca_keypair);
    for node in nodes {
        let (cert_path, key_path) =
            (dir.join(format!("node-{}.pem", node.id)), dir.join(format!("node-{}.key", node.id)));
        if cert_path.exists() || key_path.exists() {
            issued.kept.push(cert_path);
            continue;
        }
        let mut names = vec![format!("node-{}", node.id)];
        for h in node.hosts.iter().chain(common_hosts) {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        let mut params = CertificateParams::new(names).context("a host is neither a DNS name nor an IP address")?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("node-{}", node.id));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_new(&key_path, &key.serialize_pem(), 0o600)?;
        write_new(&cert_path, &cert.pem(), 0o644)?;
        issued.written.extend([cert_path, key_path]);
    }
    Ok(issued)
}

fn ca_params(days: u32) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    // The CA outlives the node certificates it issues, so nodes can be re-issued.
    validity(&mut params, days.saturating_mul(10));
    Ok(params)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for nodes whose clocks run a little behind this one.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes a file that must not exist yet, with `mode` from the start (a key is never
/// readable by others, not even briefly).
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_arguments_parse_and_bad_ones_are_named() {
        assert_eq!("3".parse::<NodeCert>().unwrap(), NodeCert { id: 3, hosts: vec![] });
        assert_eq!(
            "2=raftcron-2+10.0.0.2".parse::<NodeCert>().unwrap(),
            NodeCert { id: 2, hosts: vec!["raftcron-2".into(), "10.0.0.2".into()] }
        );
        assert!("x=host".parse::<NodeCert>().unwrap_err().contains("x=host"));
        assert!("0".parse::<NodeCert>().is_err());
    }

    #[test]
    fn a_second_run_reuses_the_ca_keeps_issued_certificates_and_issues_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let first = init(dir.path(), &["1".parse().unwrap()], &["127.0.0.1".into()], 30).unwrap();
        assert!(first.ca_created);
        let ca = fs::read(dir.path().join("ca.pem")).unwrap();
        let node1 = fs::read(dir.path().join("node-1.pem")).unwrap();
        let second = init(dir.path(), &["1".parse().unwrap(), "2".parse().unwrap()], &[], 30).unwrap();
        assert!(!second.ca_created);
        assert_eq!(second.kept, vec![dir.path().join("node-1.pem")]);
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        assert_eq!(fs::read(dir.path().join("node-1.pem")).unwrap(), node1);
        assert!(dir.path().join("node-2.pem").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("node-2.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a key is readable by others: {mode:o}");
    }
}
