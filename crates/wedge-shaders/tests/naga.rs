//! Every registered kernel variant parses, validates, has its overrides resolved
//! and translates to SPIR-V with naga — no GPU needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use naga::back::spv;
use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};
use wedge_shaders::{Family, all_variants, template_keys};

fn validate(label: &str, family: Family, src: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
    // unpack2x16float is core WGSL (wgpu grants this capability on every backend wedge
    // targets); nothing else is allowed unless the family declares the extension, so no
    // other kernel can come to need shader-f16 or subgroups.
    // (wgpu's SHADER_F16 feature grants SHADER_FLOAT16.)
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    let subgroups = family.extensions().contains(&"subgroups");
    if subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    if family.extensions().contains(&"f16") {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    if subgroups {
        // only what wgpu's SUBGROUP feature guarantees in compute shaders (and the
        // reductions and elections this family uses)
        validator
            .subgroup_stages(ShaderStages::COMPUTE)
            .subgroup_operations(SubgroupOperationSet::BASIC | SubgroupOperationSet::ARITHMETIC);
    }
    let info = validator.validate(&module).unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
    (module, info)
}

#[test]
fn files_are_valid_wgsl_as_stored() {
    for f in Family::ALL {
        validate(f.file(), f, f.source());
        assert!(!template_keys(f.source()).is_empty(), "{f} declares no template parameters");
    }
}

#[test]
fn every_variant_validates_and_translates() {
    let keys = all_variants();
    assert!(keys.len() > 100, "only {} variants registered", keys.len());
    let mut n = 0;
    for key in keys {
        let label = key.label();
        let src = key.source().unwrap_or_else(|e| panic!("{label}: {e}"));
        let (module, info) = validate(&label, key.family, &src);
        let constants: naga::back::PipelineConstants =
            key.overrides.iter().map(|(k, v)| ((*k).to_string(), *v)).collect();
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((naga::ShaderStage::Compute, key.entry)),
            &constants,
        )
        .unwrap_or_else(|e| panic!("{label}: overrides: {e}"));
        let pipeline =
            spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: key.entry.to_string() };
        spv::write_vec(&module, &info, &spv::Options::default(), Some(&pipeline))
            .unwrap_or_else(|e| panic!("{label}: spir-v: {e}"));
        // the family's declared binding table matches the module
        let declared = key.family.bindings();
        for (_, var) in module.global_variables.iter() {
            if let Some(rb) = &var.binding {
                assert!(
                    (rb.binding as usize) < declared.len(),
                    "{label}: binding {} not in the family table",
                    rb.binding
                );
            }
        }
        n += 1;
    }
    eprintln!("{n} variants validated");
}
