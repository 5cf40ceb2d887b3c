//! `strato compute list-sizes`: the VM sizes clusters may use.

use serde::Serialize;
use strato_proto::v1;

use super::{Render, Table, or_dash};

#[derive(Debug, Serialize)]
pub struct SizeView {
    pub name: String,
    pub vcpus: u32,
    pub memory_gib: u32,
    pub gpus: u32,
    pub gpu_model: String,
    pub family: String,
}

impl From<v1::VmSize> for SizeView {
    fn from(s: v1::VmSize) -> Self {
        SizeView {
            name: s.name,
            vcpus: s.vcpus,
            memory_gib: s.memory_gib,
            gpus: s.gpus,
            gpu_model: s.gpu_model,
            family: s.family,
        }
    }
}

impl Render for Vec<SizeView> {
    fn table(&self) -> Table {
        let mut t = Table::new(&["NAME", "VCPUS", "MEMORY_GIB", "GPUS", "GPU_MODEL", "FAMILY"]);
        for s in self {
            t.row(vec![
                s.name.clone(),
                s.vcpus.to_string(),
                s.memory_gib.to_string(),
                s.gpus.to_string(),
                or_dash(&s.gpu_model),
                s.family.clone(),
            ]);
        }
        t
    }
}
