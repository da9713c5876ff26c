//! Webhook authentication: a bearer token (or the token as an HTTP Basic password, for senders
//! that can only put credentials in the URL), or an HMAC-SHA256 signature over
//! `{timestamp}.{body}` with a timestamp window against replays. Every secret comparison is
//! constant-time; tokens and signatures never reach a log line or an error message.
//!
//! The HMAC scheme, for senders:
//!
//! ```text
//! x-fngate-timestamp: 1717000000                       (unix seconds, now)
//! x-fngate-signature: sha256=<hex HMAC-SHA256(secret, "1717000000." + body)>
//! ```

use crate::config::WebhookAuth;
use http::HeaderMap;
use subtle::ConstantTimeEq;

pub static X_TIMESTAMP: http::HeaderName = http::HeaderName::from_static("x-fngate-timestamp");
pub static X_SIGNATURE: http::HeaderName = http::HeaderName::from_static("x-fngate-signature");

/// Why a webhook call was refused; the text is safe to send back and to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing credentials: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("the token does not match")]
    WrongToken,
    #[error("missing x-fngate-timestamp or x-fngate-signature")]
    MissingSignature,
    #[error("x-fngate-timestamp must be unix seconds")]
    BadTimestamp,
    #[error(
        "x-fngate-timestamp is {skew_s} s away from fngate's clock; at most {window_s} s is accepted (replay protection)"
    )]
    Stale { skew_s: u64, window_s: u64 },
    #[error("x-fngate-signature must be sha256=<64 hex digits>")]
    MalformedSignature,
    #[error("the signature does not match the body")]
    BadSignature,
}

impl AuthFailure {
    /// Whether the answer should carry `WWW-Authenticate: Bearer`.
    pub fn bearer(self) -> bool {
        matches!(self, AuthFailure::MissingToken | AuthFailure::WrongToken)
    }
}

/// What is left to check once the body has arrived.
#[derive(Debug)]
pub enum Pending {
    Done,
    /// The timestamp (as sent, digits only) and the claimed MAC.
    Signature {
        timestamp: String,
        mac: [u8; 32],
    },
}

/// Everything that can be checked from the headers: all of bearer auth; the presence, shape and
/// window of an HMAC timestamp and signature (so a stale or unsigned call is refused before its
/// body is read).
pub fn check_headers(
    auth: &WebhookAuth,
    headers: &HeaderMap,
    now_unix: u64,
) -> Result<Pending, AuthFailure> {
    match auth {
        WebhookAuth::Anonymous => Ok(Pending::Done),
        WebhookAuth::Bearer(secret) => {
            let Some(v) = headers.get(http::header::AUTHORIZATION) else {
                return Err(AuthFailure::MissingToken);
            };
            if crate::trigger::bearer_matches(Some(v), &secret.value)
                || basic_password_matches(v.as_bytes(), &secret.value)
            {
                Ok(Pending::Done)
            } else {
                Err(AuthFailure::WrongToken)
            }
        }
        WebhookAuth::Hmac { window, .. } => {
            let (Some(ts), Some(sig)) = (headers.get(&X_TIMESTAMP), headers.get(&X_SIGNATURE))
            else {
                return Err(AuthFailure::MissingSignature);
            };
            let ts = ts.as_bytes().trim_ascii();
            if ts.is_empty() || ts.len() > 20 || !ts.iter().all(u8::is_ascii_digit) {
                return Err(AuthFailure::BadTimestamp);
            }
            let text = std::str::from_utf8(ts).map_err(|_| AuthFailure::BadTimestamp)?;
            let at: u64 = text.parse().map_err(|_| AuthFailure::BadTimestamp)?;
            let skew = at.abs_diff(now_unix);
            if skew > window.as_secs() {
                return Err(AuthFailure::Stale {
                    skew_s: skew,
                    window_s: window.as_secs(),
                });
            }
            let mac = parse_signature(sig.as_bytes()).ok_or(AuthFailure::MalformedSignature)?;
            Ok(Pending::Signature {
                timestamp: text.to_string(),
                mac,
            })
        }
    }
}

/// The body half of HMAC auth.
pub fn verify_body(auth: &WebhookAuth, pending: &Pending, body: &[u8]) -> Result<(), AuthFailure> {
    match (auth, pending) {
        (WebhookAuth::Hmac { secret, .. }, Pending::Signature { timestamp, mac }) => {
            let expected = hmac(&secret.value, timestamp, body);
            if bool::from(expected.as_slice().ct_eq(mac)) {
                Ok(())
            } else {
                Err(AuthFailure::BadSignature)
            }
        }
        (WebhookAuth::Hmac { .. }, Pending::Done) => Err(AuthFailure::MissingSignature),
        _ => Ok(()),
    }
}

fn hmac(secret: &[u8], timestamp: &str, body: &[u8]) -> Vec<u8> {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign().as_ref().to_vec()
}

/// The `x-fngate-signature` value a sender computes: `sha256=<hex>`.
pub fn sign_hmac(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in hmac(secret, timestamp, body) {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    out
}

/// `sha256=<64 hex digits>` (either case) → the 32 bytes.
fn parse_signature(v: &[u8]) -> Option<[u8; 32]> {
    let v = v.trim_ascii();
    let hex = v
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"sha256="))
        .and(v.get(7..))?;
    let mut out = [0u8; 32];
    crate::telemetry::unhex(hex, &mut out)?;
    Some(out)
}

/// `Authorization: Basic base64(user:password)` with the token as the password (any user):
/// what SNS (`https://user:token@host/events/src`) and other URL-configured senders can send.
fn basic_password_matches(v: &[u8], expected: &[u8]) -> bool {
    if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") || v.len() > 4096 {
        return false;
    }
    let Some(decoded) = super::base64_decode(v[6..].trim_ascii()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    decoded[colon + 1..].ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use http::HeaderValue;
    use std::time::Duration;

    const TOKEN: &[u8] = b"0123456789abcdef-token";

    fn secret(v: &[u8]) -> Secret {
        Secret {
            source: "test".into(),
            value: v.to_vec(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            crate::telemetry::base64(format!("{user}:{pass}").as_bytes())
        )
    }

    #[test]
    fn anonymous_takes_anything() {
        let p = check_headers(&WebhookAuth::Anonymous, &HeaderMap::new(), 0).unwrap();
        assert!(verify_body(&WebhookAuth::Anonymous, &p, b"x").is_ok());
    }

    #[test]
    fn bearer_and_basic() {
        let auth = WebhookAuth::Bearer(secret(TOKEN));
        let ok = |h: &[(&str, &str)]| check_headers(&auth, &headers(h), 0);
        let token = std::str::from_utf8(TOKEN).unwrap();
        assert!(ok(&[("authorization", &format!("Bearer {token}"))]).is_ok());
        assert!(ok(&[("authorization", &basic("sns", token))]).is_ok());
        assert!(ok(&[("authorization", &basic("", token))]).is_ok());
        assert_eq!(ok(&[]).unwrap_err(), AuthFailure::MissingToken);
        assert_eq!(
            ok(&[("authorization", "Bearer nope")]).unwrap_err(),
            AuthFailure::WrongToken
        );
        assert_eq!(
            ok(&[("authorization", &basic(token, "nope"))]).unwrap_err(),
            AuthFailure::WrongToken,
            "the token must be the password, not the user"
        );
        assert_eq!(
            ok(&[("authorization", "Basic !!!")]).unwrap_err(),
            AuthFailure::WrongToken
        );
        assert!(AuthFailure::WrongToken.bearer());
        // The messages never contain the token.
        for f in [AuthFailure::MissingToken, AuthFailure::WrongToken] {
            assert!(!f.to_string().contains(token));
        }
    }

    #[test]
    fn hmac_signatures_and_replay_window() {
        let key = b"hmac-secret-0123456789";
        let auth = WebhookAuth::Hmac {
            secret: secret(key),
            window: Duration::from_secs(300),
        };
        let body = br#"{"Records":[]}"#;
        let now = 1_717_000_000;
        let sig = sign_hmac(key, "1717000000", body);
        assert_eq!(sig.len(), 71);
        let check = |ts: &str, sig: &str, now: u64, body: &[u8]| {
            let p = check_headers(
                &auth,
                &headers(&[("x-fngate-timestamp", ts), ("x-fngate-signature", sig)]),
                now,
            )?;
            verify_body(&auth, &p, body)
        };
        assert!(check("1717000000", &sig, now, body).is_ok());
        assert!(
            check(
                "1717000000",
                &sig.to_uppercase().replace("SHA256=", "sha256="),
                now,
                body
            )
            .is_ok()
        );
        // Inside the window either way, outside refused before the body is looked at.
        assert!(check("1717000000", &sig, now + 300, body).is_ok());
        assert!(check("1717000000", &sig, now - 300, body).is_ok());
        assert_eq!(
            check("1717000000", &sig, now + 301, body).unwrap_err(),
            AuthFailure::Stale {
                skew_s: 301,
                window_s: 300
            }
        );
        // A signature is bound to its timestamp and its body.
        assert_eq!(
            check("1717000001", &sig, now, body).unwrap_err(),
            AuthFailure::BadSignature
        );
        assert_eq!(
            check("1717000000", &sig, now, b"{}").unwrap_err(),
            AuthFailure::BadSignature
        );
        let other = sign_hmac(b"another-secret-0123456", "1717000000", body);
        assert_eq!(
            check("1717000000", &other, now, body).unwrap_err(),
            AuthFailure::BadSignature
        );
        for (ts, sig, want) in [
            ("", "sha256=00", AuthFailure::BadTimestamp),
            ("12ab", &sig, AuthFailure::BadTimestamp),
            ("-5", &sig, AuthFailure::BadTimestamp),
            ("99999999999999999999999", &sig, AuthFailure::BadTimestamp),
            ("1717000000", "md5=abc", AuthFailure::MalformedSignature),
            ("1717000000", "sha256=abc", AuthFailure::MalformedSignature),
            (
                "1717000000",
                &format!("sha256={}", "zz".repeat(32)),
                AuthFailure::MalformedSignature,
            ),
        ] {
            assert_eq!(check(ts, sig, now, body).unwrap_err(), want, "{ts} {sig}");
        }
        assert_eq!(
            check_headers(&auth, &headers(&[("x-fngate-timestamp", "1")]), now).unwrap_err(),
            AuthFailure::MissingSignature
        );
        assert!(!AuthFailure::BadSignature.bearer());
    }
}
