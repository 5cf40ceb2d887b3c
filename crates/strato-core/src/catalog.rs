//! The VM-size catalog: the sizes a cluster may use, their cores, memory,
//! GPUs and quota family (REFERENCE.md).

use crate::error::FieldError;

/// One VM size. `vcpus` is what the quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_gib: u32,
    pub gpus: u32,
    pub gpu_model: &'static str,
    pub family: &'static str,
}

/// The v2 default size, used when a create names none.
pub const DEFAULT_VM_SIZE: &str = "Standard_DS3_v2";

const fn cpu(name: &'static str, vcpus: u32, memory_gib: u32, family: &'static str) -> VmSize {
    VmSize {
        name,
        vcpus,
        memory_gib,
        gpus: 0,
        gpu_model: "",
        family,
    }
}

const fn gpu(
    name: &'static str,
    vcpus: u32,
    memory_gib: u32,
    gpus: u32,
    gpu_model: &'static str,
    family: &'static str,
) -> VmSize {
    VmSize {
        name,
        vcpus,
        memory_gib,
        gpus,
        gpu_model,
        family,
    }
}

pub const CATALOG: &[VmSize] = &[
    cpu("Standard_D2_v2", 2, 7, "standardDv2Family"),
    cpu("Standard_D3_v2", 4, 14, "standardDv2Family"),
    cpu("Standard_DS3_v2", 4, 14, "standardDSv2Family"),
    cpu("Standard_D2s_v3", 2, 8, "standardDSv3Family"),
    cpu("Standard_D4s_v3", 4, 16, "standardDSv3Family"),
    cpu("Standard_E4s_v3", 4, 32, "standardESv3Family"),
    cpu("Standard_F4s_v2", 4, 8, "standardFSv2Family"),
    gpu(
        "Standard_NC6s_v3",
        6,
        112,
        1,
        "V100 16 GB",
        "standardNCSv3Family",
    ),
    gpu(
        "Standard_NC24ads_A100_v4",
        24,
        220,
        1,
        "A100 80 GB",
        "standardNCADSA100v4Family",
    ),
    gpu(
        "Standard_NC40ads_H100_v5",
        40,
        320,
        1,
        "H100 NVL 94 GB",
        "standardNCADSH100v5Family",
    ),
    gpu(
        "Standard_ND96asr_v4",
        96,
        900,
        8,
        "A100 40 GB",
        "standardNDASv4_A100Family",
    ),
    gpu(
        "Standard_ND96isr_H100_v5",
        96,
        1900,
        8,
        "H100 80 GB",
        "standardNDSH100v5Family",
    ),
];

/// Sizes retired by Azure, with the current size to suggest instead.
const RETIRED: &[(&str, &str)] = &[
    ("Standard_NC6", "Standard_NC6s_v3"),
    ("Standard_NC12", "Standard_NC6s_v3"),
    ("Standard_NC24", "Standard_NC24ads_A100_v4"),
    ("Standard_NC24r", "Standard_NC24ads_A100_v4"),
];

/// Finds a size by name, case-insensitively. Retired and unknown sizes are
/// refused with a message that names a size to use instead.
pub fn lookup(name: &str) -> Result<&'static VmSize, FieldError> {
    if let Some(size) = CATALOG.iter().find(|s| s.name.eq_ignore_ascii_case(name)) {
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

/// Every quota family in the catalog, in catalog order, without repeats.
pub fn families() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in CATALOG {
        if !out.contains(&s.family) {
            out.push(s.family);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_returns_catalog_spelling() {
        let s = lookup("standard_nc6S_V3").expect("known size");
        assert_eq!(s.name, "Standard_NC6s_v3");
        assert_eq!((s.vcpus, s.gpus, s.family), (6, 1, "standardNCSv3Family"));
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
    fn catalog_names_are_unique_and_default_exists() {
        for (i, a) in CATALOG.iter().enumerate() {
            for b in &CATALOG[i + 1..] {
                assert!(!a.name.eq_ignore_ascii_case(b.name), "{} twice", a.name);
            }
        }
        assert!(lookup(DEFAULT_VM_SIZE).is_ok());
        assert_eq!(families().len(), 10);
    }
}
