//! OAuth 2.0 client-credentials tokens, shared by every node through the store: fetched on
//! the first call, refreshed shortly before they expire, and fetched again once when the
//! target answers 401. One refresh at a time across the cluster (a lock in the store);
//! the others wait for its result. Tokens are sealed with the node's secret key at rest.

use std::time::Duration;

use hookline_model::AuthDef;
use hookline_model::webhook::CredentialsIn as DefCredentialsIn;
use hookline_outbound::{CredentialsIn, OAuthConfig};
use hookline_store::now_ms;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::EngineContext;
use crate::catalog::CompiledWebhook;
use crate::render::BuildError;

/// Store entry names, under the webhook's keys.
const TOKEN: &str = "oauth-token";
const LOCK: &str = "oauth-refresh";
/// How long one node may hold the refresh lock.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// How long a caller waits for another node's refresh before giving up on this attempt.
const WAIT_FOR_OTHERS: Duration = Duration::from_secs(15);
/// Lifetime assumed when the endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Serialize, Deserialize)]
struct Cached {
    token: String,
    /// Unix ms.
    expires_at: i64,
    /// Unix ms after which a caller refreshes rather than uses it.
    refresh_at: i64,
}

fn step_error(message: String, retryable: bool) -> BuildError {
    BuildError { step: "oauth token", message, retryable }
}

async fn read_cached(ctx: &EngineContext, webhook: &str) -> Result<Option<Cached>, BuildError> {
    let raw = ctx
        .store
        .get_value(webhook, TOKEN)
        .await
        .map_err(|e| step_error(format!("reading the cached token: {e}"), true))?;
    let Some(raw) = raw else { return Ok(None) };
    let text = String::from_utf8_lossy(&raw);
    // A token sealed with another key (or damaged) is fetched again rather than trusted.
    let Ok(json) = ctx.secrets.open(&text) else { return Ok(None) };
    Ok(serde_json::from_str(&json).ok())
}

/// A usable bearer token for `wh`. `stale` is a token the target just refused: another one
/// is fetched unless a different node already replaced it.
pub async fn bearer(ctx: &EngineContext, wh: &CompiledWebhook, stale: Option<&str>) -> Result<String, BuildError> {
    let AuthDef::Oauth2 { token_url, client_id, client_secret, scope, audience, credentials_in } = &wh.def.auth else {
        return Err(step_error("the webhook does not use oauth2".into(), false));
    };
    let id = &wh.def.id;
    let usable = |c: &Cached| stale != Some(c.token.as_str()) && c.refresh_at > now_ms();
    let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHERS;
    loop {
        if let Some(c) = read_cached(ctx, id).await?
            && usable(&c)
        {
            return Ok(c.token);
        }
        let holder = uuid::Uuid::new_v4().to_string();
        let locked = ctx
            .store
            .try_lock(id, LOCK, &holder, LOCK_TTL)
            .await
            .map_err(|e| step_error(format!("taking the refresh lock: {e}"), true))?;
        if locked {
            // Another node may have refreshed between our read and the lock.
            let result = match read_cached(ctx, id).await {
                Ok(Some(c)) if usable(&c) => Ok(c.token),
                _ => {
                    fetch_and_cache(ctx, wh, token_url, client_id, client_secret, scope, audience, *credentials_in)
                        .await
                }
            };
            let _ = ctx.store.unlock(id, LOCK, &holder).await;
            return result;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(step_error("another node's token refresh did not finish in time".into(), true));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn fetch_and_cache(
    ctx: &EngineContext,
    wh: &CompiledWebhook,
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    scope: &Option<String>,
    audience: &Option<String>,
    credentials_in: DefCredentialsIn,
) -> Result<String, BuildError> {
    // The span is the future's (entered on every poll), not held across the awaits.
    let span = tracing::info_span!("oauth.token", webhook_id = %wh.def.id);
    async move {
        let config = OAuthConfig {
            token_url: token_url.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            scope: scope.clone(),
            audience: audience.clone(),
            credentials_in: match credentials_in {
                DefCredentialsIn::Header => CredentialsIn::Header,
                DefCredentialsIn::Body => CredentialsIn::Body,
            },
        };
        let token = ctx
            .outbound
            .fetch_token(&config, wh.def.settings.timeout.0)
            .await
            .map_err(|e| step_error(e.to_string(), e.is_retryable()))?;
        let lifetime = token.expires_in.unwrap_or(DEFAULT_LIFETIME);
        // Refresh with a tenth of the lifetime left (at most 30 s early).
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        let now = now_ms();
        let cached = Cached {
            token: token.access_token.clone(),
            expires_at: now + lifetime.as_millis() as i64,
            refresh_at: now + (lifetime - margin).as_millis() as i64,
        };
        let sealed = ctx.secrets.seal(&serde_json::to_string(&cached).unwrap_or_default());
        if let Err(e) = ctx.store.set_value(&wh.def.id, TOKEN, sealed.as_bytes(), lifetime).await {
            tracing::warn!(error = %e, "cannot cache the token; the next call fetches another");
        }
        ctx.metrics.token_refreshed(&wh.def.id);
        tracing::info!(expires_in_s = lifetime.as_secs(), "oauth token fetched");
        Ok(token.access_token)
    }
    .instrument(span)
    .await
}
