//! `ecsd image import FILE` on the Podman runtime, through libpod's `images/load`.
//!
//! libpod loads a `docker save` tar as it is, but refuses an OCI layout tar whose `index.json`
//! lists more than one image ("more than one image in oci, choose an image"). So an OCI
//! archive goes to libpod as one OCI layout tar per named image: that image's index entry
//! (named with the full reference ecsd's containerd import would give it) and the blobs it
//! reaches, copied from the archive as it is read again, never unpacked to disk. The archive
//! is read once to learn its images (keeping only its JSON documents, bounded) and once more
//! per image; what goes to libpod is streamed with bounded memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::runtime::containerd::images::{
    BlobKind, Descriptor, Index, JSON_BLOB_MAX, Manifest, OCI_INDEX, blob_kind,
};
use crate::runtime::containerd::import::{Compression, ImportError, clean, format_error, oci_name, sniff};

/// The JSON documents kept from the first read, all together, at most this big.
const DOCUMENTS_MAX: usize = 64 << 20;
/// What the blocking writer hands to the request body at a time.
const CHUNK: usize = 1 << 20;

/// What goes to libpod for one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The archive as it is (a `docker save` tar: libpod names its images from `RepoTags`).
    Whole,
    /// One OCI layout tar per image.
    PerImage(Vec<ImagePart>),
}

/// One image of an OCI archive: its name, its index entry and every blob it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImagePart {
    pub(crate) name: String,
    pub(crate) entry: Descriptor,
    /// Archive paths (`blobs/sha256/…`) of the blobs the entry reaches, itself included.
    pub(crate) blobs: BTreeSet<String>,
    /// The length of its layout tar, when known in advance (libpod reads a body of known
    /// length markedly faster than a chunked one).
    pub(crate) length: Option<u64>,
}

/// The small files and JSON blobs of an archive, by cleaned path.
#[derive(Debug, Default)]
struct Documents {
    files: HashMap<String, Vec<u8>>,
    total: usize,
    /// The size of every file, as first seen.
    sizes: HashMap<String, u64>,
}

/// Calls `f` with the cleaned path, the size and the data of each regular file of the archive
/// (gzip-compressed or not). What `f` leaves unread of an uncompressed archive is seeked over,
/// not read.
fn each_file(
    file: &Path,
    mut f: impl FnMut(&str, u64, &mut dyn Read) -> std::io::Result<()>,
) -> std::io::Result<()> {
    fn visit<R: Read>(
        mut entry: tar::Entry<'_, R>,
        f: &mut impl FnMut(&str, u64, &mut dyn Read) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if !entry.header().entry_type().is_file() {
            return Ok(());
        }
        let Some(path) = clean(&entry.path()?) else { return Ok(()) };
        let size = entry.size();
        f(&path, size, &mut entry)
    }
    let mut reader = BufReader::with_capacity(CHUNK, std::fs::File::open(file)?);
    if sniff(reader.fill_buf()?) == Compression::Gzip {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
        for entry in archive.entries()? {
            visit(entry?, &mut f)?;
        }
    } else {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries_with_seek()? {
            visit(entry?, &mut f)?;
        }
    }
    Ok(())
}

fn read_error(file: &Path) -> impl Fn(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Read { archive: file.display().to_string(), source }
}

/// Reads `file` once and decides what goes to libpod. Blocking.
pub(crate) fn plan(file: &Path) -> Result<Plan, ImportError> {
    let name = file.display().to_string();
    let docs = documents(file)?;
    let Some(index) = docs.files.get("index.json") else {
        if docs.files.contains_key("manifest.json") {
            return Ok(Plan::Whole);
        }
        return Err(format_error(
            &name,
            "it has neither index.json (OCI image layout) nor manifest.json (docker save)".into(),
        ));
    };
    let index: Index = serde_json::from_slice(index)
        .map_err(|e| format_error(&name, format!("index.json is not an OCI image index: {e}")))?;
    let mut parts: Vec<ImagePart> = Vec::new();
    for d in &index.manifests {
        let Some(image) = oci_name(d) else { continue };
        if parts.iter().any(|p| p.name == image) {
            continue;
        }
        let mut blobs = BTreeSet::new();
        reach(&docs, d, &mut blobs, 0, &name)?;
        let mut annotations = BTreeMap::new();
        // Podman 4 names an OCI image from either; both carry the whole reference.
        annotations.insert("io.containerd.image.name".to_owned(), image.clone());
        annotations.insert("org.opencontainers.image.ref.name".to_owned(), image.clone());
        let entry = Descriptor { annotations, ..d.clone() };
        let files =
            [("oci-layout", OCI_LAYOUT.len() as u64), ("index.json", index_json(&entry).len() as u64)];
        let present = blobs.iter().filter_map(|b| docs.sizes.get(b).map(|size| (b.as_str(), *size)));
        let length = tar_length(files.into_iter().chain(present));
        parts.push(ImagePart { name: image, entry, blobs, length });
    }
    if parts.is_empty() {
        return Err(ImportError::Unnamed { archive: name });
    }
    Ok(Plan::PerImage(parts))
}

/// The first read: `index.json`, `manifest.json` and every blob that is a JSON document.
fn documents(file: &Path) -> Result<Documents, ImportError> {
    let mut docs = Documents::default();
    each_file(file, |path, size, data| {
        docs.sizes.entry(path.to_owned()).or_insert(size);
        let metadata = matches!(path, "index.json" | "manifest.json");
        if !metadata && (!path.starts_with("blobs/") || size > JSON_BLOB_MAX as u64) {
            return Ok(());
        }
        let mut first = [0u8; 1];
        let n = data.read(&mut first)?;
        // Manifests, indexes and configs are JSON objects; layers are tar or compressed.
        if !metadata && (n == 0 || first[0] != b'{') {
            return Ok(());
        }
        let mut doc = first[..n].to_vec();
        data.take(JSON_BLOB_MAX as u64).read_to_end(&mut doc)?;
        docs.total += doc.len();
        if docs.total > DOCUMENTS_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("its JSON documents exceed {} MiB together", DOCUMENTS_MAX >> 20),
            ));
        }
        docs.files.insert(path.to_owned(), doc);
        Ok(())
    })
    .map_err(read_error(file))?;
    Ok(docs)
}

fn blob_path(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    (!alg.is_empty() && !hex.is_empty() && !hex.contains('/') && !alg.contains('/'))
        .then(|| format!("blobs/{alg}/{hex}"))
}

/// Adds the blobs `d` reaches (itself, and through indexes and manifests their children);
/// `archive` names the file in the error of a document that is not what it says.
fn reach(
    docs: &Documents,
    d: &Descriptor,
    out: &mut BTreeSet<String>,
    depth: u32,
    archive: &str,
) -> Result<(), ImportError> {
    let bad = |reason: String| format_error(archive, reason);
    if depth > 8 {
        return Err(bad(format!("{} nests indexes deeper than 8", d.digest)));
    }
    let path_of =
        |d: &Descriptor| blob_path(&d.digest).ok_or_else(|| bad(format!("{} is not a digest", d.digest)));
    let path = path_of(d)?;
    out.insert(path.clone());
    let Some(data) = docs.files.get(&path) else {
        // Not a JSON document of the archive: a layer or config (or missing, which libpod says).
        return Ok(());
    };
    match blob_kind(&d.media_type, data) {
        BlobKind::Index => {
            let index: Index = serde_json::from_slice(data)
                .map_err(|e| bad(format!("{} is not an image index: {e}", d.digest)))?;
            for m in &index.manifests {
                reach(docs, m, out, depth + 1, archive)?;
            }
        }
        BlobKind::Manifest => {
            let manifest: Manifest = serde_json::from_slice(data)
                .map_err(|e| bad(format!("{} is not an image manifest: {e}", d.digest)))?;
            for c in std::iter::once(&manifest.config).chain(&manifest.layers) {
                out.insert(path_of(c)?);
            }
        }
        BlobKind::Other => {}
    }
    Ok(())
}

/// Hands what a blocking writer writes to an async reader, a chunk at a time.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "libpod stopped reading"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Streams what goes to libpod for `part` (`None`: the whole file) from a blocking thread;
/// a failure to read the archive ends the stream with that error.
pub(crate) fn stream(
    file: PathBuf,
    part: Option<ImagePart>,
) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let result = match &part {
            None => std::fs::File::open(&file).and_then(|mut f| std::io::copy(&mut f, &mut out).map(|_| ())),
            Some(part) => write_layout(&file, part, &mut out),
        }
        .and_then(|()| out.flush());
        if let Err(e) = result
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The `index.json` of a layout of `entry` alone.
fn index_json(entry: &Descriptor) -> String {
    serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).to_string()
}

/// The length of the tar [`write_layout`] writes of these files (path, size): a 512-byte
/// header and the data padded to 512 bytes each, then two zero blocks. `None` if a path needs
/// more than a ustar header (a long-name entry of its own).
fn tar_length<'a>(files: impl Iterator<Item = (&'a str, u64)>) -> Option<u64> {
    let mut length = 1024;
    for (path, size) in files {
        if path.len() > 100 {
            return None;
        }
        length += 512 + size.div_ceil(512) * 512;
    }
    Some(length)
}

/// Writes an OCI layout tar of `part` alone: `oci-layout`, an `index.json` of its one entry,
/// and its blobs as the archive holds them.
fn write_layout(file: &Path, part: &ImagePart, out: &mut impl Write) -> std::io::Result<()> {
    fn header(size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header
    }
    let mut builder = tar::Builder::new(out);
    builder.append_data(&mut header(OCI_LAYOUT.len() as u64), "oci-layout", OCI_LAYOUT)?;
    let index = index_json(&part.entry);
    builder.append_data(&mut header(index.len() as u64), "index.json", index.as_bytes())?;
    let mut written = BTreeSet::new();
    each_file(file, |path, size, data| {
        if !part.blobs.contains(path) || !written.insert(path.to_owned()) {
            return Ok(());
        }
        builder.append_data(&mut header(size), path, data)
    })?;
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_tar(dir: &Path, entries: &[(&str, Vec<u8>)]) -> PathBuf {
        let path = dir.join("in.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("./{name}"), data.as_slice()).unwrap();
        }
        b.finish().unwrap();
        path
    }

    fn digest(data: &[u8]) -> String {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
    }

    fn blob(d: &str) -> String {
        format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap())
    }

    /// Two images sharing a layer, one unnamed entry, and a file of the archive no image uses.
    fn two_images(dir: &Path) -> (PathBuf, Vec<String>) {
        let layer = b"\x1f\x8b not json".to_vec();
        let l = digest(&layer);
        let mut entries = vec![(blob(&l), layer)];
        let mut manifests = Vec::new();
        let mut names = Vec::new();
        for (i, name) in [Some("docker.io/library/a:latest"), Some("b"), None].iter().enumerate() {
            let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{i}}}"#).into_bytes();
            let c = digest(&config);
            let manifest = serde_json::json!({"schemaVersion":2,
                "mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":c,"size":config.len()},
                "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":l,"size":11}]})
            .to_string()
            .into_bytes();
            let m = digest(&manifest);
            let annotations = match name {
                Some(n) => {
                    serde_json::json!({"io.containerd.image.name": n, "org.opencontainers.image.ref.name": "latest"})
                }
                None => serde_json::json!({"org.opencontainers.image.ref.name": "latest"}),
            };
            manifests.push(serde_json::json!({"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "digest":m,"size":manifest.len(),"annotations":annotations}));
            names.push(m.clone());
            entries.push((blob(&c), config));
            entries.push((blob(&m), manifest));
        }
        entries.push((
            "index.json".into(),
            serde_json::json!({"schemaVersion":2,"manifests":manifests}).to_string().into_bytes(),
        ));
        entries.push(("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
        entries.push(("blobs/sha256/unused".into(), b"{}".to_vec()));
        let refs: Vec<(&str, Vec<u8>)> = entries.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        (layout_tar(dir, &refs), names)
    }

    fn read_tar(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for e in tar::Archive::new(data).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            out.insert(path, d);
        }
        out
    }

    #[test]
    fn an_oci_archive_of_several_images_becomes_one_layout_per_named_image() {
        let dir = tempfile::tempdir().unwrap();
        let (file, manifests) = two_images(dir.path());
        let Plan::PerImage(parts) = plan(&file).unwrap() else { panic!("not split") };
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        // The unnamed entry is left out, as containerd's import leaves it; "b" is normalised.
        assert_eq!(names, ["docker.io/library/a:latest", "docker.io/library/b:latest"]);
        let mut out = Vec::new();
        write_layout(&file, &parts[1], &mut out).unwrap();
        let files = read_tar(&out);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["digest"], manifests[1].as_str());
        assert_eq!(
            entries[0]["annotations"]["org.opencontainers.image.ref.name"],
            "docker.io/library/b:latest"
        );
        // Its manifest, config and the shared layer; not the other images' nor the unused file.
        let blobs: Vec<&String> = files.keys().filter(|k| k.starts_with("blobs/")).collect();
        assert_eq!(blobs.len(), 3, "{blobs:?}");
        assert!(files.contains_key(&blob(&manifests[1])));
        assert!(!files.contains_key(&blob(&manifests[0])));
        assert!(!files.contains_key("blobs/sha256/unused"));
        assert!(files.contains_key("oci-layout"));
    }

    #[test]
    fn docker_save_tars_go_whole_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let docker = layout_tar(dir.path(), &[("manifest.json", b"[]".to_vec())]);
        assert_eq!(plan(&docker).unwrap(), Plan::Whole);
        let other = dir.path().join("other.tar");
        std::fs::rename(layout_tar(dir.path(), &[("hello.txt", b"hi".to_vec())]), &other).unwrap();
        let e = plan(&other).unwrap_err().to_string();
        assert!(e.contains("neither index.json (OCI image layout) nor manifest.json"), "{e}");
        let unnamed = layout_tar(
            dir.path(),
            &[("index.json", br#"{"manifests":[{"digest":"sha256:00","size":1,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}"#.to_vec())],
        );
        assert!(matches!(plan(&unnamed), Err(ImportError::Unnamed { .. })));
        let missing = dir.path().join("missing.tar");
        assert!(matches!(plan(&missing), Err(ImportError::Read { .. })));
    }

    #[tokio::test]
    async fn the_stream_carries_the_layout_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = two_images(dir.path());
        let Plan::PerImage(parts) = plan(&file).unwrap() else { panic!("not split") };
        let mut rx = stream(file.clone(), Some(parts[0].clone()));
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        let mut direct = Vec::new();
        write_layout(&file, &parts[0], &mut direct).unwrap();
        assert_eq!(got, direct);
        assert_eq!(Some(got.len() as u64), parts[0].length, "the length told in advance");
        // The whole file, byte for byte.
        let mut rx = stream(file.clone(), None);
        let mut whole = Vec::new();
        while let Some(chunk) = rx.recv().await {
            whole.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(whole, std::fs::read(&file).unwrap());
    }
}
