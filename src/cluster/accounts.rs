//! Accounts and admin flags in cluster mode: `{ns}:accounts` (name → argon2 hash) and
//! `{ns}:admins` (a set), shared by every node instead of each node's SQLite file.
//! /register is `HSETNX`: of two nodes registering one name at once, exactly one succeeds.

use std::collections::HashSet;

use redis::aio::ConnectionManager;

use super::{ClusterContext, Keys};

#[derive(Clone)]
pub struct ClusterAccounts {
    conn: ConnectionManager,
    keys: Keys,
}

impl ClusterAccounts {
    pub fn new(ctx: &ClusterContext) -> anyhow::Result<Self> {
        Ok(Self { conn: ctx.manager()?, keys: ctx.keys.clone() })
    }

    /// Creates the account; false if the name is taken.
    pub async fn create(&self, name: &str, hash: &str) -> redis::RedisResult<bool> {
        redis::cmd("HSETNX")
            .arg(self.keys.accounts())
            .arg(name)
            .arg(hash)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Replaces the password hash of an existing account (false: no such account) or, with
    /// `create`, creates it.
    pub async fn set_password(&self, name: &str, hash: &str, create: bool) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        if !create && !self.exists(name).await? {
            return Ok(false);
        }
        let _: i64 =
            redis::cmd("HSET").arg(self.keys.accounts()).arg(name).arg(hash).query_async(&mut conn).await?;
        Ok(true)
    }

    pub async fn exists(&self, name: &str) -> redis::RedisResult<bool> {
        redis::cmd("HEXISTS").arg(self.keys.accounts()).arg(name).query_async(&mut self.conn.clone()).await
    }

    pub async fn password_hash(&self, name: &str) -> redis::RedisResult<Option<String>> {
        redis::cmd("HGET").arg(self.keys.accounts()).arg(name).query_async(&mut self.conn.clone()).await
    }

    /// Deletes the account and its admin flag; false if there was none.
    pub async fn delete(&self, name: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("SREM").arg(self.keys.admins()).arg(name).query_async(&mut conn).await?;
        let removed: i64 =
            redis::cmd("HDEL").arg(self.keys.accounts()).arg(name).query_async(&mut conn).await?;
        Ok(removed == 1)
    }

    pub async fn names(&self) -> redis::RedisResult<Vec<String>> {
        let mut names: Vec<String> =
            redis::cmd("HKEYS").arg(self.keys.accounts()).query_async(&mut self.conn.clone()).await?;
        names.sort();
        Ok(names)
    }

    pub async fn admin_names(&self) -> redis::RedisResult<HashSet<String>> {
        redis::cmd("SMEMBERS").arg(self.keys.admins()).query_async(&mut self.conn.clone()).await
    }

    /// Flags or unflags an existing account as admin; false if there is no such account.
    pub async fn set_admin(&self, name: &str, admin: bool) -> redis::RedisResult<bool> {
        if !self.exists(name).await? {
            return Ok(false);
        }
        let command = if admin { "SADD" } else { "SREM" };
        let _: i64 =
            redis::cmd(command).arg(self.keys.admins()).arg(name).query_async(&mut self.conn.clone()).await?;
        Ok(true)
    }
}
