//! OCI images: the image model, the content store, tags and layouts.
