//! `GET /admin/usage?from=&to=&group_by=function|tenant|service`: metered usage in hourly
//! totals (docs/metering.md). Bounds are RFC 3339 times or unix seconds; `from` defaults to 24
//! hours before `to`, `to` to now; an hour is included when it starts in `[hour of from, to)`.

use crate::body::ResponseBody;
use crate::error::error_response;
use crate::metering::store::{Group, MAX_ROWS, UsageRow};
use crate::metering::{FLUSH_INTERVAL, Totals, parse_time};
use crate::state::Gateway;
use http::{Response, StatusCode};
use serde_json::json;
use std::collections::BTreeMap;

/// Widest range one query may ask for.
const MAX_RANGE_S: i64 = 366 * 86_400;
const DEFAULT_RANGE_S: i64 = 86_400;

struct Params {
    from: i64,
    to: i64,
    group: Group,
    group_name: String,
}

fn params(query: Option<&str>) -> Result<Params, String> {
    let (mut from, mut to, mut group) = (None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = super::tasks::percent_decode(v);
        match k {
            "from" => from = Some(parse_time(&v).map_err(|e| format!("from: {e}"))?),
            "to" => to = Some(parse_time(&v).map_err(|e| format!("to: {e}"))?),
            "group_by" => {
                group = Some((
                    Group::parse(&v).ok_or_else(|| {
                        format!("group_by `{v}`: one of function, tenant, service")
                    })?,
                    v,
                ))
            }
            other => {
                return Err(format!(
                    "unknown query parameter `{other}` (from, to, group_by)"
                ));
            }
        }
    }
    let to = to.unwrap_or_else(|| crate::scheduler::unix_now() as i64 + 1);
    let from = from.unwrap_or(to - DEFAULT_RANGE_S);
    if from >= to {
        return Err(format!("from ({from}) must be before to ({to})"));
    }
    if to - from > MAX_RANGE_S {
        return Err(format!(
            "from..to spans more than {} days",
            MAX_RANGE_S / 86_400
        ));
    }
    let (group, group_name) = group.unwrap_or((Group::Function, "function".into()));
    Ok(Params {
        from,
        to,
        group,
        group_name,
    })
}

pub async fn handle(gw: &Gateway, query: Option<&str>, rid: &str) -> Response<ResponseBody> {
    let p = match params(query) {
        Ok(p) => p,
        Err(msg) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg, rid),
    };
    let rows = match gw.node.meter.query(p.from, p.to, p.group).await {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "usage_unavailable",
                &format!("cannot read usage: {e}"),
                rid,
            );
        }
    };
    if rows.len() > MAX_ROWS {
        return error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("more than {MAX_ROWS} hourly rows in this range: narrow from/to"),
            rid,
        );
    }
    super::json_response(StatusCode::OK, body(&p, &rows))
}

fn body(p: &Params, rows: &[UsageRow]) -> serde_json::Value {
    let name = p.group_name.as_str();
    let mut totals: BTreeMap<(&str, Option<&str>), Totals> = BTreeMap::new();
    let hours: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            totals
                .entry((r.key.as_str(), r.gpu_type.as_deref()))
                .or_default()
                .add(&r.totals);
            let mut v = json!({
                "hour": crate::telemetry::rfc3339(r.hour),
                (name): r.key,
                "gpu_type": r.gpu_type,
            });
            merge(&mut v, &r.totals);
            v
        })
        .collect();
    let totals: Vec<serde_json::Value> = totals
        .into_iter()
        .map(|((k, gpu), t)| {
            let mut v = json!({ (name): k, "gpu_type": gpu });
            merge(&mut v, &t);
            v
        })
        .collect();
    json!({
        "from": crate::telemetry::rfc3339(crate::metering::hour_of(p.from)),
        "to": crate::telemetry::rfc3339(p.to),
        "group_by": name,
        "flush_interval_s": FLUSH_INTERVAL.as_secs_f64(),
        "hours": hours,
        "totals": totals,
    })
}

fn merge(v: &mut serde_json::Value, t: &Totals) {
    if let (Some(o), Ok(serde_json::Value::Object(t))) =
        (v.as_object_mut(), serde_json::to_value(t))
    {
        o.extend(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let p = params(Some(
            "from=2026-11-25T10:00:00Z&to=1795700000&group_by=tenant",
        ))
        .unwrap();
        assert_eq!(p.from, 1_795_600_800);
        assert_eq!(p.group, Group::Tenant);
        assert!(params(Some("from=1000&to=2000")).is_ok());
        for (q, want) in [
            ("from=2000&to=1000", "must be before"),
            ("from=yesterday", "neither unix seconds nor an RFC 3339"),
            ("group_by=colour", "group_by `colour`"),
            ("limit=3", "unknown query parameter `limit`"),
            ("from=0&to=99999999999", "spans more than 366 days"),
        ] {
            let e = params(Some(q))
                .err()
                .unwrap_or_else(|| panic!("{q} accepted"));
            assert!(e.contains(want), "{q}: {e}");
        }
    }
}
