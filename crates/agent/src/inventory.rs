//! What the device is, for applicability: OS family and version (os-release), architecture (`uname -m`), hardware ids
//! (from the configuration, else sysfs modalias files), and the installed products and updates (from the install
//! engine's state, passed in by the caller).
//!
//! Hardware ids are read from `<sysfs>/bus/*/devices/*/modalias` and turned into the catalog's forms
//! (docs/catalog.md §5): `pci:v00008086d000015F3sv00001028sd00000A1Fbc02sc00i00` gives `pci:8086:15f3` and
//! `pci:8086:15f3:1028:0a1f`; `usb:v0BDAp8153d3000...` gives `usb:0bda:8153`; `of:NgpioT(null)Cbrcm,bcm2711-gpio`
//! gives `of:brcm,bcm2711-gpio` for each `C` compatible; `acpi:INT33C5:` gives `acpi:int33c5`. Other buses are
//! ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use custody_catalog::{Arch, DeviceInventory, HardwareId, OsFamily, ProductName, UpdateId, Version};

use crate::Error;
use crate::config::AgentConfig;

/// Installed products and updates, as the install engine records them.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    pub products: BTreeMap<ProductName, Version>,
    pub updates: BTreeSet<UpdateId>,
}

/// Collects the device's inventory.
pub fn collect(config: &AgentConfig, installed: Installed) -> Result<DeviceInventory, Error> {
    let os_release = match &config.agent.os_release {
        Some(path) => path.clone(),
        None => ["/etc/os-release", "/usr/lib/os-release"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/etc/os-release")),
    };
    let text = std::fs::read_to_string(&os_release).map_err(Error::io("read", &os_release))?;
    let (os_family, os_version) = parse_os_release(&text)
        .map_err(|detail| Error::Inventory { source_name: os_release.display().to_string(), detail })?;
    let arch_text = match &config.agent.arch {
        Some(arch) => arch.clone(),
        None => uname_machine()?,
    };
    let arch: Arch =
        arch_text.parse().map_err(|e| Error::Inventory { source_name: "uname -m".into(), detail: format!("{e}") })?;
    let hardware_ids = match &config.agent.hardware_ids {
        // Checked when the configuration was loaded.
        Some(ids) => ids.iter().filter_map(|id| id.parse().ok()).collect(),
        None => sysfs_hardware_ids(&config.agent.sysfs),
    };
    Ok(DeviceInventory {
        os_family,
        os_version,
        arch,
        products: installed.products,
        hardware_ids,
        installed_updates: installed.updates,
    })
}

/// `ID` and `VERSION_ID` of an os-release file. A `VERSION_ID` that is not dotted-numeric (`rolling`) counts as none.
pub fn parse_os_release(text: &str) -> Result<(OsFamily, Option<Version>), String> {
    let mut id = None;
    let mut version = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else { continue };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        match key {
            "ID" => id = Some(value.to_owned()),
            "VERSION_ID" => version = Some(value.to_owned()),
            _ => {}
        }
    }
    // os-release(5): ID defaults to "linux".
    let family = id.unwrap_or_else(|| "linux".into()).parse().map_err(|e| format!("ID: {e}"))?;
    Ok((family, version.and_then(|v| v.parse().ok())))
}

/// The machine field of `uname(2)`.
fn uname_machine() -> Result<String, Error> {
    // SAFETY: utsname is plain old data; uname fills it and NUL-terminates each field.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(Error::Inventory {
            source_name: "uname".into(),
            detail: std::io::Error::last_os_error().to_string(),
        });
    }
    // SAFETY: `machine` is NUL-terminated by uname.
    let machine = unsafe { std::ffi::CStr::from_ptr(uts.machine.as_ptr()) };
    Ok(machine.to_string_lossy().into_owned())
}

/// Every hardware id found under `<sysfs>/bus/*/devices/*/modalias`; unreadable entries are skipped.
pub fn sysfs_hardware_ids(sysfs: &Path) -> BTreeSet<HardwareId> {
    let mut ids = BTreeSet::new();
    let Ok(buses) = std::fs::read_dir(sysfs.join("bus")) else { return ids };
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else { continue };
        for device in devices.flatten() {
            if let Ok(alias) = std::fs::read_to_string(device.path().join("modalias")) {
                ids.extend(hardware_ids_from_modalias(alias.trim()));
            }
        }
    }
    ids
}

/// The catalog hardware ids of one modalias string.
pub fn hardware_ids_from_modalias(alias: &str) -> Vec<HardwareId> {
    let mut out = Vec::new();
    if let Some(rest) = alias.strip_prefix("pci:") {
        let fields = modalias_fields(rest, &["v", "d", "sv", "sd", "bc"]);
        if let (Some(v), Some(d)) = (hex4(fields.first()), hex4(fields.get(1))) {
            out.push(format!("pci:{v}:{d}"));
            if let (Some(sv), Some(sd)) = (hex4(fields.get(2)), hex4(fields.get(3))) {
                out.push(format!("pci:{v}:{d}:{sv}:{sd}"));
            }
        }
    } else if let Some(rest) = alias.strip_prefix("usb:") {
        let fields = modalias_fields(rest, &["v", "p", "d"]);
        if let (Some(v), Some(p)) = (hex4(fields.first()), hex4(fields.get(1))) {
            out.push(format!("usb:{v}:{p}"));
        }
    } else if let Some(rest) = alias.strip_prefix("of:") {
        // of:N<name>T<type>C<compatible>C<compatible>...
        if let Some(index) = rest.find('C') {
            out.extend(rest[index + 1..].split('C').filter(|c| !c.is_empty()).map(|c| format!("of:{c}")));
        }
    } else if let Some(rest) = alias.strip_prefix("acpi:") {
        out.extend(rest.split(':').filter(|h| !h.is_empty()).map(|h| format!("acpi:{}", h.to_ascii_lowercase())));
    }
    out.into_iter().filter_map(|id| id.to_ascii_lowercase().parse().ok()).collect()
}

/// Splits `v00008086d000015F3sv...` by the given markers, in order; each value runs to the next marker.
fn modalias_fields<'a>(mut rest: &'a str, markers: &[&str]) -> Vec<&'a str> {
    let mut values = Vec::new();
    for (i, marker) in markers.iter().enumerate() {
        let Some(after) = rest.strip_prefix(marker) else { break };
        let end = markers.get(i + 1).and_then(|next| after.find(next)).unwrap_or(after.len());
        values.push(&after[..end]);
        rest = &after[end..];
    }
    values
}

/// The last four hex digits of a modalias number, lower-cased (`00008086` → `8086`).
fn hex4(value: Option<&&str>) -> Option<String> {
    let value = value?;
    if value.len() < 4 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(value[value.len() - 4..].to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(alias: &str) -> Vec<String> {
        hardware_ids_from_modalias(alias).iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn modalias_forms() {
        assert_eq!(
            ids("pci:v00008086d000015F3sv00001028sd00000A1Fbc02sc00i00"),
            ["pci:8086:15f3", "pci:8086:15f3:1028:0a1f"]
        );
        assert_eq!(ids("usb:v0BDAp8153d3000dc00dsc00dp00icFFiscFFip00in00"), ["usb:0bda:8153"]);
        assert_eq!(ids("of:NgpioT(null)Cbrcm,bcm2711-gpioCsimple-bus"), ["of:brcm,bcm2711-gpio", "of:simple-bus"]);
        assert_eq!(ids("acpi:INT33C5:"), ["acpi:int33c5"]);
        assert!(ids("platform:serial8250").is_empty());
        assert!(ids("pci:vXYZ").is_empty());
    }

    #[test]
    fn os_release_parsing() {
        let (family, version) = parse_os_release("NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\n").unwrap();
        assert_eq!(family.as_str(), "debian");
        assert_eq!(version.unwrap().to_string(), "12");
        let (family, version) = parse_os_release("ID='arch'\nVERSION_ID=rolling\n").unwrap();
        assert_eq!((family.as_str(), version), ("arch", None));
        assert_eq!(parse_os_release("").unwrap().0.as_str(), "linux");
        assert!(parse_os_release("ID=Debian\n").unwrap_err().contains("ID:"));
    }

    #[test]
    fn sysfs_walk() {
        let dir = tempfile::tempdir().unwrap();
        for (bus, dev, alias) in
            [("pci", "0000:00:1f.6", "pci:v00008086d000015F3sv00001028sd00000A1Fbc02sc00i00\n"), ("usb", "1-1", "")]
        {
            let path = dir.path().join("bus").join(bus).join("devices").join(dev);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("modalias"), alias).unwrap();
        }
        let found: Vec<String> = sysfs_hardware_ids(dir.path()).iter().map(|i| i.to_string()).collect();
        assert_eq!(found, ["pci:8086:15f3", "pci:8086:15f3:1028:0a1f"]);
    }
}
