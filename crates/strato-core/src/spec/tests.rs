use super::*;
use crate::error::SpecError;
use proptest::prelude::*;

fn req(name: &str) -> ClusterRequest {
    ClusterRequest {
        name: name.to_owned(),
        ..Default::default()
    }
}

#[test]
fn defaults_are_the_v2_defaults() {
    let spec = validate(&req("cpu"), "local").expect("valid");
    assert_eq!(spec.vm_size, "Standard_DS3_v2");
    assert_eq!(spec.vm_priority, VmPriority::Dedicated);
    assert_eq!((spec.min_nodes, spec.max_nodes), (0, 1));
    assert_eq!(spec.idle_seconds_before_scaledown, 120);
    assert_eq!(spec.location, "local");
    assert!(spec.inter_node_communication);
}

#[test]
fn size_is_stored_in_catalog_spelling() {
    let mut r = req("gpu");
    r.vm_size = Some("standard_nc6s_v3".into());
    assert_eq!(
        validate(&r, "local").expect("valid").vm_size,
        "Standard_NC6s_v3"
    );
}

#[test]
fn min_above_max_names_min_nodes() {
    let mut r = req("cpu");
    r.min_nodes = Some(3);
    r.max_nodes = Some(2);
    let e = validate(&r, "local").expect_err("min > max");
    assert_eq!(e.field, "min_nodes");
}

#[test]
fn node_limit_depends_on_inter_node_communication() {
    let mut r = req("cpu");
    r.max_nodes = Some(101);
    let e = validate(&r, "local").expect_err("101 with MPI");
    assert_eq!(e.field, "max_nodes");
    assert!(e.rule.contains("inter-node"), "{e}");
    r.inter_node_communication = Some(false);
    assert!(validate(&r, "local").is_ok());
    r.max_nodes = Some(1001);
    assert_eq!(validate(&r, "local").expect_err("1001").field, "max_nodes");
}

#[test]
fn vnet_is_a_network_and_subnet_or_none() {
    let mut r = req("cpu");
    r.vnet = Some(VnetSettings {
        resource_group: "rg".into(),
        vnet_name: "vnet".into(),
        subnet_name: String::new(),
    });
    assert_eq!(
        validate(&r, "local").expect_err("partial").field,
        "vnet.subnet_name"
    );
    r.vnet = Some(VnetSettings {
        resource_group: "rg".into(),
        vnet_name: "vnet".into(),
        subnet_name: "default".into(),
    });
    assert!(validate(&r, "local").is_ok());
    // As Azure ML: the resource group may be left to the workspace's.
    r.vnet = Some(VnetSettings {
        resource_group: String::new(),
        vnet_name: "vnet".into(),
        subnet_name: "default".into(),
    });
    assert!(validate(&r, "local").is_ok());
    r.vnet = Some(VnetSettings {
        resource_group: "rg".into(),
        vnet_name: String::new(),
        subnet_name: String::new(),
    });
    assert_eq!(
        validate(&r, "local").expect_err("a group alone").field,
        "vnet.vnet_name"
    );
}

#[test]
fn system_and_user_assigned_never_together() {
    let mut r = req("cpu");
    r.identity = IdentitySpec {
        system_assigned: true,
        user_assigned: vec!["/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u".into()],
    };
    assert_eq!(validate(&r, "local").expect_err("both").field, "identity");
    r.identity.system_assigned = false;
    assert!(validate(&r, "local").is_ok());
    r.identity
        .user_assigned
        .push(r.identity.user_assigned[0].to_uppercase());
    assert!(
        validate(&r, "local")
            .expect_err("dup")
            .rule
            .contains("twice")
    );
}

#[test]
fn admin_password_needs_three_classes_and_is_never_echoed() {
    for bad in [
        "short1A!",
        "alllowercaseletters",
        "lowerUPPERonly",
        "123456789012",
    ] {
        let e = check_admin_password(bad).expect_err(bad);
        assert_eq!(e.field, "ssh.admin_password");
        assert!(!e.to_string().contains(bad));
    }
    for good in ["lowerUPPER1234", "lower-1234-5678", "UPPER_5678_ABCD"] {
        assert!(check_admin_password(good).is_ok(), "{good}");
    }
}

#[test]
fn debug_output_redacts_the_password() {
    let mut r = req("cpu");
    r.ssh.admin_password = "Sup3r-Secret-Value".into();
    assert!(!format!("{r:?}").contains("Sup3r-Secret-Value"));
}

#[test]
fn ssh_user_needs_a_credential() {
    let mut r = req("cpu");
    r.ssh.admin_username = "azureuser".into();
    assert_eq!(
        validate(&r, "local").expect_err("no cred").field,
        "ssh.admin_password"
    );
    r.ssh.admin_ssh_public_key = "ssh-ed25519 AAAAC3Nza user@host".into();
    assert!(validate(&r, "local").is_ok());
    r.ssh.admin_username = String::new();
    r.ssh.public_access = true;
    assert_eq!(
        validate(&r, "local").expect_err("no user").field,
        "ssh.admin_username"
    );
}

#[test]
fn update_changes_mutable_fields_only() {
    let current = validate(&req("cpu"), "local").expect("valid");
    let mut desired = req("cpu");
    desired.max_nodes = Some(4);
    desired.min_nodes = Some(1);
    let mask = vec!["max_nodes".to_owned(), "min_nodes".to_owned()];
    let next = apply_update(&current, &desired, &mask).expect("update");
    assert_eq!((next.min_nodes, next.max_nodes), (1, 4));

    desired.vm_size = Some("Standard_D2_v2".into());
    let e = apply_update(&current, &desired, &["vm_size".to_owned()]).expect_err("immutable");
    assert!(
        matches!(&e, SpecError::Immutable { field, .. } if field == "vm_size"),
        "{e}"
    );
    assert!(e.to_string().contains("Standard_DS3_v2"), "{e}");

    // Naming an immutable field with its current value is harmless.
    desired.vm_size = Some("STANDARD_DS3_V2".into());
    assert!(apply_update(&current, &desired, &["vm_size".to_owned()]).is_ok());

    let e = apply_update(&current, &desired, &[]).expect_err("empty mask");
    assert_eq!(e.field(), "update_mask");
    let e = apply_update(&current, &desired, &["colour".to_owned()]).expect_err("unknown");
    assert_eq!(e.field(), "update_mask");
}

#[test]
fn update_is_checked_against_every_rule() {
    let current = validate(&req("cpu"), "local").expect("valid");
    let mut desired = req("cpu");
    desired.min_nodes = Some(5);
    let e = apply_update(&current, &desired, &["min_nodes".to_owned()]).expect_err("min > max");
    assert_eq!(e.field(), "min_nodes");
}

#[test]
fn every_immutable_field_is_refused_when_changed() {
    let current = validate(&req("cpu"), "local").expect("valid");
    let mut desired = req("cpu");
    desired.vm_priority = Some(VmPriority::LowPriority);
    desired.location = Some("westeurope".into());
    desired.ssh.public_access = true;
    desired.vnet = Some(VnetSettings {
        resource_group: "g".into(),
        vnet_name: "v".into(),
        subnet_name: "s".into(),
    });
    desired.identity.system_assigned = true;
    desired.inter_node_communication = Some(false);
    desired.enable_node_public_ip = Some(false);
    desired.compute_type = Some(ComputeType::Attached);
    desired.power = Some(PowerCommands {
        resume_command: "wake".into(),
        suspend_command: "sleep".into(),
        timeout_seconds: 60,
    });
    desired.name = "other".into();
    for field in IMMUTABLE_FIELDS.iter().filter(|f| **f != "vm_size") {
        let e = apply_update(&current, &desired, &[(*field).to_owned()]).expect_err(field);
        assert!(
            matches!(&e, SpecError::Immutable { field: f, .. } if f == field),
            "{e}"
        );
    }
}

fn arb_request() -> impl Strategy<Value = ClusterRequest> {
    (
        "[a-z][a-z0-9-]{0,26}",
        prop::option::of(prop::sample::select(vec![
            "Standard_D2_v2",
            "standard_nc6",
            "Standard_NC6s_v3",
            "bogus",
        ])),
        prop::option::of(0u32..1200),
        prop::option::of(0u32..1200),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::sample::select(vec![0u64, 60, MAX_IDLE_SECONDS + 1])),
        (any::<bool>(), prop::collection::vec("[a-z/]{0,6}", 0..3)),
        prop::option::of(("[a-z]{0,2}", "[a-z]{0,2}", "[a-z]{0,2}")),
    )
        .prop_map(
            |(name, size, min, max, inter, idle, (sys, users), vnet)| ClusterRequest {
                name,
                vm_size: size.map(str::to_owned),
                min_nodes: min,
                max_nodes: max,
                inter_node_communication: inter,
                idle_seconds_before_scaledown: idle,
                identity: IdentitySpec {
                    system_assigned: sys,
                    user_assigned: users,
                },
                vnet: vnet.map(|(g, v, s)| VnetSettings {
                    resource_group: g,
                    vnet_name: v,
                    subnet_name: s,
                }),
                ..Default::default()
            },
        )
}

proptest! {
    #[test]
    fn validation_never_accepts_a_spec_that_breaks_a_rule(r in arb_request()) {
        if let Ok(spec) = validate(&r, "local") {
            prop_assert!(crate::name::validate_cluster_name(&spec.name).is_ok());
            prop_assert!(spec.min_nodes <= spec.max_nodes);
            prop_assert!(spec.max_nodes >= 1);
            let limit = if spec.inter_node_communication { 100 } else { 1000 };
            prop_assert!(spec.max_nodes <= limit);
            prop_assert!(spec.idle_seconds_before_scaledown <= MAX_IDLE_SECONDS);
            prop_assert!(crate::catalog::builtin().iter().any(|s| s.name == spec.vm_size));
            prop_assert!(!spec.identity.system_assigned || spec.identity.user_assigned.is_empty());
            prop_assert!(spec.identity.user_assigned.iter().all(|u| !u.is_empty()));
            // A vnet name and a subnet name together (the resource group
            // optional with them), or nothing.
            if let Some(v) = &spec.vnet {
                let (group, vnet, subnet) = (
                    !v.resource_group.is_empty(),
                    !v.vnet_name.is_empty(),
                    !v.subnet_name.is_empty(),
                );
                prop_assert!((vnet && subnet) || !(group || vnet || subnet));
            }
        }
    }

    #[test]
    fn updates_never_produce_a_spec_that_breaks_a_rule(
        r in arb_request(), min in 0u32..200, max in 0u32..200,
    ) {
        let base = validate(&req("base"), "local").expect("valid base");
        let mut desired = r;
        desired.min_nodes = Some(min);
        desired.max_nodes = Some(max);
        let mask = vec!["min_nodes".to_owned(), "max_nodes".to_owned()];
        match apply_update(&base, &desired, &mask) {
            Ok(next) => {
                prop_assert!(next.min_nodes <= next.max_nodes && next.max_nodes <= 100);
                prop_assert_eq!(next.vm_size, base.vm_size);
            }
            Err(e) => prop_assert!(min > max || max == 0 || max > 100, "{}", e),
        }
    }
}

#[test]
fn attached_clusters_are_dedicated_and_start_with_no_nodes() {
    let mut r = req("lab");
    r.compute_type = Some(ComputeType::Attached);
    r.max_nodes = Some(3);
    let spec = validate(&r, "local").expect("valid");
    assert_eq!(spec.compute_type, ComputeType::Attached);
    assert_eq!(
        validate(&req("cpu"), "local").expect("valid").compute_type,
        ComputeType::AmlCompute
    );

    let mut low = r.clone();
    low.vm_priority = Some(VmPriority::LowPriority);
    assert_eq!(
        validate(&low, "local").expect_err("low").field,
        "vm_priority"
    );
    let mut min = r.clone();
    min.min_nodes = Some(1);
    assert_eq!(validate(&min, "local").expect_err("min").field, "min_nodes");

    // The type is fixed at creation.
    let mut other = r.clone();
    other.compute_type = Some(ComputeType::AmlCompute);
    let e = apply_update(&spec, &other, &["type".into()]).expect_err("immutable");
    assert!(
        matches!(e, SpecError::Immutable { ref field, .. } if field == "type"),
        "{e}"
    );
    assert!(
        apply_update(&spec, &r, &["type".into()]).is_ok(),
        "unchanged is fine"
    );

    assert_eq!(
        ComputeType::parse("type", "Attached"),
        Ok(ComputeType::Attached)
    );
    let e = ComputeType::parse("type", "kubernetes").expect_err("unknown");
    assert!(
        e.to_string()
            .starts_with("type: must be amlcompute or attached"),
        "{e}"
    );
    // Specs stored before the type existed read as amlcompute.
    let mut json = serde_json::to_value(&spec).expect("json");
    json.as_object_mut().expect("object").remove("compute_type");
    let old: ClusterSpec = serde_json::from_value(json).expect("old spec");
    assert_eq!(old.compute_type, ComputeType::AmlCompute);
}

#[test]
fn a_size_of_the_operators_own_is_recorded_in_the_spec() {
    let catalog = crate::catalog::Catalog::with_sizes_file(
        "[[size]]\nname = \"lab-gpu\"\nvcpus = 16\nmemory_gib = 64\ngpus = 2\ngpu_model = \"RTX 4090\"\nfamily = \"labGpuFamily\"\n",
    )
    .expect("sizes");
    let mut r = req("lab");
    r.vm_size = Some("LAB-GPU".into());
    let e = validate(&r, "local").expect_err("not a built-in size");
    assert_eq!(e.field, "vm_size");
    let spec = validate_in(&r, "local", &catalog).expect("valid");
    assert_eq!(spec.vm_size, "lab-gpu");
    // Stored and read back, the spec still knows its size.
    let stored: ClusterSpec =
        serde_json::from_str(&serde_json::to_string(&spec).expect("json")).expect("read");
    let size = stored.size().expect("recorded");
    assert_eq!(
        (size.vcpus, size.gpus, size.family.as_str()),
        (16, 2, "labGpuFamily")
    );
}

#[test]
fn power_commands_are_an_attached_clusters_and_name_no_path() {
    let power = PowerCommands {
        resume_command: "wol-wake".into(),
        suspend_command: "ipmi-off.sh".into(),
        timeout_seconds: DEFAULT_POWER_TIMEOUT_SECONDS,
    };
    let mut r = req("lab");
    r.compute_type = Some(ComputeType::Attached);
    r.power = Some(power.clone());
    r.min_nodes = Some(1);
    r.max_nodes = Some(4);
    let spec = validate(&r, "local").expect("valid: min_nodes kept awake by the commands");
    assert_eq!(spec.power.as_ref(), Some(&power));

    let mut amlcompute = r.clone();
    amlcompute.compute_type = None;
    assert_eq!(
        validate(&amlcompute, "local").expect_err("aml").field,
        "power"
    );
    for (resume, field) in [
        ("/usr/bin/wake", "power.resume_command"),
        ("../wake", "power.resume_command"),
        (".hidden", "power.resume_command"),
        ("", "power.resume_command"),
    ] {
        let mut bad = r.clone();
        bad.power = Some(PowerCommands {
            resume_command: resume.into(),
            ..power.clone()
        });
        let e = validate(&bad, "local").expect_err(resume);
        assert_eq!(e.field, field);
        assert!(e.rule.contains("--power-commands-dir"), "{e}");
    }
    let mut slow = r.clone();
    slow.power = Some(PowerCommands {
        timeout_seconds: 0,
        ..power
    });
    assert_eq!(
        validate(&slow, "local").expect_err("0 s").field,
        "power.timeout_seconds"
    );
}
