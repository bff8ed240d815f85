//! The master key ring: the key-encryption keys, and the `KeyProvider` interface through which
//! everything else wraps and unwraps its keys. The first key of the ring wraps; every key
//! unwraps. Wrapped bytes name the key that wrapped them, so `haven keys rotate-master` can
//! find what still needs re-wrapping and a node that meets an unknown key re-reads its ring.

use crate::CryptoError;
use crate::keys::MasterKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

/// Where key-encryption keys come from. A remote KMS (Vault Transit, PKCS#11) plugs in here.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The key new wraps use.
    fn active_id(&self) -> String;
    /// Every key that can unwrap.
    fn key_ids(&self) -> Vec<String>;
    fn wrap(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError>;
    fn unwrap(&self, context: &str, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// The id of the key that wrapped `wrapped`, read from its header (`None` for bytes wrapped
    /// before key ids were recorded, or for an unknown key).
    fn wrapped_by(&self, wrapped: &[u8]) -> Option<String>;
    /// Re-reads the key source if it changed; returns whether the ring changed.
    fn refresh(&self) -> Result<bool, CryptoError>;
}

const MAGIC: [u8; 4] = [0xf0, b'H', b'K', 1];
const HEADER_LEN: usize = MAGIC.len() + 8;

/// Parsed key ring text: one key per line, base64, optionally preceded by its id
/// (`mk_… <base64>`); commas also separate keys (for single-line environment variables);
/// `#` starts a comment.
#[derive(Debug)]
pub struct Ring {
    keys: Vec<MasterKey>,
    /// Each key's base64 text, in ring order (to rewrite the file).
    encoded: Vec<String>,
}

impl Ring {
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        let mut encoded = Vec::new();
        for item in text.split(['\n', ',']) {
            let item = item.split('#').next().unwrap_or("").trim();
            if item.is_empty() {
                continue;
            }
            let mut parts = item.split_whitespace();
            let (label, b64) = match (parts.next(), parts.next(), parts.next()) {
                (Some(only), None, None) => (None, only),
                (Some(label), Some(b64), None) => (Some(label), b64),
                _ => {
                    return Err(CryptoError::BadKey(
                        "a key ring line is `[mk_id] base64-key`",
                    ));
                }
            };
            let key = MasterKey::from_base64(b64)?;
            if let Some(label) = label
                && label != key.id()
            {
                return Err(CryptoError::BadKey(
                    "a key ring line's id does not match its key (edited by hand?)",
                ));
            }
            if keys.iter().any(|k| k.id() == key.id()) {
                return Err(CryptoError::BadKey("a key appears twice in the key ring"));
            }
            keys.push(key);
            encoded.push(b64.to_owned());
        }
        if keys.is_empty() {
            return Err(CryptoError::BadKey("the master key ring holds no key"));
        }
        Ok(Self { keys, encoded })
    }

    fn active(&self) -> &MasterKey {
        &self.keys[0]
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id().to_owned()).collect()
    }

    fn by_tag(&self, tag: &[u8]) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.tag()[..] == *tag)
    }

    fn unwrap(&self, context: &str, wrapped: &[u8]) -> Result<Vec<u8>, UnwrapFailure> {
        if wrapped.len() > HEADER_LEN && wrapped[..MAGIC.len()] == MAGIC {
            let tag = &wrapped[MAGIC.len()..HEADER_LEN];
            let Some(key) = self.by_tag(tag) else {
                return Err(UnwrapFailure::UnknownKey);
            };
            return key
                .open(context, &wrapped[HEADER_LEN..])
                .map_err(|_| UnwrapFailure::Invalid);
        }
        // Wrapped before headers existed: whichever key opens it.
        self.keys
            .iter()
            .find_map(|k| k.open(context, wrapped).ok())
            .ok_or(UnwrapFailure::UnknownKey)
    }
}

enum UnwrapFailure {
    UnknownKey,
    Invalid,
}

/// One line per key, the active one first.
fn render(keys: &[(String, String)]) -> String {
    let mut out = String::from(
        "# Haven master key ring. The first key wraps new keys; the others only unwrap.\n",
    );
    for (id, b64) in keys {
        out.push_str(&format!("{id} {b64}\n"));
    }
    out
}

fn read_private(path: &Path) -> Result<String, CryptoError> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CryptoError::BadKey(
            "the master key file must not be readable by group or others (chmod 600)",
        ));
    }
    Ok(std::fs::read_to_string(path)?)
}

/// Replaces `path` atomically (a 0600 temporary file, fsync, rename, fsync of the directory).
fn replace_private(path: &Path, content: &str) -> Result<(), CryptoError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("master.key")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The local key ring, from a file (re-read when it changes, so a running server follows
/// `haven keys rotate-master`) or from the environment (fixed for the life of the process).
pub struct MasterKeys {
    file: Option<PathBuf>,
    state: RwLock<(Ring, Option<(SystemTime, u64)>)>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKeys({:?})", self.key_ids())
    }
}

impl MasterKeys {
    pub fn from_text(text: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            file: None,
            state: RwLock::new((Ring::parse(text)?, None)),
        })
    }

    /// Reads the ring file.
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let stamp = file_stamp(path);
        let ring = Ring::parse(&read_private(path)?)?;
        Ok(Self {
            file: Some(path.to_owned()),
            state: RwLock::new((ring, stamp)),
        })
    }

    /// Reads the ring file, or creates it (mode 0600) with one fresh key. Returns whether it
    /// was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), CryptoError> {
        if path.exists() {
            return Ok((Self::from_file(path)?, false));
        }
        let raw = crate::random_bytes::<32>()?;
        let key = MasterKey::from_bytes(&raw)?;
        let text = render(&[(key.id().to_owned(), STANDARD.encode(raw))]);
        crate::keys::write_private_file(path, text.as_bytes())?;
        Ok((Self::from_file(path)?, true))
    }

    /// The file the ring is read from, if any (only a file ring can be rotated in place).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Ring, Option<(SystemTime, u64)>)> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn reload(&self, force: bool) -> Result<bool, CryptoError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let stamp = file_stamp(path);
        if !force && stamp == self.read().1 {
            return Ok(false);
        }
        let ring = Ring::parse(&read_private(path)?)?;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let changed = ring.ids() != state.0.ids();
        *state = (ring, stamp);
        Ok(changed)
    }
}

impl KeyProvider for MasterKeys {
    fn active_id(&self) -> String {
        self.read().0.active().id().to_owned()
    }

    fn key_ids(&self) -> Vec<String> {
        self.read().0.ids()
    }

    fn wrap(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        // Wraps are rare (new keys); checking the file first means a rotation is followed at
        // once rather than at the next refresh. A failed re-read keeps the ring in memory; the
        // periodic `refresh` reports it.
        let _ = self.reload(false);
        let state = self.read();
        let key = state.0.active();
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + 28);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(key.tag());
        out.extend_from_slice(&key.seal(context, plaintext)?);
        Ok(out)
    }

    fn unwrap(&self, context: &str, wrapped: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let first = self.read().0.unwrap(context, wrapped);
        match first {
            Ok(plain) => Ok(plain),
            Err(UnwrapFailure::Invalid) => Err(CryptoError::Unseal),
            Err(UnwrapFailure::UnknownKey) => {
                // Perhaps another node rotated the master key: read the ring again.
                if self.reload(true)? {
                    self.read()
                        .0
                        .unwrap(context, wrapped)
                        .map_err(|_| CryptoError::Unseal)
                } else {
                    Err(CryptoError::Unseal)
                }
            }
        }
    }

    fn wrapped_by(&self, wrapped: &[u8]) -> Option<String> {
        if wrapped.len() > HEADER_LEN && wrapped[..MAGIC.len()] == MAGIC {
            let state = self.read();
            return state
                .0
                .by_tag(&wrapped[MAGIC.len()..HEADER_LEN])
                .map(|k| k.id().to_owned());
        }
        None
    }

    fn refresh(&self) -> Result<bool, CryptoError> {
        self.reload(false)
    }
}

/// Adds a fresh key at the front of the ring file (it wraps from now on; the old keys still
/// unwrap). Returns the new key's id.
pub fn rotate_file(path: &Path) -> Result<String, CryptoError> {
    let mut keys = ring_lines(path)?;
    let raw = crate::random_bytes::<32>()?;
    let key = MasterKey::from_bytes(&raw)?;
    keys.insert(0, (key.id().to_owned(), STANDARD.encode(raw)));
    replace_private(path, &render(&keys))?;
    Ok(key.id().to_owned())
}

/// Removes a key that no longer wraps anything from the ring file. The active key cannot be
/// removed.
pub fn remove_from_file(path: &Path, id: &str) -> Result<(), CryptoError> {
    let keys = ring_lines(path)?;
    if keys.first().map(|k| k.0.as_str()) == Some(id) {
        return Err(CryptoError::BadKey(
            "the active master key cannot be retired",
        ));
    }
    if !keys.iter().any(|k| k.0 == id) {
        return Err(CryptoError::BadKey("no such key in the ring"));
    }
    let rest: Vec<_> = keys.into_iter().filter(|k| k.0 != id).collect();
    replace_private(path, &render(&rest))
}

fn ring_lines(path: &Path) -> Result<Vec<(String, String)>, CryptoError> {
    let ring = Ring::parse(&read_private(path)?)?;
    Ok(ring.ids().into_iter().zip(ring.encoded).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_ring() -> (PathBuf, MasterKeys) {
        let dir = std::env::temp_dir().join(format!(
            "haven-ring-{}-{}",
            std::process::id(),
            crate::random_secret("").unwrap_or_default()
        ));
        let path = dir.join("master.key");
        let (ring, created) = MasterKeys::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(created);
        (path, ring)
    }

    #[test]
    fn rotation_keeps_old_wraps_readable_and_is_followed() {
        let (path, ring) = temp_ring();
        let first = ring.active_id();
        let wrapped = ring
            .wrap("ctx", b"data key")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ring.wrapped_by(&wrapped).as_deref(), Some(first.as_str()));
        let second = rotate_file(&path).unwrap_or_else(|e| panic!("{e}"));
        // Another process (a running server) sees the new key on its next wrap.
        let rewrapped = ring
            .wrap("ctx", b"data key")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ring.wrapped_by(&rewrapped).as_deref(),
            Some(second.as_str())
        );
        assert_eq!(
            ring.unwrap("ctx", &wrapped).ok().as_deref(),
            Some(&b"data key"[..])
        );
        assert!(ring.unwrap("other", &wrapped).is_err());
        assert!(remove_from_file(&path, &second).is_err());
        remove_from_file(&path, &first).unwrap_or_else(|e| panic!("{e}"));
        ring.refresh().unwrap_or_else(|e| panic!("{e}"));
        assert!(ring.unwrap("ctx", &wrapped).is_err());
        assert_eq!(ring.key_ids(), vec![second]);
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(Path::new("/nonexistent")));
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let (path, a) = temp_ring();
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = MasterKeys::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!created);
        assert_eq!(a.active_id(), b.active_id());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            MasterKeys::from_file(&path).is_err(),
            "a group-readable ring is refused"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(Path::new("/nonexistent")));
    }

    #[test]
    fn a_node_meeting_an_unknown_key_rereads_its_ring() {
        let (path, ring) = temp_ring();
        let other = MasterKeys::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        rotate_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let wrapped = ring.wrap("ctx", b"k").unwrap_or_else(|e| panic!("{e}"));
        // `other` still holds the old ring in memory until it meets the new key.
        assert_eq!(
            other.unwrap("ctx", &wrapped).ok().as_deref(),
            Some(&b"k"[..])
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(Path::new("/nonexistent")));
    }

    #[test]
    fn legacy_single_key_text_and_headerless_wraps() {
        let raw = [9u8; 32];
        let legacy = MasterKey::from_bytes(&raw).unwrap_or_else(|e| panic!("{e}"));
        let old = legacy
            .seal("ctx", b"pepper")
            .unwrap_or_else(|e| panic!("{e}"));
        let ring = MasterKeys::from_text(&STANDARD.encode(raw)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ring.unwrap("ctx", &old).ok().as_deref(),
            Some(&b"pepper"[..])
        );
        assert_eq!(ring.wrapped_by(&old), None);
        let two = format!("{}, {}", STANDARD.encode([1u8; 32]), STANDARD.encode(raw));
        let ring = MasterKeys::from_text(&two).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ring.key_ids().len(), 2);
        assert!(MasterKeys::from_text("# nothing\n").is_err());
        assert!(MasterKeys::from_text(&format!("mk_0000 {}", STANDARD.encode(raw))).is_err());
    }
}
