//! SSM Parameter Store over AWS JSON 1.1: GetParameters.

use std::fmt;

use serde::Deserialize;

use super::{AwsError, Client, Service};

/// GetParameters takes at most this many names per call.
pub const GET_PARAMETERS_MAX: usize = 10;

/// GetParameters' answer for all the names asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Parameters {
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// The names that are not parameters.
    #[serde(default)]
    pub invalid_parameters: Vec<String>,
}

/// One parameter. `Debug` hides the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Parameter {
    #[serde(default)]
    pub name: String,
    pub value: Option<String>,
    /// The `:version` or `:label` the name was asked for with.
    #[serde(default)]
    pub selector: String,
    #[serde(rename = "ARN", default)]
    pub arn: String,
}

impl fmt::Debug for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parameter")
            .field("name", &self.name)
            .field("value", &self.value.as_ref().map(|_| "** redacted **"))
            .field("selector", &self.selector)
            .field("arn", &self.arn)
            .finish()
    }
}

impl Client {
    /// Parameters `names` (names or ARNs, with an optional `:version` or `:label`),
    /// decrypted when `with_decryption`, in calls of [`GET_PARAMETERS_MAX`] names.
    pub async fn get_parameters(
        &self,
        names: &[String],
        with_decryption: bool,
    ) -> Result<Parameters, AwsError> {
        let mut all = Parameters::default();
        for batch in names.chunks(GET_PARAMETERS_MAX) {
            let input = serde_json::json!({ "Names": batch, "WithDecryption": with_decryption });
            let out: Parameters = self.json(Service::Ssm, "AmazonSSM.GetParameters", &input).await?;
            all.parameters.extend(out.parameters);
            all.invalid_parameters.extend(out.invalid_parameters);
        }
        Ok(all)
    }
}
