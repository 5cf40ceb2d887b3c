//! Quota arithmetic: dedicated cores per VM family per region, dedicated
//! cores in total per region, one low-priority total per region, and a count
//! of clusters per region.
//!
//! A cluster holds `max(min_nodes, nodes it has)` nodes' worth of cores: its
//! minimum is promised to it from the moment it is created.

use std::collections::BTreeMap;

use crate::spec::VmPriority;

/// The name of the low-priority quota line (one per region, all families).
pub const LOW_PRIORITY: &str = "lowPriority";
/// The name of the dedicated-cores-in-total quota line.
pub const DEDICATED_TOTAL: &str = "dedicatedTotal";
/// The name of the cluster-count quota line.
pub const CLUSTERS: &str = "clusters";

/// The limits of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionQuota {
    /// Dedicated vCPUs across all families.
    pub dedicated_cores_total: u64,
    /// Dedicated vCPUs of a family not listed in `families`.
    pub dedicated_cores_per_family: u64,
    /// Dedicated vCPUs per family, by family name (e.g. `standardNCSv3Family`).
    pub families: BTreeMap<String, u64>,
    /// Low-priority vCPUs across all families.
    pub low_priority_cores: u64,
    /// Clusters in the region.
    pub max_clusters: u64,
}

impl Default for RegionQuota {
    fn default() -> Self {
        RegionQuota {
            dedicated_cores_total: 200,
            dedicated_cores_per_family: 100,
            families: BTreeMap::new(),
            low_priority_cores: 100,
            max_clusters: 500,
        }
    }
}

impl RegionQuota {
    pub fn family_limit(&self, family: &str) -> u64 {
        self.families
            .get(family)
            .copied()
            .unwrap_or(self.dedicated_cores_per_family)
    }

    /// Whether a node of `size` can be had in the region at all: its
    /// family's dedicated quota (within the dedicated total) or the
    /// low-priority quota holds one node's vCPUs. What `list-sizes
    /// --location` lists, as Azure lists a location's sizes.
    pub fn offers(&self, size: &crate::catalog::VmSize) -> bool {
        let cores = u64::from(size.vcpus);
        let dedicated = self
            .family_limit(&size.family)
            .min(self.dedicated_cores_total);
        dedicated >= cores || self.low_priority_cores >= cores
    }
}

/// Limits for every region: `default` for a region not listed in `regions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub default: RegionQuota,
    pub regions: BTreeMap<String, RegionQuota>,
}

impl QuotaLimits {
    pub fn region(&self, location: &str) -> &RegionQuota {
        self.regions.get(location).unwrap_or(&self.default)
    }
}

/// The cores one cluster holds (or asks to hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub family: String,
    pub priority: VmPriority,
    pub vcpus_per_node: u32,
    pub nodes: u32,
}

impl Allocation {
    pub fn vcpus(&self) -> u64 {
        u64::from(self.vcpus_per_node) * u64::from(self.nodes)
    }
}

/// What the clusters of one region hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    pub dedicated_by_family: BTreeMap<String, u64>,
    pub dedicated_total: u64,
    pub low_priority: u64,
    pub clusters: u64,
}

impl QuotaUsage {
    /// Sums the allocations of a region's clusters, one per cluster.
    pub fn from_allocations<'a>(allocations: impl IntoIterator<Item = &'a Allocation>) -> Self {
        let mut usage = QuotaUsage::default();
        for a in allocations {
            usage.add(a);
        }
        usage
    }

    fn add(&mut self, a: &Allocation) {
        self.clusters += 1;
        match a.priority {
            VmPriority::Dedicated => {
                *self
                    .dedicated_by_family
                    .entry(a.family.clone())
                    .or_default() += a.vcpus();
                self.dedicated_total += a.vcpus();
            }
            VmPriority::LowPriority => self.low_priority += a.vcpus(),
        }
    }

    pub fn family(&self, family: &str) -> u64 {
        self.dedicated_by_family.get(family).copied().unwrap_or(0)
    }
}

/// A request that does not fit. The text follows the service's wording:
/// the quota, its limit, what is in use, and what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "quota exceeded: the {quota} vCPU quota in region {region} is {limit}, {in_use} in use, and cannot accommodate {nodes} requested nodes which map to {vcpus} vCPUs"
    )]
    Cores {
        /// The quota line: a family name, `dedicatedTotal` or `lowPriority`.
        quota: String,
        region: String,
        limit: u64,
        in_use: u64,
        nodes: u32,
        vcpus: u64,
    },
    #[error(
        "quota exceeded: region {region} allows {limit} clusters and {in_use} exist; delete one or raise max_clusters"
    )]
    Clusters {
        region: String,
        limit: u64,
        in_use: u64,
    },
}

impl QuotaError {
    /// The quota line that was exceeded.
    pub fn quota(&self) -> &str {
        match self {
            QuotaError::Cores { quota, .. } => quota,
            QuotaError::Clusters { .. } => CLUSTERS,
        }
    }
}

/// Whether `request` fits on top of `others`, the usage of every *other*
/// cluster of the region. `new_cluster` counts the request against the
/// cluster limit too.
pub fn check(
    region: &str,
    limits: &RegionQuota,
    others: &QuotaUsage,
    request: &Allocation,
    new_cluster: bool,
) -> Result<(), QuotaError> {
    if new_cluster && others.clusters + 1 > limits.max_clusters {
        return Err(QuotaError::Clusters {
            region: region.to_owned(),
            limit: limits.max_clusters,
            in_use: others.clusters,
        });
    }
    let exceeded = |quota: &str, limit: u64, in_use: u64| QuotaError::Cores {
        quota: quota.to_owned(),
        region: region.to_owned(),
        limit,
        in_use,
        nodes: request.nodes,
        vcpus: request.vcpus(),
    };
    let fits = |limit: u64, in_use: u64| in_use.saturating_add(request.vcpus()) <= limit;
    match request.priority {
        VmPriority::Dedicated => {
            let family_limit = limits.family_limit(&request.family);
            let family_used = others.family(&request.family);
            if !fits(family_limit, family_used) {
                return Err(exceeded(&request.family, family_limit, family_used));
            }
            if !fits(limits.dedicated_cores_total, others.dedicated_total) {
                return Err(exceeded(
                    DEDICATED_TOTAL,
                    limits.dedicated_cores_total,
                    others.dedicated_total,
                ));
            }
        }
        VmPriority::LowPriority => {
            if !fits(limits.low_priority_cores, others.low_priority) {
                return Err(exceeded(
                    LOW_PRIORITY,
                    limits.low_priority_cores,
                    others.low_priority,
                ));
            }
        }
    }
    Ok(())
}

/// The most nodes of `vcpus_per_node` a cluster may hold on top of
/// `others` (every other cluster of the region) without breaking a limit.
pub fn max_nodes_admitted(
    limits: &RegionQuota,
    others: &QuotaUsage,
    family: &str,
    priority: VmPriority,
    vcpus_per_node: u32,
) -> u64 {
    let per = u64::from(vcpus_per_node.max(1));
    let left = |limit: u64, used: u64| limit.saturating_sub(used) / per;
    match priority {
        VmPriority::Dedicated => left(limits.family_limit(family), others.family(family))
            .min(left(limits.dedicated_cores_total, others.dedicated_total)),
        VmPriority::LowPriority => left(limits.low_priority_cores, others.low_priority),
    }
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    pub name: String,
    pub unit: &'static str,
    pub current: u64,
    pub limit: u64,
}

/// The usage report of a region: every family of the catalog, the
/// dedicated total, the low-priority total and the cluster count.
pub fn report(
    limits: &RegionQuota,
    usage: &QuotaUsage,
    catalog: &crate::catalog::Catalog,
) -> Vec<UsageLine> {
    let mut lines: Vec<UsageLine> = catalog
        .families()
        .into_iter()
        .map(|family| UsageLine {
            name: family.to_owned(),
            unit: "vCPUs",
            current: usage.family(family),
            limit: limits.family_limit(family),
        })
        .collect();
    lines.push(UsageLine {
        name: DEDICATED_TOTAL.to_owned(),
        unit: "vCPUs",
        current: usage.dedicated_total,
        limit: limits.dedicated_cores_total,
    });
    lines.push(UsageLine {
        name: LOW_PRIORITY.to_owned(),
        unit: "vCPUs",
        current: usage.low_priority,
        limit: limits.low_priority_cores,
    });
    lines.push(UsageLine {
        name: CLUSTERS.to_owned(),
        unit: "count",
        current: usage.clusters,
        limit: limits.max_clusters,
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alloc(family: &str, priority: VmPriority, vcpus: u32, nodes: u32) -> Allocation {
        Allocation {
            family: family.to_owned(),
            priority,
            vcpus_per_node: vcpus,
            nodes,
        }
    }

    fn limits() -> RegionQuota {
        RegionQuota {
            dedicated_cores_total: 20,
            dedicated_cores_per_family: 12,
            families: [("standardNCSv3Family".to_owned(), 6)].into(),
            low_priority_cores: 8,
            max_clusters: 3,
        }
    }

    #[test]
    fn family_limit_refusal_names_family_limit_and_request() {
        let used = QuotaUsage::from_allocations(&[alloc(
            "standardNCSv3Family",
            VmPriority::Dedicated,
            6,
            1,
        )]);
        let e = check(
            "local",
            &limits(),
            &used,
            &alloc("standardNCSv3Family", VmPriority::Dedicated, 6, 1),
            true,
        )
        .expect_err("full");
        let text = e.to_string();
        for part in [
            "standardNCSv3Family",
            "is 6",
            "6 in use",
            "1 requested nodes",
            "6 vCPUs",
            "local",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }

    #[test]
    fn dedicated_total_is_checked_across_families() {
        let used = QuotaUsage::from_allocations(&[
            alloc("a", VmPriority::Dedicated, 4, 3),
            alloc("b", VmPriority::Dedicated, 4, 1),
        ]);
        let e = check(
            "local",
            &limits(),
            &used,
            &alloc("c", VmPriority::Dedicated, 4, 2),
            false,
        )
        .expect_err("total");
        assert_eq!(e.quota(), DEDICATED_TOTAL);
        assert!(
            check(
                "local",
                &limits(),
                &used,
                &alloc("c", VmPriority::Dedicated, 4, 1),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn low_priority_and_dedicated_do_not_touch() {
        let used = QuotaUsage::from_allocations(&[alloc("a", VmPriority::LowPriority, 4, 2)]);
        assert_eq!(used.dedicated_total, 0);
        assert_eq!(
            check(
                "local",
                &limits(),
                &used,
                &alloc("a", VmPriority::LowPriority, 4, 1),
                false
            )
            .expect_err("low full")
            .quota(),
            LOW_PRIORITY
        );
        assert!(
            check(
                "local",
                &limits(),
                &used,
                &alloc("a", VmPriority::Dedicated, 4, 3),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn cluster_count_is_limited_for_new_clusters_only() {
        let used = QuotaUsage::from_allocations(&vec![alloc("a", VmPriority::Dedicated, 4, 0); 3]);
        let e = check(
            "local",
            &limits(),
            &used,
            &alloc("a", VmPriority::Dedicated, 4, 0),
            true,
        )
        .expect_err("count");
        assert_eq!(e.quota(), CLUSTERS);
        assert!(
            check(
                "local",
                &limits(),
                &used,
                &alloc("a", VmPriority::Dedicated, 4, 0),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn a_location_offers_the_sizes_one_node_of_fits() {
        let size = |family: &str, vcpus| crate::catalog::VmSize {
            name: "s".into(),
            vcpus,
            memory_gib: 1,
            gpus: 0,
            gpu_model: String::new(),
            family: family.into(),
        };
        let mut q = RegionQuota {
            dedicated_cores_total: 16,
            dedicated_cores_per_family: 8,
            families: BTreeMap::from([("gpuFamily".to_owned(), 0)]),
            low_priority_cores: 0,
            max_clusters: 1,
        };
        assert!(q.offers(&size("cpuFamily", 8)));
        assert!(!q.offers(&size("cpuFamily", 9)), "over its family");
        assert!(!q.offers(&size("gpuFamily", 6)), "no quota for the family");
        q.low_priority_cores = 6;
        assert!(q.offers(&size("gpuFamily", 6)), "as a low-priority node");
        q.families.insert("bigFamily".into(), 64);
        assert!(
            !q.offers(&size("bigFamily", 32)),
            "over the dedicated total"
        );
    }

    #[test]
    fn report_lists_families_totals_and_clusters() {
        let used = QuotaUsage::from_allocations(&[alloc(
            "standardNCSv3Family",
            VmPriority::Dedicated,
            6,
            1,
        )]);
        let lines = report(&limits(), &used, &crate::catalog::Catalog::builtin());
        let line = |n: &str| lines.iter().find(|l| l.name == n).expect(n).clone();
        assert_eq!(
            (
                line("standardNCSv3Family").current,
                line("standardNCSv3Family").limit
            ),
            (6, 6)
        );
        assert_eq!(line("standardDv2Family").limit, 12);
        assert_eq!(line(DEDICATED_TOTAL).current, 6);
        assert_eq!(line(CLUSTERS).current, 1);
    }

    #[test]
    fn max_nodes_admitted_agrees_with_check() {
        let others = QuotaUsage::from_allocations(&[alloc("f", VmPriority::Dedicated, 4, 1)]);
        let l = limits();
        let n = max_nodes_admitted(&l, &others, "f", VmPriority::Dedicated, 4);
        assert_eq!(n, 2);
        let fits = |nodes: u32| {
            check(
                "r",
                &l,
                &others,
                &alloc("f", VmPriority::Dedicated, 4, nodes),
                false,
            )
            .is_ok()
        };
        assert!(fits(2) && !fits(3));
    }

    fn arb_alloc() -> impl Strategy<Value = Allocation> {
        (
            prop::sample::select(vec!["f1", "f2", "f3"]),
            any::<bool>(),
            prop::sample::select(vec![2u32, 4, 6, 24]),
            0u32..6,
        )
            .prop_map(|(f, low, v, n)| {
                alloc(
                    f,
                    if low {
                        VmPriority::LowPriority
                    } else {
                        VmPriority::Dedicated
                    },
                    v,
                    n,
                )
            })
    }

    fn arb_limits() -> impl Strategy<Value = RegionQuota> {
        (0u64..80, 0u64..40, 0u64..40, 0u64..60, 0u64..8).prop_map(
            |(total, per, f1, low, clusters)| RegionQuota {
                dedicated_cores_total: total,
                dedicated_cores_per_family: per,
                families: [("f1".to_owned(), f1)].into(),
                low_priority_cores: low,
                max_clusters: clusters,
            },
        )
    }

    proptest! {
        /// Admitting requests one by one, as the control plane does, never
        /// lets any quota line go above its limit.
        #[test]
        fn admitted_usage_never_exceeds_a_limit(
            limits in arb_limits(),
            requests in prop::collection::vec(arb_alloc(), 0..30),
        ) {
            let mut admitted: Vec<Allocation> = Vec::new();
            for r in requests {
                let usage = QuotaUsage::from_allocations(&admitted);
                if check("r", &limits, &usage, &r, true).is_ok() {
                    admitted.push(r);
                }
                let usage = QuotaUsage::from_allocations(&admitted);
                prop_assert!(usage.dedicated_total <= limits.dedicated_cores_total);
                prop_assert!(usage.low_priority <= limits.low_priority_cores);
                prop_assert!(usage.clusters <= limits.max_clusters);
                for (family, used) in &usage.dedicated_by_family {
                    prop_assert!(*used <= limits.family_limit(family));
                }
                for line in report(&limits, &usage, &crate::catalog::Catalog::builtin()) {
                    prop_assert!(line.current <= line.limit, "{:?}", line);
                }
            }
        }

        /// A request is refused only when some line really would overflow.
        #[test]
        fn refusals_are_real(limits in arb_limits(), others in prop::collection::vec(arb_alloc(), 0..6), r in arb_alloc()) {
            let usage = QuotaUsage::from_allocations(&others);
            if let Err(e) = check("r", &limits, &usage, &r, true) {
                let mut after = others.clone();
                after.push(r.clone());
                let after = QuotaUsage::from_allocations(&after);
                let over = match e.quota() {
                    CLUSTERS => after.clusters > limits.max_clusters,
                    DEDICATED_TOTAL => after.dedicated_total > limits.dedicated_cores_total,
                    LOW_PRIORITY => after.low_priority > limits.low_priority_cores,
                    family => after.family(family) > limits.family_limit(family),
                };
                prop_assert!(over, "refused without cause: {}", e);
            }
        }
    }
}
