//! The API client subcommands: `hashgate status`, `groups`, `drain`, `resume`.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::ApiArgs;

/// Fetches one API document.
fn api_get<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> Result<T> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut response = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("GET {url}: reading the body"))?;
    serde_json::from_str(&body).with_context(|| format!("GET {url}: unexpected answer"))
}

/// `hashgate status`: one instance in detail, or several (a farm's instances) side by side.
pub(crate) fn status(apis: &[String], top: usize) -> Result<ExitCode> {
    match apis {
        [] => status_one("http://127.0.0.1:9100", top),
        [api] => status_one(api, top),
        apis => status_many(apis),
    }
}

/// What one instance of a farm answers, for the side-by-side table.
struct InstanceStatus {
    upstreams: Vec<hashgate::api::UpstreamReport>,
    groups: Vec<hashgate::api::GroupView>,
}

fn instance_status(api: &str) -> Result<InstanceStatus> {
    Ok(InstanceStatus {
        upstreams: api_get(api, "/api/v1/upstreams")?,
        groups: api_get(api, "/api/v1/groups")?,
    })
}

/// One line per instance (its serving upstream, miners, shares, the pool's job age), a total,
/// and the groups added up over all instances. Exit 1 when an instance does not answer.
fn status_many(apis: &[String]) -> Result<ExitCode> {
    let width = apis.iter().map(String::len).max().unwrap_or(3).max(8);
    println!(
        "{:<width$} {:<16} {:<11} {:>8} {:>10} {:>9} {:>6} {:>8}",
        "INSTANCE", "UPSTREAM", "STATE", "MINERS", "ACCEPTED", "REJECTED", "LOST", "JOB AGE"
    );
    let mut total = (0u64, 0u64, 0u64, 0u64);
    let mut unreachable = 0;
    let mut groups: Vec<(String, u64, u64, f64, u64, u64)> = Vec::new();
    for api in apis {
        let instance = match instance_status(api) {
            Ok(instance) => instance,
            Err(error) => {
                unreachable += 1;
                println!("{api:<width$} unreachable: {error:#}");
                continue;
            }
        };
        // The upstream serving (the first that is), else the most preferred.
        let shown = instance
            .upstreams
            .iter()
            .find(|u| u.view.state == "serving")
            .or(instance.upstreams.first());
        let miners: u64 = instance
            .groups
            .iter()
            .map(|g| g.status.workers as u64)
            .sum();
        let accepted: u64 = instance.upstreams.iter().map(|u| u.accepted).sum();
        let rejected: u64 = instance.upstreams.iter().map(|u| u.rejected).sum();
        let lost: u64 = instance.upstreams.iter().map(|u| u.lost).sum();
        println!(
            "{api:<width$} {:<16} {:<11} {:>8} {:>10} {:>9} {:>6} {:>8}",
            shown.map_or("-", |u| u.view.name.as_str()),
            shown.map_or("-", |u| u.view.state.as_str()),
            miners,
            accepted,
            rejected,
            lost,
            shown
                .and_then(|u| u.view.last_job_age_seconds)
                .map_or("-".into(), |a| format!("{a:.0}s")),
        );
        total = (
            total.0 + miners,
            total.1 + accepted,
            total.2 + rejected,
            total.3 + lost,
        );
        for g in &instance.groups {
            let s = &g.status;
            match groups.iter_mut().find(|row| row.0 == s.name) {
                Some(row) => {
                    row.1 += s.workers as u64;
                    row.2 += s.mining_workers as u64;
                    row.3 += g.hashrate_1m;
                    row.4 += g.accepted;
                    row.5 += g.rejected;
                }
                None => groups.push((
                    s.name.clone(),
                    s.workers as u64,
                    s.mining_workers as u64,
                    g.hashrate_1m,
                    g.accepted,
                    g.rejected,
                )),
            }
        }
    }
    println!(
        "{:<width$} {:<16} {:<11} {:>8} {:>10} {:>9} {:>6}",
        format!("total ({} of {})", apis.len() - unreachable, apis.len()),
        "",
        "",
        total.0,
        total.1,
        total.2,
        total.3
    );
    println!();
    println!(
        "{:<16} {:>8} {:>8} {:>14} {:>10} {:>9}",
        "GROUP (ALL)", "WORKERS", "MINING", "HASHRATE 1M", "ACCEPTED", "REJECTED"
    );
    for (name, workers, mining, hashrate, accepted, rejected) in &groups {
        println!(
            "{name:<16} {workers:>8} {mining:>8} {:>14} {accepted:>10} {rejected:>9}",
            human_rate(*hashrate)
        );
    }
    Ok(if unreachable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One instance: its upstreams, groups and busiest workers.
fn status_one(api: &str, top: usize) -> Result<ExitCode> {
    use hashgate::api::{GroupView, UpstreamReport, WorkersPage};
    let upstreams: Vec<UpstreamReport> = api_get(api, "/api/v1/upstreams")?;
    let groups: Vec<GroupView> = api_get(api, "/api/v1/groups")?;
    let mut page: WorkersPage = api_get(api, "/api/v1/workers?limit=10000")?;
    println!(
        "{:<16} {:<11} {:>5} {:>12} {:>7} {:>9} {:>9} {:>6} {:>8}  URL",
        "UPSTREAM",
        "STATE",
        "PRIO",
        "DIFFICULTY",
        "MINERS",
        "ACCEPTED",
        "REJECTED",
        "LOST",
        "JOB AGE"
    );
    for u in &upstreams {
        let v = &u.view;
        println!(
            "{:<16} {:<11} {:>5} {:>12} {:>7} {:>9} {:>9} {:>6} {:>8}  {}",
            v.name,
            v.state,
            v.priority,
            v.difficulty.map_or("-".into(), |d| format!("{d}")),
            v.miners,
            u.accepted,
            u.rejected,
            u.lost,
            v.last_job_age_seconds
                .map_or("-".into(), |a| format!("{a:.0}s")),
            v.url
        );
    }
    println!();
    println!(
        "{:<16} {:<10} {:>8} {:>14} {:>14} {:>9} {:>9}",
        "GROUP", "STATE", "WORKERS", "HASHRATE 1M", "HASHRATE 15M", "ACCEPTED", "REJECTED"
    );
    for g in &groups {
        println!(
            "{:<16} {:<10} {:>8} {:>14} {:>14} {:>9} {:>9}",
            g.status.name,
            g.status.state,
            g.status.workers,
            human_rate(g.hashrate_1m),
            human_rate(g.hashrate_15m),
            g.accepted,
            g.rejected
        );
    }
    println!();
    page.workers
        .sort_by(|a, b| b.session.hashrate_1m.total_cmp(&a.session.hashrate_1m));
    println!(
        "{:<24} {:<10} {:<21} {:>14} {:>12} {:>9} {:>9} {:>10}  AGENT",
        "WORKER", "GROUP", "REMOTE", "HASHRATE 1M", "DIFFICULTY", "ACCEPTED", "REJECTED", "POWER"
    );
    for view in page.workers.iter().take(top) {
        let w = &view.session;
        let power = match (view.power.power_watts, view.power.asleep) {
            (Some(watts), Some(true)) => format!("{watts:.0} W zz"),
            (Some(watts), _) => format!("{watts:.0} W"),
            (None, _) => "-".to_owned(),
        };
        println!(
            "{:<24} {:<10} {:<21} {:>14} {:>12} {:>9} {:>9} {:>10}  {}",
            w.name.as_deref().unwrap_or("-"),
            w.group,
            w.remote,
            human_rate(w.hashrate_1m),
            format!("{:.6}", w.difficulty),
            w.accepted,
            w.rejected,
            power,
            w.user_agent.as_deref().unwrap_or("-")
        );
    }
    if page.total > top {
        println!("... {} workers in all", page.total);
    }
    Ok(ExitCode::SUCCESS)
}

/// POSTs a group command and prints the group's state after it.
pub(crate) fn group_command(
    api: &ApiArgs,
    group: &str,
    action: &str,
    body: serde_json::Value,
) -> Result<ExitCode> {
    let url = format!(
        "{}/api/v1/groups/{group}/{action}",
        api.api.trim_end_matches('/')
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(&url).header("Content-Type", "application/json");
    if let Some(token) = &api.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request
        .send(body.to_string().as_bytes())
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("POST {url}: reading the body"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        eprintln!(
            "hashgate: {action} {group}: {message} (HTTP {})",
            status.as_u16()
        );
        return Ok(ExitCode::FAILURE);
    }
    let group: hashgate::groups::GroupStatus =
        serde_json::from_str(&text).with_context(|| format!("POST {url}: unexpected answer"))?;
    println!(
        "{}: {}{}",
        group.name,
        group.state,
        group
            .pending
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn groups(api: &str) -> Result<ExitCode> {
    use hashgate::api::GroupView;
    let groups: Vec<GroupView> = api_get(api, "/api/v1/groups")?;
    println!(
        "{:<16} {:<9} {:<10} {:>7} {:>7} {:>11} {:>11}  {:<18} REASON",
        "GROUP", "STATE", "MODE", "WORKERS", "MINING", "POWER W", "RELEASED W", "CLAIMS"
    );
    for g in &groups {
        let s = &g.status;
        println!(
            "{:<16} {:<9} {:<10} {:>7} {:>7} {:>11.0} {:>11.0}  {:<18} {}",
            s.name,
            s.state,
            s.drain.mode.map_or("-", |m| m.as_str()),
            s.workers,
            s.mining_workers,
            s.power_watts,
            s.released_watts,
            if s.claims.is_empty() {
                "-".to_owned()
            } else {
                s.claims.join(",")
            },
            s.drain.reason.as_deref().unwrap_or("")
        );
        if let Some(error) = &s.last_error {
            println!("    last error: {error}");
        }
        for miner in &s.witness.refused_miners {
            println!(
                "    came back, refused: {} ({}), {} time(s)",
                miner.name, miner.address, miner.count
            );
        }
        for miner in &s.witness.still_hashing {
            println!(
                "    still hashing: {} ({}), last submit {}",
                miner.name,
                miner.address,
                miner
                    .last_submit_seconds_ago
                    .map_or("never".into(), |a| format!("{a:.0}s ago"))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Hashes per second with an SI prefix.
fn human_rate(rate: f64) -> String {
    let units = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s", "EH/s"];
    let mut value = rate;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2} {}", units[unit])
}
