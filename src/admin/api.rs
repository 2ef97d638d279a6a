//! The backend API routes (`/api/...`): the key check, request bodies and path
//! parameters checked like the client protocol, the hand-off to the owner shard and its
//! answer as JSON. In: a parsed [`Request`] and the [`AdminState`]; out: a [`Response`].

use super::*;

/// The API, if it is on and the request carries its key; else 404 or 401.
pub(super) fn authorized<'a>(request: &Request, state: &'a AdminState) -> Result<&'a ApiState, Response> {
    let Some(api) = &state.api else {
        return Err(api_error(
            404,
            "api_disabled",
            "API disabled: configure api_key or api_key_file",
        ));
    };
    let presented = request
        .head
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer_token(value.as_bytes()));
    match presented {
        Some(token) if constant_time_eq(token, api.key.expose()) => Ok(api),
        _ => {
            let mut response = api_error(
                401,
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer <key>)",
            );
            response.challenge = true;
            Err(response)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value, by the crate's one strict
/// parser (`crate::auth::bearer_token`): anything but one token68 is no token.
pub(super) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = std::str::from_utf8(value).ok()?;
    crate::auth::bearer_token(value).ok().flatten().map(str::as_bytes)
}

/// Compares a presented token with the key in time that depends only on the token's
/// length, never on where the first difference is or on the key.
pub(super) fn constant_time_eq(presented: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let mut diff = u8::from(presented.len() != key.len());
    for (i, &b) in presented.iter().enumerate() {
        diff |= b ^ key[i % key.len()];
    }
    std::hint::black_box(diff) == 0
}

/// `{"error": code, "detail": detail}` with `status`.
pub(super) fn api_error(status: u16, code: &str, detail: &str) -> Response {
    Response::json(
        status,
        serde_json::json!({ "error": code, "detail": detail }).to_string(),
    )
}

/// Parses a JSON body into `T` (unknown fields refused) or answers 400.
pub(super) fn json_body<'a, T: Deserialize<'a>>(request: &'a Request) -> Result<T, Response> {
    serde_json::from_slice(&request.body).map_err(|e| api_error(400, "bad_request", &format!("invalid JSON body: {e}")))
}

/// Checks a user id or room from the API like the client protocol does (400 or 413).
pub(super) fn check_field(value: &str, field: &str, max: usize) -> Result<(), Response> {
    check_name(value, field, max).map_err(|(code, detail)| {
        let status = if code.label() == "too_large" { 413 } else { 400 };
        api_error(status, code.label(), &detail)
    })
}

pub(super) fn check_body(api: &ApiState, body: &RawValue) -> Result<(), Response> {
    if body.get().len() > api.max_payload_bytes {
        return Err(api_error(
            413,
            "too_large",
            &format!("body is over {} bytes", api.max_payload_bytes),
        ));
    }
    Ok(())
}

/// Hands `op` to `shard` and waits for the answer (503 if no shard takes it, 504 if it
/// does not answer in time).
pub(super) async fn call(api: &ApiState, shard: ShardId, op: ApiOp) -> Result<ApiReply, Response> {
    let (reply, answer) = sync_channel(1);
    if api.sink.deliver(shard, ApiRequest { op, reply }).is_err() {
        return Err(unavailable());
    }
    match recv_by(&answer, Instant::now() + api.timeout).await {
        Ok(ApiReply::Overloaded) => Err(api_error(503, "overloaded", "the gateway is overloaded; retry")),
        Ok(ApiReply::StorageFull) => Err(api_error(
            507,
            "storage_full",
            "the message store's disk budget is spent; nothing was stored",
        )),
        Ok(ApiReply::Unavailable) => Err(api_error(
            503,
            "unavailable",
            "the cluster store (Redis) is unavailable; nothing was stored; retry",
        )),
        Ok(reply) => Ok(reply),
        Err(RecvTimeoutError::Timeout) => Err(api_error(504, "timeout", "the shard did not answer in time")),
        // The shard dropped the request unanswered (stopping).
        Err(RecvTimeoutError::Disconnected) => Err(unavailable()),
    }
}

/// The next answer on `answers` by `deadline`, looking every [`API_REPLY_POLL`] without
/// blocking the admin thread (`recv_timeout` would stall every other connection).
pub(super) async fn recv_by(answers: &Receiver<ApiReply>, deadline: Instant) -> Result<ApiReply, RecvTimeoutError> {
    loop {
        match answers.try_recv() {
            Ok(reply) => return Ok(reply),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) if Instant::now() >= deadline => return Err(RecvTimeoutError::Timeout),
            Err(TryRecvError::Empty) => tokio::time::sleep(API_REPLY_POLL).await,
        }
    }
}

pub(super) fn unavailable() -> Response {
    api_error(503, "unavailable", "messaging is not running")
}

/// The owner shard of `key`, or 503 when no shard runs.
pub(super) fn owner(api: &ApiState, kind: KeyKind, key: &str) -> Result<ShardId, Response> {
    match api.sink.shards() {
        0 => Err(unavailable()),
        n => Ok(owner_of(kind, key, n)),
    }
}

pub(super) fn reply_json(reply: ApiReply) -> Response {
    Response::json(200, reply.to_json())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishBody<'a> {
    room: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// `POST /api/publish {"room", "body"}` → `{"room", "epoch", "seq"}`.
pub(super) async fn api_publish(request: &Request, state: &AdminState) -> Result<Response, Response> {
    let api = authorized(request, state)?;
    let parsed: PublishBody<'_> = json_body(request)?;
    check_field(&parsed.room, "room", api.max_room_name_bytes)?;
    check_body(api, parsed.body)?;
    let shard = owner(api, KeyKind::Room, &parsed.room)?;
    let op = ApiOp::Publish {
        room: parsed.room.as_str().into(),
        body: parsed.body.get().into(),
    };
    call(api, shard, op).await.map(reply_json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendBody<'a> {
    to: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// `POST /api/send {"to", "body"}` → `{"to", "epoch", "seq", "online"}`.
pub(super) async fn api_send(request: &Request, state: &AdminState) -> Result<Response, Response> {
    let api = authorized(request, state)?;
    let parsed: SendBody<'_> = json_body(request)?;
    check_field(&parsed.to, "to", api.max_user_id_bytes)?;
    check_body(api, parsed.body)?;
    let shard = owner(api, KeyKind::User, &parsed.to)?;
    let op = ApiOp::Send {
        to: parsed.to.as_str().into(),
        body: parsed.body.get().into(),
    };
    call(api, shard, op).await.map(reply_json)
}

/// The percent-decoded path parameter after `prefix`, checked as a user id or room.
pub(super) fn path_param(request: &Request, prefix: &str, field: &str, max: usize) -> Result<String, Response> {
    let raw = request.path().strip_prefix(prefix).unwrap_or_default();
    let value = percent_decode(raw).ok_or_else(|| {
        api_error(
            400,
            "bad_request",
            &format!("{field} is not valid percent-encoded UTF-8"),
        )
    })?;
    check_field(&value, field, max)?;
    Ok(value)
}

/// Path parameters are percent-decoded with the crate's one strict decoder (`+` stays
/// `+` in a path).
pub(super) fn percent_decode(s: &str) -> Option<String> {
    crate::proto::handshake::percent_decode(s).map(std::borrow::Cow::into_owned)
}

/// `GET /api/presence/user/{id}` → `{"user", "online", "connections"}`.
pub(super) async fn api_presence_user(request: &Request, state: &AdminState) -> Result<Response, Response> {
    let api = authorized(request, state)?;
    let user = path_param(request, "/api/presence/user/", "user", api.max_user_id_bytes)?;
    let shard = owner(api, KeyKind::User, &user)?;
    call(api, shard, ApiOp::PresenceUser { user: user.into() })
        .await
        .map(reply_json)
}

/// `GET /api/presence/room/{room}` → `{"room", "members", "connections", "users"?}`.
pub(super) async fn api_presence_room(request: &Request, state: &AdminState) -> Result<Response, Response> {
    let api = authorized(request, state)?;
    let room = path_param(request, "/api/presence/room/", "room", api.max_room_name_bytes)?;
    let shard = owner(api, KeyKind::Room, &room)?;
    call(api, shard, ApiOp::PresenceRoom { room: room.into() })
        .await
        .map(reply_json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectBody {
    user: String,
}

/// `POST /api/disconnect {"user"}` → `{"user", "closed"}`: every shard closes the
/// user's connections (close code 4000) and says how many.
pub(super) async fn api_disconnect(request: &Request, state: &AdminState) -> Result<Response, Response> {
    let api = authorized(request, state)?;
    let parsed: DisconnectBody = json_body(request)?;
    check_field(&parsed.user, "user", api.max_user_id_bytes)?;
    let shards = api.sink.shards();
    if shards == 0 {
        return Err(unavailable());
    }
    let (reply, answers) = sync_channel(shards);
    let user: crate::msg::Key = parsed.user.as_str().into();
    for shard in 0..shards {
        let op = ApiOp::Disconnect { user: user.clone() };
        let request = ApiRequest {
            op,
            reply: reply.clone(),
        };
        if api.sink.deliver(shard as ShardId, request).is_err() {
            return Err(unavailable());
        }
    }
    drop(reply);
    let deadline = Instant::now() + api.timeout;
    let mut closed = 0;
    for _ in 0..shards {
        match recv_by(&answers, deadline).await {
            Ok(ApiReply::Disconnected { closed: n, .. }) => closed += n,
            Ok(_) | Err(RecvTimeoutError::Disconnected) => return Err(unavailable()),
            Err(RecvTimeoutError::Timeout) => {
                return Err(api_error(
                    504,
                    "timeout",
                    &format!("not every shard answered in time; {closed} connections closed so far"),
                ));
            }
        }
    }
    let body = serde_json::json!({ "user": parsed.user, "closed": closed });
    Ok(Response::json(200, body.to_string()))
}

/// `GET /api/stats` → totals from the shards' latest published figures.
pub(super) fn api_stats(request: &Request, state: &AdminState) -> Result<Response, Response> {
    authorized(request, state)?;
    let shards = state.registry.snapshot();
    let sum = |get: fn(&crate::metrics::ShardMetrics) -> u64| shards.iter().map(get).sum::<u64>();
    let body = serde_json::json!({
        "shards": shards.len(),
        "connections": sum(|m| m.connections),
        "users_online": sum(|m| m.msg_owned_users_online),
        "rooms": sum(|m| m.msg_owned_rooms),
        "messages": {
            "sent": sum(|m| m.msg.sends_accepted),
            "published": sum(|m| m.msg.publishes_accepted),
            "delivered": sum(|m| m.msg.frames_delivered),
            "in": sum(|m| m.messages_in),
            "out": sum(|m| m.messages_out),
        },
    });
    Ok(Response::json(200, body.to_string()))
}
