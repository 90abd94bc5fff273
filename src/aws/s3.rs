//! S3's GetObject, the one REST call.

use super::{AwsError, Client, Request, Service, uri_encode};

impl Client {
    /// The bytes of object `key` in `bucket`: path-style at a configured endpoint, else at
    /// the bucket's virtual host in the client's region.
    pub async fn s3_get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>, AwsError> {
        let key = uri_encode(key, true);
        let (base, signing_region) = self.endpoint(Service::S3);
        let (endpoint, url) = match self.aws.inner.settings.endpoints.get(Service::S3) {
            Some(_) => (base.clone(), format!("{base}/{}/{key}", uri_encode(bucket, false))),
            None => {
                let host = format!("https://{bucket}.{}", base.trim_start_matches("https://"));
                (host.clone(), format!("{host}/{key}"))
            }
        };
        let request = Request {
            service: Service::S3,
            operation: "GetObject",
            method: reqwest::Method::GET,
            endpoint,
            url,
            signing_region,
            headers: vec![],
            body: vec![],
            sign_body: false,
        };
        self.send(&request).await
    }
}
