//! JWT authentication: the `[auth]` settings and the [`Verifier`] that turns a token into the
//! [`Identity`] of a player, for both protocols (native `Hello.token`, Socket.IO's CONNECT
//! `auth.token`). docs/AUTH.md is the guide.
//!
//! Tokens are checked by the `jsonwebtoken` crate. The algorithms a token may use are fixed
//! by the kind of key configured, never read from the token's header: an HMAC secret allows
//! HS256/384/512, an RSA public key RS256, an EC (P-256) public key ES256. A token signed
//! with HMAC using the RSA public key's PEM as the secret (the classic algorithm confusion)
//! is therefore refused as `WrongAlgorithm`.
//!
//! `jsonwebtoken` reads the system clock itself to check `exp` and `nbf`; the one place here
//! that turns `exp` into a deadline ([`Verifier::deadline`]) reads the same clock, so both
//! agree.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest `sub` accepted, in bytes. It travels as `from` in every message its player sends
/// and as `player` in every membership notice, so it is bounded like a room name: 128 bytes
/// is room for a UUID, an e-mail address or a database key with a prefix.
pub const MAX_SUBJECT_LEN: usize = 128;

/// The `[auth]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a connection without a valid token is refused. `false` (the default) keeps
    /// anonymous play: a connection that sends no token gets a server-made player id (one
    /// that sends a bad token is still refused).
    pub required: bool,
    /// HMAC secret for HS256, HS384 and HS512 tokens. Not together with
    /// `jwt_public_key_file`.
    pub jwt_secret: Option<String>,
    /// PEM file of the public key that checks RS256 (RSA key) or ES256 (P-256 key) tokens.
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must be (or contain) it.
    pub audience: Option<String>,
    /// Seconds of clock difference tolerated on `exp` and `nbf` between the server that
    /// mints tokens and this one.
    pub leeway_s: u64,
    /// What happens when a session's token expires: `"disconnect"` (the default) or
    /// `"ignore"`.
    pub expiry: Expiry,
    /// `[[auth.rooms]]`: which claims a room's members need, and which may not send
    /// (docs/AUTH.md, "Authorization"). TOML only: a list of tables has no environment
    /// variable form.
    pub rooms: Vec<crate::hooks::RoomRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: false,
            jwt_secret: None,
            jwt_public_key_file: None,
            issuer: None,
            audience: None,
            // Hosts kept by NTP agree within milliseconds; 30 s covers a game backend and a
            // relay in different clouds, and an `exp` minutes away.
            leeway_s: 30,
            // A token's `exp` is its issuer's word on how long it may be used; a session
            // that outlives it must refresh it (docs/AUTH.md).
            expiry: Expiry::Disconnect,
            rooms: Vec::new(),
        }
    }
}

/// What happens to a session when its token's `exp` passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expiry {
    /// Nothing: the token is checked at connect (and refresh) only.
    Ignore,
    /// The session is closed at `exp` (plus `leeway_s`) unless a refresh extended it.
    Disconnect,
}

/// Why the `[auth]` settings were refused at start. Fix the named setting.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read: fix the path or its permissions.
    #[error("cannot read jwt_public_key_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a PEM RSA or EC public key.
    #[error("jwt_public_key_file {path} is not a PEM RSA or EC (P-256) public key")]
    Key {
        /// The file.
        path: PathBuf,
    },
    /// Both a secret and a key file are set: keep one.
    #[error("set jwt_secret or jwt_public_key_file, not both")]
    TwoKeys,
    /// `required` is true with no key to check tokens with.
    #[error("required = true needs jwt_secret or jwt_public_key_file")]
    NoKey,
    /// The secret is empty: every token made with an empty secret would pass.
    #[error("jwt_secret is empty")]
    EmptySecret,
}

/// Why a token was refused. The message ([`std::fmt::Display`]) is what the client is
/// shown; the player should get a new token from the game backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token, and the server requires one.
    #[error("token required")]
    Missing,
    /// Not a JWT (three base64url parts of JSON), or claims of the wrong type.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match the configured key.
    #[error("bad token signature")]
    BadSignature,
    /// The header names an algorithm the configured key does not allow.
    #[error("token algorithm not allowed")]
    WrongAlgorithm,
    /// `exp` has passed (beyond `leeway_s`), or is missing.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond `leeway_s`).
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` does not hold the configured audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// `sub` is missing, empty, longer than [`MAX_SUBJECT_LEN`] or holds control characters.
    #[error("token sub missing or invalid")]
    BadSubject,
    /// A refresh token names another `sub` than the session's.
    #[error("refresh token is for another player")]
    SubjectChanged,
}

/// How long a token the server issues ([`Verifier::sign`]) lasts when its claims set no
/// `exp`: a day, as SocketCluster's `authDefaultExpiry`.
pub const ISSUED_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why the server could not issue a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No `jwt_secret` is configured (none at all, or a public key, which cannot sign):
    /// tokens come from the game backend.
    #[error("the server has no jwt_secret to sign tokens with")]
    NoSecret,
    /// The claims do not make a token the server would accept (`sub` missing or invalid,
    /// `exp` in the past, the wrong `iss` or `aud`).
    #[error("the claims make no valid token: {0}")]
    Invalid(TokenError),
}

/// Who a connection is: the player id others see and the token's claims.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The player id others see as `from` and in membership notices: the token's `sub`, or
    /// a server-made id for an anonymous player.
    pub player: Arc<str>,
    /// Every claim of the token (empty for an anonymous player), for application code.
    pub claims: Arc<Map<String, Value>>,
    /// The token's `exp` (seconds since the Unix epoch), if any. Never 0: such a token is
    /// expired and refused; the niche keeps `Identity` at 32 bytes, and with it a native
    /// session's boxed auth state at 64 (an idle connection's memory counts).
    pub exp: Option<NonZeroU64>,
}

impl Identity {
    /// A player without a token, known by `id`.
    pub fn anonymous(id: String) -> Identity {
        thread_local! {
            /// The claims of every anonymous player of this thread (shard): one empty map
            /// shared, so an anonymous connection allocates no map of its own (an idle
            /// connection's memory counts; a per-thread copy keeps connects on different
            /// shards off one reference count).
            static NO_CLAIMS: Arc<Map<String, Value>> = Arc::new(Map::new());
        }
        Identity {
            player: Arc::from(id),
            claims: NO_CLAIMS.with(Arc::clone),
            exp: None,
        }
    }

    /// Whether a token proved this identity.
    pub fn is_authenticated(&self) -> bool {
        !self.claims.is_empty()
    }
}

/// Checks tokens against the configured key. One per server, shared by the shards.
pub struct Verifier {
    key: Option<(DecodingKey, Validation)>,
    /// The HMAC secret as a signing key, so that the server may issue tokens itself
    /// (SocketCluster's `setAuthToken`); `None` with a public key, which cannot sign.
    signer: Option<EncodingKey>,
    required: bool,
    expiry: Expiry,
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Verifier")
            .field("keyed", &self.key.is_some())
            .field("required", &self.required)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl Verifier {
    /// The verifier `config` describes; reads the key file.
    pub fn new(config: &AuthConfig) -> Result<Verifier, KeyError> {
        let signer = config
            .jwt_secret
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| EncodingKey::from_secret(s.as_bytes()));
        let key = match (&config.jwt_secret, &config.jwt_public_key_file) {
            (Some(_), Some(_)) => return Err(KeyError::TwoKeys),
            (Some(secret), None) if secret.is_empty() => return Err(KeyError::EmptySecret),
            (Some(secret), None) => Some((
                DecodingKey::from_secret(secret.as_bytes()),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            )),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                })?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map(|k| (k, vec![Algorithm::RS256]))
                    .or_else(|_| {
                        DecodingKey::from_ec_pem(&pem).map(|k| (k, vec![Algorithm::ES256]))
                    })
                    .map_err(|_| KeyError::Key { path: path.clone() })?;
                Some(key)
            }
            (None, None) if config.required => return Err(KeyError::NoKey),
            (None, None) => None,
        };
        let key = key.map(|(key, algorithms)| {
            let mut v = Validation::new(algorithms[0]);
            // Fixed by the key, never by the token's header (algorithm confusion).
            v.algorithms = algorithms;
            v.leeway = config.leeway_s;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "sub"]);
            v.validate_aud = config.audience.is_some();
            if let Some(aud) = &config.audience {
                v.set_audience(&[aud]);
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
            }
            (key, v)
        });
        Ok(Verifier {
            key,
            signer,
            required: config.required,
            expiry: config.expiry,
            leeway: config.leeway_s,
        })
    }

    /// A token of `claims` signed with the HMAC secret (HS256), and the identity it proves,
    /// for a server that issues tokens itself. `exp` is added, [`ISSUED_TOKEN_LIFETIME`]
    /// from now, when `claims` has none; `sub` must be there, as in every token.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<(String, Identity), SignError> {
        let signer = self.signer.as_ref().ok_or(SignError::NoSecret)?;
        let mut claims = claims.clone();
        if !claims.contains_key("exp") {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let exp = now + ISSUED_TOKEN_LIFETIME.as_secs();
            claims.insert("exp".into(), Value::from(exp));
        }
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, signer)
            .map_err(|_| SignError::Invalid(TokenError::Malformed))?;
        // Checked as any token the client could bring back: a bad `sub` is refused here.
        match self.check(Some(&token)) {
            Ok(Some(identity)) => Ok((token, identity)),
            Ok(None) => Err(SignError::NoSecret),
            Err(e) => Err(SignError::Invalid(e)),
        }
    }

    /// Whether tokens are checked at all (a key is configured).
    pub fn keyed(&self) -> bool {
        self.key.is_some()
    }

    /// Whether a connection without a token is refused.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The identity `token` proves: `Ok(None)` for an anonymous player (no token, not
    /// required; or no key configured, when a token cannot mean anything and is ignored).
    pub fn check(&self, token: Option<&str>) -> Result<Option<Identity>, TokenError> {
        let Some((key, validation)) = &self.key else {
            return Ok(None);
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.required {
                Err(TokenError::Missing)
            } else {
                Ok(None)
            };
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let player = match claims.get("sub") {
            Some(Value::String(sub))
                if !sub.is_empty()
                    && sub.len() <= MAX_SUBJECT_LEN
                    && !sub.chars().any(char::is_control) =>
            {
                Arc::<str>::from(sub.as_str())
            }
            _ => return Err(TokenError::BadSubject),
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .and_then(NonZeroU64::new);
        Ok(Some(Identity {
            player,
            claims: Arc::new(claims),
            exp,
        }))
    }

    /// A refresh: `token` must be valid and name the same `sub` as `current`.
    pub fn refresh(&self, current: &Identity, token: &str) -> Result<Identity, TokenError> {
        match self.check(Some(token))? {
            Some(identity) if identity.player == current.player => Ok(identity),
            Some(_) => Err(TokenError::SubjectChanged),
            // No key: nothing to refresh, and nothing expires.
            None => Ok(current.clone()),
        }
    }

    /// When a session of `identity` must end for its token's expiry (`exp` plus the
    /// leeway, as the check allows), as an instant of the monotonic clock taken at `now`;
    /// `None` when expiry is ignored or the identity has no `exp`.
    pub fn deadline(&self, identity: &Identity, now: Instant) -> Option<Instant> {
        if self.expiry == Expiry::Ignore {
            return None;
        }
        let exp = identity.exp?.get().saturating_add(self.leeway);
        // The same clock jsonwebtoken checked `exp` with; a clock before 1970 is a broken
        // host, where the token is taken as expiring now.
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(Duration::ZERO, |d| d);
        let left = Duration::from_secs(exp).saturating_sub(unix_now);
        Some(now + left)
    }
}

/// The client-facing reason for a `jsonwebtoken` error.
fn refusal(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidSubject => TokenError::BadSubject,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => TokenError::Expired,
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => TokenError::BadSubject,
        // A wrongly shaped header or claims, bad base64 or JSON: not a token we made.
        _ => TokenError::Malformed,
    }
}

/// Whether `given` equals the secret `known` (an admin token, a session's secret), in time
/// that depends on the length of `known` only: how fast a guess is refused tells neither
/// where it first differs nor, by varying its length, how long the secret is. Every byte
/// of `known` is compared, past the end of `given` against a byte that cannot match.
pub fn constant_time_eq(known: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(known.len() != given.len());
    for (i, &k) in known.iter().enumerate() {
        diff |= k ^ given.get(i).copied().unwrap_or(!k);
    }
    // Opaque to the optimizer, so that the loop is not turned into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(secret: &str) -> Verifier {
        Verifier::new(&AuthConfig {
            jwt_secret: Some(secret.into()),
            leeway_s: 0,
            audience: Some("game".into()),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn token(alg: Algorithm, secret: &str, claims: Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_good_hmac_token_gives_its_sub_and_claims() {
        let v = hs("s3cret");
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = token(
                alg,
                "s3cret",
                json!({"sub": "alice", "exp": now() + 60, "aud": "game", "tier": "gold"}),
            );
            let id = v.check(Some(&t)).unwrap().unwrap();
            assert_eq!(&*id.player, "alice");
            assert_eq!(id.claims["tier"], "gold");
        }
    }

    #[test]
    fn each_failure_has_its_reason() {
        let v = hs("s3cret");
        let good = json!({"sub": "a", "exp": now() + 60, "aud": "game"});
        let cases = [
            (
                token(Algorithm::HS256, "other", good.clone()),
                TokenError::BadSignature,
            ),
            (
                token(
                    Algorithm::HS256,
                    "s3cret",
                    json!({"sub": "a", "exp": now() - 5, "aud": "game"}),
                ),
                TokenError::Expired,
            ),
            (
                token(
                    Algorithm::HS256,
                    "s3cret",
                    json!({"sub": "a", "aud": "game"}),
                ),
                TokenError::Expired,
            ),
            (
                token(
                    Algorithm::HS256,
                    "s3cret",
                    json!({"sub": "a", "exp": now() + 60, "nbf": now() + 30, "aud": "game"}),
                ),
                TokenError::NotYetValid,
            ),
            (
                token(
                    Algorithm::HS256,
                    "s3cret",
                    json!({"sub": "a", "exp": now() + 60, "aud": "web"}),
                ),
                TokenError::WrongAudience,
            ),
            (
                token(
                    Algorithm::HS256,
                    "s3cret",
                    json!({"exp": now() + 60, "aud": "game"}),
                ),
                TokenError::BadSubject,
            ),
            (
                token(
                    Algorithm::HS256,
                    "s3cret",
                    json!({"sub": "a\nb", "exp": now() + 60, "aud": "game"}),
                ),
                TokenError::BadSubject,
            ),
            ("not.a.token".to_owned(), TokenError::Malformed),
        ];
        for (t, why) in cases {
            assert_eq!(v.check(Some(&t)).unwrap_err(), why, "{t}");
        }
    }

    #[test]
    fn required_refuses_no_token_and_optional_lets_it_in() {
        let mut config = AuthConfig {
            jwt_secret: Some("k".into()),
            ..AuthConfig::default()
        };
        assert!(Verifier::new(&config)
            .unwrap()
            .check(None)
            .unwrap()
            .is_none());
        config.required = true;
        assert_eq!(
            Verifier::new(&config).unwrap().check(None).unwrap_err(),
            TokenError::Missing
        );
        assert!(matches!(
            Verifier::new(&AuthConfig {
                required: true,
                ..AuthConfig::default()
            }),
            Err(KeyError::NoKey)
        ));
    }

    #[test]
    fn refresh_keeps_the_player() {
        let v = hs("k");
        let claims = |sub: &str| json!({"sub": sub, "exp": now() + 60, "aud": "game"});
        let id = v
            .check(Some(&token(Algorithm::HS256, "k", claims("a"))))
            .unwrap()
            .unwrap();
        assert!(v
            .refresh(&id, &token(Algorithm::HS256, "k", claims("a")))
            .is_ok());
        assert_eq!(
            v.refresh(&id, &token(Algorithm::HS256, "k", claims("b")))
                .unwrap_err(),
            TokenError::SubjectChanged
        );
    }

    #[test]
    fn the_deadline_is_exp_plus_leeway() {
        let v = hs("k");
        let start = Instant::now();
        let id = Identity {
            exp: NonZeroU64::new(now() + 10),
            ..Identity::anonymous("x".into())
        };
        let d = v.deadline(&id, start).unwrap() - start;
        assert!(
            d <= Duration::from_secs(10) && d >= Duration::from_secs(8),
            "{d:?}"
        );
        let ignore = Verifier::new(&AuthConfig {
            jwt_secret: Some("k".into()),
            expiry: Expiry::Ignore,
            ..AuthConfig::default()
        })
        .unwrap();
        assert!(ignore.deadline(&id, start).is_none());
    }

    #[test]
    fn constant_time_eq_matches_only_the_same_bytes() {
        let known = b"0123456789abcdef";
        assert!(constant_time_eq(known, b"0123456789abcdef"));
        for wrong in [
            &b"0123456789abcdeF"[..],
            b"x123456789abcdef",
            b"0123456789abcde",
            b"0123456789abcdef0",
            b"",
            b"0123456789abcdef\0",
        ] {
            assert!(!constant_time_eq(known, wrong), "{wrong:?}");
        }
        // A prefix of the secret, or the secret with a NUL where it ends, is no match.
        assert!(!constant_time_eq(b"ab", b"a"));
        assert!(!constant_time_eq(b"a", b"a\0"));
        assert!(constant_time_eq(b"", b""));
    }
}
