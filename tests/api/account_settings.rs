use aws_sdk_ecs::types::SettingName;

use crate::common::{Ecsd, err};

const ROOT: &str = "arn:aws:iam::000000000000:root";

#[tokio::test]
async fn settings_resolve_principal_then_account_default_then_aws_default() {
    let e = Ecsd::start().await;
    let out = e
        .client
        .list_account_settings()
        .effective_settings(true)
        .name(SettingName::ContainerInsights)
        .send()
        .await
        .unwrap();
    let s = &out.settings()[0];
    assert_eq!(
        (s.value(), s.principal_arn(), s.r#type().map(|t| t.as_str())),
        (Some("disabled"), Some(ROOT), Some("aws_managed"))
    );

    let put = e
        .client
        .put_account_setting_default()
        .name(SettingName::ContainerInsights)
        .value("enabled")
        .send()
        .await
        .unwrap();
    assert_eq!(put.setting().unwrap().value(), Some("enabled"));
    let role = "arn:aws:iam::000000000000:role/dev";
    let out = e
        .client
        .list_account_settings()
        .effective_settings(true)
        .principal_arn(role)
        .name(SettingName::ContainerInsights)
        .send()
        .await
        .unwrap();
    assert_eq!(out.settings()[0].value(), Some("enabled"));

    e.client
        .put_account_setting()
        .name(SettingName::ContainerInsights)
        .value("disabled")
        .principal_arn(role)
        .send()
        .await
        .unwrap();
    let mine = e.client.list_account_settings().principal_arn(role).send().await.unwrap();
    assert_eq!(mine.settings().len(), 1);
    assert_eq!(mine.settings()[0].value(), Some("disabled"));
    assert_eq!(mine.settings()[0].r#type().map(|t| t.as_str()), Some("user"));

    let deleted = e
        .client
        .delete_account_setting()
        .name(SettingName::ContainerInsights)
        .principal_arn(role)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.setting().unwrap().value(), Some("disabled"));
    let mine = e.client.list_account_settings().principal_arn(role).send().await.unwrap();
    assert!(mine.settings().is_empty());
}

#[tokio::test]
async fn effective_settings_page_and_filter() {
    let e = Ecsd::start().await;
    let first =
        e.client.list_account_settings().effective_settings(true).max_results(4).send().await.unwrap();
    assert_eq!(first.settings().len(), 4);
    let all: Vec<_> = e
        .client
        .list_account_settings()
        .effective_settings(true)
        .max_results(4)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(all.len(), 11, "every setting of the ECS model ecsd was generated from");
    let enabled =
        e.client.list_account_settings().effective_settings(true).value("enabled").send().await.unwrap();
    assert!(enabled.settings().iter().all(|s| s.value() == Some("enabled")));
    assert!(enabled.settings().iter().any(|s| s.name() == Some(&SettingName::TaskLongArnFormat)));
}

#[tokio::test]
async fn invalid_values_are_refused() {
    let e = Ecsd::start().await;
    let (code, msg) = err(e
        .client
        .put_account_setting()
        .name(SettingName::TaskLongArnFormat)
        .value("maybe")
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(msg, "value 'maybe' is not valid for taskLongArnFormat: use one of enabled, disabled");
    let (code, _) = err(e
        .client
        .put_account_setting()
        .name(SettingName::GuardDutyActivate)
        .value("on")
        .send()
        .await
        .unwrap_err());
    assert_eq!(code, "InvalidParameterException");
}
