//! The media store's links. `GET /media/v1/{token}/{name}`: a file, decrypted, as a download — never rendered by
//! a browser in the daemon's origin (`Content-Disposition: attachment`, `nosniff`, a sandboxing CSP), and with a
//! media type from a short list of inert ones (anything else is `application/octet-stream`).
//! `GET /media/v1/{token}`: the file as stored (AES-128-GCM ciphertext), which a MIMI external part points at.

use super::Served;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Media types served as themselves; everything else is served as `application/octet-stream`.
const INERT: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "audio/ogg",
    "audio/mpeg",
    "audio/mp4",
    "video/mp4",
    "video/webm",
    "application/pdf",
    "text/plain",
];

/// The file behind `token` (the name in the path is for people; the file's own is sent).
pub(super) async fn file(State(s): State<Served>, Path((token, _name)): Path<(String, String)>) -> Response {
    let Some(media) = &s.media else { return StatusCode::NOT_FOUND.into_response() };
    match media.open_token(&token).await {
        Ok(Some(m)) => {
            let media_type =
                if INERT.contains(&m.media_type.as_str()) { m.media_type.as_str() } else { "application/octet-stream" };
            let name = bridge_media::store::safe_name(m.filename.as_deref());
            let mut r = m.bytes.into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(media_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
            r
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "serving a media file");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The ciphertext behind `token` (what a MIMI external part's `url` names).
pub(super) async fn ciphertext(State(s): State<Served>, Path(token): Path<String>) -> Response {
    let Some(media) = &s.media else { return StatusCode::NOT_FOUND.into_response() };
    match media.ciphertext(&token).await {
        Ok(Some(bytes)) => {
            let mut r = bytes.into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            r
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "serving a media file");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
