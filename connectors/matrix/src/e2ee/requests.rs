//! The calls an [`OlmMachine`] asks for, made as its user's device (`?user_id=…&device_id=…`), and their answers
//! handed back to it.

use crate::homeserver::{Homeserver, HsError};
use matrix_sdk_crypto::OlmMachine;
use matrix_sdk_crypto::types::requests::{AnyOutgoingRequest, OutgoingRequest, ToDeviceRequest};
use ruma::api::client::keys::{get_keys, upload_signatures, upload_signing_keys};
use ruma::api::client::to_device::send_event_to_device;

/// Sends every request `machine` has queued (key uploads, key queries, claims, to-device messages); `Err` on the
/// first that fails (the machine keeps it queued, or asks again, and the next round sends it).
pub async fn send_all(hs: &Homeserver, machine: &OlmMachine) -> Result<(), HsError> {
    let requests = machine.outgoing_requests().await.map_err(store_error)?;
    for request in requests {
        send(hs, machine, &request).await?;
    }
    Ok(())
}

/// Sends one queued request and hands its answer to `machine`.
pub async fn send(hs: &Homeserver, machine: &OlmMachine, request: &OutgoingRequest) -> Result<(), HsError> {
    let (user, device) = (machine.user_id().as_str(), machine.device_id().as_str());
    let as_device = (user, Some(device));
    let id = request.request_id();
    let marked = match request.request() {
        AnyOutgoingRequest::KeysUpload(r) => {
            let answer = hs.send_ruma(r.clone(), as_device).await?;
            machine.mark_request_as_sent(id, &answer).await
        }
        AnyOutgoingRequest::KeysQuery(r) => {
            let mut query = get_keys::v3::Request::new();
            query.device_keys = r.device_keys.clone();
            let answer = hs.send_ruma(query, as_device).await?;
            machine.mark_request_as_sent(id, &answer).await
        }
        AnyOutgoingRequest::KeysClaim(r) => {
            let answer = hs.send_ruma(r.clone(), as_device).await?;
            machine.mark_request_as_sent(id, &answer).await
        }
        AnyOutgoingRequest::ToDeviceRequest(r) => return to_device(hs, machine, r).await,
        AnyOutgoingRequest::SignatureUpload(r) => {
            let answer = hs.send_ruma(r.clone(), as_device).await?;
            machine.mark_request_as_sent(id, &answer).await
        }
        // Verification requests in a room: the bridge's devices verify nobody interactively.
        AnyOutgoingRequest::RoomMessage(_) => return Ok(()),
    };
    marked.map_err(store_error)
}

/// Sends a to-device request (room keys, Olm messages) and tells `machine` it went.
pub async fn to_device(hs: &Homeserver, machine: &OlmMachine, r: &ToDeviceRequest) -> Result<(), HsError> {
    let (user, device) = (machine.user_id().as_str(), machine.device_id().as_str());
    let request =
        send_event_to_device::v3::Request::new_raw(r.event_type.clone(), r.txn_id.clone(), r.messages.clone());
    let answer = hs.send_ruma(request, (user, Some(device))).await?;
    machine.mark_request_as_sent(&r.txn_id, &answer).await.map_err(store_error)
}

/// Gives `machine` a cross-signing identity and uploads it: master, self-signing and user-signing keys, and the
/// device signed by the self-signing key (Synapse takes an appservice user's keys without interactive auth).
pub async fn cross_sign(hs: &Homeserver, machine: &OlmMachine) -> Result<(), HsError> {
    // Not a reset: an identity made before but not uploaded (a crash, a failed call) is uploaded as it is.
    let requests = machine.bootstrap_cross_signing(false).await.map_err(store_error)?;
    if let Some(upload) = &requests.upload_keys_req {
        send(hs, machine, upload).await?;
    }
    let keys = requests.upload_signing_keys_req;
    let mut upload = upload_signing_keys::v3::Request::new();
    upload.master_key = keys.master_key.map(|k| k.to_raw());
    upload.self_signing_key = keys.self_signing_key.map(|k| k.to_raw());
    upload.user_signing_key = keys.user_signing_key.map(|k| k.to_raw());
    let as_device = (machine.user_id().as_str(), Some(machine.device_id().as_str()));
    hs.send_ruma(upload, as_device).await?;
    let signatures: upload_signatures::v3::Request = requests.upload_signatures_req;
    let answer = hs.send_ruma(signatures, as_device).await?;
    if !answer.failures.is_empty() {
        let error = format!("signatures refused: {:?}", answer.failures);
        return Err(HsError::Refused { status: 400, errcode: "M_INVALID_SIGNATURE".into(), error });
    }
    Ok(())
}

/// A crypto store failure, as a temporary one (the call is made again).
pub(super) fn store_error(e: impl std::fmt::Display) -> HsError {
    HsError::Unavailable(format!("the crypto store: {e}"))
}
