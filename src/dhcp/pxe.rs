//! What a network-booting client is given to boot: the loader its firmware
//! can run (RFC 4578 option 93), or, once that loader is iPXE, the HTTP URL
//! of its script, which ends the chain-load loop.
//!
//! Loaders are paths in the boot namespace that TFTP and boot HTTP serve.
//! A loader named by the machine, its bootenv or the subnet replaces the
//! default for the firmware, in that order of precedence.

/// The x86 BIOS loader (iPXE with the PXE ROM's UNDI driver).
pub const BIOS_LOADER: &str = "undionly.kpxe";
/// The x86-64 UEFI loader.
pub const UEFI_X64_LOADER: &str = "ipxe.efi";
/// The arm64 UEFI loader.
pub const UEFI_ARM64_LOADER: &str = "arm64/ipxe.efi";
/// The iPXE script path for a machine Cradle does not know.
pub const DEFAULT_SCRIPT: &str = "default.ipxe";

/// What kind of network boot a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// PC BIOS PXE ROM: loader over TFTP.
    Bios,
    /// UEFI PXE on x86 (32- or 64-bit; both run the x86-64 loader on
    /// every machine Cradle targets): loader over TFTP.
    UefiX64,
    /// UEFI PXE on arm64: loader over TFTP.
    UefiArm64,
    /// UEFI HTTP boot on x86: loader over HTTP, `HTTPClient` in option 60.
    HttpX64,
    /// UEFI HTTP boot on arm64.
    HttpArm64,
    /// iPXE itself (user class `iPXE`): its script over HTTP.
    Ipxe,
}

impl Firmware {
    /// The loader the firmware runs by default (`None` for iPXE, which
    /// gets its script instead).
    pub const fn default_loader(self) -> Option<&'static str> {
        match self {
            Firmware::Bios => Some(BIOS_LOADER),
            Firmware::UefiX64 | Firmware::HttpX64 => Some(UEFI_X64_LOADER),
            Firmware::UefiArm64 | Firmware::HttpArm64 => Some(UEFI_ARM64_LOADER),
            Firmware::Ipxe => None,
        }
    }

    /// Whether the boot file is an `http://` URL rather than a TFTP path.
    pub const fn boots_over_http(self) -> bool {
        matches!(
            self,
            Firmware::HttpX64 | Firmware::HttpArm64 | Firmware::Ipxe
        )
    }

    /// The machine architecture the firmware implies, by its model name.
    pub const fn arch(self) -> Option<crate::model::Arch> {
        match self {
            Firmware::Bios | Firmware::UefiX64 | Firmware::HttpX64 => {
                Some(crate::model::Arch::Amd64)
            }
            Firmware::UefiArm64 | Firmware::HttpArm64 => Some(crate::model::Arch::Arm64),
            Firmware::Ipxe => None,
        }
    }
}

/// Classifies a request by option 93 (client system architecture), option
/// 60 (vendor class) and option 77 (user class). `None`: not a network
/// boot, so no boot options go in the reply.
pub fn classify(arch: Option<u16>, vendor_class: Option<&[u8]>, is_ipxe: bool) -> Option<Firmware> {
    if is_ipxe {
        return Some(Firmware::Ipxe);
    }
    let vendor = vendor_class.unwrap_or_default();
    let http_client = vendor.starts_with(b"HTTPClient");
    let pxe_client = vendor.starts_with(b"PXEClient");
    match arch {
        Some(0) if pxe_client || !http_client => Some(Firmware::Bios),
        Some(6 | 7 | 9) if !http_client => Some(Firmware::UefiX64),
        Some(11) if !http_client => Some(Firmware::UefiArm64),
        Some(15 | 16) => Some(Firmware::HttpX64),
        Some(19) => Some(Firmware::HttpArm64),
        Some(6 | 7 | 9 | 0) => Some(Firmware::HttpX64),
        Some(11) => Some(Firmware::HttpArm64),
        // An architecture Cradle has no loader for.
        Some(_) => None,
        None if http_client => Some(Firmware::HttpX64),
        // A PXE client that does not say its architecture is a BIOS ROM
        // older than RFC 4578.
        None if pxe_client => Some(Firmware::Bios),
        None => None,
    }
}

/// Loaders named closer to the machine win.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoaderOverrides<'a> {
    pub machine: Option<&'a str>,
    pub bootenv: Option<&'a str>,
    pub subnet: Option<&'a str>,
}

impl<'a> LoaderOverrides<'a> {
    fn first(&self) -> Option<&'a str> {
        [self.machine, self.bootenv, self.subnet]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
    }
}

/// The boot file for a client: a TFTP path or an `http://` URL on
/// `http_base` (`http://<node address>:<port>`, no trailing slash).
/// `script` is the iPXE script path for this client (per machine, or
/// [`DEFAULT_SCRIPT`]).
pub fn boot_file(
    firmware: Firmware,
    overrides: LoaderOverrides<'_>,
    http_base: &str,
    script: &str,
) -> String {
    let path = match firmware.default_loader() {
        None => script.to_string(),
        Some(default) => overrides.first().unwrap_or(default).to_string(),
    };
    if path.starts_with("http://") || path.starts_with("https://") {
        return path;
    }
    if firmware.boots_over_http() {
        format!("{http_base}/{}", path.trim_start_matches('/'))
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_93_chooses_the_loader() {
        let pxe = Some(&b"PXEClient:Arch:00000:UNDI:002001"[..]);
        assert_eq!(classify(Some(0), pxe, false), Some(Firmware::Bios));
        for arch in [6, 7, 9] {
            assert_eq!(classify(Some(arch), pxe, false), Some(Firmware::UefiX64));
        }
        assert_eq!(classify(Some(11), pxe, false), Some(Firmware::UefiArm64));
        let http = Some(&b"HTTPClient:Arch:00016:UNDI:003001"[..]);
        assert_eq!(classify(Some(16), http, false), Some(Firmware::HttpX64));
        assert_eq!(classify(Some(15), None, false), Some(Firmware::HttpX64));
        assert_eq!(classify(Some(19), http, false), Some(Firmware::HttpArm64));
        assert_eq!(classify(Some(7), http, false), Some(Firmware::HttpX64));
        assert_eq!(classify(None, http, false), Some(Firmware::HttpX64));
        // iPXE wins whatever else the request says.
        assert_eq!(classify(Some(7), pxe, true), Some(Firmware::Ipxe));
        // Not booting from the network: no boot options.
        assert_eq!(classify(None, Some(b"udhcp 1.36.1"), false), None);
        assert_eq!(classify(None, None, false), None);
        assert_eq!(classify(Some(2), pxe, false), None);
        assert_eq!(classify(None, pxe, false), Some(Firmware::Bios));
    }

    #[test]
    fn boot_files_by_firmware_and_overrides() {
        let base = "http://198.18.0.1:8080";
        let none = LoaderOverrides::default();
        assert_eq!(
            boot_file(Firmware::Bios, none, base, "x.ipxe"),
            "undionly.kpxe"
        );
        assert_eq!(
            boot_file(Firmware::UefiX64, none, base, "x.ipxe"),
            "ipxe.efi"
        );
        assert_eq!(
            boot_file(Firmware::UefiArm64, none, base, "x.ipxe"),
            "arm64/ipxe.efi"
        );
        assert_eq!(
            boot_file(Firmware::HttpX64, none, base, "x.ipxe"),
            "http://198.18.0.1:8080/ipxe.efi"
        );
        assert_eq!(
            boot_file(Firmware::Ipxe, none, base, "52:54:00:00:00:01.ipxe"),
            "http://198.18.0.1:8080/52:54:00:00:00:01.ipxe"
        );
        let overrides = LoaderOverrides {
            machine: None,
            bootenv: Some("snponly.efi"),
            subnet: Some("other.efi"),
        };
        assert_eq!(
            boot_file(Firmware::UefiX64, overrides, base, "x"),
            "snponly.efi"
        );
        let overrides = LoaderOverrides {
            machine: Some("mine.efi"),
            ..overrides
        };
        assert_eq!(
            boot_file(Firmware::UefiX64, overrides, base, "x"),
            "mine.efi"
        );
        // Overrides never replace iPXE's script.
        assert_eq!(
            boot_file(Firmware::Ipxe, overrides, base, "default.ipxe"),
            "http://198.18.0.1:8080/default.ipxe"
        );
        // A full URL is passed through.
        let url = LoaderOverrides {
            subnet: Some("http://10.0.0.9/ipxe.efi"),
            ..Default::default()
        };
        assert_eq!(
            boot_file(Firmware::HttpX64, url, base, "x"),
            "http://10.0.0.9/ipxe.efi"
        );
    }
}
