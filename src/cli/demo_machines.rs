//! The demo's machines: every simulated miner runs on a simulated device with its own loopback
//! address, which is also its Stratum source address. rack-a's devices have no management API
//! but a rack meter (an SDM630 over Modbus TCP); rack-b's alternate LuxOS (cgminer API on
//! 4028, which any user may bind) and ESP-Miner (its web API on port 80 when hashgate may bind
//! it, else on one free high port that rack-b's `[group.management] web_port` names, as a farm
//! that forwards the port would).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use hashgate::config::Config;
use hashgate::sim::{DeviceProfile, SimDevice, SimEspMiner, SimLuxos, SimMeter};
use tokio::net::TcpListener;

/// How many of the demo's miners are rack-a's (the rest are rack-b's).
pub(crate) const RACK_A: usize = 4;

/// A demo machine: its address and device.
pub(crate) struct Machine {
    pub ip: IpAddr,
    pub device: Arc<SimDevice>,
}

/// Everything that must stay alive while the demo runs.
pub(crate) struct Machines {
    pub machines: Vec<Machine>,
    _luxos: Vec<SimLuxos>,
    _espminers: Vec<SimEspMiner>,
    _meter: Option<SimMeter>,
}

/// The address of demo miner `i`: rack-a on 127.0.76.x, rack-b on 127.0.77.x.
fn ip_of(i: usize) -> IpAddr {
    let (net, host) = if i < RACK_A {
        (76, i + 1)
    } else {
        (77, i - RACK_A + 1)
    };
    IpAddr::from([127, 0, net, (host % 250) as u8 + 1])
}

/// Binds `ip:80`, or (unprivileged) a free high port that is then used on every address.
async fn bind_web(ip: IpAddr, port: &mut Option<u16>) -> Result<TcpListener> {
    if let Some(port) = *port {
        return TcpListener::bind((ip, port))
            .await
            .with_context(|| format!("cannot bind the simulated ESP-Miner API at {ip}:{port}"));
    }
    let listener = match TcpListener::bind((ip, 80)).await {
        Ok(listener) => listener,
        Err(_) => TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("cannot bind a simulated ESP-Miner API on {ip}"))?,
    };
    *port = Some(listener.local_addr()?.port());
    Ok(listener)
}

/// Starts `miners` machines, and points `config` at their management APIs and rack-a's meter.
pub(crate) async fn start(miners: usize, config: &mut Config) -> Result<Machines> {
    let mut machines = Vec::with_capacity(miners);
    let (mut luxos, mut espminers) = (Vec::new(), Vec::new());
    let mut web_port = None;
    for i in 0..miners {
        let ip = ip_of(i);
        let rack_b = i >= RACK_A;
        let on_luxos = rack_b && (i - RACK_A).is_multiple_of(2);
        let profile = if rack_b && !on_luxos {
            DeviceProfile::bitaxe()
        } else {
            DeviceProfile::s19k_pro()
        };
        let device = Arc::new(SimDevice::new(profile));
        if on_luxos {
            let listener = TcpListener::bind((ip, 4028))
                .await
                .with_context(|| format!("cannot bind the simulated LuxOS API at {ip}:4028"))?;
            luxos.push(SimLuxos::start(listener, Arc::clone(&device))?);
        } else if rack_b {
            let listener = bind_web(ip, &mut web_port).await?;
            let name = format!("bitaxe-{i:02}");
            espminers.push(SimEspMiner::start(listener, Arc::clone(&device), &name)?);
        }
        machines.push(Machine { ip, device });
    }
    let rack_a: Vec<Arc<SimDevice>> = machines
        .iter()
        .take(RACK_A)
        .map(|m| Arc::clone(&m.device))
        .collect();
    let meter = if rack_a.is_empty() {
        None
    } else {
        let at = SocketAddr::new(IpAddr::from([127, 0, 76, 250]), 0);
        let listener = TcpListener::bind(at)
            .await
            .context("cannot bind the simulated rack meter")?;
        // The rack's fans, switch and PDU: 150 W on top of its machines.
        Some(SimMeter::start(listener, rack_a, 150.0)?)
    };
    if let Some(meter) = &meter {
        for m in &mut config.meters {
            if m.group == "rack-a" {
                m.address = meter.addr.to_string();
            }
        }
    }
    if let (Some(port), Some(group)) = (
        web_port.filter(|p| *p != 80),
        config.groups.iter_mut().find(|g| g.name == "rack-b"),
    ) {
        group.management.web_port = Some(port);
    }
    Ok(Machines {
        machines,
        _luxos: luxos,
        _espminers: espminers,
        _meter: meter,
    })
}
