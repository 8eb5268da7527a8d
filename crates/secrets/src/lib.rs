//! Secrets at rest for Hookline: the passwords, tokens, client secrets and signing secrets of
//! webhook definitions are stored sealed, so a copy of the store (a Redis dump, a backup of
//! the data directory) does not give them away.
//!
//! [`SecretBox`] seals a value with AES-256-GCM under the node's 256-bit secret key and a
//! fresh random 96-bit nonce, and writes the result as text:
//!
//! ```text
//! enc:v1:<base64(nonce || ciphertext || tag)>
//! ```
//!
//! Opening checks the GCM tag, so a value sealed under another key or altered in any byte is
//! refused with [`SecretError::Decrypt`] instead of decrypting to garbage. No error message and
//! no `Debug` output contains a key or a plaintext.
//!
//! The key comes from `--secret-key` / `HOOKLINE_SECRET_KEY` (the standard base64 of 32
//! bytes, e.g. `openssl rand -base64 32` or [`SecretBox::generate_key_text`]) through
//! [`SecretBox::from_key_text`], or, for a single node, from the file `secret.key` in the
//! data directory, created on first start with mode 0600 by [`SecretBox::load_or_create`].
//! Every node of a cluster must use the same key: a value sealed on one node is opened on
//! another. Losing the key loses the sealed secrets (they must be entered again).

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The prefix of every sealed value (format version 1).
pub const SEALED_PREFIX: &str = "enc:v1:";
/// The name of the key file inside the data directory.
pub const KEY_FILE_NAME: &str = "secret.key";
/// The length of a key in bytes.
pub const KEY_BYTES: usize = 32;

/// The length of a GCM nonce in bytes (96 bits).
const NONCE_BYTES: usize = 12;
/// The length of a GCM tag in bytes.
const TAG_BYTES: usize = 16;

/// Why a key could not be had or a value could not be opened. Messages never contain a key
/// or a plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key text is not the standard base64 of 32 bytes.
    #[error("invalid secret key: {0}")]
    InvalidKey(String),
    /// The key file could not be read or created, or does not hold a valid key.
    #[error("secret key file {}: {reason}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The value does not start with `enc:v1:`.
    #[error("not a sealed value: sealed values start with {SEALED_PREFIX}")]
    NotSealed,
    /// The value starts with `enc:v1:` but what follows is not base64 of a nonce and a tag.
    #[error("malformed sealed value: {0}")]
    Malformed(&'static str),
    /// The GCM tag did not verify: sealed under another key, or altered.
    #[error("cannot open the sealed value: it was sealed with another key or has been altered")]
    Decrypt,
}

/// Seals and opens secrets with AES-256-GCM under one key. `Debug` never prints the key.
/// Cheap to clone.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox").field("key", &"***").finish()
    }
}

impl SecretBox {
    /// A box with the key given as the standard base64 of 32 bytes (the form of
    /// `--secret-key` / `HOOKLINE_SECRET_KEY`); surrounding whitespace is ignored.
    pub fn from_key_text(s: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| {
            SecretError::InvalidKey(format!(
                "expected the standard base64 of {KEY_BYTES} bytes (e.g. from `openssl rand -base64 32`)"
            ))
        })?;
        if bytes.len() != KEY_BYTES {
            return Err(SecretError::InvalidKey(format!(
                "expected {KEY_BYTES} bytes (256 bits), the text decodes to {} bytes",
                bytes.len()
            )));
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes)
            .map_err(|_| SecretError::InvalidKey(format!("expected {KEY_BYTES} bytes")))?;
        Ok(Self { cipher })
    }

    /// Reads the key from `dir/secret.key`, or, when there is no such file, creates `dir` (mode
    /// 0700 on unix) and the file with a fresh random key (mode 0600 on unix). Returns the box
    /// and whether the file was created.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), SecretError> {
        let path = dir.join(KEY_FILE_NAME);
        let key_file_error = |reason: String| SecretError::KeyFile { path: path.clone(), reason };
        match read_key_file(&path) {
            Ok(found) => return found.map(|secret_box| (secret_box, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_file_error(format!("cannot read it: {e}"))),
        }
        create_private_dir(dir).map_err(|e| key_file_error(format!("cannot create its directory: {e}")))?;
        let text = Self::generate_key_text();
        match create_private_file(&path, format!("{text}\n").as_bytes()) {
            Ok(()) => {}
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return read_key_file(&path)
                    .map_err(|e| key_file_error(format!("cannot read it: {e}")))?
                    .map(|secret_box| (secret_box, false));
            }
            Err(e) => return Err(key_file_error(format!("cannot create it: {e}"))),
        }
        Ok((Self::from_key_text(&text)?, true))
    }

    /// A fresh random key as key text (the standard base64 of 32 bytes from the OS's CSPRNG).
    pub fn generate_key_text() -> String {
        STANDARD.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// Seals `plaintext` as `enc:v1:<base64(nonce || ciphertext || tag)>` with a fresh random
    /// nonce: sealing the same text twice gives different values.
    pub fn seal(&self, plaintext: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext =
            self.cipher.encrypt(&nonce, plaintext.as_bytes()).expect("AES-GCM seals any text shorter than 64 GiB");
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed))
    }

    /// Opens a value made by [`SecretBox::seal`] with the same key.
    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let encoded = sealed.trim().strip_prefix(SEALED_PREFIX).ok_or(SecretError::NotSealed)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SecretError::Malformed("not base64"))?;
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SecretError::Malformed("too short to hold a nonce and a tag"));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plaintext = self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| SecretError::Decrypt)?;
        // Sealed from a `&str` and authenticated, so UTF-8 unless sealed by something else.
        String::from_utf8(plaintext).map_err(|_| SecretError::Malformed("the opened value is not UTF-8 text"))
    }

    /// Whether `s` looks sealed (starts with `enc:v1:`). It says nothing about whether it
    /// opens.
    pub fn is_sealed(s: &str) -> bool {
        s.trim_start().starts_with(SEALED_PREFIX)
    }
}

/// Reads the key file: `Err` for I/O errors (so a missing file can be told apart), `Ok(Err)`
/// for a file that does not hold a key.
fn read_key_file(path: &Path) -> io::Result<Result<SecretBox, SecretError>> {
    let text = fs::read_to_string(path)?;
    Ok(SecretBox::from_key_text(&text).map_err(|e| {
        let reason = match e {
            SecretError::InvalidKey(reason) => format!("does not hold a valid key: {reason}"),
            other => other.to_string(),
        };
        SecretError::KeyFile { path: path.to_owned(), reason }
    }))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates `path` (failing if it exists) readable and writable by the owner only, writes
/// `contents` and flushes it to disk.
fn create_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    // Make the new directory entry durable too (best effort).
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAINTEXT: &str = "hunter2-client-secret ü";

    fn new_box() -> SecretBox {
        SecretBox::from_key_text(&SecretBox::generate_key_text()).expect("key")
    }

    #[test]
    fn round_trip() {
        let secret_box = new_box();
        for text in [PLAINTEXT, "", "x", &"long ".repeat(10_000)] {
            let sealed = secret_box.seal(text);
            assert!(SecretBox::is_sealed(&sealed), "{sealed}");
            assert!(sealed.starts_with("enc:v1:"));
            assert!(!sealed.contains(text) || text.len() < 2, "{sealed}");
            assert_eq!(secret_box.open(&sealed).expect("open"), text);
        }
        // nonce (12) + tag (16) + 1 byte, in base64.
        assert_eq!(secret_box.seal("x").len(), "enc:v1:".len() + (12 + 16 + 1usize).div_ceil(3) * 4);
    }

    #[test]
    fn two_seals_of_the_same_text_differ() {
        let secret_box = new_box();
        let a = secret_box.seal(PLAINTEXT);
        let b = secret_box.seal(PLAINTEXT);
        assert_ne!(a, b);
        assert_eq!(secret_box.open(&a).expect("a"), secret_box.open(&b).expect("b"));
    }

    #[test]
    fn tampering_and_wrong_key_fail_without_revealing() {
        let secret_box = new_box();
        let sealed = secret_box.seal(PLAINTEXT);
        let raw = STANDARD.decode(&sealed["enc:v1:".len()..]).expect("base64");
        let mut errors = Vec::new();
        // Flip one bit in every position: nonce, ciphertext and tag.
        for i in 0..raw.len() {
            let mut altered = raw.clone();
            altered[i] ^= 0x01;
            let err = secret_box.open(&format!("enc:v1:{}", STANDARD.encode(&altered))).expect_err("tampered");
            assert!(matches!(err, SecretError::Decrypt), "{i}: {err:?}");
            errors.push(err);
        }
        let truncated = format!("enc:v1:{}", STANDARD.encode(&raw[..raw.len() - 1]));
        assert!(matches!(secret_box.open(&truncated), Err(SecretError::Decrypt)));
        let err = new_box().open(&sealed).expect_err("wrong key");
        assert!(matches!(err, SecretError::Decrypt), "{err:?}");
        errors.push(err);
        for (input, expected) in [
            (PLAINTEXT.to_owned(), "not a sealed value"),
            ("enc:v1:***".to_owned(), "malformed sealed value: not base64"),
            ("enc:v1:AAAA".to_owned(), "malformed sealed value: too short"),
        ] {
            let err = secret_box.open(&input).expect_err("refused");
            assert!(err.to_string().starts_with(expected), "{err}");
            errors.push(err);
        }
        for err in &errors {
            let text = format!("{err} {err:?}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert_eq!(
            SecretError::Decrypt.to_string(),
            "cannot open the sealed value: it was sealed with another key or has been altered"
        );
    }

    #[test]
    fn key_text_is_checked_with_a_clear_message() {
        let short = STANDARD.encode([7u8; 16]);
        let err = SecretBox::from_key_text(&short).expect_err("short");
        assert_eq!(err.to_string(), "invalid secret key: expected 32 bytes (256 bits), the text decodes to 16 bytes");
        assert!(!err.to_string().contains(&short));
        let err = SecretBox::from_key_text("not base64 at all!").expect_err("garbage");
        assert!(err.to_string().starts_with("invalid secret key: expected the standard base64 of 32 bytes"), "{err}");
        assert!(!format!("{err:?}").contains("not base64 at all"));
        assert!(matches!(SecretBox::from_key_text(""), Err(SecretError::InvalidKey(_))));
        // Whitespace around the key (a trailing newline from a file or an env var) is fine.
        let text = SecretBox::generate_key_text();
        assert_eq!(STANDARD.decode(&text).expect("base64").len(), 32);
        let a = SecretBox::from_key_text(&format!("  {text}\n")).expect("padded");
        let b = SecretBox::from_key_text(&text).expect("plain");
        assert_eq!(b.open(&a.seal(PLAINTEXT)).expect("same key"), PLAINTEXT);
    }

    #[test]
    fn debug_hides_the_key() {
        let text = SecretBox::generate_key_text();
        let secret_box = SecretBox::from_key_text(&text).expect("key");
        let debug = format!("{secret_box:?}");
        assert_eq!(debug, "SecretBox { key: \"***\" }");
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let (first, created) = SecretBox::load_or_create(&dir).expect("create");
        assert!(created);
        let path = dir.join("secret.key");
        let contents = fs::read_to_string(&path).expect("read");
        assert_eq!(STANDARD.decode(contents.trim()).expect("base64").len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{mode:o}");
            let dir_mode = fs::metadata(&dir).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(dir_mode, 0o700, "{dir_mode:o}");
        }
        let sealed = first.seal(PLAINTEXT);

        let (second, created) = SecretBox::load_or_create(&dir).expect("reuse");
        assert!(!created);
        assert_eq!(second.open(&sealed).expect("same key"), PLAINTEXT);
        assert_eq!(fs::read_to_string(&path).expect("read"), contents);
    }

    #[test]
    fn bad_key_file_is_reported_with_its_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("secret.key");
        let short = STANDARD.encode([1u8; 8]);
        fs::write(&path, &short).expect("write");
        let err = SecretBox::load_or_create(tmp.path()).expect_err("short key");
        let text = err.to_string();
        assert!(text.starts_with(&format!("secret key file {}: does not hold a valid key", path.display())), "{text}");
        assert!(text.contains("decodes to 8 bytes") && !text.contains(&short), "{text}");
        // The bad file is left alone, not replaced.
        assert_eq!(fs::read_to_string(&path).expect("read"), short);
    }
}
