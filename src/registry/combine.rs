//! One multi-platform index over images that are already in registries
//! (`kiln imagetools create`, as buildx's): each source's image manifests,
//! with their platforms, copied into the destination repository by digest
//! (blobs skipped, mounted or copied as the registries allow), then the
//! index pushed under every tag.

use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};

use crate::oci::media;
use crate::oci::model::{self, Manifest};
use crate::oci::store::Store;
use crate::platform::Platform;
use crate::registry::client::Client;
use crate::registry::reference::Reference;
use crate::registry::RegistryError;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// An image manifest to list in the index, and the repository it is in.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// The manifest's descriptor, with its platform.
    pub descriptor: Descriptor,
    pub source: Reference,
}

/// The index `create_index` made.
#[derive(Debug, Clone)]
pub struct CombinedIndex {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
}

fn pull_scope(r: &Reference) -> [String; 1] {
    [format!("repository:{}:pull", r.repository)]
}

impl Client {
    /// The image manifests `source` names, each with its platform: the
    /// entries of an index, or the one image, whose platform its config says.
    pub async fn image_entries(&self, store: &Store, source: &Reference) -> Result<Vec<IndexEntry>> {
        let (bytes, desc) = self.fetch_manifest(source, &source.target(), None, &pull_scope(source)).await?;
        match Manifest::parse(&bytes, Some(desc.media_type().as_ref()), &source.to_string())? {
            Manifest::Index(index) => Ok(index
                .manifests()
                .iter()
                .filter(|d| media::is_manifest(d.media_type().as_ref()))
                .map(|d| IndexEntry { descriptor: d.clone(), source: source.clone() })
                .collect()),
            Manifest::Image(image) => {
                let config = image.config();
                self.pull_blob(store, source, config).await?;
                let config_bytes = store.read_blob(config.digest(), Some(config.size()))?;
                let parsed: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::Protocol {
                    what: format!("the config of {source}"),
                    detail: format!("not an image config: {e}"),
                })?;
                let mut descriptor = desc;
                descriptor.set_platform(Some(model::oci_platform(&model::config_platform(&parsed))));
                Ok(vec![IndexEntry { descriptor, source: source.clone() }])
            }
        }
    }

    /// Copies the image manifest `entry` (its blobs first) into `dest`'s
    /// repository, under its digest.
    pub async fn copy_image(&self, store: &Store, entry: &IndexEntry, dest: &Reference) -> Result<()> {
        let d = &entry.descriptor;
        let (bytes, fetched) = self.fetch_manifest(&entry.source, d.digest().as_ref(), Some(d), &pull_scope(&entry.source)).await?;
        let manifest = Manifest::parse(&bytes, Some(fetched.media_type().as_ref()), &format!("{}@{}", entry.source.name(), d.digest()))?;
        for blob in manifest.children() {
            self.copy_blob(store, &blob, &entry.source, dest).await?;
        }
        let scopes = [format!("repository:{}:pull,push", dest.repository)];
        self.put_manifest_bytes(bytes, &fetched, dest, d.digest().as_ref(), &scopes).await
    }

    /// Makes one index over every image of `sources` and pushes it to each
    /// of `tags` (with what it references). The same image named twice is
    /// listed once; two different images for one platform are an error.
    pub async fn create_index(&self, store: &Store, sources: &[Reference], tags: &[Reference], dry_run: bool) -> Result<CombinedIndex> {
        let mut entries: Vec<IndexEntry> = Vec::new();
        for source in sources {
            for entry in self.image_entries(store, source).await? {
                if entries.iter().any(|e| e.descriptor.digest() == entry.descriptor.digest()) {
                    continue;
                }
                let platform = model::descriptor_platform(&entry.descriptor);
                if let Some(p) = &platform {
                    if let Some(other) = entries.iter().find(|e| model::descriptor_platform(&e.descriptor).as_ref() == Some(p)) {
                        return Err(RegistryError::Protocol {
                            what: "combining the images".into(),
                            detail: format!("two different images for {p}: {}@{} and {}@{}", other.source.name(), other.descriptor.digest(), source.name(), entry.descriptor.digest()),
                        });
                    }
                }
                entries.push(entry);
            }
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": entries.iter().map(|e| &e.descriptor).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("an index serialises");
        let descriptor = Descriptor::new(MediaType::ImageIndex, bytes.len() as u64, crate::oci::digest::of_bytes(&bytes));
        if dry_run {
            return Ok(CombinedIndex { descriptor, bytes });
        }
        for tag in tags {
            for entry in &entries {
                self.copy_image(store, entry, tag).await?;
            }
            let scopes = [format!("repository:{}:pull,push", tag.repository)];
            self.put_manifest_bytes(bytes.clone(), &descriptor, tag, &tag.target(), &scopes).await?;
        }
        Ok(CombinedIndex { descriptor, bytes })
    }
}

/// The platform an index entry names, for display (`unknown` when none).
pub fn entry_platform(d: &Descriptor) -> String {
    model::descriptor_platform(d).map(|p: Platform| p.to_string()).unwrap_or_else(|| "unknown".into())
}
