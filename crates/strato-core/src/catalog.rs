//! The VM-size catalog: the sizes a cluster may use, their cores, memory,
//! GPUs and quota family. The built-in sizes are the Azure ones Azure ML
//! users name (`catalog.toml`, embedded at build time); a [`Catalog`] adds
//! an operator's own sizes (`--vm-sizes-file`, the same format) for
//! machines that are not Azure sizes.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// One VM size. `vcpus` is what the quota counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSize {
    pub name: String,
    pub vcpus: u32,
    pub memory_gib: u32,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub gpu_model: String,
    pub family: String,
}

/// The v2 default size, used when a create names none.
pub const DEFAULT_VM_SIZE: &str = "Standard_DS3_v2";

/// A sizes file: `[[size]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SizesFile {
    #[serde(default)]
    size: Vec<VmSize>,
}

/// Bounds of a sizes file.
pub const MAX_CUSTOM_SIZES: usize = 1000;
pub const MAX_VCPUS: u32 = 4096;
pub const MAX_MEMORY_GIB: u32 = 65_536;
pub const MAX_GPUS: u32 = 64;

static BUILTIN: LazyLock<Vec<VmSize>> = LazyLock::new(|| {
    let file: SizesFile =
        toml::from_str(include_str!("catalog.toml")).expect("catalog.toml is valid (unit-tested)");
    file.size
});

/// The built-in sizes, in catalog order.
pub fn builtin() -> &'static [VmSize] {
    &BUILTIN
}

/// Sizes retired by Azure, with the current size to suggest instead.
const RETIRED: &[(&str, &str)] = &[
    ("Standard_NC6", "Standard_NC6s_v3"),
    ("Standard_NC12", "Standard_NC6s_v3"),
    ("Standard_NC24", "Standard_NC24ads_A100_v4"),
    ("Standard_NC24r", "Standard_NC24ads_A100_v4"),
];

/// Finds a built-in size by name, case-insensitively (see
/// [`Catalog::lookup`]).
pub fn lookup(name: &str) -> Result<&'static VmSize, FieldError> {
    find(builtin(), name)
}

fn find<'a>(sizes: &'a [VmSize], name: &str) -> Result<&'a VmSize, FieldError> {
    if let Some(size) = sizes.iter().find(|s| s.name.eq_ignore_ascii_case(name)) {
        return Ok(size);
    }
    if let Some((retired, instead)) = RETIRED.iter().find(|(r, _)| r.eq_ignore_ascii_case(name)) {
        return Err(FieldError::new(
            "vm_size",
            format!("{retired} was retired in 2023; use a current size such as {instead}"),
        ));
    }
    Err(FieldError::new(
        "vm_size",
        format!(
            "unknown size {name:?}; `strato compute list-sizes` lists the sizes (e.g. {DEFAULT_VM_SIZE})"
        ),
    ))
}

/// The sizes a control plane offers: the built-in ones and the operator's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    sizes: Vec<VmSize>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::builtin()
    }
}

impl Catalog {
    pub fn builtin() -> Catalog {
        Catalog {
            sizes: builtin().to_vec(),
        }
    }

    /// The built-in sizes and those of a sizes file's `text` (TOML
    /// `[[size]]` tables: name, vcpus, memory_gib, gpus, gpu_model,
    /// family). Every size is checked; an error names the size's position,
    /// the field and the rule.
    pub fn with_sizes_file(text: &str) -> Result<Catalog, FieldError> {
        let file: SizesFile = toml::from_str(text)
            .map_err(|e| FieldError::new("size", format!("not a sizes file: {}", e.message())))?;
        if file.size.len() > MAX_CUSTOM_SIZES {
            return Err(FieldError::new(
                "size",
                format!("at most {MAX_CUSTOM_SIZES} sizes; got {}", file.size.len()),
            ));
        }
        let mut catalog = Catalog::builtin();
        for (i, size) in file.size.into_iter().enumerate() {
            let field = |f: &str| format!("size[{i}].{f}");
            check_size(&size).map_err(|e| FieldError::new(field(&e.field), e.rule))?;
            if catalog
                .sizes
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(&size.name))
            {
                return Err(FieldError::new(
                    field("name"),
                    format!("{:?} is a size already; choose another name", size.name),
                ));
            }
            catalog.sizes.push(size);
        }
        Ok(catalog)
    }

    /// Every size, the built-in ones first.
    pub fn sizes(&self) -> &[VmSize] {
        &self.sizes
    }

    /// Finds a size by name, case-insensitively. Retired and unknown sizes
    /// are refused with a message that names a size to use instead.
    pub fn lookup(&self, name: &str) -> Result<&VmSize, FieldError> {
        find(&self.sizes, name)
    }

    /// Every quota family, in catalog order, without repeats.
    pub fn families(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.sizes {
            if !out.contains(&s.family.as_str()) {
                out.push(&s.family);
            }
        }
        out
    }
}

/// The rules of one size of a sizes file.
fn check_size(size: &VmSize) -> Result<(), FieldError> {
    let name_ok = (1..=64).contains(&size.name.len())
        && size
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !name_ok {
        return Err(FieldError::new(
            "name",
            format!(
                "must be 1 to 64 letters, digits, '_', '-' and '.'; got {:?}",
                size.name
            ),
        ));
    }
    if !(1..=MAX_VCPUS).contains(&size.vcpus) {
        return Err(FieldError::new(
            "vcpus",
            format!("must be from 1 to {MAX_VCPUS}; got {}", size.vcpus),
        ));
    }
    if !(1..=MAX_MEMORY_GIB).contains(&size.memory_gib) {
        return Err(FieldError::new(
            "memory_gib",
            format!(
                "must be from 1 to {MAX_MEMORY_GIB}; got {}",
                size.memory_gib
            ),
        ));
    }
    if size.gpus > MAX_GPUS {
        return Err(FieldError::new(
            "gpus",
            format!("must be at most {MAX_GPUS}; got {}", size.gpus),
        ));
    }
    if (size.gpus > 0) == size.gpu_model.trim().is_empty() || size.gpu_model.len() > 64 {
        return Err(FieldError::new(
            "gpu_model",
            "names the GPU (at most 64 characters) exactly when gpus is above 0",
        ));
    }
    let family_ok = (1..=64).contains(&size.family.len())
        && size.family.starts_with(|c: char| c.is_ascii_alphabetic())
        && size
            .family
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !family_ok {
        return Err(FieldError::new(
            "family",
            format!(
                "the quota family: 1 to 64 letters, digits and '_', starting with a letter (e.g. labA100Family); got {:?}",
                size.family
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_returns_catalog_spelling() {
        let s = lookup("standard_nc6S_V3").expect("known size");
        assert_eq!(s.name, "Standard_NC6s_v3");
        assert_eq!(
            (s.vcpus, s.gpus, s.family.as_str()),
            (6, 1, "standardNCSv3Family")
        );
    }

    #[test]
    fn retired_size_names_a_current_one() {
        let e = lookup("standard_nc6").expect_err("retired");
        assert_eq!(e.field, "vm_size");
        assert!(
            e.rule.contains("retired") && e.rule.contains("Standard_NC6s_v3"),
            "{e}"
        );
    }

    #[test]
    fn unknown_size_points_at_list_sizes() {
        let e = lookup("Standard_Bogus").expect_err("unknown");
        assert!(e.rule.contains("list-sizes"), "{e}");
    }

    #[test]
    fn catalog_names_are_unique_every_size_keeps_the_rules_and_default_exists() {
        let sizes = builtin();
        assert!(sizes.len() >= 70, "the sizes Azure ML users name");
        for (i, a) in sizes.iter().enumerate() {
            check_size(a).unwrap_or_else(|e| panic!("{}: {e}", a.name));
            for b in &sizes[i + 1..] {
                assert!(!a.name.eq_ignore_ascii_case(&b.name), "{} twice", a.name);
            }
        }
        assert!(lookup(DEFAULT_VM_SIZE).is_ok());
        for name in [
            "Standard_DS2_v2",
            "Standard_D4s_v5",
            "Standard_E8s_v5",
            "Standard_F8s_v2",
        ] {
            assert_eq!(lookup(name).expect(name).gpus, 0);
        }
        for name in [
            "Standard_NC4as_T4_v3",
            "Standard_ND96amsr_A100_v4",
            "Standard_NV36ads_A10_v5",
        ] {
            assert!(lookup(name).expect(name).gpus > 0);
        }
        assert_eq!(Catalog::builtin().families().len(), 23);
    }

    #[test]
    fn a_sizes_file_adds_sizes_and_is_checked() {
        let catalog = Catalog::with_sizes_file(
            r#"
            [[size]]
            name = "lab-a100x2"
            vcpus = 32
            memory_gib = 256
            gpus = 2
            gpu_model = "A100 80 GB"
            family = "labA100Family"

            [[size]]
            name = "lab-cpu"
            vcpus = 16
            memory_gib = 64
            family = "labCpuFamily"
            "#,
        )
        .expect("valid");
        let s = catalog.lookup("LAB-A100X2").expect("custom size");
        assert_eq!(
            (s.vcpus, s.gpus, s.family.as_str()),
            (32, 2, "labA100Family")
        );
        assert!(catalog.lookup("Standard_D2_v2").is_ok(), "built-ins stay");
        assert!(catalog.families().contains(&"labCpuFamily"));
        assert_eq!(catalog.sizes().len(), builtin().len() + 2);

        let one = |body: &str| Catalog::with_sizes_file(&format!("[[size]]\n{body}"));
        for (body, field, says) in [
            (
                "name = \"Standard_D2_v2\"\nvcpus = 2\nmemory_gib = 7\nfamily = \"f\"",
                "size[0].name",
                "is a size already",
            ),
            (
                "name = \"x\"\nvcpus = 0\nmemory_gib = 7\nfamily = \"f\"",
                "size[0].vcpus",
                "from 1",
            ),
            (
                "name = \"x\"\nvcpus = 2\nmemory_gib = 0\nfamily = \"f\"",
                "size[0].memory_gib",
                "from 1",
            ),
            (
                "name = \"x\"\nvcpus = 2\nmemory_gib = 7\ngpus = 1\nfamily = \"f\"",
                "size[0].gpu_model",
                "exactly when gpus",
            ),
            (
                "name = \"x\"\nvcpus = 2\nmemory_gib = 7\nfamily = \"1f\"",
                "size[0].family",
                "starting with a letter",
            ),
            (
                "name = \"a b\"\nvcpus = 2\nmemory_gib = 7\nfamily = \"f\"",
                "size[0].name",
                "letters, digits",
            ),
            (
                "name = \"x\"\nvcpus = 2\nmemory_gib = 7\nfamily = \"f\"\ncolour = 1",
                "size",
                "unknown field `colour`",
            ),
        ] {
            let e = one(body).expect_err(body);
            assert_eq!(e.field, field, "{e}");
            assert!(e.rule.contains(says), "{e}");
        }
    }
}
