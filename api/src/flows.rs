//! The flow catalog: Kodosumi's flows with their MIP-003 schemas and each flow's sale
//! settings (Masumi agent identifier, network, deadlines).
//!
//! Flows are synced from Kodosumi at start and then periodically, so `/availability`,
//! `/input_schema` and `start_job` never call Kodosumi on the request path. Settings come from
//! the flows file (`--flows-file`, TOML): a `[defaults]` table and `[flows."<uid or summary>"]`
//! tables overriding it.

use activities::ClientError;
use activities::kodosumi::schema::{self, Mip003Schema};
use activities::kodosumi::{FormElement, KodosumiClient};
use activities::masumi::Network;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a flow is sold. Durations are humantime strings in the file (`12h`, `30m`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSettings {
    /// The Masumi agent identifier (policy id + asset name, 57-250 characters).
    pub agent_identifier: Option<String>,
    /// `Preprod` or `Mainnet`.
    pub network: Network,
    /// Time the buyer has to pay, from `start_job`.
    #[serde(with = "humantime_serde")]
    pub pay_by: Duration,
    /// Time the seller has to submit the result, from `start_job` (at least 15 min later than `pay_by`... see Masumi's rules).
    #[serde(with = "humantime_serde")]
    pub submit_result_within: Duration,
    /// Authorize the buyer's refund when they dispute a submitted result.
    pub refund_on_dispute: bool,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            agent_identifier: None,
            network: Network::Preprod,
            pay_by: Duration::from_secs(12 * 3600),
            submit_result_within: Duration::from_secs(24 * 3600),
            refund_on_dispute: false,
        }
    }
}

/// A partial settings table of the file; unset fields fall back to the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    agent_identifier: Option<String>,
    network: Option<Network>,
    #[serde(default, with = "humantime_serde")]
    pay_by: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    submit_result_within: Option<Duration>,
    refund_on_dispute: Option<bool>,
}

impl SettingsPatch {
    fn apply(&self, base: &FlowSettings) -> FlowSettings {
        FlowSettings {
            agent_identifier: self
                .agent_identifier
                .clone()
                .or_else(|| base.agent_identifier.clone()),
            network: self.network.unwrap_or(base.network),
            pay_by: self.pay_by.unwrap_or(base.pay_by),
            submit_result_within: self
                .submit_result_within
                .unwrap_or(base.submit_result_within),
            refund_on_dispute: self.refund_on_dispute.unwrap_or(base.refund_on_dispute),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowsFile {
    #[serde(default)]
    defaults: SettingsPatch,
    #[serde(default)]
    flows: BTreeMap<String, SettingsPatch>,
}

/// Sale settings of every flow: defaults plus per-flow overrides.
#[derive(Debug, Clone, Default)]
pub struct FlowsConfig {
    defaults: FlowSettings,
    overrides: BTreeMap<String, SettingsPatch>,
}

impl FlowsConfig {
    /// Settings where every flow uses `defaults`.
    pub fn with_defaults(defaults: FlowSettings) -> Self {
        Self {
            defaults,
            overrides: BTreeMap::new(),
        }
    }

    /// Parses a flows file.
    ///
    /// # Errors
    /// When the TOML is malformed or has unknown keys.
    pub fn parse(text: &str, base: FlowSettings) -> Result<Self, String> {
        let file: FlowsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self {
            defaults: file.defaults.apply(&base),
            overrides: file.flows,
        })
    }

    /// The settings of a flow, looked up by uid, then by summary.
    pub fn for_flow(&self, uid: &str, summary: &str) -> FlowSettings {
        match self
            .overrides
            .get(uid)
            .or_else(|| self.overrides.get(summary))
        {
            Some(patch) => patch.apply(&self.defaults),
            None => self.defaults.clone(),
        }
    }
}

/// A flow as the catalog holds it.
#[derive(Debug, Clone)]
pub struct CatalogFlow {
    pub uid: String,
    pub summary: String,
    pub description: String,
    /// Path of the flow on Kodosumi.
    pub url: String,
    pub elements: Vec<FormElement>,
    pub schema: Mip003Schema,
    pub settings: FlowSettings,
}

impl CatalogFlow {
    /// Why the flow cannot be sold, if it cannot.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        match &self.settings.agent_identifier {
            None => Some("no Masumi agent identifier is configured for this flow"),
            Some(_) => None,
        }
    }
}

#[derive(Debug, Default)]
struct CatalogState {
    flows: BTreeMap<String, CatalogFlow>,
    synced: bool,
    last_error: Option<String>,
}

/// The synced flows.
#[derive(Debug)]
pub struct FlowCatalog {
    client: Arc<KodosumiClient>,
    config: FlowsConfig,
    state: RwLock<CatalogState>,
}

impl FlowCatalog {
    /// An empty catalog; call [`Self::sync`] to fill it.
    pub fn new(client: Arc<KodosumiClient>, config: FlowsConfig) -> Self {
        Self {
            client,
            config,
            state: RwLock::new(CatalogState::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CatalogState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reloads the flows and their forms from Kodosumi. On failure the previous catalog stays.
    ///
    /// # Errors
    /// When Kodosumi cannot be reached or answers unexpectedly.
    pub async fn sync(&self) -> Result<usize, ClientError> {
        let result = self.fetch().await;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(flows) => {
                let n = flows.len();
                state.flows = flows;
                state.synced = true;
                state.last_error = None;
                Ok(n)
            }
            Err(e) => {
                state.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<BTreeMap<String, CatalogFlow>, ClientError> {
        let mut out = BTreeMap::new();
        for flow in self.client.list_flows().await? {
            let form = self.client.flow_form(&flow.url).await?;
            let schema = schema::to_mip003(&form.elements);
            let settings = self.config.for_flow(&flow.uid, &flow.summary);
            out.insert(
                flow.uid.clone(),
                CatalogFlow {
                    uid: flow.uid,
                    summary: flow.summary,
                    description: flow.description.unwrap_or_default(),
                    url: flow.url,
                    elements: form.elements,
                    schema,
                    settings,
                },
            );
        }
        Ok(out)
    }

    /// Syncs every `interval` until `shutdown` fires; failures are logged and retried next time.
    pub async fn sync_loop(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = shutdown.cancelled() => return }
            match self.sync().await {
                Ok(n) => tracing::debug!(flows = n, "flows synced from Kodosumi"),
                Err(e) => {
                    tracing::warn!(error.message = %e, "flow sync failed; keeping the previous catalog")
                }
            }
        }
    }

    /// A flow by uid.
    pub fn get(&self, uid: &str) -> Option<CatalogFlow> {
        self.read().flows.get(uid).cloned()
    }

    /// Every flow, by uid.
    pub fn list(&self) -> Vec<CatalogFlow> {
        self.read().flows.values().cloned().collect()
    }

    /// Whether a sync ever succeeded, and the last sync error.
    pub fn sync_status(&self) -> (bool, Option<String>) {
        let state = self.read();
        (state.synced, state.last_error.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_settings_merge_defaults_and_overrides() {
        let text = r#"
            [defaults]
            agent_identifier = "default-agent"
            pay_by = "1h"

            [flows."Hello World"]
            agent_identifier = "hello-agent"
            network = "Mainnet"
            refund_on_dispute = true
        "#;
        let config = FlowsConfig::parse(text, FlowSettings::default()).expect("valid file");
        let other = config.for_flow("uid-1", "Other");
        assert_eq!(other.agent_identifier.as_deref(), Some("default-agent"));
        assert_eq!(other.pay_by, Duration::from_secs(3600));
        let hello = config.for_flow("uid-2", "Hello World");
        assert_eq!(hello.agent_identifier.as_deref(), Some("hello-agent"));
        assert_eq!(hello.network, Network::Mainnet);
        assert!(hello.refund_on_dispute);
        assert_eq!(
            hello.pay_by,
            Duration::from_secs(3600),
            "unset fields fall back to the defaults"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(FlowsConfig::parse("[defaults]\nagent = \"x\"", FlowSettings::default()).is_err());
    }
}
