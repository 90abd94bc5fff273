//! `maxResults` / `nextToken` paging over store scans.
//!
//! A token is the hex encoding of the last key a page returned, so paging stays correct
//! while records are added or removed between calls.

use std::ops::{Bound, ControlFlow};

use serde::de::DeserializeOwned;

use super::ApiError;
use crate::store::{Reader, Scan, StoreError, Table};

/// One page request: how many items, and after which key.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: usize,
    pub after: Option<String>,
}

impl Page {
    /// Validates `maxResults` (1..=`max`, default `max`) and decodes `nextToken`.
    pub fn new(max_results: Option<i32>, next_token: Option<&str>, max: i32) -> Result<Page, ApiError> {
        let limit = match max_results {
            None => max,
            Some(n) if (1..=max).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::invalid_parameter(format!(
                    "maxResults must be between 1 and {max}; it was {n}"
                )));
            }
        };
        Ok(Page { limit: limit as usize, after: after_token(next_token)? })
    }

    /// Collects up to `limit` items that `pick` keeps from `scan`, resuming after the token's
    /// key; returns them and the token for the next page, if there is one.
    pub fn collect<'a, V: DeserializeOwned, T>(
        &'a self,
        r: &Reader<'_>,
        table: Table<V>,
        mut scan: Scan<'a>,
        mut pick: impl FnMut(&str, V) -> Option<T>,
    ) -> Result<(Vec<T>, Option<String>), StoreError> {
        if let Some(after) = self.after.as_deref() {
            if scan.reverse {
                scan.to = tighter_upper(scan.to, after);
            } else {
                scan.from = tighter_lower(scan.from, after);
            }
        }
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        r.scan(table, scan, |k, v| {
            if let Some(item) = pick(k, v) {
                if items.len() == self.limit {
                    more = true;
                    return ControlFlow::Break(());
                }
                items.push(item);
                last_key = Some(k.to_owned());
            }
            ControlFlow::Continue(())
        })?;
        let next = if more { last_key.map(|k| encode_token(&k)) } else { None };
        Ok((items, next))
    }
}

fn tighter_lower<'a>(b: Bound<&'a str>, after: &'a str) -> Bound<&'a str> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) if k > after => b,
        _ => Bound::Excluded(after),
    }
}

fn tighter_upper<'a>(b: Bound<&'a str>, after: &'a str) -> Bound<&'a str> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) if k < after => b,
        _ => Bound::Excluded(after),
    }
}

pub fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The key a `nextToken` resumes after (`None` for no token or an empty one).
pub fn after_token(next_token: Option<&str>) -> Result<Option<String>, ApiError> {
    match next_token {
        None | Some("") => Ok(None),
        Some(t) => decode_token(t).map(Some).ok_or_else(|| {
            ApiError::invalid_parameter(
                "The nextToken is not valid: pass the nextToken of the previous response unchanged",
            )
        }),
    }
}

pub fn decode_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let k = "web\u{0}0000000012";
        assert_eq!(decode_token(&encode_token(k)).as_deref(), Some(k));
        assert_eq!(decode_token("zz"), None);
        assert_eq!(decode_token("abc"), None);
        assert!(Page::new(Some(0), None, 100).is_err());
        assert!(Page::new(Some(101), None, 100).is_err());
        assert!(Page::new(None, Some("not-a-token"), 100).is_err());
        assert_eq!(Page::new(None, None, 100).unwrap().limit, 100);
    }
}
