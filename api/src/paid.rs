//! Paid jobs' wiring: the Masumi and Kodosumi clients, the flow catalog, and the settings the
//! MIP-003 endpoints need.

use crate::flows::{FlowCatalog, FlowSettings, FlowsConfig};
use crate::settings::ServiceArgs;
use activities::kodosumi::{KodosumiClient, KodosumiConfig};
use activities::masumi::{MasumiClient, MasumiConfig, Network};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use workflows::Services;

/// What the MIP-003 endpoints use.
#[derive(Debug)]
pub struct PaidJobs {
    pub services: Services,
    pub catalog: Arc<FlowCatalog>,
    /// How long `start_job` waits for the payment request.
    pub start_job_timeout: Duration,
    /// How often the catalog is synced.
    pub flow_sync_interval: Duration,
}

/// Parses a network name as Masumi spells it.
///
/// # Errors
/// When it is neither `Preprod` nor `Mainnet`.
pub fn parse_network(s: &str) -> anyhow::Result<Network> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| anyhow::anyhow!("network must be Preprod or Mainnet, got `{s}`"))
}

impl PaidJobs {
    /// Builds the clients and the (empty) catalog from the settings; `None` when neither
    /// service is configured.
    ///
    /// # Errors
    /// When only one service is configured, a URL is invalid, or the flows file is unreadable.
    pub fn from_args(args: &ServiceArgs) -> anyhow::Result<Option<Self>> {
        let (masumi_url, kodosumi_url) = match (&args.masumi_url, &args.kodosumi_url) {
            (None, None) => return Ok(None),
            (Some(m), Some(k)) => (m.clone(), k.clone()),
            _ => anyhow::bail!("paid jobs need both --masumi-url and --kodosumi-url (or neither)"),
        };
        let token = args
            .masumi_token
            .clone()
            .context("--masumi-token (MASUMI_TOKEN) is required with --masumi-url")?;
        let password = args
            .kodosumi_password
            .clone()
            .context("--kodosumi-password (KODOSUMI_PASSWORD) is required with --kodosumi-url")?;
        let network = parse_network(&args.network)?;
        let masumi = MasumiClient::new(MasumiConfig {
            network,
            timeout: args.service_timeout,
            ..MasumiConfig::new(masumi_url, token)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let kodosumi = KodosumiClient::new(KodosumiConfig {
            timeout: args.service_timeout,
            raw_timeout: args.result_fetch_timeout,
            ..KodosumiConfig::new(kodosumi_url, args.kodosumi_user.clone(), password)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let base = FlowSettings {
            agent_identifier: args.agent_identifier.clone(),
            network,
            pay_by: args.pay_by,
            submit_result_within: args.submit_result_within,
            refund_on_dispute: false,
        };
        let config = match &args.flows_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                FlowsConfig::parse(&text, base)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => FlowsConfig::with_defaults(base),
        };
        let kodosumi = Arc::new(kodosumi);
        let catalog = Arc::new(FlowCatalog::new(kodosumi.clone(), config));
        Ok(Some(Self {
            services: Services {
                masumi: Arc::new(masumi),
                kodosumi,
            },
            catalog,
            start_job_timeout: args.start_job_timeout,
            flow_sync_interval: args.flow_sync_interval,
        }))
    }
}
