//! Boot environments: what a machine boots (kernel, initrds, command line per architecture) and
//! which files are rendered for it (iPXE scripts, pxelinux configs, kickstarts, Ignition).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::machine::Arch;
use super::object::{Object, ObjectKind};
use super::template::check_template_field;
use super::validate::{
    check_boot_path, check_count, check_description, check_name, check_names, check_required, code,
    ValidationError, MAX_TEMPLATE_LEN,
};

pub const MAX_INITRDS: usize = 16;
pub const MAX_TEMPLATES: usize = 64;
pub const MAX_BOOTENV_PARAMS: usize = 256;
/// All template text in one bootenv (boot params, paths, inline contents) together: bigger files
/// belong in stored templates named by `template_id`. Bounds the parse time of one write.
const MAX_BOOTENV_TEMPLATE_TEXT: usize = MAX_TEMPLATE_LEN;

/// How one architecture boots this environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchBoot {
    /// Kernel artefact path (in the boot namespace) or URL.
    pub kernel: String,
    #[serde(default)]
    pub initrds: Vec<String>,
    /// Kernel command line, a tera template rendered per machine.
    #[serde(default)]
    pub boot_params: String,
    /// Boot loader file to hand this arch instead of the default for its firmware.
    #[serde(default)]
    pub loader: Option<String>,
}

/// A file rendered per machine when it boots this environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    /// Name of this file within the bootenv (unique in it).
    pub name: String,
    /// Where the file appears in the boot namespace, a tera template
    /// (`pxelinux.cfg/{{ machine.hex_address }}`).
    pub path: String,
    /// Id of a stored template to render; exactly one of `template_id` and `contents`.
    #[serde(default)]
    pub template_id: Option<String>,
    /// An inline tera body; exactly one of `template_id` and `contents`.
    #[serde(default)]
    pub contents: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootEnv {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Per-architecture boot instructions. Empty for environments that boot nothing over the
    /// network (`local`).
    #[serde(default)]
    pub arches: BTreeMap<Arch, ArchBoot>,
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
    /// Params a machine must have (after resolution) to boot this environment; sorted.
    #[serde(default)]
    pub required_params: Vec<String>,
    /// Params the templates use if set; sorted. Documentation for operators and UIs.
    #[serde(default)]
    pub optional_params: Vec<String>,
    /// Only for machines Cradle does not know (discovery); never assignable to a machine.
    #[serde(default)]
    pub only_unknown: bool,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

impl Object for BootEnv {
    const KIND: ObjectKind = ObjectKind::Bootenvs;

    fn key(&self) -> String {
        self.name.clone()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        check_name("name", &self.name)?;
        check_description(&self.description)?;

        let text: usize = self
            .arches
            .values()
            .map(|a| a.boot_params.len())
            .sum::<usize>()
            + self
                .templates
                .iter()
                .map(|t| t.path.len() + t.contents.as_ref().map_or(0, String::len))
                .sum::<usize>();
        if text > MAX_BOOTENV_TEMPLATE_TEXT {
            return Err(ValidationError::new(
                "templates",
                code::TOO_LONG,
                format!(
                    "{text} bytes of template text; at most {MAX_BOOTENV_TEMPLATE_TEXT} per \
                     bootenv (move large files into stored templates)"
                ),
            ));
        }

        for (arch, boot) in &self.arches {
            let f = format!("arches.{}", arch.as_str());
            check_boot_path(&format!("{f}.kernel"), &boot.kernel)?;
            check_count(&format!("{f}.initrds"), boot.initrds.len(), MAX_INITRDS)?;
            for (i, initrd) in boot.initrds.iter().enumerate() {
                check_boot_path(&format!("{f}.initrds[{i}]"), initrd)?;
            }
            check_template_field(
                &format!("{f}.boot_params"),
                &format!("{}/{}/boot_params", self.name, arch.as_str()),
                &boot.boot_params,
            )?;
            if let Some(loader) = &boot.loader {
                check_boot_path(&format!("{f}.loader"), loader)?;
            }
        }

        check_count("templates", self.templates.len(), MAX_TEMPLATES)?;
        for (i, t) in self.templates.iter().enumerate() {
            let f = format!("templates[{i}]");
            check_name(&format!("{f}.name"), &t.name)?;
            if self.templates[..i].iter().any(|o| o.name == t.name) {
                return Err(ValidationError::new(
                    format!("{f}.name"),
                    code::DUPLICATE_TEMPLATE,
                    format!("template name {:?} is used twice", t.name),
                ));
            }
            let tname = format!("{}/{}", self.name, t.name);
            check_required(&format!("{f}.path"), &t.path)?;
            check_template_field(&format!("{f}.path"), &format!("{tname}/path"), &t.path)?;
            match (&t.template_id, &t.contents) {
                (Some(id), None) => check_name(&format!("{f}.template_id"), id)?,
                (None, Some(body)) => check_template_field(&format!("{f}.contents"), &tname, body)?,
                _ => {
                    return Err(ValidationError::new(
                        f,
                        code::INVALID_TEMPLATE_SOURCE,
                        "exactly one of template_id and contents must be set",
                    ))
                }
            }
        }

        // Order means nothing for these sets; sorted and deduplicated they diff cleanly.
        for (field, list) in [
            ("required_params", &mut self.required_params),
            ("optional_params", &mut self.optional_params),
        ] {
            check_count(field, list.len(), MAX_BOOTENV_PARAMS)?;
            check_names(field, list)?;
            list.sort();
            list.dedup();
        }
        if let Some((i, p)) = self
            .optional_params
            .iter()
            .enumerate()
            .find(|(_, p)| self.required_params.binary_search(p).is_ok())
        {
            return Err(ValidationError::new(
                format!("optional_params[{i}]"),
                code::DUPLICATE_PARAM,
                format!("param {p:?} is both required and optional"),
            ));
        }
        Ok(())
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        let mut terms = vec![
            ("name", self.name.clone()),
            ("only_unknown", self.only_unknown.to_string()),
        ];
        // Lets the store find which bootenvs use a template before deleting it.
        terms.extend(
            self.templates
                .iter()
                .filter_map(|t| t.template_id.clone())
                .map(|id| ("template", id)),
        );
        terms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    const FCOS: &str = r#"{
        "name": "fcos-39",
        "arches": {
            "amd64": {
                "kernel": "fcos/39/kernel",
                "initrds": ["fcos/39/initramfs.img"],
                "boot_params": "coreos.live.rootfs_url={{ params[\"rootfs-url\"] }} ignition.config.url={{ machine.url }}/ignition",
                "loader": "ipxe.efi"
            },
            "arm64": {"kernel": "fcos/39/kernel-aarch64"}
        },
        "templates": [
            {"name": "ipxe", "path": "{{ machine.address }}.ipxe", "template_id": "fcos-ipxe"},
            {"name": "ign", "path": "ignition/{{ machine.uuid }}", "contents": "{\"ignition\": {\"version\": \"3.4.0\"}}"}
        ],
        "required_params": ["rootfs-url", "ignition-url", "rootfs-url"],
        "optional_params": ["console"]
    }"#;

    fn with(patch: serde_json::Value) -> String {
        let mut doc: serde_json::Value = serde_json::from_str(FCOS).unwrap();
        json_patch::merge(&mut doc, &patch);
        doc.to_string()
    }

    #[test]
    fn bootenvs_round_trip() {
        let b: BootEnv = check_ok(FCOS);
        assert_eq!(b.required_params, vec!["ignition-url", "rootfs-url"]);
        assert_eq!(b.arches[&Arch::Arm64].initrds, Vec::<String>::new());
        assert!(b
            .index_terms()
            .contains(&("template", "fcos-ipxe".to_string())));
        let local: BootEnv = check_ok(r#"{"name": "local"}"#);
        assert!(local.arches.is_empty());
    }

    #[test]
    fn bad_bootenvs_are_refused() {
        use serde_json::json;
        let err = check_err::<BootEnv>(
            &with(json!({"arches": {"amd64": {"boot_params": "console={{ params.console"}}})),
            "arches.amd64.boot_params",
            code::INVALID_TEMPLATE,
        );
        assert!(err.message.contains("fcos-39/amd64/boot_params"), "{err}");
        assert!(err.message.contains("line 1 column"), "{err}");
        check_err::<BootEnv>(
            &with(json!({"arches": {"sparc": {"kernel": "k"}}})),
            "arches.sparc",
            code::INVALID_VALUE,
        );
        check_err::<BootEnv>(
            &with(json!({"arches": {"amd64": {"kernel": ""}}})),
            "arches.amd64.kernel",
            code::REQUIRED,
        );
        check_err::<BootEnv>(
            &with(json!({"arches": {"amd64": {"initrds": ["../x"]}}})),
            "arches.amd64.initrds[0]",
            code::INVALID_PATH,
        );
        check_err::<BootEnv>(
            &with(json!({"arches": {"amd64": {"initrd": []}}})),
            "arches.amd64.initrd",
            code::UNKNOWN_FIELD,
        );
        check_err::<BootEnv>(
            &with(json!({"required_params": ["a b"]})),
            "required_params[0]",
            code::INVALID_NAME,
        );
        check_err::<BootEnv>(
            &with(json!({"optional_params": ["rootfs-url"]})),
            "optional_params[0]",
            code::DUPLICATE_PARAM,
        );
        let two_ipxe = json!({"templates": [
            {"name": "ipxe", "path": "a", "template_id": "x"},
            {"name": "ipxe", "path": "b", "template_id": "y"}]});
        check_err::<BootEnv>(
            &with(two_ipxe),
            "templates[1].name",
            code::DUPLICATE_TEMPLATE,
        );
        let both =
            json!({"templates": [{"name": "t", "path": "p", "template_id": "x", "contents": "y"}]});
        check_err::<BootEnv>(&with(both), "templates[0]", code::INVALID_TEMPLATE_SOURCE);
        let neither = json!({"templates": [{"name": "t", "path": "p"}]});
        check_err::<BootEnv>(
            &with(neither),
            "templates[0]",
            code::INVALID_TEMPLATE_SOURCE,
        );
        let bad_path = json!({"templates": [{"name": "t", "path": "pxelinux.cfg/{{ machine.hex_address", "template_id": "x"}]});
        check_err::<BootEnv>(&with(bad_path), "templates[0].path", code::INVALID_TEMPLATE);
        let bad_body = json!({"templates": [{"name": "t", "path": "p", "contents": "{% if %}"}]});
        let err = check_err::<BootEnv>(
            &with(bad_body),
            "templates[0].contents",
            code::INVALID_TEMPLATE,
        );
        assert!(err.message.contains("fcos-39/t"), "{err}");
        let big = "x".repeat(MAX_TEMPLATE_LEN / 2);
        let too_much = json!({"templates": [
            {"name": "a", "path": "a", "contents": big},
            {"name": "b", "path": "b", "contents": big}]});
        check_err::<BootEnv>(&with(too_much), "templates", code::TOO_LONG);
        let no_path = json!({"templates": [{"name": "t", "contents": "x"}]});
        check_err::<BootEnv>(&with(no_path), "templates[0].path", code::MISSING_FIELD);
    }
}
