//! Schema-driven decoding of images for humans and tools, via the descriptor pool.

use std::path::Path;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Value, json};

use crate::{DESCRIPTORS, ImageError, ImageKind, ImageReader, PagesReader};

/// The descriptor pool built from [`DESCRIPTORS`] (`None` only if the embedded
/// descriptor set were unusable, which the build rules out).
pub fn descriptor_pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).ok())
        .as_ref()
}

/// The descriptor of `kind`'s entry message; `path` is only for the error.
pub(crate) fn message_descriptor(
    path: &Path,
    kind: ImageKind,
) -> Result<MessageDescriptor, ImageError> {
    let schema_error = |message: String| ImageError::Schema {
        path: path.to_path_buf(),
        message,
    };
    let name = kind
        .message_name()
        .ok_or_else(|| schema_error(format!("{kind} images have no entry message")))?;
    descriptor_pool()
        .ok_or_else(|| schema_error("embedded descriptor set does not decode".to_owned()))?
        .get_message_by_name(name)
        .ok_or_else(|| schema_error(format!("message {name} missing from the descriptor set")))
}

/// Decodes one entry payload as a dynamic message of `desc`'s type.
pub(crate) fn decode_dynamic(
    path: &Path,
    desc: &MessageDescriptor,
    offset: u64,
    entry: u64,
    payload: &[u8],
) -> Result<DynamicMessage, ImageError> {
    DynamicMessage::decode(desc.clone(), payload).map_err(|source| ImageError::Decode {
        path: path.to_path_buf(),
        offset,
        entry,
        message: desc.full_name().to_owned(),
        source,
    })
}

fn entry_to_json(msg: &DynamicMessage) -> Result<Value, serde_json::Error> {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
}

/// Decodes any image file into JSON.
///
/// Framed kinds give `{"kind", "magic", "version", "entries": [...]}`, every entry
/// rendered from the schema with proto field names, 64-bit integers as numbers and all
/// fields present; pages files give `{"kind", "version", "compression", "data_bytes"}`.
pub fn decode_to_json(path: &Path) -> Result<Value, ImageError> {
    let (mut reader, kind) = match ImageReader::open_path(path) {
        Ok(opened) => opened,
        Err(ImageError::NotFramed {
            kind: ImageKind::Pages,
            ..
        }) => {
            let pages = PagesReader::open_path(path)?;
            return Ok(json!({
                "kind": ImageKind::Pages.name(),
                "magic": format!("{:#010x}", ImageKind::Pages.magic()),
                "version": crate::FORMAT_VERSION,
                "compression": pages.compression().name(),
                "data_bytes": pages.data_len(),
            }));
        }
        Err(e) => return Err(e),
    };
    let desc = message_descriptor(path, kind)?;
    let mut entries = Vec::new();
    while let Some((offset, payload)) = reader.next_raw()? {
        let entry = reader.entries_read() - 1;
        let msg = decode_dynamic(path, &desc, offset, entry, &payload)?;
        let value = entry_to_json(&msg).map_err(|source| ImageError::Json {
            path: path.to_path_buf(),
            offset,
            entry,
            source,
        })?;
        entries.push(value);
    }
    Ok(json!({
        "kind": kind.name(),
        "magic": format!("{:#010x}", kind.magic()),
        "version": crate::FORMAT_VERSION,
        "entries": entries,
    }))
}
