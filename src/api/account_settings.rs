//! ListAccountSettings, PutAccountSetting, PutAccountSettingDefault, DeleteAccountSetting.
//!
//! A setting resolves as in ECS: the principal's own value, else the account default set by
//! PutAccountSettingDefault, else the value AWS gives every account.

use std::ops::{Bound, ControlFlow};

use super::pagination::{Page, decode_token, encode_token};
use super::{ApiError, Ctx};
use crate::model::shapes::{
    DeleteAccountSettingRequest, DeleteAccountSettingResponse, ListAccountSettingsRequest,
    ListAccountSettingsResponse, PutAccountSettingDefaultRequest, PutAccountSettingDefaultResponse,
    PutAccountSettingRequest, PutAccountSettingResponse, SETTING_NAME_VALUES, Setting,
};
use crate::store::records::{ACCOUNT_SETTINGS, setting_key};
use crate::store::{Reader, Scan, StoreError, prefix_end};

/// The principal that account defaults are stored under.
const ACCOUNT_DEFAULT: &str = "";

/// AWS's default for each setting, and the values a setting accepts.
fn rule(name: &str) -> (&'static str, &'static [&'static str]) {
    const ON_OFF: &[&str] = &["enabled", "disabled"];
    match name {
        "serviceLongArnFormat" | "taskLongArnFormat" | "containerInstanceLongArnFormat" => {
            ("enabled", ON_OFF)
        }
        "containerInsights" => ("disabled", &["enabled", "disabled", "enhanced"]),
        "tagResourceAuthorization" => ("on", &["on", "off"]),
        "guardDutyActivate" => ("off", &["on", "off"]),
        "fargateTaskRetirementWaitPeriod" => ("7", &["0", "7", "14"]),
        "defaultLogDriverMode" => ("blocking", &["blocking", "non-blocking"]),
        _ => ("disabled", ON_OFF),
    }
}

fn validate_value(name: &str, value: &str) -> Result<(), ApiError> {
    let (_, allowed) = rule(name);
    if name == "guardDutyActivate" {
        return Err(ApiError::invalid_parameter(
            "guardDutyActivate is read-only: it reflects whether GuardDuty runtime monitoring is on for the account",
        ));
    }
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(format!(
            "value '{value}' is not valid for {name}: use one of {}",
            allowed.join(", ")
        )))
    }
}

fn stored(r: &Reader<'_>, principal: &str, name: &str) -> Result<Option<Setting>, StoreError> {
    r.get(ACCOUNT_SETTINGS, &setting_key(principal, name))
}

/// The effective setting `name` for `principal`.
fn effective(r: &Reader<'_>, principal: &str, name: &str) -> Result<Setting, StoreError> {
    if let Some(s) = stored(r, principal, name)? {
        return Ok(s);
    }
    if let Some(mut s) = stored(r, ACCOUNT_DEFAULT, name)? {
        s.principal_arn = Some(principal.to_owned());
        return Ok(s);
    }
    Ok(Setting {
        name: Some(name.to_owned()),
        value: Some(rule(name).0.to_owned()),
        principal_arn: Some(principal.to_owned()),
        r#type: Some("aws_managed".into()),
    })
}

pub fn list(ctx: &Ctx, req: ListAccountSettingsRequest) -> Result<ListAccountSettingsResponse, ApiError> {
    let page = Page::new((req.max_results != 0).then_some(req.max_results), None, 10)?;
    let offset = match req.next_token.as_deref() {
        None | Some("") => 0,
        Some(t) => decode_token(t).and_then(|s| s.parse::<usize>().ok()).ok_or_else(|| {
            ApiError::invalid_parameter(
                "The nextToken is not valid: pass the nextToken of the previous response unchanged",
            )
        })?,
    };
    let principal = req.principal_arn.clone().unwrap_or_else(|| ctx.identity.root_principal());
    let names: Vec<&str> = match req.name.as_deref() {
        Some(n) => vec![n],
        None => SETTING_NAME_VALUES.to_vec(),
    };
    let all = ctx.store.read(|r| {
        let mut out = vec![];
        if req.effective_settings {
            for name in &names {
                out.push(effective(r, &principal, name)?);
            }
        } else {
            let prefix = setting_key(&principal, "");
            let end = prefix_end(&prefix);
            r.scan(
                ACCOUNT_SETTINGS,
                Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: false },
                |_, s: Setting| {
                    if names.contains(&s.name.as_deref().unwrap_or_default()) {
                        out.push(s);
                    }
                    ControlFlow::Continue(())
                },
            )?;
        }
        Ok::<_, ApiError>(out)
    })?;
    let matching: Vec<Setting> =
        all.into_iter().filter(|s| req.value.as_ref().is_none_or(|v| s.value.as_ref() == Some(v))).collect();
    let end = (offset + page.limit).min(matching.len());
    let settings = matching.get(offset..end).unwrap_or_default().to_vec();
    let next_token = (end < matching.len()).then(|| encode_token(&end.to_string()));
    Ok(ListAccountSettingsResponse { settings: Some(settings), next_token })
}

pub fn put(ctx: &Ctx, req: PutAccountSettingRequest) -> Result<PutAccountSettingResponse, ApiError> {
    let name = req.name.unwrap_or_default();
    let value = req.value.unwrap_or_default();
    validate_value(&name, &value)?;
    let principal = req.principal_arn.unwrap_or_else(|| ctx.identity.root_principal());
    let setting = Setting {
        name: Some(name.clone()),
        value: Some(value),
        principal_arn: Some(principal.clone()),
        r#type: Some("user".into()),
    };
    ctx.store.write(|w| w.put(ACCOUNT_SETTINGS, &setting_key(&principal, &name), &setting))?;
    Ok(PutAccountSettingResponse { setting: Some(setting) })
}

pub fn put_default(
    ctx: &Ctx,
    req: PutAccountSettingDefaultRequest,
) -> Result<PutAccountSettingDefaultResponse, ApiError> {
    let name = req.name.unwrap_or_default();
    let value = req.value.unwrap_or_default();
    validate_value(&name, &value)?;
    let setting = Setting {
        name: Some(name.clone()),
        value: Some(value),
        principal_arn: Some(ctx.identity.root_principal()),
        r#type: Some("user".into()),
    };
    ctx.store.write(|w| w.put(ACCOUNT_SETTINGS, &setting_key(ACCOUNT_DEFAULT, &name), &setting))?;
    Ok(PutAccountSettingDefaultResponse { setting: Some(setting) })
}

pub fn delete(ctx: &Ctx, req: DeleteAccountSettingRequest) -> Result<DeleteAccountSettingResponse, ApiError> {
    let name = req.name.unwrap_or_default();
    let principal = req.principal_arn.unwrap_or_else(|| ctx.identity.root_principal());
    let setting = ctx.store.write(|w| {
        let key = setting_key(&principal, &name);
        let removed = w.get(ACCOUNT_SETTINGS, &key)?;
        w.delete(ACCOUNT_SETTINGS, &key)?;
        // Deleting reports what the principal is left with: the default that now applies.
        match removed {
            Some(s) => Ok::<_, ApiError>(s),
            None => Ok(effective(&w.reader(), &principal, &name)?),
        }
    })?;
    Ok(DeleteAccountSettingResponse { setting: Some(setting) })
}
