//! API key → tenant and priority, with a rate limit per tenant.
//!
//! Config: `keys` = "key-abc=acme:10,key-def=globex:0" (key=tenant:priority; priority optional,
//! default 0); `rate_per_second` (default 50) and `burst` (default 100) per tenant; `header`
//! (default: `authorization: Bearer KEY`; e.g. "x-api-key" reads that header instead).
//! Missing key → 401 `missing_api_key`, unknown → 403 `unknown_api_key`, over the rate → 429
//! `tenant_rate_limited`. Otherwise the request goes on with the tenant, its priority and an
//! `x-tenant` header, and without the key header: the function never sees the key.

use fngate_plugin::{Decision, Plugin, Request, config, export_plugin, log, rate_limit};

struct TenantPolicy;

impl Plugin for TenantPolicy {
    fn on_request(req: Request) -> Decision {
        let header = config::get("header");
        let key = match &header {
            Some(name) => req.header(name).map(str::trim).filter(|k| !k.is_empty()),
            None => req.bearer_token(),
        };
        let Some(key) = key else {
            let how = header.as_deref().unwrap_or("authorization: Bearer");
            let missing = Decision::reject_error(
                401,
                "missing_api_key",
                &format!("send an API key in {how}"),
            );
            return if header.is_none() {
                missing.with_header("www-authenticate", "Bearer")
            } else {
                missing
            };
        };
        let keys = config::map("keys");
        let Some((tenant, priority)) = find_tenant(&keys, key) else {
            return Decision::reject_error(403, "unknown_api_key", "the API key is not known");
        };
        let (rate, burst) = (
            config::parse_or("rate_per_second", 50.0),
            config::parse_or("burst", 100),
        );
        if !rate_limit(&format!("tenant:{tenant}"), rate, burst) {
            let message = format!("tenant {tenant} is over its request rate limit");
            return Decision::reject_error(429, "tenant_rate_limited", &message)
                .with_header("retry-after", "1");
        }
        Decision::pass()
            .tenant(tenant)
            .priority(priority)
            .set_header("x-tenant", tenant)
            .remove_header(header.as_deref().unwrap_or("authorization"))
    }
}

/// The tenant and priority that `keys` ("KEY" → "TENANT:PRIORITY") gives `key`. Every key is
/// compared, in constant time, so timing does not tell how much of a guess was right.
fn find_tenant<'a>(keys: &'a [(String, String)], key: &str) -> Option<(&'a str, i32)> {
    let mut found = None;
    for (k, v) in keys {
        if ct_eq(k.as_bytes(), key.as_bytes()) && found.is_none() {
            found = Some(v.as_str());
        }
    }
    let entry = found?;
    let Some((tenant, priority)) = entry.rsplit_once(':') else {
        return Some((entry, 0));
    };
    let priority = priority.trim().parse().unwrap_or_else(|_| {
        log::warn(format!(
            "config keys: tenant {tenant} has priority {priority:?}, not an integer; using 0"
        ));
        0
    });
    Some((tenant.trim(), priority))
}

/// Byte equality whose time depends only on the lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

export_plugin!(TenantPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use fngate_plugin::testing::{Host, request};
    use fngate_plugin::{Rejection, testing};

    const KEYS: &str = "key-abc=acme:10, key-def=globex, key-bad=initech:high";

    fn call(headers: &[(&str, &str)]) -> Decision {
        let mut req = request("POST", "/llm");
        req.headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        TenantPolicy::on_request(req)
    }

    fn rejection(d: Decision) -> Rejection {
        match d {
            Decision::Reject(r) => r,
            Decision::Proceed(r) => panic!("expected a rejection, got {r:?}"),
        }
    }

    #[test]
    fn bearer_key_maps_to_tenant_and_is_stripped() {
        Host::new().config("keys", KEYS).install();
        let d = call(&[("authorization", "Bearer key-abc")]);
        let expected = Decision::pass()
            .tenant("acme")
            .priority(10)
            .set_header("x-tenant", "acme")
            .remove_header("authorization");
        assert_eq!(d, expected);
        assert_eq!(
            call(&[("authorization", "bearer key-def")])
                .route()
                .unwrap()
                .priority,
            Some(0)
        );
    }

    #[test]
    fn missing_and_unknown_keys() {
        Host::new().config("keys", KEYS).install();
        let r = rejection(call(&[]));
        assert_eq!(r.status, 401);
        assert!(
            r.body.starts_with(r#"{"error":{"code":"missing_api_key","#),
            "{}",
            r.body
        );
        assert!(
            r.headers
                .contains(&("www-authenticate".into(), "Bearer".into()))
        );
        assert_eq!(
            rejection(call(&[("authorization", "Basic a2V5")])).status,
            401
        );
        let r = rejection(call(&[("authorization", "Bearer key-abd")]));
        assert_eq!(r.status, 403);
        assert!(r.body.contains(r#""code":"unknown_api_key""#));
    }

    #[test]
    fn custom_header() {
        Host::new()
            .config("keys", KEYS)
            .config("header", "x-api-key")
            .install();
        let d = call(&[
            ("X-Api-Key", " key-def "),
            ("authorization", "Bearer other"),
        ]);
        let route = d.route().expect("proceeds");
        assert_eq!(route.tenant.as_deref(), Some("globex"));
        assert_eq!(route.remove_headers, ["x-api-key"]);
        assert_eq!(
            rejection(call(&[("authorization", "Bearer key-abc")])).status,
            401
        );
    }

    #[test]
    fn rate_limit_per_tenant() {
        Host::new()
            .config("keys", KEYS)
            .config("rate_per_second", "1")
            .config("burst", "2")
            .install();
        let acme = [("authorization", "Bearer key-abc")];
        assert!(!call(&acme).is_reject());
        assert!(!call(&acme).is_reject());
        let r = rejection(call(&acme));
        assert_eq!(r.status, 429);
        assert!(r.body.contains(r#""code":"tenant_rate_limited""#));
        assert!(r.headers.contains(&("retry-after".into(), "1".into())));
        assert!(
            !call(&[("authorization", "Bearer key-def")]).is_reject(),
            "other tenants unaffected"
        );
        testing::advance(1_000_000_000);
        assert!(!call(&acme).is_reject(), "refilled after a second");
    }

    #[test]
    fn bad_priority_is_zero_and_logged() {
        Host::new().config("keys", KEYS).install();
        let d = call(&[("authorization", "Bearer key-bad")]);
        assert_eq!(d.route().unwrap().priority, Some(0));
        assert_eq!(testing::logs().len(), 1);
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"key-abc", b"key-abc"));
        assert!(!ct_eq(b"key-abc", b"key-abd"));
        assert!(!ct_eq(b"key-abc", b"key-ab"));
    }
}
