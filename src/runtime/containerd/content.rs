//! Writing blobs into containerd's content store: one Content.Write session per blob (STAT,
//! then WRITE per chunk, then COMMIT with the expected size and digest, one answer each),
//! shared by `import` and `pull`.
//!
//! STAT is sent before the stream is awaited (grpc-go answers headers only with the first
//! response), and every data message says `WRITE` explicitly: the protobuf default action is
//! STAT, which would drop the data silently.

use std::collections::HashMap;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::WriteAction;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::connection::{CALL_TIMEOUT, Conn, StatusKind, at, classify};
use crate::runtime::{Backend, RuntimeError};

/// What opening a write session found.
#[derive(Debug)]
pub(crate) enum Opened {
    /// The blob is committed already (in this namespace).
    Exists,
    /// Another writer holds the ingest `ref` (a concurrent pull of the same blob).
    Locked,
    Writer(Box<ContentWriter>),
}

/// A Content.Write session. `offset` is where the ingest stands: a resumed ingest (or a blob
/// another namespace already has, which containerd copies in) starts past 0.
#[derive(Debug)]
pub(crate) struct ContentWriter {
    tx: mpsc::Sender<api::WriteContentRequest>,
    responses: tonic::Streaming<api::WriteContentResponse>,
    conn: Conn,
    reference: String,
    pub offset: i64,
    /// Bytes of the caller's data containerd already has (import feeds every byte).
    skip: u64,
}

impl ContentWriter {
    /// Opens ingest `reference` for a blob of `size` bytes with digest `expected` (when
    /// known).
    pub(crate) async fn open(
        conn: &Conn,
        lease: &str,
        reference: &str,
        size: u64,
        expected: Option<&str>,
    ) -> Result<Opened, RuntimeError> {
        let write_at = at("write image content", "content", expected.unwrap_or(reference));
        let (tx, rx) = mpsc::channel(4);
        let stat = api::WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_owned(),
            total: size as i64,
            expected: expected.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let _ = tx.send(stat).await;
        let req = conn.leased(tokio_stream::wrappers::ReceiverStream::new(rx), lease)?;
        let opened = |s: &tonic::Status| match classify(s) {
            StatusKind::AlreadyExists => Some(Opened::Exists),
            StatusKind::Unavailable if std::error::Error::source(s).is_none() => Some(Opened::Locked),
            _ => None,
        };
        let mut responses = match conn.raw(write_at, CALL_TIMEOUT, conn.content().write(req)).await? {
            Ok(r) => r,
            Err(s) => return opened(&s).map(Ok).unwrap_or_else(|| Err(conn.error(s, write_at))),
        };
        match tokio::time::timeout(CALL_TIMEOUT, responses.message()).await {
            Ok(Ok(Some(status))) => Ok(Opened::Writer(Box::new(ContentWriter {
                tx,
                responses,
                conn: conn.clone(),
                reference: reference.to_owned(),
                offset: status.offset,
                skip: 0,
            }))),
            Ok(Ok(None)) => {
                Err(RuntimeError::StreamEnded { runtime: Backend::Containerd, operation: write_at.operation })
            }
            Ok(Err(s)) => opened(&s).map(Ok).unwrap_or_else(|| Err(conn.error(s, write_at))),
            Err(_) => Err(RuntimeError::Timeout { operation: write_at.operation, after: CALL_TIMEOUT }),
        }
    }

    /// The writer will be fed the blob from its first byte: what containerd has is skipped.
    pub(crate) fn skipping(mut self: Box<Self>) -> Box<Self> {
        self.skip = u64::try_from(self.offset).unwrap_or(0);
        self
    }

    async fn exchange(&mut self, req: api::WriteContentRequest) -> Result<Option<i64>, RuntimeError> {
        let write_at = at("write image content", "content", &self.reference);
        let closed =
            || RuntimeError::StreamEnded { runtime: Backend::Containerd, operation: write_at.operation };
        if self.tx.send(req).await.is_err() {
            // The request stream is gone: the session's error, if any, is in the responses.
            return match self.responses.message().await {
                Err(s) => Err(self.conn.error(s, write_at)),
                Ok(_) => Err(closed()),
            };
        }
        match tokio::time::timeout(CALL_TIMEOUT, self.responses.message()).await {
            Ok(Ok(Some(resp))) => Ok(Some(resp.offset)),
            Ok(Ok(None)) => Err(closed()),
            Ok(Err(s)) if classify(&s) == StatusKind::AlreadyExists => Ok(None),
            Ok(Err(s)) => Err(self.conn.error(s, write_at)),
            Err(_) => Err(RuntimeError::Timeout { operation: write_at.operation, after: CALL_TIMEOUT }),
        }
    }

    /// Truncates the ingest to nothing (the registry would not resume where it stands).
    pub(crate) async fn restart(&mut self) -> Result<(), RuntimeError> {
        if self.offset == 0 {
            return Ok(());
        }
        let req =
            api::WriteContentRequest { action: WriteAction::Write as i32, offset: 0, ..Default::default() };
        if let Some(offset) = self.exchange(req).await? {
            self.offset = offset;
        }
        Ok(())
    }

    pub(crate) async fn write(&mut self, mut data: Vec<u8>) -> Result<(), RuntimeError> {
        if self.skip > 0 {
            let n = data.len().min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            data.drain(..n);
            self.skip -= n as u64;
            if data.is_empty() {
                return Ok(());
            }
        }
        let req = api::WriteContentRequest {
            action: WriteAction::Write as i32,
            offset: self.offset,
            data,
            ..Default::default()
        };
        if let Some(offset) = self.exchange(req).await? {
            self.offset = offset;
        }
        Ok(())
    }

    /// Commits the blob as `digest` of `size` bytes with `labels`. containerd checks both;
    /// a mismatch is `WrongState` and leaves the ingest for [`abort`].
    pub(crate) async fn commit(
        mut self: Box<Self>,
        size: u64,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let req = api::WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: self.offset,
            total: size as i64,
            expected: digest.to_owned(),
            labels: labels.clone(),
            ..Default::default()
        };
        if self.exchange(req).await?.is_none() {
            // Someone else committed it first: its labels are still ours to add.
            set_labels(&self.conn, digest, labels).await?;
        }
        Ok(())
    }
}

/// Drops ingest `reference` and what it holds (after a failed verification).
pub(crate) async fn abort(conn: &Conn, reference: &str) -> Result<(), RuntimeError> {
    let req = conn.request(api::AbortRequest { r#ref: reference.to_owned() });
    conn.call_opt(at("abort an image download", "ingest", reference), conn.content().abort(req))
        .await
        .map(|_| ())
}

pub(crate) async fn content_exists(conn: &Conn, digest: &str) -> Result<bool, RuntimeError> {
    Ok(content_info(conn, digest).await?.is_some())
}

pub(crate) async fn content_info(conn: &Conn, digest: &str) -> Result<Option<api::Info>, RuntimeError> {
    let req = conn.request(api::InfoRequest { digest: digest.to_owned() });
    Ok(conn
        .call_opt(at("look up content", "content", digest), conn.content().info(req))
        .await?
        .and_then(|r| r.info))
}

/// Sets `labels` on blob `digest`, leaving its other labels alone.
pub(crate) async fn set_labels(
    conn: &Conn,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<(), RuntimeError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = api::Info { digest: digest.to_owned(), labels, ..Default::default() };
    let req = api::UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) };
    conn.call(at("label image content", "content", digest), conn.content().update(conn.request(req))).await?;
    Ok(())
}

/// Writes `data` as a blob (ingest `reference`) with `labels` and returns its digest.
pub(crate) async fn write_bytes(
    conn: &Conn,
    lease: &str,
    reference: Option<&str>,
    data: &[u8],
    labels: HashMap<String, String>,
) -> Result<String, RuntimeError> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    let random;
    let reference = match reference {
        Some(r) => r,
        None => {
            random = format!("ecsd-import-{}", uuid::Uuid::new_v4().simple());
            &random
        }
    };
    let mut backoff = super::connection::Backoff::new(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    loop {
        match ContentWriter::open(conn, lease, reference, data.len() as u64, Some(&digest)).await? {
            Opened::Exists => {
                set_labels(conn, &digest, labels).await?;
                return Ok(digest);
            }
            Opened::Locked => {
                conn.server_version().await?;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Opened::Writer(w) => {
                let mut w = w.skipping();
                w.write(data.to_vec()).await?;
                w.commit(data.len() as u64, &digest, labels).await?;
                return Ok(digest);
            }
        }
    }
}
