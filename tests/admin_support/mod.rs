//! Reaching a test server's admin API: its address from the start-up log, requests through the
//! same client `relaychat admin` uses, and the `/metrics` values the TURN checks read.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::common::{http_get, Server};

pub const TOKEN: &str = "test-admin-token-0123456789";

/// `[admin]` on an ephemeral loopback port, with or without the test token.
pub fn admin_config(with_token: bool) -> String {
    let token = if with_token { format!("token = \"{TOKEN}\"\n") } else { String::new() };
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{token}")
}

pub struct AdminApi {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl AdminApi {
    /// The API of `server`, found in its log ("admin api listening on ADDR").
    pub fn of(server: &Server, token: Option<&str>) -> AdminApi {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = server.log_text();
            let found = log.lines().find_map(|line| {
                let at = line.find("admin api listening on ")?;
                line[at + "admin api listening on ".len()..].split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = found {
                return AdminApi { addr, token: token.map(str::to_string) };
            }
            assert!(Instant::now() < deadline, "no admin api in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        relaychat::admin::client::call(&self.base(), self.token.as_deref(), method, path, body)
            .await
            .expect("the admin API answers")
    }

    /// A request that must succeed; its JSON reply.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, reply) = self.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {reply}");
        reply
    }
}

/// A metric's value from `/metrics`.
pub async fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = http_get(server.http, "/metrics").await;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse::<f64>().ok());
    value.unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}
