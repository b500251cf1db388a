//! Encrypted backups: `raftcron snapshot save --recipient|--key-file` writes the snapshot
//! as an age file (age-encryption.org/v1, X25519), `snapshot restore --key-file` reads it
//! back, and `snapshot keygen` makes a key. A backup holds every task secret in the clear
//! otherwise; encrypted, it can sit on shared storage, and the standard `age` tool can
//! open it too (`age -d -i KEY FILE`). The plaintext is never written to disk here.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use age::secrecy::ExposeSecret;

use super::Exit;

/// What every age file begins with.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// The recipients a backup is encrypted to: each `--recipient` (an `age1...` public key)
/// and the public key of each identity in `--key-file`. Empty: no encryption.
pub fn recipients(public: &[String], key_file: Option<&Path>) -> anyhow::Result<Vec<Box<dyn age::Recipient + Send>>> {
    let mut out: Vec<Box<dyn age::Recipient + Send>> = Vec::new();
    for r in public {
        let key = r
            .parse::<age::x25519::Recipient>()
            .map_err(|e| Exit::usage(format!("--recipient {r:?}: not an age X25519 public key ({e})")))?;
        out.push(Box::new(key));
    }
    if let Some(path) = key_file {
        let ids = identity_file(path)?;
        let keys = ids.to_recipients().map_err(|e| Exit::usage(format!("--key-file {}: {e}", path.display())))?;
        out.extend(keys);
    }
    Ok(out)
}

fn identity_file(path: &Path) -> anyhow::Result<age::IdentityFile<age::NoCallbacks>> {
    let file = std::fs::File::open(path).map_err(|e| Exit::usage(format!("--key-file {}: {e}", path.display())))?;
    age::IdentityFile::from_buffer(BufReader::new(file))
        .map_err(|e| Exit::usage(format!("--key-file {}: not an age identity file ({e})", path.display())))
}

/// Whether `path` is an age file.
pub fn is_encrypted(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; AGE_MAGIC.len()];
    let mut file = std::fs::File::open(path)?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got == head.len() && head == AGE_MAGIC)
}

/// The plaintext of the age file at `path`, decrypted as it is read (each chunk is
/// authenticated before it is returned: a changed or cut file fails the read).
pub fn decrypting_reader(path: &Path, key_file: &Path) -> anyhow::Result<impl Read> {
    let identities = identity_file(key_file)?
        .into_identities()
        .map_err(|e| Exit::usage(format!("--key-file {}: {e}", key_file.display())))?;
    let file = std::fs::File::open(path)?;
    let decryptor = age::Decryptor::new(BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: not a readable age file ({e})", path.display()))?;
    decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| anyhow::anyhow!("cannot decrypt {} with --key-file {}: {e}", path.display(), key_file.display()))
}

/// `raftcron snapshot keygen FILE`: a new X25519 identity in a file only its owner can
/// read (never over an existing one); prints the public key to encrypt backups to.
pub fn keygen(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Exit::usage(format!("{}: {e}", path.display())))?;
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let written =
        writeln!(file, "# created: {created}\n# public key: {public}\n{}", identity.to_string().expose_secret())
            .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // A half-written key is no key: leave nothing that a second keygen would refuse.
        let _ = std::fs::remove_file(path);
        return Err(anyhow::anyhow!("cannot write {}: {e}", path.display()));
    }
    Ok(public)
}
