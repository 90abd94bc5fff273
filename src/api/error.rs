//! The one place where errors become ECS exceptions and HTTP statuses.

use axum::http::StatusCode;

use crate::model::arn::ArnError;
use crate::model::tags::TagError;
use crate::model::task_definition::TaskDefinitionError;
use crate::store::StoreError;

/// The ECS exception names ecsd answers with (`__type` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    Client,
    InvalidParameter,
    ClusterNotFound,
    ClusterContainsServices,
    ClusterContainsTasks,
    ClusterContainsContainerInstances,
    ServiceNotFound,
    ServiceNotActive,
    ServiceDeploymentNotFound,
    Conflict,
    ResourceNotFound,
    ResourceInUse,
    TargetNotFound,
    UnsupportedFeature,
    AccessDenied,
    Serialization,
    /// SSM's name for a request that breaks the model's constraints.
    Validation,
    UnknownOperation,
    Server,
}

impl Exception {
    pub fn name(self) -> &'static str {
        match self {
            Exception::Client => "ClientException",
            Exception::InvalidParameter => "InvalidParameterException",
            Exception::ClusterNotFound => "ClusterNotFoundException",
            Exception::ClusterContainsServices => "ClusterContainsServicesException",
            Exception::ClusterContainsTasks => "ClusterContainsTasksException",
            Exception::ClusterContainsContainerInstances => "ClusterContainsContainerInstancesException",
            Exception::ServiceNotFound => "ServiceNotFoundException",
            Exception::ServiceNotActive => "ServiceNotActiveException",
            Exception::ServiceDeploymentNotFound => "ServiceDeploymentNotFoundException",
            Exception::Conflict => "ConflictException",
            Exception::ResourceNotFound => "ResourceNotFoundException",
            Exception::ResourceInUse => "ResourceInUseException",
            Exception::TargetNotFound => "TargetNotFoundException",
            Exception::UnsupportedFeature => "UnsupportedFeatureException",
            Exception::AccessDenied => "AccessDeniedException",
            Exception::Serialization => "SerializationException",
            Exception::Validation => "ValidationException",
            Exception::UnknownOperation => "UnknownOperationException",
            Exception::Server => "ServerException",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Exception::Server => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", exception.name())]
pub struct ApiError {
    pub exception: Exception,
    pub message: String,
}

impl ApiError {
    pub fn new(exception: Exception, message: impl Into<String>) -> Self {
        ApiError { exception, message: message.into() }
    }

    pub fn client(message: impl Into<String>) -> Self {
        Self::new(Exception::Client, message)
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(Exception::InvalidParameter, message)
    }

    pub fn cluster_not_found() -> Self {
        Self::new(Exception::ClusterNotFound, "Cluster not found.")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The chain goes to the log once, here; the client learns that the store failed.
        tracing::error!(error = %crate::error_chain(&e), "store failure");
        ApiError::new(Exception::Server, format!("ecsd could not complete the request: {e}"))
    }
}

impl From<TaskDefinitionError> for ApiError {
    fn from(e: TaskDefinitionError) -> Self {
        ApiError::client(e.to_string())
    }
}

impl From<TagError> for ApiError {
    fn from(e: TagError) -> Self {
        ApiError::invalid_parameter(e.to_string())
    }
}

impl From<ArnError> for ApiError {
    fn from(e: ArnError) -> Self {
        ApiError::invalid_parameter(e.to_string())
    }
}
