//! JWT authentication over real sockets (docs/AUTH.md): every way a token is refused, on
//! both protocols; the `sub` as the `from` and the member id others see; RS256 and ES256
//! keys; a session closed at its token's expiry and one kept by a refresh.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::eio::{
    connected_sid, sio_connect_auth, sio_next, without_offset, ws_connect, ws_next, ws_send,
    ws_send_binary,
};
use common::{run, server, url, wait_for_stats};
use corelay::auth::Expiry;
use corelay::client::{Client, ClientConfig, ClientError, PayloadKind, ServerEvent, Stream};
use corelay::proto::native::{encode_client, ClientFrame, ErrorCode, PROTOCOL_VERSION};
use corelay::proto::ws::WsCodec;
use corelay::stats::{CloseReason, Refusal};
use corelay::Config;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-of-the-game-backend";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub`, good for ten minutes, signed with `secret`.
fn hs256(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn good(sub: &str) -> String {
    hs256(SECRET, json!({"sub": sub, "exp": now() + 600}))
}

/// A server that requires tokens signed with [`SECRET`], tweaked further by `tweak`.
fn auth_server(shards: usize, tweak: impl FnOnce(&mut Config)) -> corelay::Server {
    server(shards, |c| {
        c.auth.required = true;
        c.auth.jwt_secret = Some(SECRET.into());
        tweak(c);
    })
}

async fn connect_with(addr: SocketAddr, token: Option<String>) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(url(addr));
    config.token = token;
    Client::connect(&config).await
}

/// The `unauthorized` refusal of a native Hello, with its message.
async fn refused(addr: SocketAddr, token: Option<String>) -> String {
    match connect_with(addr, token).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized as u16, "{message}");
            message
        }
        Err(e) => panic!("expected an unauthorized error, got {e}"),
        Ok(c) => panic!("connected as {}", c.player()),
    }
}

#[test]
fn every_bad_native_token_is_refused_with_its_reason_and_the_connection_closed() {
    let srv = auth_server(1, |c| {
        c.auth.audience = Some("game".into());
        c.auth.issuer = Some("backend".into());
        c.auth.leeway_s = 0;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let claims = |extra: Value| {
            let mut c = json!({"sub": "p", "exp": now() + 600, "aud": "game", "iss": "backend"});
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            c
        };
        let cases = [
            (
                "bad signature",
                hs256("wrong", claims(json!({}))),
                "bad token signature",
            ),
            (
                "expired",
                hs256(SECRET, claims(json!({"exp": now() - 60}))),
                "token expired",
            ),
            (
                "no exp",
                hs256(SECRET, claims(json!({"exp": null}))),
                "token expired",
            ),
            (
                "nbf ahead",
                hs256(SECRET, claims(json!({"nbf": now() + 300}))),
                "token not valid yet",
            ),
            (
                "wrong audience",
                hs256(SECRET, claims(json!({"aud": "web"}))),
                "wrong token audience",
            ),
            (
                "wrong issuer",
                hs256(SECRET, claims(json!({"iss": "evil"}))),
                "wrong token issuer",
            ),
            (
                "no sub",
                hs256(SECRET, claims(json!({"sub": null}))),
                "token sub missing or invalid",
            ),
            ("garbage", "a.b.c".to_owned(), "malformed token"),
        ];
        for (what, token, message) in &cases {
            assert_eq!(&refused(addr, Some(token.clone())).await, message, "{what}");
        }
        assert_eq!(refused(addr, None).await, "token required");

        // The close after the refusal: 1008, nothing else accepted.
        let (s, mut codec) = ws_connect(addr, "/ws").await;
        let hello = encode_client(&ClientFrame::Hello {
            req: 1,
            version: PROTOCOL_VERSION,
            token: None,
        });
        ws_send_binary(&s, &hello).await;
        assert_eq!(ws_next(&s, &mut codec).await, Err(Some(1008)));

        // The good token of the same shape gets in, as `p`.
        let c = connect_with(addr, Some(hs256(SECRET, claims(json!({})))))
            .await
            .unwrap();
        assert_eq!(c.player(), "p");
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::Unauthorized) >= 10);
    assert_eq!(stats.closes_for(CloseReason::Unauthorized), 10);
    assert_eq!(stats.refused_for(Refusal::Token), 10);
}

#[test]
fn an_hmac_token_made_with_the_rsa_public_key_is_refused_by_an_rs256_server() {
    let public = fixture("rsa_public.pem");
    let srv = server(1, |c| {
        c.auth.required = true;
        c.auth.jwt_public_key_file = Some(public.clone());
    });
    let addr = srv.local_addr();
    run(move || async move {
        // The classic confusion: the public key (which anyone may have) as an HMAC secret.
        let pem = std::fs::read(&public).unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "admin", "exp": now() + 600}),
            &EncodingKey::from_secret(&pem),
        )
        .unwrap();
        assert_eq!(
            refused(addr, Some(forged)).await,
            "token algorithm not allowed"
        );
    });
}

#[test]
fn rs256_and_es256_tokens_are_checked_with_the_configured_public_key() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa_private.pem", "rsa_public.pem"),
        (Algorithm::ES256, "ec_private.pem", "ec_public.pem"),
    ] {
        let srv = server(1, |c| {
            c.auth.required = true;
            c.auth.jwt_public_key_file = Some(fixture(public));
        });
        let addr = srv.local_addr();
        run(move || async move {
            let pem = std::fs::read(fixture(private)).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                _ => EncodingKey::from_ec_pem(&pem),
            }
            .unwrap();
            let claims = json!({"sub": format!("{alg:?}-player"), "exp": now() + 600});
            let token = encode(&Header::new(alg), &claims, &key).unwrap();
            let c = connect_with(addr, Some(token.clone())).await.unwrap();
            assert_eq!(c.player(), format!("{alg:?}-player"));
            // The same claims signed with the shared secret instead: refused.
            let hs = hs256(SECRET, claims);
            assert_eq!(refused(addr, Some(hs)).await, "token algorithm not allowed");
            // A signature from another key of the same kind: refused.
            let mut tampered = token;
            tampered.truncate(tampered.len() - 4);
            tampered.push_str("AAAA");
            assert!(matches!(
                connect_with(addr, Some(tampered)).await,
                Err(ClientError::Server { code: 5, .. })
            ));
        });
    }
}

#[test]
fn a_bad_key_file_stops_the_start_with_one_line() {
    let dir = std::env::temp_dir().join(format!("corelay-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let err = Config::load(
        None,
        vec![(
            "CORELAY_AUTH_JWT_PUBLIC_KEY_FILE".to_owned(),
            junk.display().to_string(),
        )],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a PEM RSA or EC"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn anonymous_players_keep_playing_when_tokens_are_optional_but_bad_ones_are_refused() {
    let srv = server(1, |c| c.auth.jwt_secret = Some(SECRET.into()));
    let addr = srv.local_addr();
    run(move || async move {
        let anon = connect_with(addr, None).await.unwrap();
        assert!(anon.player().parse::<u64>().is_ok(), "{}", anon.player());
        let named = connect_with(addr, Some(good("carol"))).await.unwrap();
        assert_eq!(named.player(), "carol");
        let bad = hs256("wrong", json!({"sub": "carol", "exp": now() + 60}));
        assert_eq!(refused(addr, Some(bad)).await, "bad token signature");
    });
}

#[test]
fn socketio_connect_errors_say_why_and_the_sub_is_the_from_on_both_protocols() {
    // Two shards: the players' connections and the room's home may all differ.
    let srv = auth_server(2, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        for (auth, message) in [
            (json!({}), "token required"),
            (
                json!({"token": hs256("wrong", json!({"sub": "x", "exp": now() + 60}))}),
                "bad token signature",
            ),
            (json!({"token": 42}), "token required"),
        ] {
            let (_s, _c, answer) = sio_connect_auth(addr, auth).await;
            let data: Value = serde_json::from_str(
                answer
                    .strip_prefix("44")
                    .unwrap_or_else(|| panic!("{answer}")),
            )
            .unwrap();
            assert_eq!(
                data,
                json!({"message": message, "data": {"code": "unauthorized"}})
            );
        }

        let mut alice = connect_with(addr, Some(good("alice"))).await.unwrap();
        assert_eq!(alice.player(), "alice");
        alice.join("arena").await.unwrap();
        let (s, mut codec, answer) = sio_connect_auth(addr, json!({"token": good("bob")})).await;
        connected_sid(&answer, "");
        ws_send(&s, r#"421["join","arena"]"#).await;
        assert_eq!(
            sio_next(&s, &mut codec).await.unwrap(),
            r#"431[{"host":"alice","members":2,"room":"arena"}]"#
        );
        match alice.next_event().await.unwrap() {
            ServerEvent::MemberJoined { player, .. } => assert_eq!(player, "bob"),
            other => panic!("{other:?}"),
        }
        alice
            .send("arena", "hit", b"{\"n\":1}", PayloadKind::Json)
            .await
            .unwrap();
        assert_eq!(
            without_offset(&sio_next(&s, &mut codec).await.unwrap()),
            r#"42["hit",{"n":1},"alice"]"#
        );
        ws_send(&s, r#"42["to","arena","back",7]"#).await;
        match alice.next_event().await.unwrap() {
            ServerEvent::Message { from, event, .. } => {
                assert_eq!((from.as_str(), event.as_str()), ("bob", "back"))
            }
            other => panic!("{other:?}"),
        }
        // The same player on a second device: allowed, and seen under the same id.
        let mut again = connect_with(addr, Some(good("alice"))).await.unwrap();
        again.join("arena").await.unwrap();
        match alice.next_event().await.unwrap() {
            ServerEvent::MemberJoined {
                player, members, ..
            } => assert_eq!((player.as_str(), members), ("alice", 3)),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_native_session_ends_at_its_tokens_exp_unless_refreshed() {
    let srv = auth_server(1, |c| {
        c.auth.leeway_s = 0;
        c.auth.expiry = Expiry::Disconnect;
    });
    let addr = srv.local_addr();
    run(move || async move {
        let short = |sub: &str| hs256(SECRET, json!({"sub": sub, "exp": now() + 2}));
        let mut lapsing = connect_with(addr, Some(short("p"))).await.unwrap();
        let mut kept = connect_with(addr, Some(short("p"))).await.unwrap();
        // A token for someone else does not refresh, and the session goes on.
        match kept.refresh(&good("q")).await {
            Err(ClientError::Server { code: 5, message }) => {
                assert_eq!(message, "refresh token is for another player")
            }
            other => panic!("{other:?}"),
        }
        let later = now() + 600;
        let token = hs256(SECRET, json!({"sub": "p", "exp": later}));
        assert_eq!(kept.refresh(&token).await.unwrap(), later);

        // Both started with the same exp: when the one that did not refresh is closed,
        // the refreshed one would have been too.
        assert_eq!(
            lapsing.closed().await,
            Some((1008, "token expired".to_owned()))
        );
        kept.ping().await.expect("the refreshed session is open");
    });
    let stats = wait_for_stats(&srv, |s| s.closes_for(CloseReason::Unauthorized) >= 1);
    assert_eq!(stats.closes_for(CloseReason::Unauthorized), 1);
}

#[test]
fn expiry_ignore_keeps_sessions_past_exp() {
    let ignoring = auth_server(1, |c| {
        c.auth.leeway_s = 0;
        c.auth.expiry = Expiry::Ignore;
    });
    // A control on a server that disconnects: its close marks the moment past exp.
    let control = auth_server(1, |c| c.auth.leeway_s = 0);
    let (addr, control_addr) = (ignoring.local_addr(), control.local_addr());
    run(move || async move {
        let token = hs256(SECRET, json!({"sub": "p", "exp": now() + 2}));
        let mut c = connect_with(addr, Some(token.clone())).await.unwrap();
        let mut lapsing = connect_with(control_addr, Some(token)).await.unwrap();
        assert_eq!(lapsing.closed().await.map(|c| c.0), Some(1008));
        c.ping().await.expect("still open past exp");
    });
}

#[test]
fn a_socketio_socket_is_disconnected_at_exp_and_a_refresh_event_extends_it() {
    let srv = auth_server(1, |c| c.auth.leeway_s = 0);
    let addr = srv.local_addr();
    run(move || async move {
        let short = hs256(SECRET, json!({"sub": "s", "exp": now() + 2}));
        let (lapsing, mut lc, answer) = sio_connect_auth(addr, json!({"token": short})).await;
        assert!(answer.starts_with("40"), "{answer}");
        let (kept, mut kc, answer) = sio_connect_auth(addr, json!({"token": short})).await;
        assert!(answer.starts_with("40"), "{answer}");
        let later = now() + 600;
        let token = hs256(SECRET, json!({"sub": "s", "exp": later}));
        ws_send(&kept, &format!(r#"425["refresh","{token}"]"#)).await;
        assert_eq!(
            sio_next(&kept, &mut kc).await.unwrap(),
            format!(r#"435[{{"exp":{later}}}]"#)
        );
        ws_send(&kept, &format!(r#"426["refresh","{}"]"#, good("other"))).await;
        assert_eq!(
            sio_next(&kept, &mut kc).await.unwrap(),
            r#"436[{"error":"unauthorized","message":"refresh token is for another player"}]"#
        );

        assert_eq!(
            sio_next(&lapsing, &mut lc).await.unwrap(),
            r#"42["error",{"error":"unauthorized","message":"token expired"}]"#
        );
        assert_eq!(sio_next(&lapsing, &mut lc).await.unwrap(), "41");
        // The refreshed socket, with the same first exp, still answers.
        ws_send(&kept, r#"427["join","still-here"]"#).await;
        assert_eq!(
            sio_next(&kept, &mut kc).await.unwrap(),
            r#"437[{"host":"s","members":1,"room":"still-here"}]"#
        );
    });
}

#[test]
fn version_1_clients_get_unsupported_version() {
    let srv = server(1, |_| {});
    let addr = srv.local_addr();
    run(move || async move {
        let (s, mut codec) = ws_connect(addr, "/ws").await;
        let hello = encode_client(&ClientFrame::Hello {
            req: 1,
            version: 1,
            token: None,
        });
        ws_send_binary(&s, &hello).await;
        assert_eq!(ws_next(&s, &mut codec).await, Err(Some(1008)));
    });
}

#[test]
fn a_verified_tier_claim_picks_the_rate_profile_and_the_connect_payload_cannot() {
    // Two joins a second by default; the `pro` tier may make ten at once.
    let srv = auth_server(1, |c| {
        let strict = corelay::config::RateProfile {
            joins_per_s: 0.1,
            joins_burst: 2,
            ..c.rate_limits.native
        };
        c.rate_limits.native = strict;
        c.rate_limits.socketio = corelay::config::RateProfile {
            joins_per_s: 0.1,
            joins_burst: 2,
            ..c.rate_limits.socketio
        };
        c.rate_limits.tiers.insert(
            "pro".into(),
            corelay::config::TierProfile {
                joins_burst: Some(10),
                ..Default::default()
            },
        );
    });
    let addr = srv.local_addr();
    let token = |sub: &str, tier: Option<&str>| {
        let mut claims = json!({"sub": sub, "exp": now() + 600});
        if let Some(tier) = tier {
            claims["tier"] = json!(tier);
        }
        hs256(SECRET, claims)
    };
    run(move || async move {
        // Native: the token's tier decides.
        let mut pro = connect_with(addr, Some(token("p", Some("pro"))))
            .await
            .unwrap();
        for room in ["a", "b", "c", "d", "e"] {
            pro.join(room).await.expect("a pro player joins five rooms");
        }
        let mut free = connect_with(addr, Some(token("f", None))).await.unwrap();
        free.join("a").await.unwrap();
        free.join("b").await.unwrap();
        match free.join("c").await {
            Err(ClientError::Server { code, .. }) => {
                assert_eq!(code, ErrorCode::RateLimited as u16)
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }

        // Socket.IO: a `tier` written next to the token in the CONNECT payload is the
        // client's own word and changes nothing; the one inside the token does.
        let joins = |s: Stream, mut codec: WsCodec| async move {
            let mut answers = Vec::new();
            for (i, room) in ["a", "b", "c"].iter().enumerate() {
                ws_send(&s, &format!(r#"42{i}["join","{room}"]"#)).await;
                answers.push(sio_next(&s, &mut codec).await.unwrap());
            }
            answers
        };
        let claimed = json!({"token": token("x", None), "tier": "pro"});
        let (s, codec, answer) = sio_connect_auth(addr, claimed).await;
        connected_sid(&answer, "");
        let answers = joins(s, codec).await;
        assert_eq!(
            answers[2], r#"432[{"error":"rate_limited"}]"#,
            "{answers:?}"
        );
        let verified = json!({"token": token("y", Some("pro"))});
        let (s, codec, answer) = sio_connect_auth(addr, verified).await;
        connected_sid(&answer, "");
        let answers = joins(s, codec).await;
        // In room c with the pro native player, who joined it first and hosts it.
        assert_eq!(
            answers[2], r#"432[{"host":"p","members":2,"room":"c"}]"#,
            "{answers:?}"
        );
    });
    srv.stop().unwrap();
}
